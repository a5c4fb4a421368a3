// What each route kind says for `status` (its report()), on real loopback
// sockets and without BPF: its own counters under its own names.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "sessions/bridge_route.h"
#include "sessions/stream_route.h"

namespace sockrelay {
namespace {

// A udp or tcp socket bound on loopback (port chosen by the kernel), and
// the endpoint that names it. A tcp port that does not listen refuses
// every connect at once.
struct Port {
  Endpoint endpoint;
  Fd fd;
};

Port loopback_port(const std::string& name, EndpointKind kind, Role role, bool listening = false) {
  Port p;
  p.fd = Fd(socket(AF_INET, kind_socktype(kind) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(p.fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  if (listening) {
    EXPECT_EQ(listen(p.fd.get(), 8), 0);
  }
  socklen_t len = sizeof(a);
  getsockname(p.fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  p.endpoint.name = name;
  p.endpoint.kind = kind;
  p.endpoint.role = role;
  std::memcpy(&p.endpoint.address.storage, &a, sizeof(a));
  p.endpoint.address.length = sizeof(a);
  p.endpoint.address.text = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  return p;
}

// Runs the loop until `done` or a second passes.
template <typename Pred>
bool pump(EventLoop& loop, Pred done) {
  for (int i = 0; i < 100 && !done(); ++i)
    if (!loop.run_once(std::chrono::milliseconds(10)).ok()) return false;
  return done();
}

uint64_t count_named(const std::vector<NamedCount>& counts, const std::string& name) {
  auto it = std::find_if(counts.begin(), counts.end(), [&](const NamedCount& c) { return c.name == name; });
  return it == counts.end() ? UINT64_MAX : it->value;
}

TEST(StreamRouteReport, ConnectFailuresAreItsOwnDropNotSetupFailed) {
  auto loop = EventLoop::create();
  ASSERT_TRUE(loop.ok());
  Port front = loopback_port("front", EndpointKind::Tcp, Role::Listen, true);
  Port a = loopback_port("a", EndpointKind::Tcp, Role::Connect);
  Port b = loopback_port("b", EndpointKind::Tcp, Role::Connect);
  StreamRouteSpec spec;
  spec.route_id = 3;
  spec.from = &front.endpoint;
  spec.to = {&a.endpoint, &b.endpoint};
  spec.balance = Balance::RoundRobin;
  spec.kernel = false;
  SessionBudget budget(8);
  StreamRoute route(spec, std::move(front.fd), nullptr, *loop, budget);
  ASSERT_TRUE(route.start().ok());

  Fd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(client.get(), front.endpoint.address.sa(), front.endpoint.address.length), 0);
  ASSERT_TRUE(pump(*loop, [&] { return route.counters().connect_failed == 1; }));

  RouteReport r = route.report();
  EXPECT_EQ(r.id, 3u);
  EXPECT_EQ(r.from, "front (tcp " + front.endpoint.address.text + ")");
  EXPECT_EQ(r.to.rfind("[a (tcp ", 0), 0u) << r.to;
  EXPECT_NE(r.to.find("] balance round-robin"), std::string::npos) << r.to;
  EXPECT_EQ(count_named(r.drops, "connect-failed"), 1u);
  EXPECT_EQ(count_named(r.drops, "setup-failed"), UINT64_MAX) << "not a stream route's drop";
  EXPECT_EQ(r.detail_name, "stream");
  EXPECT_EQ(count_named(r.detail, "connect-failed"), 1u);
  ASSERT_EQ(r.targets.size(), 2u);
  for (const auto& t : r.targets) {
    EXPECT_TRUE(t.has_sessions) << "stream targets show their sessions";
    EXPECT_FALSE(t.up) << t.name << " refused its connect";
  }
  route.stop();
  EXPECT_EQ(budget.used(), 0u);
}

TEST(BridgeRouteReport, ListsItsOwnDropsAndNoKernelOnes) {
  auto loop = EventLoop::create();
  ASSERT_TRUE(loop.ok());
  Port front = loopback_port("front", EndpointKind::Udp, Role::Listen);
  Port back = loopback_port("back", EndpointKind::Tcp, Role::Connect);
  BridgeRouteSpec spec;
  spec.route_id = 4;
  spec.from = &front.endpoint;
  spec.to = &back.endpoint;
  SessionBudget budget(8);
  BridgeRoute route(spec, std::move(front.fd), *loop, budget);
  ASSERT_TRUE(route.start().ok());

  Port client = loopback_port("client", EndpointKind::Udp, Role::Connect);
  ASSERT_EQ(
      sendto(client.fd.get(), "hello", 5, 0, front.endpoint.address.sa(), front.endpoint.address.length), 5);
  ASSERT_TRUE(pump(*loop, [&] { return route.counters().connect_failed == 1; }));
  route.tick();

  RouteReport r = route.report();
  EXPECT_EQ(r.to, "back (tcp " + back.endpoint.address.text + ")");
  std::vector<std::string> names;
  for (const auto& d : r.drops) names.push_back(d.name);
  EXPECT_EQ(names, (std::vector<std::string>{"max-sessions", "connect-failed", "fd-limit", "dropped-messages",
                                             kPolicyDrop, "listener-overflow"}));
  EXPECT_EQ(count_named(r.drops, "connect-failed"), 1u);
  EXPECT_EQ(count_named(r.drops, "listener-overflow"), 0u) << "its udp listener's sk_drops";
  EXPECT_EQ(r.detail_name, "stream");
  EXPECT_EQ(r.kernel.packets, 0u);
  EXPECT_TRUE(r.targets.empty());
  route.stop();
}

}  // namespace
}  // namespace sockrelay
