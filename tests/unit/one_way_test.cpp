// One-way routes (`one-way = true`) and the BPF map sizes taken from the
// config: the config rules at the key to change, the plan, the sizing
// arithmetic, and OneWayRoute's map entries against a fake map writer
// (real unprivileged sockets on loopback; no BPF).
#include <gtest/gtest.h>

#include <string>

#include "bpf_loader/map_sizes.h"
#include "common/socket_cookie.h"
#include "config/config.h"
#include "fake_maps.h"
#include "matrix/route_plan.h"
#include "relay_shared.h"
#include "sessions/one_way_route.h"
#include "socket_pairs.h"

namespace sockrelay {
namespace {

using test_sockets::Bound;

// Lines 1-21; line 22 is [[routes]], so a route's keys start on line 23.
constexpr char kEndpoints[] = R"([endpoints.u]
type = "udp"
listen = "127.0.0.1:5300"
[endpoints.d]
type = "unix-dgram"
listen = "@d"
[endpoints.t]
type = "tcp"
listen = "127.0.0.1:5400"
[endpoints.uo]
type = "udp"
connect = "127.0.0.1:5301"
[endpoints.uo2]
type = "udp"
connect = "127.0.0.1:5302"
[endpoints.to]
type = "tcp"
connect = "127.0.0.1:5401"
[endpoints.sub]
type = "unix-stream"
subscribe = "/run/sub.sock"
[[routes]]
)";

ParseOutcome parse_route(const std::string& route, const std::string& relay = "") {
  return parse_config(relay + kEndpoints + route, "t.toml");
}

std::vector<Diagnostic> errors_of(const ParseOutcome& o) {
  std::vector<Diagnostic> errors;
  for (const Diagnostic& d : o.diagnostics)
    if (d.severity == Severity::Error) errors.push_back(d);
  return errors;
}

TEST(OneWayConfig, ParsedAndPassedOnDatagramRoutes) {
  for (const char* route : {"from = \"u\"\nto = \"uo\"\none-way = true\n",
                            "from = \"d\"\nto = [\"uo\", \"uo2\"]\none-way = true\nbalance = \"hash\"\n",
                            "from = \"u\"\nto = [\"uo\", \"uo2\"]\none-way = true\n"}) {
    SCOPED_TRACE(route);
    ParseOutcome o = parse_route(route);
    EXPECT_TRUE(errors_of(o).empty()) << (errors_of(o).empty() ? "" : errors_of(o)[0].format());
    ASSERT_EQ(o.config.routes.size(), 1u);
    EXPECT_TRUE(o.config.routes[0].one_way);
  }
  EXPECT_FALSE(parse_route("from = \"u\"\nto = \"uo\"\n").config.routes[0].one_way);
}

// Each refusal at the key to change, saying why.
TEST(OneWayConfig, RefusedWhereItMakesNoSense) {
  struct Case {
    std::string route;
    int line, column;
    std::string message;
  };
  const Case cases[] = {
      {"from = \"u\"\nto = \"uo\"\none-way = \"yes\"\n", 25, 11, "one-way must be true or false, got string"},
      {"from = \"t\"\nto = \"to\"\none-way = true\n", 25, 11,
       "one-way carries datagrams that get no reply; endpoint t (tcp 127.0.0.1:5400) is a connection source"},
      {"from = \"u\"\nto = \"to\"\none-way = true\n", 25, 11,
       "endpoint to (tcp 127.0.0.1:5401) is a stream/seqpacket target"},
      {"from = \"u\"\nto = \"sub\"\none-way = true\nbalance = \"broadcast\"\n", 25, 11,
       "one-way does not apply to a route to subscribers"},
      {"from = \"u\"\nto = [\"uo\", \"uo2\"]\none-way = true\nbalance = \"broadcast\"\n", 26, 11,
       "balance = \"broadcast\" on a one-way route"},
      {"from = \"d\"\nto = \"uo\"\none-way = true\nallow-uids = [0]\n", 26, 14,
       "a one-way route sets up no flow per sender"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.route);
    ParseOutcome o = parse_route(c.route);
    std::vector<Diagnostic> errors = errors_of(o);
    ASSERT_EQ(errors.size(), 1u) << (errors.empty() ? "" : errors[0].format());
    EXPECT_EQ(errors[0].pos.line, c.line) << errors[0].format();
    EXPECT_EQ(errors[0].pos.column, c.column) << errors[0].format();
    EXPECT_NE(errors[0].message.find(c.message), std::string::npos) << errors[0].format();
  }
}

TEST(OneWayPlan, EngineAndTheHashRule) {
  ParseOutcome rr = parse_route("from = \"u\"\nto = [\"uo\", \"uo2\"]\none-way = true\n");
  RoutePlan p = plan_route(rr.config, rr.config.routes[0], 0, std::string());
  EXPECT_EQ(p.engine, RouteEngine::OneWay);
  EXPECT_EQ(engine_name(p.engine), "one-way");
  EXPECT_TRUE(p.choice.kernel);
  // udp + hash: the program cannot see a udp client's address.
  ParseOutcome hash =
      parse_route("from = \"u\"\nto = [\"uo\", \"uo2\"]\none-way = true\nbalance = \"hash\"\n");
  p = plan_route(hash.config, hash.config.routes[0], 0, std::string());
  EXPECT_FALSE(p.choice.kernel);
  EXPECT_TRUE(p.choice.fell_back);
  EXPECT_NE(p.choice.reason.find("user space hashes each datagram's source address"), std::string::npos);
  ParseOutcome forced = parse_route(
      "from = \"u\"\nto = [\"uo\", \"uo2\"]\none-way = true\nbalance = \"hash\"\ndatapath = \"kernel\"\n");
  EXPECT_TRUE(plan_route(forced.config, forced.config.routes[0], 0, std::string()).choice.refused);
  // unix-dgram: user space unless asked (matrix rule 9); asked, the
  // program hashes by the sender it sees.
  ParseOutcome unix_hash =
      parse_route("from = \"d\"\nto = [\"uo\", \"uo2\"]\none-way = true\nbalance = \"hash\"\n");
  EXPECT_FALSE(plan_route(unix_hash.config, unix_hash.config.routes[0], 0, std::string()).choice.kernel);
  ParseOutcome unix_kernel = parse_route(
      "from = \"d\"\nto = [\"uo\", \"uo2\"]\none-way = true\nbalance = \"hash\"\ndatapath = \"kernel\"\n");
  EXPECT_TRUE(plan_route(unix_kernel.config, unix_kernel.config.routes[0], 0, std::string()).choice.kernel);
}

// max-sessions is one budget: the route with the most entries per session
// bounds them, plus each route source's fixed entries.
TEST(MapSizes, FromMaxSessionsAndTheRoutes) {
  const std::string relay = "[relay]\nmax-sessions = 1000\n";
  // udp -> two udp targets: a flow socket + an upstream per target, a flow
  // entry each; fixed: listener + new-client socket.
  ParseOutcome two = parse_route("from = \"u\"\nto = [\"uo\", \"uo2\"]\n", relay);
  ASSERT_TRUE(errors_of(two).empty());
  MapSizes s = map_sizes_for(two.config);
  // Fixed: room in each of the 16 route slots for a listener, a
  // new-client socket and 8 one-way targets; a flow entry each.
  EXPECT_EQ(s.sockets, 1000u * 3 + 16 * 10);
  EXPECT_EQ(s.flows, 1000u * 3 + 16);
  EXPECT_EQ(s.route_slots, kMinRouteSlots);
  // One-way: nothing per session.
  ParseOutcome one_way = parse_route("from = \"u\"\nto = [\"uo\", \"uo2\"]\none-way = true\n", relay);
  s = map_sizes_for(one_way.config);
  EXPECT_EQ(s.sockets, 16u * 10);
  EXPECT_EQ(s.flows, 16u);
  // tcp: two sockets per session.
  ParseOutcome tcp = parse_route("from = \"t\"\nto = \"to\"\n", "[relay]\nmax-sessions = 1000000\n");
  s = map_sizes_for(tcp.config);
  EXPECT_EQ(s.sockets, 2'000'160u);
  EXPECT_EQ(s.flows, 2'000'016u);
  // allow-uids on a unix-dgram source: room for the refused senders the
  // verdict program drops itself.
  ParseOutcome refusing = parse_route("from = \"d\"\nto = \"uo\"\nallow-uids = [0]\n", relay);
  ASSERT_TRUE(errors_of(refusing).empty());
  EXPECT_EQ(map_sizes_for(refusing.config).flows, 1000u * 2 + 16 + 4096);
  // A reload that adds a route (same max-sessions) fits the maps loaded.
  ParseOutcome more = parse_route(
      "from = \"u\"\nto = [\"uo\", \"uo2\"]\n[[routes]]\nfrom = \"d\"\nto = [\"uo\", \"uo2\"]\none-way = "
      "true\n",
      relay);
  ASSERT_TRUE(errors_of(more).empty());
  EXPECT_EQ(maps_too_small(map_sizes_for(two.config), map_sizes_for(more.config)), "");
}

TEST(MapSizes, ReloadPastTheLoadedMapsSaysWhyAndTheFix) {
  MapSizes loaded{8194, 8192, 16};
  EXPECT_EQ(maps_too_small(loaded, loaded), "");
  EXPECT_EQ(maps_too_small(loaded, MapSizes{100, 100, 16}), "");
  std::string why = maps_too_small(loaded, MapSizes{20002, 20000, 16});
  EXPECT_NE(why.find("it needs 20002 socket entries, the maps loaded at start hold 8194"), std::string::npos)
      << why;
  EXPECT_NE(why.find("20000 flow entries"), std::string::npos) << why;
  EXPECT_NE(why.find("restart the relay"), std::string::npos) << why;
}

TEST(MapSizes, MemoryEstimate) {
  // 4096 sockets: 4096 buckets of 16 bytes in each sockhash and in the
  // target backlog hash; 1024 in relay_flows and the two hold maps.
  MapMemory m = estimate_map_memory(MapSizes{4096, 1024, 16}, 2);
  const uint64_t per_cpu =
      16u * 2 * (sizeof(relay_route_stats) + RELAY_MAX_TARGETS * sizeof(relay_target_stats));
  EXPECT_EQ(m.at_load, 3 * 4096 * 16 + 3 * 1024 * 16 + per_cpu);
  EXPECT_EQ(m.when_full, m.at_load + 2 * 4096 * 64 + 4096 * 64 + 1024 * 192);
}

class OneWayRouteTest : public test_sockets::RouteFixture {
 protected:
  OneWayRouteSpec spec_for(const Bound& from, const std::vector<const Bound*>& to, bool kernel) {
    OneWayRouteSpec spec;
    spec.route_id = 3;
    spec.from = &from.endpoint;
    for (const Bound* b : to) spec.to.push_back(&b->endpoint);
    spec.balance = to.size() > 1 ? Balance::RoundRobin : Balance::Single;
    spec.kernel = kernel;
    return spec;
  }
  static Fd dup_fd(const Fd& fd) { return Fd(fcntl(fd.get(), F_DUPFD_CLOEXEC, 0)); }
};

// Kernel path: the listener is the one flow, keyed by its own cookie,
// listing both targets; stop() leaves the maps empty.
TEST_F(OneWayRouteTest, UdpListenerIsTheOneFlow) {
  Bound in = test_sockets::bind_endpoint(EndpointKind::Udp, "in", Role::Listen);
  Bound a = test_sockets::bind_endpoint(EndpointKind::Udp, "a", Role::Connect);
  Bound b = test_sockets::bind_endpoint(EndpointKind::Udp, "b", Role::Connect);
  FakeMaps maps;
  uint64_t listener_cookie = *socket_cookie(in.fd.get());
  OneWayRoute route(spec_for(in, {&a, &b}, true), dup_fd(in.fd), &maps, *loop_);
  ASSERT_TRUE(route.start().ok());
  EXPECT_EQ(route.flow_key(), listener_cookie);
  EXPECT_TRUE(maps.sources.count(listener_cookie));
  ASSERT_TRUE(maps.flows.count(listener_cookie));
  const FlowEntry& e = maps.flows.at(listener_cookie);
  EXPECT_EQ(e.route_id, 3u);
  EXPECT_EQ(e.n_targets, 2u);
  EXPECT_EQ(e.balance, static_cast<uint32_t>(RELAY_BALANCE_ROUND_ROBIN));
  EXPECT_TRUE(e.flags & RELAY_FLOW_ONE_WAY);
  EXPECT_TRUE(maps.targets.count(e.targets[0]) && maps.targets.count(e.targets[1]));
  EXPECT_EQ(maps.targets.size(), 2u);
  RouteReport r = route.report();
  EXPECT_EQ(r.detail_name, "one-way");
  EXPECT_EQ(r.sessions, 0u);
  route.stop();
  EXPECT_TRUE(maps.empty());
}

// A unix-dgram listener: the program sees each sender, so the listener's
// private instance looks every datagram up under the listener's cookie.
TEST_F(OneWayRouteTest, UnixListenerGetsAFixedSourceKey) {
  Bound in = test_sockets::bind_endpoint(EndpointKind::UnixDgram, "in", Role::Listen, path("in"));
  Bound a = test_sockets::bind_endpoint(EndpointKind::UnixDgram, "a", Role::Connect, path("a"));
  FakeMaps maps;
  uint64_t listener_cookie = *socket_cookie(in.fd.get());
  OneWayRoute route(spec_for(in, {&a}, true), dup_fd(in.fd), &maps, *loop_);
  ASSERT_TRUE(route.start().ok());
  ASSERT_TRUE(maps.privates.count(listener_cookie));
  EXPECT_EQ(maps.privates.at(listener_cookie).fixed_source, listener_cookie);
  EXPECT_EQ(maps.privates.at(listener_cookie).new_client_target, 0u);
  EXPECT_TRUE(maps.flows.count(listener_cookie));
  route.stop();
  EXPECT_TRUE(maps.empty());
}

// User space: every datagram of every client to the target, round-robin
// over two, and no socket per client.
TEST_F(OneWayRouteTest, UserSpaceForwardsRoundRobin) {
  Bound in = test_sockets::bind_endpoint(EndpointKind::Udp, "in", Role::Listen);
  Bound a = test_sockets::bind_endpoint(EndpointKind::Udp, "a", Role::Connect);
  Bound b = test_sockets::bind_endpoint(EndpointKind::Udp, "b", Role::Connect);
  OneWayRoute route(spec_for(in, {&a, &b}, false), dup_fd(in.fd), nullptr, *loop_);
  ASSERT_TRUE(route.start().ok());
  constexpr int kClients = 20;
  for (int i = 0; i < kClients; ++i) {
    Fd client = test_sockets::udp_client();
    std::string msg = "m" + std::to_string(i);
    ASSERT_EQ(
        sendto(client.get(), msg.data(), msg.size(), 0, in.endpoint.address.sa(), in.endpoint.address.length),
        static_cast<ssize_t>(msg.size()));
  }
  int got_a = 0, got_b = 0;
  char buf[64];
  ASSERT_TRUE(pump([&] {
    while (recv(a.fd.get(), buf, sizeof(buf), MSG_DONTWAIT) > 0) ++got_a;
    while (recv(b.fd.get(), buf, sizeof(buf), MSG_DONTWAIT) > 0) ++got_b;
    return got_a + got_b == kClients;
  }));
  EXPECT_EQ(got_a, kClients / 2);
  EXPECT_EQ(got_b, kClients / 2);
  EXPECT_EQ(route.counters().user_packets, static_cast<uint64_t>(kClients));
  route.stop();
}

}  // namespace
}  // namespace sockrelay
