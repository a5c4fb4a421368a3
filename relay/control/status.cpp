#include "control/status.h"

#include <sstream>

#include "common/json.h"

namespace sockrelay {

std::string format_status_text(const StatusSnapshot& s) {
  std::ostringstream out;
  out << "sockrelay " << s.version << ", pid " << s.pid << ", up " << s.uptime_seconds << "s, sessions "
      << s.sessions << "/" << s.max_sessions
      << (s.bpf_loaded ? "" : ", BPF not loaded (user-space data path only)") << "\n"
      << "process   capabilities " << s.capabilities << ", reloads " << s.reloads << " (" << s.reloads_refused
      << " refused)\n";
  for (const auto& r : s.routes) {
    out << "route " << r.id << ": " << r.from << " -> " << r.to << "\n"
        << "  datapath  " << r.datapath << " (" << r.datapath_reason << ")\n"
        << "  sessions  " << r.sessions << " open, " << r.user.flows_created << " created, "
        << r.user.flows_expired << " expired, " << r.user.flows_failed << " failed\n"
        << "  kernel    packets " << r.kernel.packets << ", bytes " << r.kernel.bytes << "\n"
        << "  user      packets " << r.user.user_packets << ", bytes " << r.user.user_bytes << "\n"
        << "  drops     no-target " << r.kernel.drop_no_target << ", max-sessions "
        << r.user.refused_max_sessions << ", setup-failed " << r.user.drop_setup_failed << ", send-error "
        << r.user.drop_send_error << ", no-reply-path " << r.user.drop_no_reply_path << ", all-targets-down "
        << r.user.drop_all_targets_down << ", target-full " << r.user.drop_target_full << ", policy "
        << r.user.refused_policy << "\n";
    for (const auto& t : r.targets) {
      out << "  target    " << t.report.name << ": " << (t.report.up ? "up" : "DOWN") << ", kernel packets "
          << t.kernel.packets << ", user packets " << t.report.user_packets << ", failures "
          << t.report.failures;
      if (r.is_stream) out << ", sessions " << t.report.sessions;
      if (!t.report.up) out << ", retry in " << t.report.retry_in_ms << " ms";
      out << "\n";
    }
    if (r.is_subscribers) {
      const SubscriberCounters& c = r.subscribers;
      out << "  subscribers joined " << c.joined << ", left " << c.left << ", refused "
          << c.refused_max_sessions << " (max-sessions) " << c.refused_full << " (full) " << c.refused_socket
          << " (socket)"
          << ", no-subscriber drops " << c.drop_no_subscriber << ", queue-full drops "
          << c.drop_subscriber_full << ", stalls " << c.stalls << "\n";
      for (const auto& sub : r.subscriber_list) {
        const SubscriberReport& rep = sub.report;
        out << "  " << rep.name << ": "
            << (!rep.receiving ? "waiting for its socket"
                : rep.stalled  ? "STALLED (out of the rotation)"
                               : "receiving")
            << ", kernel packets " << sub.kernel.packets << ", user packets " << rep.user_packets
            << ", dropped " << rep.dropped << ", stalls " << rep.stalls << "\n";
      }
    }
    if (r.is_stream)
      out << "  stream    closed " << r.stream.sessions_closed << ", half-closes " << r.stream.half_closes
          << ", user fallbacks " << r.stream.user_fallbacks << ", connect-failed " << r.stream.connect_failed
          << ", refused " << r.stream.refused_max_sessions << " (max-sessions) " << r.stream.refused_policy
          << " (policy)"
          << ", user bytes " << r.stream.user_bytes << ", user messages " << r.stream.user_messages
          << ", dropped messages " << r.stream.dropped_messages << "\n";
  }
  out << "global    unknown-source " << s.global.unknown_source << ", bad-route " << s.global.bad_route
      << ", new-client-tag-failed " << s.global.tag_failed << ", new-client-lost " << s.global.new_client_lost
      << ", all-targets-down " << s.global.all_targets_down << "\n";
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
  for (const auto& r : s.routes) {
    j.begin_object()
        .field("id", r.id)
        .field("from", r.from)
        .field("to", r.to)
        .field("datapath", r.datapath)
        .field("datapath-reason", r.datapath_reason)
        .field("sessions", static_cast<uint64_t>(r.sessions))
        .field("sessions-created", r.user.flows_created)
        .field("sessions-expired", r.user.flows_expired)
        .field("sessions-failed", r.user.flows_failed);
    j.key("kernel").begin_object();
    j.field("packets", r.kernel.packets)
        .field("bytes", r.kernel.bytes)
        .field("policy-drops", r.kernel.drop_policy);
    j.end_object();
    j.key("user").begin_object();
    j.field("packets", r.user.user_packets).field("bytes", r.user.user_bytes);
    j.end_object();
    j.key("drops").begin_object();
    j.field("no-target", r.kernel.drop_no_target)
        .field("max-sessions", r.user.refused_max_sessions)
        .field("setup-failed", r.user.drop_setup_failed)
        .field("send-error", r.user.drop_send_error)
        .field("no-reply-path", r.user.drop_no_reply_path)
        .field("all-targets-down", r.user.drop_all_targets_down)
        .field("target-full", r.user.drop_target_full)
        .field("policy", r.user.refused_policy);
    j.end_object();
    if (!r.targets.empty()) {
      j.key("targets").begin_array();
      for (const auto& t : r.targets) {
        j.begin_object()
            .field("name", t.report.name)
            .field("up", t.report.up)
            .field("failures", t.report.failures)
            .field("retry-in-ms", t.report.retry_in_ms)
            .field("kernel-packets", t.kernel.packets)
            .field("kernel-bytes", t.kernel.bytes)
            .field("user-packets", t.report.user_packets)
            .field("user-bytes", t.report.user_bytes)
            .field("sessions", t.report.sessions)
            .end_object();
      }
      j.end_array();
    }
    if (r.is_subscribers) {
      const SubscriberCounters& c = r.subscribers;
      j.key("subscribers").begin_object();
      j.field("joined", c.joined)
          .field("left", c.left)
          .field("refused-max-sessions", c.refused_max_sessions)
          .field("refused-full", c.refused_full)
          .field("refused-socket", c.refused_socket)
          .field("drop-no-subscriber", c.drop_no_subscriber)
          .field("drop-queue-full", c.drop_subscriber_full)
          .field("stalls", c.stalls);
      j.key("list").begin_array();
      for (const auto& sub : r.subscriber_list) {
        j.begin_object()
            .field("name", sub.report.name)
            .field("receiving", sub.report.receiving)
            .field("stalled", sub.report.stalled)
            .field("kernel-packets", sub.kernel.packets)
            .field("kernel-bytes", sub.kernel.bytes)
            .field("user-packets", sub.report.user_packets)
            .field("user-bytes", sub.report.user_bytes)
            .field("dropped", sub.report.dropped)
            .field("stalls", sub.report.stalls)
            .end_object();
      }
      j.end_array();
      j.end_object();
    }
    if (r.is_stream) {
      j.key("stream").begin_object();
      j.field("sessions-closed", r.stream.sessions_closed)
          .field("sessions-failed", r.stream.sessions_failed)
          .field("sessions-expired", r.stream.sessions_expired)
          .field("half-closes", r.stream.half_closes)
          .field("user-fallbacks", r.stream.user_fallbacks)
          .field("connect-failed", r.stream.connect_failed)
          .field("refused-max-sessions", r.stream.refused_max_sessions)
          .field("refused-policy", r.stream.refused_policy)
          .field("user-bytes", r.stream.user_bytes)
          .field("user-messages", r.stream.user_messages)
          .field("dropped-messages", r.stream.dropped_messages);
      j.end_object();
    }
    j.end_object();
  }
  j.end_array();
  j.end_object();
  return j.str() + "\n";
}

}  // namespace sockrelay
