// `sockrelay status` rendered from RouteReports: every route prints the same
// way whatever its kind, each with its own drop reasons and section, and
// the JSON keeps the shape scripts read (tests/bench, tests/integration).
#include "control/status.h"

#include <gtest/gtest.h>

namespace sockrelay {
namespace {

RouteReport stream_like_report() {
  RouteReport r;
  r.id = 2;
  r.from = "front (tcp 127.0.0.1:6300)";
  r.to = "[a (tcp 127.0.0.1:1), b (tcp 127.0.0.1:2)] balance round-robin";
  r.datapath = "userspace";
  r.datapath_reason = "datapath = \"userspace\" in the config";
  r.sessions = 1;
  r.sessions_created = 4;
  r.kernel.packets = 7;
  r.kernel.bytes = 70;
  r.user_packets = 3;
  r.user_bytes = 30;
  r.drops = {{"no-target", 0}, {"max-sessions", 1}, {"connect-failed", 2}, {kPolicyDrop, 0}};
  r.detail_name = "stream";
  r.detail = {{"sessions-closed", 3}, {"connect-failed", 2}};
  TargetReport down;
  down.name = "a";
  down.up = false;
  down.failures = 2;
  down.retry_in_ms = 250;
  down.has_sessions = true;
  down.sessions = 1;
  r.targets = {down};
  return r;
}

StatusSnapshot snapshot_of(RouteReport route) {
  StatusSnapshot s;
  s.version = "test";
  s.pid = 42;
  s.bpf_loaded = true;
  s.routes.push_back(std::move(route));
  return s;
}

TEST(StatusText, PrintsEachRoutesOwnDropsAndSection) {
  std::string text = format_status_text(snapshot_of(stream_like_report()));
  EXPECT_NE(text.find("route 2: front (tcp 127.0.0.1:6300) -> [a (tcp 127.0.0.1:1), b (tcp 127.0.0.1:2)] "
                      "balance round-robin\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("  datapath  userspace (datapath = \"userspace\" in the config)\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("  sessions  1 open, 4 created, 0 expired, 0 failed\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  kernel    packets 7, bytes 70\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  drops     no-target 0, max-sessions 1, connect-failed 2, policy 0\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("setup-failed"), std::string::npos) << "a stream's drops are its own: " << text;
  EXPECT_NE(
      text.find("  target    a: DOWN, kernel packets 0, user packets 0, failures 2, sessions 1, retry in "
                "250 ms\n"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("  stream    sessions-closed 3, connect-failed 2\n"), std::string::npos) << text;
}

TEST(StatusText, TargetsWithoutSessionsSayNone) {
  RouteReport r = stream_like_report();
  r.targets[0].has_sessions = false;
  std::string text = format_status_text(snapshot_of(r));
  EXPECT_NE(text.find("failures 2, retry in 250 ms\n"), std::string::npos) << text;
}

// Routes that evict (datagram flows) say how many, next to the sessions;
// the others print no such count.
TEST(StatusText, EvictionsNextToSessionsOnlyWhereARouteEvicts) {
  RouteReport r = stream_like_report();
  r.evicts = true;
  r.sessions_evicted = 3;
  r.detail_name = "flows";
  r.detail = {{"expired-unreplied", 5}};
  std::string text = format_status_text(snapshot_of(r));
  EXPECT_NE(text.find("  sessions  1 open, 4 created, 0 expired, 0 failed, 3 evicted\n"), std::string::npos)
      << text;
  std::string json = format_status_json(snapshot_of(r));
  EXPECT_NE(json.find("\"sessions-failed\":0,\"sessions-evicted\":3"), std::string::npos) << json;
  EXPECT_NE(json.find("\"flows\":{\"expired-unreplied\":5}"), std::string::npos) << json;
  EXPECT_EQ(format_status_json(snapshot_of(stream_like_report())).find("evicted"), std::string::npos);
}

TEST(StatusJson, KeepsTheShapeScriptsRead) {
  std::string json = format_status_json(snapshot_of(stream_like_report()));
  // tests/bench/*.sh grep these literally.
  EXPECT_NE(json.find("\"kernel\":{\"packets\":7,\"bytes\":70,\"policy-drops\":0}"), std::string::npos)
      << json;
  EXPECT_NE(json.find("\"user\":{\"packets\":3,\"bytes\":30}"), std::string::npos) << json;
  EXPECT_NE(json.find("\"drops\":{\"no-target\":0,\"max-sessions\":1,\"connect-failed\":2,\"policy\":0}"),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"stream\":{\"sessions-closed\":3,\"connect-failed\":2}"), std::string::npos) << json;
  EXPECT_NE(json.find("\"targets\":[{\"name\":\"a\",\"up\":false,\"failures\":2,\"retry-in-ms\":250"),
            std::string::npos)
      << json;
  EXPECT_EQ(json.find("\"list\""), std::string::npos) << "no subscriber list on a stream route: " << json;
}

TEST(StatusJson, SubscriberRoutesListTheirSubscribersEvenNone) {
  RouteReport r;
  r.detail_name = "subscribers";
  r.detail = {{"joined", 1}};
  r.has_subscribers = true;
  EXPECT_NE(format_status_json(snapshot_of(r)).find("\"subscribers\":{\"joined\":1,\"list\":[]}"),
            std::string::npos);

  SubscriberReport sub;
  sub.name = "subscriber #1 (pid 7, uid 0)";
  sub.receiving = true;
  sub.kernel.packets = 5;
  r.subscribers = {sub};
  std::string json = format_status_json(snapshot_of(r));
  EXPECT_NE(
      json.find("\"list\":[{\"name\":\"subscriber #1 (pid 7, uid 0)\",\"receiving\":true,\"stalled\":false,"
                "\"kernel-packets\":5"),
      std::string::npos)
      << json;
  std::string text = format_status_text(snapshot_of(r));
  EXPECT_NE(text.find("  subscribers joined 1\n  subscriber #1 (pid 7, uid 0): receiving, kernel packets 5"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace sockrelay
