// `sockrelay status --format prometheus` and `status --watch`: the status
// snapshot as Prometheus text (exposition format 0.0.4, what promtool and
// node-exporter's textfile collector read), that text read back into
// samples, and two such readings turned into per-route rates.
//
// The metric names are generic over RouteReport: a drop reason or a counter
// a route kind adds appears under its own label value, with no change here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "control/status.h"

namespace sockrelay {

std::string format_status_prometheus(const StatusSnapshot& status);

// Label values escaped as the format wants: backslash, double quote, newline.
std::string prometheus_label_value(std::string_view value);

// One line of the text format: `name{label="value",...} value`.
struct MetricSample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // unescaped values
  double value = 0;

  // The value of label `key`, empty when the sample has none.
  std::string label(std::string_view key) const;
};

// Every sample of a text-format exposition (comments skipped; a line it
// cannot read is skipped too: the watch shows what it can).
std::vector<MetricSample> parse_prometheus(std::string_view text);

// One route's rates between two readings, per second.
struct RouteRates {
  std::string route;  // the route id, as the `route` label carries it
  std::string from, to;
  double packets = 0;  // kernel and user space together
  double bytes = 0;
  double new_sessions = 0;
  uint64_t sessions_open = 0;                         // at the second reading
  std::vector<std::pair<std::string, double>> drops;  // by reason, every reason the route reports
};

// Rates from two readings `seconds` apart. A counter lower in `after` than in
// `before` was reset (the relay restarted): its rate counts from zero. A
// route only in `after` (just added by a reload) has no rate yet: zeros.
std::vector<RouteRates> route_rates(const std::vector<MetricSample>& before,
                                    const std::vector<MetricSample>& after, double seconds);

// The rates as `status --watch` prints them: one block of lines per route.
std::string format_route_rates(const std::vector<RouteRates>& rates);

}  // namespace sockrelay
