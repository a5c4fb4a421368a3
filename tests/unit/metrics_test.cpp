// `sockrelay status --format prometheus` and `status --watch` from
// snapshots: the exposition's shape (one HELP/TYPE per family, its samples
// together, label values escaped), drop reasons carried generically, the
// text read back, and two readings turned into per-route rates.
// (promtool checks the real relay's output: Cli.StatusPrometheusPassesPromtool.)
#include "control/metrics.h"

#include <gtest/gtest.h>

#include <sstream>

namespace sockrelay {
namespace {

RouteReport udp_route(uint32_t id, uint64_t scale) {
  RouteReport r;
  r.id = id;
  r.from = "dns-in (udp 127.0.0.1:5300)";
  r.to = "resolver (udp 127.0.0.1:53)";
  r.datapath = "kernel";
  r.sessions = 2;
  r.sessions_created = 10 * scale;
  r.kernel.packets = 100 * scale;
  r.kernel.bytes = 6400 * scale;
  r.user_packets = 10 * scale;
  r.user_bytes = 640 * scale;
  r.drops = {{"max-sessions", 1 * scale}, {"setup-failed", 0}};
  return r;
}

StatusSnapshot snapshot_of(std::vector<RouteReport> routes) {
  StatusSnapshot s;
  s.version = "test";
  s.pid = 42;
  s.sessions = 2;
  s.max_sessions = 4096;
  s.open_fds = 12;
  s.max_fds = 1024;
  s.routes = std::move(routes);
  return s;
}

size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Prometheus, OneHelpAndTypePerFamilyWithItsSamplesTogether) {
  std::string text = format_status_prometheus(snapshot_of({udp_route(0, 1), udp_route(1, 2)}));
  EXPECT_EQ(occurrences(text, "# HELP sockrelay_route_drops_total "), 1u) << text;
  EXPECT_EQ(occurrences(text, "# TYPE sockrelay_route_drops_total counter\n"), 1u) << text;
  EXPECT_EQ(occurrences(text, "# TYPE sockrelay_sessions gauge\n"), 1u) << text;
  // Every sample line follows its own family's TYPE line, with no other
  // family in between.
  std::istringstream lines(text);
  std::string line, family;
  while (std::getline(lines, line)) {
    if (line.rfind("# TYPE ", 0) == 0) family = line.substr(7, line.find(' ', 7) - 7);
    if (line.empty() || line[0] == '#') continue;
    EXPECT_EQ(line.substr(0, line.find_first_of("{ ")), family) << line;
  }
  EXPECT_NE(text.find("sockrelay_route_drops_total{route=\"1\",from=\"dns-in (udp 127.0.0.1:5300)\","
                      "to=\"resolver (udp 127.0.0.1:53)\",reason=\"max-sessions\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("sockrelay_route_packets_total{route=\"0\",from=\"dns-in (udp 127.0.0.1:5300)\","
                      "to=\"resolver (udp 127.0.0.1:53)\",path=\"user\"} 10\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("sockrelay_open_fds 12\n"), std::string::npos) << text;
  EXPECT_NE(text.find("sockrelay_max_fds 1024\n"), std::string::npos) << text;
}

TEST(Prometheus, ANewDropReasonOrSectionCounterAppearsWithoutChangesHere) {
  RouteReport r = udp_route(3, 1);
  r.drops.push_back({"some-future-reason", 7});
  r.detail_name = "stream";
  r.detail = {{"half-closes", 5}};
  TargetReport t;
  t.name = "b (tcp 127.0.0.1:2)";
  t.up = false;
  t.has_sessions = true;
  t.sessions = 4;
  r.targets = {t};
  std::string text = format_status_prometheus(snapshot_of({r}));
  EXPECT_NE(text.find("reason=\"some-future-reason\"} 7\n"), std::string::npos) << text;
  EXPECT_NE(text.find("section=\"stream\",counter=\"half-closes\"} 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("sockrelay_target_up{route=\"3\","), std::string::npos) << text;
  EXPECT_NE(text.find("target=\"b (tcp 127.0.0.1:2)\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE sockrelay_target_sessions_total counter\n"), std::string::npos) << text;
}

TEST(Prometheus, LabelValuesAreEscapedAndReadBack) {
  EXPECT_EQ(prometheus_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  RouteReport r = udp_route(0, 1);
  r.from = "odd \"name\" \\ here\nand a line";
  std::string text = format_status_prometheus(snapshot_of({r}));
  EXPECT_NE(text.find("from=\"odd \\\"name\\\" \\\\ here\\nand a line\""), std::string::npos) << text;
  bool found = false;
  for (const auto& s : parse_prometheus(text)) {
    if (s.name != "sockrelay_route_info") continue;
    found = true;
    EXPECT_EQ(s.label("from"), r.from);
    EXPECT_EQ(s.label("datapath"), "kernel");
    EXPECT_EQ(s.value, 1);
  }
  EXPECT_TRUE(found) << text;
}

TEST(Prometheus, ParserSkipsCommentsAndLinesItCannotRead) {
  auto samples = parse_prometheus("# HELP x y\nx 3\nbroken{a=\"1\" 4\ny{a=\"1\",b=\"2\"} 5.5 1700000000\n\n");
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].name, "x");
  EXPECT_EQ(samples[0].value, 3);
  EXPECT_EQ(samples[1].label("b"), "2");
  EXPECT_EQ(samples[1].value, 5.5);
}

std::vector<MetricSample> reading(std::vector<RouteReport> routes) {
  return parse_prometheus(format_status_prometheus(snapshot_of(std::move(routes))));
}

TEST(WatchRates, TwoReadingsGivePerRouteRatesPerSecond) {
  // Route 0 doubles every counter over 2 s: packets 110 -> 220 (kernel and
  // user), bytes 7040 -> 14080, sessions 10 -> 20, max-sessions 1 -> 2.
  auto rates = route_rates(reading({udp_route(0, 1)}), reading({udp_route(0, 2)}), 2.0);
  ASSERT_EQ(rates.size(), 1u);
  EXPECT_EQ(rates[0].route, "0");
  EXPECT_EQ(rates[0].from, "dns-in (udp 127.0.0.1:5300)");
  EXPECT_DOUBLE_EQ(rates[0].packets, 55.0);
  EXPECT_DOUBLE_EQ(rates[0].bytes, 3520.0);
  EXPECT_DOUBLE_EQ(rates[0].new_sessions, 5.0);
  EXPECT_EQ(rates[0].sessions_open, 2u);
  ASSERT_EQ(rates[0].drops.size(), 2u);
  EXPECT_EQ(rates[0].drops[0].first, "max-sessions");
  EXPECT_DOUBLE_EQ(rates[0].drops[0].second, 0.5);
  EXPECT_EQ(rates[0].drops[1].first, "setup-failed");
  EXPECT_DOUBLE_EQ(rates[0].drops[1].second, 0.0);
}

TEST(WatchRates, AResetCountsFromZeroAndANewRouteHasNoRateYet) {
  // Route 0 went from scale 3 to scale 1: the relay restarted, so the new
  // values are what it counted since. Route 1 appeared with a reload.
  auto rates = route_rates(reading({udp_route(0, 3)}), reading({udp_route(0, 1), udp_route(1, 5)}), 1.0);
  ASSERT_EQ(rates.size(), 2u);
  EXPECT_DOUBLE_EQ(rates[0].packets, 110.0);
  EXPECT_DOUBLE_EQ(rates[0].new_sessions, 10.0);
  EXPECT_EQ(rates[1].route, "1");
  EXPECT_DOUBLE_EQ(rates[1].packets, 0.0);
  EXPECT_DOUBLE_EQ(rates[1].drops[0].second, 0.0);
}

TEST(WatchRates, ADropReasonNewInTheSecondReadingCountsFromZero) {
  RouteReport later = udp_route(0, 1);
  later.drops.push_back({"some-future-reason", 4});
  auto rates = route_rates(reading({udp_route(0, 1)}), reading({later}), 2.0);
  ASSERT_EQ(rates.size(), 1u);
  ASSERT_EQ(rates[0].drops.size(), 3u);
  EXPECT_EQ(rates[0].drops[2].first, "some-future-reason");
  EXPECT_DOUBLE_EQ(rates[0].drops[2].second, 2.0);
}

TEST(WatchRates, PrintedOneBlockPerRoute) {
  auto rates = route_rates(reading({udp_route(0, 1)}), reading({udp_route(0, 2)}), 2.0);
  EXPECT_EQ(format_route_rates(rates),
            "route 0: dns-in (udp 127.0.0.1:5300) -> resolver (udp 127.0.0.1:53)\n"
            "  packets/s 55.0, bytes/s 3520.0, new sessions/s 5.0, open 2\n"
            "  drops/s   max-sessions 0.5, setup-failed 0.0\n");
  EXPECT_EQ(format_route_rates({}), "no routes\n");
}

}  // namespace
}  // namespace sockrelay
