#include "control/metrics.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

namespace sockrelay {

namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

// The families in the order they were first added, each with its samples:
// the format wants every sample of a family together, after its HELP and
// TYPE lines, while the snapshot is walked route by route.
class Exposition {
 public:
  void gauge(const char* name, const char* help, const Labels& labels, uint64_t value) {
    add(name, "gauge", help, labels, value);
  }
  void counter(const char* name, const char* help, const Labels& labels, uint64_t value) {
    add(name, "counter", help, labels, value);
  }
  std::string str() const {
    std::string out;
    for (const auto& f : families_) {
      out += "# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + f.type + "\n" + f.samples;
    }
    return out;
  }

 private:
  struct Family {
    std::string name, type, help, samples;
  };
  void add(const char* name, const char* type, const char* help, const Labels& labels, uint64_t value) {
    auto it =
        std::find_if(families_.begin(), families_.end(), [&](const Family& f) { return f.name == name; });
    if (it == families_.end()) it = families_.insert(families_.end(), Family{name, type, help, {}});
    std::string line = name;
    if (!labels.empty()) {
      line += '{';
      for (size_t i = 0; i < labels.size(); ++i) {
        line += (i ? "," : "") + labels[i].first + "=\"" + prometheus_label_value(labels[i].second) + "\"";
      }
      line += '}';
    }
    it->samples += line + " " + std::to_string(value) + "\n";
  }
  std::vector<Family> families_;
};

Labels with(Labels labels, const std::string& key, const std::string& value) {
  labels.emplace_back(key, value);
  return labels;
}

void process_metrics(Exposition& m, const StatusSnapshot& s) {
  m.gauge("sockrelay_info", "The running relay's version and pid (value always 1).",
          {{"version", s.version}, {"pid", std::to_string(s.pid)}}, 1);
  m.gauge("sockrelay_uptime_seconds", "Seconds since the relay started.", {}, s.uptime_seconds);
  m.gauge("sockrelay_sessions", "Sessions open now across all routes (what max-sessions limits).", {},
          s.sessions);
  m.gauge("sockrelay_sessions_max", "The relay's max-sessions setting.", {}, s.max_sessions);
  m.gauge("sockrelay_open_fds", "File descriptors the relay process holds now.", {}, s.open_fds);
  m.gauge("sockrelay_max_fds", "The relay's soft RLIMIT_NOFILE.", {}, s.max_fds);
  m.gauge("sockrelay_bpf_loaded", "1 when the BPF data path is loaded, 0 when only user space carries.", {},
          s.bpf_loaded ? 1 : 0);
  m.counter("sockrelay_reloads_total", "Configuration reloads applied (SIGHUP).", {}, s.reloads);
  m.counter("sockrelay_reloads_refused_total", "Configuration reloads refused (the old one kept running).",
            {}, s.reloads_refused);
  const char* global_help = "Datagrams the verdict program dropped before it knew their route, by reason.";
  for (const auto& [reason, value] : {std::pair{"unknown-source", s.global.unknown_source},
                                      {"bad-route", s.global.bad_route},
                                      {"new-client-tag-failed", s.global.tag_failed},
                                      {"new-client-lost", s.global.new_client_lost},
                                      {"all-targets-down", s.global.all_targets_down}}) {
    m.counter("sockrelay_kernel_drops_total", global_help, {{"reason", reason}}, value);
  }
}

void traffic_metrics(Exposition& m, const char* packets, const char* bytes, const char* what, const Labels& l,
                     const KernelCounts& kernel, uint64_t user_packets, uint64_t user_bytes) {
  std::string packets_help = std::string("Packets (datagrams, or messages) ") + what + ", by data path.";
  std::string bytes_help = std::string("Bytes ") + what + ", by data path.";
  m.counter(packets, packets_help.c_str(), with(l, "path", "kernel"), kernel.packets);
  m.counter(packets, packets_help.c_str(), with(l, "path", "user"), user_packets);
  m.counter(bytes, bytes_help.c_str(), with(l, "path", "kernel"), kernel.bytes);
  m.counter(bytes, bytes_help.c_str(), with(l, "path", "user"), user_bytes);
}

void target_metrics(Exposition& m, const Labels& route, const TargetReport& t) {
  Labels l = with(route, "target", t.name);
  m.gauge("sockrelay_target_up",
          "1 when the target is in the rotation, 0 while it backs off after a failure.", l, t.up ? 1 : 0);
  m.counter("sockrelay_target_failures_total",
            "Times the target failed (refused, socket error, connect failed).", l, t.failures);
  traffic_metrics(m, "sockrelay_target_packets_total", "sockrelay_target_bytes_total", "sent to the target",
                  l, t.kernel, t.user_packets, t.user_bytes);
  if (t.has_sessions)
    m.counter("sockrelay_target_sessions_total", "Connections made to the target.", l, t.sessions);
}

void subscriber_metrics(Exposition& m, const Labels& route, const SubscriberReport& sub) {
  Labels l = with(route, "subscriber", sub.name);
  m.gauge("sockrelay_subscriber_receiving", "1 when the subscriber's socket is joined and receiving.", l,
          sub.receiving ? 1 : 0);
  m.gauge("sockrelay_subscriber_stalled", "1 while the subscriber is out of the rotation for not reading.", l,
          sub.stalled ? 1 : 0);
  traffic_metrics(m, "sockrelay_subscriber_packets_total", "sockrelay_subscriber_bytes_total",
                  "sent to the subscriber", l, sub.kernel, sub.user_packets, sub.user_bytes);
  m.counter("sockrelay_subscriber_dropped_total",
            "Datagrams dropped for the subscriber (its queue was full).", l, sub.dropped);
  m.counter("sockrelay_subscriber_stalls_total", "Times the subscriber stalled.", l, sub.stalls);
}

void route_metrics(Exposition& m, const RouteReport& r) {
  Labels l = {{"route", std::to_string(r.id)}, {"from", r.from}, {"to", r.to}};
  m.gauge("sockrelay_route_info", "A route and its data path (value always 1).",
          with(l, "datapath", r.datapath), 1);
  m.gauge("sockrelay_route_sessions", "Sessions (flows, connections) the route has open now.", l, r.sessions);
  m.counter("sockrelay_route_sessions_created_total", "Sessions the route created.", l, r.sessions_created);
  m.counter("sockrelay_route_sessions_expired_total", "Sessions closed for being idle.", l,
            r.sessions_expired);
  m.counter("sockrelay_route_sessions_failed_total", "Sessions that failed.", l, r.sessions_failed);
  traffic_metrics(m, "sockrelay_route_packets_total", "sockrelay_route_bytes_total", "the route carried", l,
                  r.kernel, r.user_packets, r.user_bytes);
  for (const auto& drop : r.drops) {
    m.counter("sockrelay_route_drops_total", "Packets or sessions the route dropped or refused, by reason.",
              with(l, "reason", drop.name), drop.value);
  }
  for (const auto& c : r.detail) {
    m.counter("sockrelay_route_events_total",
              "Counters only this kind of route keeps (the status section named by `section`).",
              with(with(l, "section", r.detail_name), "counter", c.name), c.value);
  }
  for (const auto& t : r.targets) target_metrics(m, l, t);
  for (const auto& sub : r.subscribers) subscriber_metrics(m, l, sub);
}

// Reads one `name{k="v",...} value` line; false when it is not one.
bool parse_sample(std::string_view line, MetricSample* out) {
  size_t i = line.find_first_of("{ ");
  if (i == std::string_view::npos || i == 0) return false;
  out->name = std::string(line.substr(0, i));
  out->labels.clear();
  if (line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      size_t eq = line.find("=\"", i);
      if (eq == std::string_view::npos) return false;
      std::string key(line.substr(i, eq - i)), value;
      for (i = eq + 2; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
      }
      if (i >= line.size()) return false;
      out->labels.emplace_back(std::move(key), std::move(value));
      ++i;  // the closing quote
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return false;
    ++i;  // the closing brace
  }
  std::string rest(line.substr(i));
  char* end = nullptr;
  out->value = std::strtod(rest.c_str(), &end);
  return end != rest.c_str();
}

// A sample's identity: its name and labels, in order.
std::string series_key(const MetricSample& s) {
  std::string key = s.name;
  for (const auto& [k, v] : s.labels) key += "\x1f" + k + "=" + v;
  return key;
}

}  // namespace

