// plan_route: the one decision per route source that `check`, `run`,
// `status` and a reload share: the engine, the data path, and how one
// pairing decides for the whole source.
#include "matrix/route_plan.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "config/config.h"

namespace sockrelay {
namespace {

// Endpoints of every shape the tests route between.
constexpr char kEndpoints[] = R"(
[endpoints.u]
type = "udp"
listen = "127.0.0.1:5300"
[endpoints.u2]
type = "udp"
listen = "127.0.0.1:5310"
[endpoints.t]
type = "tcp"
listen = "127.0.0.1:5400"
[endpoints.q]
type = "unix-seqpacket"
listen = "@q"
[endpoints.uo]
type = "udp"
connect = "127.0.0.1:5301"
[endpoints.do]
type = "unix-dgram"
connect = "/run/do.sock"
[endpoints.to]
type = "tcp"
connect = "127.0.0.1:5401"
[endpoints.so]
type = "unix-stream"
connect = "/run/so.sock"
[endpoints.qo]
type = "unix-seqpacket"
connect = "/run/qo.sock"
[endpoints.sub]
type = "unix-stream"
subscribe = "/run/sub.sock"
)";

// The config with one route (`route`: the keys of a [[routes]] table). A
// plan points into its config: keep the config while the plan is read.
Config config_with(const std::string& route) {
  ParseOutcome o = parse_config(kEndpoints + std::string("[[routes]]\n") + route, "t.toml");
  for (const Diagnostic& d : o.diagnostics) EXPECT_NE(d.severity, Severity::Error) << d.format();
  return o.config;
}

RoutePlan plan(const Config& config, const std::string& unavailable = "", size_t from = 0) {
  return plan_route(config, config.routes.at(0), from, unavailable);
}

TEST(RoutePlan, EngineFollowsTheKinds) {
  struct Case {
    const char* route;
    RouteEngine engine;
  };
  for (const Case& c : {Case{"from = \"u\"\nto = \"uo\"\n", RouteEngine::Datagram},
                        Case{"from = \"t\"\nto = \"to\"\n", RouteEngine::Stream},
                        Case{"from = \"q\"\nto = \"qo\"\n", RouteEngine::Stream},
                        Case{"from = \"u\"\nto = \"to\"\n", RouteEngine::Bridge},
                        Case{"from = \"t\"\nto = \"uo\"\n", RouteEngine::Bridge},
                        Case{"from = \"u\"\nto = \"sub\"\n", RouteEngine::Subscribers}}) {
    Config config = config_with(c.route);
    EXPECT_EQ(plan(config).engine, c.engine) << c.route << " -> " << engine_name(plan(config).engine);
  }
}

TEST(RoutePlan, EachSourceIsPlannedOnItsOwn) {
  Config config = config_with("from = [\"u\", \"u2\"]\nto = \"uo\"\n");
  EXPECT_EQ(plan(config, "", 0).from->name, "u");
  RoutePlan second = plan(config, "", 1);
  EXPECT_EQ(second.from->name, "u2");
  ASSERT_EQ(second.pairings.size(), 1u);
  EXPECT_EQ(second.pairings[0].label(), "u2 (udp) -> uo (udp), egress");
  EXPECT_TRUE(second.choice.kernel);
}

// The bridge's data path and reason come from the matrix, like every
// other route's: `status` shows this reason, not a hard-coded word.
TEST(RoutePlan, ABridgeSaysWhyItIsInUserSpace) {
  RoutePlan p = plan(config_with("from = \"u\"\nto = \"so\"\n"));
  EXPECT_EQ(p.engine, RouteEngine::Bridge);
  EXPECT_FALSE(p.choice.kernel);
  EXPECT_TRUE(p.choice.fell_back);
  EXPECT_NE(p.choice.reason.find("psock backlog toward a datagram socket"), std::string::npos)
      << p.choice.reason;
}

// One pairing in user space takes the whole source there, and the other
// pairings say so: `check` reports what `run` does.
TEST(RoutePlan, OnePairingInUserSpaceTakesTheSourceThere) {
  Config config = config_with("from = \"u\"\nto = [\"uo\", \"do\"]\n");
  const KernelCheck only_udp = [](const MatrixCell& cell) {
    return cell.target == EndpointKind::Udp ? std::string() : std::string("probe lost it");
  };
  RoutePlan p = plan_route(config, config.routes[0], 0, only_udp);
  EXPECT_FALSE(p.choice.kernel);
  EXPECT_TRUE(p.choice.fell_back);
  EXPECT_EQ(p.choice.reason, "user space because the kernel path is unavailable: probe lost it");
  ASSERT_EQ(p.pairings.size(), 2u);
  EXPECT_FALSE(p.pairings[0].choice.kernel);
  EXPECT_EQ(
      p.pairings[0].choice.reason,
      "user space because u (udp) -> do (unix-dgram), egress takes user space, and a route source takes "
      "one data path");
  EXPECT_EQ(p.pairings[1].kernel_unavailable, "probe lost it");
  // With every cell usable, the kernel for both.
  EXPECT_TRUE(plan(config).choice.kernel);
}

TEST(RoutePlan, OneRefusedPairingRefusesTheSource) {
  RoutePlan p = plan(config_with("from = \"t\"\nto = [\"to\", \"so\"]\ndatapath = \"kernel\"\n"));
  EXPECT_TRUE(p.choice.refused);
  EXPECT_NE(p.choice.reason.find("for unix-stream the kernel"), std::string::npos) << p.choice.reason;
  EXPECT_TRUE(p.pairings[0].choice.kernel) << "tcp -> tcp alone would have run";
}

TEST(RoutePlan, UserSpaceAsksNoProbe) {
  Config config = config_with("from = \"u\"\nto = \"uo\"\ndatapath = \"userspace\"\n");
  int asked = 0;
  RoutePlan p = plan_route(config, config.routes[0], 0, [&](const MatrixCell&) {
    ++asked;
    return std::string();
  });
  EXPECT_EQ(asked, 0);
  EXPECT_EQ(p.choice.reason, "datapath = \"userspace\" in the config");
}

TEST(RoutePlan, SubscribersFollowTheirOwnRules) {
  RoutePlan broadcast = plan(config_with("from = \"u\"\nto = \"sub\"\n"));
  EXPECT_EQ(broadcast.engine, RouteEngine::Subscribers);
  EXPECT_FALSE(broadcast.choice.kernel);
  EXPECT_FALSE(broadcast.choice.fell_back) << "broadcast is user space by design";
  const Config round_robin = config_with("from = \"u\"\nto = \"sub\"\nbalance = \"round-robin\"\n");
  RoutePlan rr = plan(round_robin);
  EXPECT_TRUE(rr.choice.kernel) << "udp -> unix-stream rides the kernel for subscribers: "
                                << rr.choice.reason;
  ASSERT_EQ(rr.pairings.size(), 1u);
  EXPECT_EQ(rr.pairings[0].label(), "u (udp) -> sub (unix-stream), egress");
  RoutePlan ingress =
      plan(config_with("from = \"u\"\nto = \"sub\"\nbalance = \"round-robin\"\nmode = \"ingress\"\n"),
           "no CAP_BPF");
  EXPECT_TRUE(ingress.choice.refused);
  EXPECT_NE(ingress.choice.reason.find("mode = \"ingress\" needs the kernel path"), std::string::npos)
      << ingress.choice.reason;
}

// The allow-sources socket filter is BPF too: without it a route to
// subscribers would let everyone in, so it is refused.
TEST(RoutePlan, SubscribersWithAllowSourcesNeedBpf) {
  Config config =
      config_with("from = \"u\"\nto = \"sub\"\nallow-sources = [\"127.0.0.1\"]\ndatapath = \"userspace\"\n");
  RoutePlan without = plan(config, "no CAP_BPF");
  EXPECT_TRUE(without.choice.refused);
  EXPECT_EQ(without.choice.reason,
            "allow-sources on a route to subscribers needs the BPF socket filter, and BPF is unavailable: no "
            "CAP_BPF");
  EXPECT_FALSE(plan(config).choice.refused);
}

TEST(RoutePlan, EngineNames) {
  std::set<std::string_view> names;
  for (RouteEngine e :
       {RouteEngine::Datagram, RouteEngine::Stream, RouteEngine::Bridge, RouteEngine::Subscribers})
    names.insert(engine_name(e));
  EXPECT_EQ(names, (std::set<std::string_view>{"datagram", "stream", "bridge", "subscribers"}));
}

}  // namespace
}  // namespace sockrelay
