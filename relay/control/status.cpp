#include "control/status.h"

#include <algorithm>
#include <sstream>

#include "common/json.h"

namespace sockrelay {

namespace {

// "  datapath  ", "  stream    ", "  subscribers ": the text output's
// column of section names.
std::string label(const std::string& name) {
  std::string padded = "  " + name;
  padded.resize(std::max<size_t>(padded.size(), 11), ' ');
  return padded + " ";
}

// "name 1, other 2"
std::string counts_text(const std::vector<NamedCount>& counts) {
  std::string text;
  for (const auto& c : counts) text += (text.empty() ? "" : ", ") + c.name + " " + std::to_string(c.value);
  return text;
}

void target_text(std::ostringstream& out, const TargetReport& t) {
  out << label("target") << t.name << ": " << (t.up ? "up" : "DOWN") << ", kernel packets "
      << t.kernel.packets << ", user packets " << t.user_packets << ", failures " << t.failures;
  if (t.kernel.drop_target_full != 0) out << ", target-full " << t.kernel.drop_target_full;
  if (t.has_sessions) out << ", sessions " << t.sessions;
  if (!t.up) out << ", retry in " << t.retry_in_ms << " ms";
  out << "\n";
}

void subscriber_text(std::ostringstream& out, const SubscriberReport& sub) {
  out << "  " << sub.name << ": "
      << (!sub.receiving ? "waiting for its socket"
          : sub.stalled  ? "STALLED (out of the rotation)"
                         : "receiving")
      << ", kernel packets " << sub.kernel.packets << ", user packets " << sub.user_packets << ", dropped "
      << sub.dropped << ", stalls " << sub.stalls << "\n";
}

void route_text(std::ostringstream& out, const RouteReport& r) {
  out << "route " << r.id << ": " << r.from << " -> " << r.to << "\n"
      << label("datapath") << r.datapath << " (" << r.datapath_reason << ")\n"
      << label("sessions") << r.sessions << " open, " << r.sessions_created << " created, "
      << r.sessions_expired << " expired, " << r.sessions_failed << " failed"
      << (r.evicts ? ", " + std::to_string(r.sessions_evicted) + " evicted" : "") << "\n"
      << label("kernel") << "packets " << r.kernel.packets << ", bytes " << r.kernel.bytes << "\n"
      << label("user") << "packets " << r.user_packets << ", bytes " << r.user_bytes << "\n"
      << label("drops") << counts_text(r.drops) << "\n";
  for (const auto& t : r.targets) target_text(out, t);
  if (!r.detail_name.empty()) out << label(r.detail_name) << counts_text(r.detail) << "\n";
  for (const auto& sub : r.subscribers) subscriber_text(out, sub);
}

void counts_json(JsonWriter& j, const std::vector<NamedCount>& counts) {
  for (const auto& c : counts) j.field(c.name, c.value);
}

void targets_json(JsonWriter& j, const std::vector<TargetReport>& targets) {
  j.key("targets").begin_array();
  for (const auto& t : targets) {
    j.begin_object()
        .field("name", t.name)
        .field("up", t.up)
        .field("failures", t.failures)
        .field("retry-in-ms", t.retry_in_ms)
        .field("kernel-packets", t.kernel.packets)
        .field("kernel-bytes", t.kernel.bytes)
        .field("user-packets", t.user_packets)
        .field("user-bytes", t.user_bytes)
        .field("sessions", t.sessions)
        .field("target-full", t.kernel.drop_target_full)
        .end_object();
  }
  j.end_array();
}

void subscribers_json(JsonWriter& j, const std::vector<SubscriberReport>& subscribers) {
  j.key("list").begin_array();
  for (const auto& sub : subscribers) {
    j.begin_object()
        .field("name", sub.name)
        .field("receiving", sub.receiving)
        .field("stalled", sub.stalled)
        .field("kernel-packets", sub.kernel.packets)
        .field("kernel-bytes", sub.kernel.bytes)
        .field("user-packets", sub.user_packets)
        .field("user-bytes", sub.user_bytes)
        .field("dropped", sub.dropped)
        .field("stalls", sub.stalls)
        .end_object();
  }
  j.end_array();
}

void route_json(JsonWriter& j, const RouteReport& r) {
  j.begin_object()
      .field("id", r.id)
      .field("from", r.from)
      .field("to", r.to)
      .field("datapath", r.datapath)
      .field("datapath-reason", r.datapath_reason)
      .field("sessions", r.sessions)
      .field("sessions-created", r.sessions_created)
      .field("sessions-expired", r.sessions_expired)
      .field("sessions-failed", r.sessions_failed);
  if (r.evicts) j.field("sessions-evicted", r.sessions_evicted);
  // Scripts read "kernel":{"packets":N,"bytes":N and "user":{"packets":N
  // (tests/bench): keep these first, in this order.
  j.key("kernel").begin_object();
  j.field("packets", r.kernel.packets)
      .field("bytes", r.kernel.bytes)
      .field("policy-drops", r.kernel.drop_policy);
  j.end_object();
  j.key("user").begin_object();
  j.field("packets", r.user_packets).field("bytes", r.user_bytes);
  j.end_object();
  j.key("drops").begin_object();
  counts_json(j, r.drops);
  j.end_object();
  if (!r.targets.empty()) targets_json(j, r.targets);
  if (!r.detail_name.empty()) {
    j.key(r.detail_name).begin_object();
    counts_json(j, r.detail);
    if (r.has_subscribers) subscribers_json(j, r.subscribers);
    j.end_object();
  }
  j.end_object();
}

void control_json(JsonWriter& j, const StatusSnapshot::Control& control) {
  const auto& c = control.counters;
  j.key("control").begin_object();
  j.field("path", control.path)
      .field("from-systemd", control.from_systemd)
      .field("clients", static_cast<uint64_t>(control.clients))
      .field("accepted", c.accepted)
      .field("answered", c.answered)
      .field("refused-too-many", c.refused_too_many)
      .field("refused-too-long", c.refused_too_long)
      .field("refused-unknown", c.refused_unknown)
      .field("refused-busy", c.refused_busy)
      .field("timed-out", c.timed_out)
      .field("closed-before-reply", c.closed_before_reply);
  j.end_object();
}

}  // namespace

std::string format_status_text(const StatusSnapshot& s) {
  std::ostringstream out;
  out << "sockrelay " << s.version << ", pid " << s.pid << ", up " << s.uptime_seconds << "s, sessions "
      << s.sessions << "/" << s.max_sessions
      << (s.bpf_loaded ? "" : ", BPF not loaded (user-space data path only)") << "\n"
      << "process   capabilities " << s.capabilities << ", reloads " << s.reloads << " (" << s.reloads_refused
      << " refused)\n";
  if (s.bpf_loaded)
    out << "kernel    target-buffer "
        << (s.target_bound_unavailable.empty() ? "enforced per target (bytes the kernel holds toward it)"
                                               : "NOT enforced: " + s.target_bound_unavailable)
        << "\n";
  for (const auto& r : s.routes) route_text(out, r);
  out << "global    unknown-source " << s.global.unknown_source << ", bad-route " << s.global.bad_route
      << ", new-client-tag-failed " << s.global.tag_failed << ", new-client-lost " << s.global.new_client_lost
      << ", all-targets-down " << s.global.all_targets_down << "\n";
  const auto& c = s.control.counters;
  if (!s.control.path.empty())
    out << "control   " << s.control.path << (s.control.from_systemd ? " (socket from systemd)" : "")
        << ", clients " << s.control.clients << ", accepted " << c.accepted << ", answered " << c.answered
        << ", refused-too-many " << c.refused_too_many << ", refused-too-long " << c.refused_too_long
        << ", refused-unknown " << c.refused_unknown << ", refused-busy " << c.refused_busy << ", timed-out "
        << c.timed_out << ", closed-before-reply " << c.closed_before_reply << "\n";
  return out.str();
}

std::string format_status_json(const StatusSnapshot& s) {
  JsonWriter j;
  j.begin_object()
      .field("version", s.version)
      .field("pid", s.pid)
      .field("uptime-seconds", s.uptime_seconds)
      .field("sessions", s.sessions)
      .field("max-sessions", s.max_sessions)
      .field("bpf-loaded", s.bpf_loaded)
      .field("capabilities", s.capabilities)
      .field("target-buffer-enforced", s.bpf_loaded && s.target_bound_unavailable.empty())
      .field("target-buffer-unavailable", s.target_bound_unavailable)
      .field("reloads", s.reloads)
      .field("reloads-refused", s.reloads_refused);
  j.key("global").begin_object();
  j.field("unknown-source", s.global.unknown_source)
      .field("bad-route", s.global.bad_route)
      .field("new-client-tag-failed", s.global.tag_failed)
      .field("new-client-lost", s.global.new_client_lost)
      .field("all-targets-down", s.global.all_targets_down);
  j.end_object();
  j.key("routes").begin_array();
  for (const auto& r : s.routes) route_json(j, r);
  j.end_array();
  control_json(j, s.control);
  j.end_object();
  return j.str() + "\n";
}

}  // namespace sockrelay