std::string prometheus_label_value(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string format_status_prometheus(const StatusSnapshot& s) {
  Exposition m;
  process_metrics(m, s);
  for (const auto& r : s.routes) route_metrics(m, r);
  return m.str();
}

std::string MetricSample::label(std::string_view key) const {
  for (const auto& [k, v] : labels) {
    if (k == key) return v;
  }
  return {};
}

std::vector<MetricSample> parse_prometheus(std::string_view text) {
  std::vector<MetricSample> samples;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    MetricSample s;
    if (!line.empty() && line[0] != '#' && parse_sample(line, &s)) samples.push_back(std::move(s));
  }
  return samples;
}

std::vector<RouteRates> route_rates(const std::vector<MetricSample>& before,
                                    const std::vector<MetricSample>& after, double seconds) {
  std::map<std::string, double> earlier;
  std::set<std::string> known_routes;
  for (const auto& s : before) {
    earlier[series_key(s)] = s.value;
    if (s.name == "sockrelay_route_info") known_routes.insert(s.label("route"));
  }
  std::vector<RouteRates> rates;
  auto find = [&](const std::string& id) {
    return std::find_if(rates.begin(), rates.end(), [&](const RouteRates& r) { return r.route == id; });
  };
  for (const auto& s : after) {
    if (s.name == "sockrelay_route_info") rates.push_back({s.label("route"), s.label("from"), s.label("to")});
  }
  for (const auto& s : after) {
    auto route = find(s.label("route"));
    if (route == rates.end()) continue;
    if (s.name == "sockrelay_route_sessions") route->sessions_open = static_cast<uint64_t>(s.value);
    bool measured = known_routes.count(route->route) > 0 && seconds > 0;
    auto it = earlier.find(series_key(s));
    double previous = it == earlier.end() ? 0 : it->second;
    double rate = !measured ? 0 : (s.value >= previous ? s.value - previous : s.value) / seconds;
    if (s.name == "sockrelay_route_packets_total") route->packets += rate;
    if (s.name == "sockrelay_route_bytes_total") route->bytes += rate;
    if (s.name == "sockrelay_route_sessions_created_total") route->new_sessions += rate;
    if (s.name == "sockrelay_route_drops_total") route->drops.emplace_back(s.label("reason"), rate);
  }
  return rates;
}

std::string format_route_rates(const std::vector<RouteRates>& rates) {
  auto number = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.1f", v);
    return std::string(buf);
  };
  std::string out;
  for (const auto& r : rates) {
    out += "route " + r.route + ": " + r.from + " -> " + r.to + "\n";
    out += "  packets/s " + number(r.packets) + ", bytes/s " + number(r.bytes) + ", new sessions/s " +
           number(r.new_sessions) + ", open " + std::to_string(r.sessions_open) + "\n";
    std::string drops;
    for (const auto& [reason, rate] : r.drops)
      drops += (drops.empty() ? "" : ", ") + reason + " " + number(rate);
    out += "  drops/s   " + (drops.empty() ? std::string("none counted") : drops) + "\n";
  }
  if (rates.empty()) out += "no routes\n";
  return out;
}

}  // namespace sockrelay
