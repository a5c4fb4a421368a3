// DatagramRoute's bookkeeping against a fake map writer: which sockets go
// in which map under which key, what is removed on teardown, idle expiry and
// max-sessions. Real (unprivileged) sockets on loopback; no BPF.
#include "sessions/datagram_route.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>

#include "common/socket_cookie.h"
#include "relay_shared.h"

namespace sockrelay {
namespace {

class FakeMaps : public MapWriter {
 public:
  Status add_target(uint64_t cookie, int) override {
    targets.insert(cookie);
    return {};
  }
  void remove_target(uint64_t cookie) override { targets.erase(cookie); }
  Status add_source(uint64_t cookie, int) override {
    sources.insert(cookie);
    return {};
  }
  void remove_source(uint64_t cookie) override { sources.erase(cookie); }
  Status add_private_source(uint64_t id, int, const PrivateProgram& program) override {
    privates[id] = program;
    return {};
  }
  void remove_private_source(uint64_t id) override { privates.erase(id); }
  Status set_flow(uint64_t key, const FlowEntry& entry) override {
    flows[key] = entry;
    return {};
  }
  void remove_flow(uint64_t key) override { flows.erase(key); }
  uint64_t flow_last_ns(uint64_t) override { return 0; }

  bool empty() const { return targets.empty() && sources.empty() && privates.empty() && flows.empty(); }

  std::set<uint64_t> targets, sources;
  std::map<uint64_t, PrivateProgram> privates;
  std::map<uint64_t, FlowEntry> flows;
};

// An endpoint bound on loopback (UDP, port chosen by the kernel) or at a
// path in a temp dir (unix-dgram), with its socket.
struct Bound {
  Endpoint endpoint;
  Fd fd;
};

Bound udp_endpoint(const std::string& name, Role role) {
  Bound b;
  b.fd = Fd(socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  int one = 1;
  setsockopt(b.fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(b.fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  getsockname(b.fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  b.endpoint.name = name;
  b.endpoint.kind = EndpointKind::Udp;
  b.endpoint.role = role;
  std::memcpy(&b.endpoint.address.storage, &a, sizeof(a));
  b.endpoint.address.length = sizeof(a);
  b.endpoint.address.text = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  return b;
}

Bound unix_endpoint(const std::string& path, const std::string& name, Role role) {
  Bound b;
  unlink(path.c_str());
  b.fd = Fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  EXPECT_EQ(bind(b.fd.get(), reinterpret_cast<sockaddr*>(&a), len), 0);
  b.endpoint.name = name;
  b.endpoint.kind = EndpointKind::UnixDgram;
  b.endpoint.role = role;
  std::memcpy(&b.endpoint.address.storage, &a, len);
  b.endpoint.address.length = len;
  b.endpoint.address.text = path;
  return b;
}

DatagramRouteSpec spec(uint32_t id, const Bound& from, std::vector<const Bound*> to, bool kernel,
                       std::chrono::milliseconds idle, Balance balance = Balance::Single) {
  DatagramRouteSpec s;
  s.route_id = id;
  s.from = &from.endpoint;
  for (const Bound* b : to) s.to.push_back(&b->endpoint);
  s.balance = balance;
  s.kernel = kernel;
  s.idle_timeout = idle;
  return s;
}

class DatagramRouteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sockrelay-unit-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs the loop until `done` or a second passes.
  template <typename Pred>
  bool pump(Pred done) {
    for (int i = 0; i < 100 && !done(); ++i) (void)loop_->run_once(std::chrono::milliseconds(10));
    return done();
  }
  static ssize_t recv_now(const Fd& fd, char* buf, size_t len) {
    for (int i = 0; i < 100; ++i) {
      ssize_t n = recv(fd.get(), buf, len, MSG_DONTWAIT);
      if (n >= 0) return n;
      usleep(10000);
    }
    return -1;
  }

  std::string dir_;
  Result<EventLoop> loop_ = EventLoop::create();
  FakeMaps maps_;
};

TEST_F(DatagramRouteTest, UdpClientGetsFlowSocketAndUpstreamInBothDirections) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(8);
  DatagramRoute route(spec(7, listener, {&server}, true, std::chrono::seconds(60)), std::move(listener.fd),
                      &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  EXPECT_TRUE(maps_.empty()) << "a UDP listener never enters the map";

  Bound client = udp_endpoint("client", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "first", 5, 0, to.sa(), to.length), 5);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1; }));

  char buf[16];
  ASSERT_EQ(recv_now(server.fd, buf, sizeof(buf)), 5) << "the first datagram must reach the upstream";
  EXPECT_EQ(std::string(buf, 5), "first");
  EXPECT_EQ(budget.used(), 1u);
  // Two flows keyed by cookie, each pointing at the other socket, same route.
  ASSERT_EQ(maps_.flows.size(), 2u);
  auto it = maps_.flows.begin();
  uint64_t a = it->first, a_target = it->second.target_cookie;
  ++it;
  uint64_t b = it->first, b_target = it->second.target_cookie;
  EXPECT_EQ(a_target, b);
  EXPECT_EQ(b_target, a);
  for (const auto& [key, flow] : maps_.flows) EXPECT_EQ(flow.route_id, 7u);
  EXPECT_EQ(maps_.sources, (std::set<uint64_t>{a, b}));
  EXPECT_EQ(maps_.targets, (std::set<uint64_t>{a, b}));
  EXPECT_EQ(route.counters().flows_created, 1u);
  EXPECT_EQ(route.counters().user_packets, 1u);

  route.stop();
  EXPECT_TRUE(maps_.empty()) << "stop() must remove every map entry";
  EXPECT_EQ(budget.used(), 0u);
}

TEST_F(DatagramRouteTest, MaxSessionsRefusesNewClientsAndCounts) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(1);
  DatagramRoute route(spec(0, listener, {&server}, true, std::chrono::seconds(60)), std::move(listener.fd),
                      &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound c1 = udp_endpoint("c1", Role::Connect), c2 = udp_endpoint("c2", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(c1.fd.get(), "a", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1; }));
  ASSERT_EQ(sendto(c2.fd.get(), "b", 1, 0, to.sa(), to.length), 1);
  ASSERT_EQ(sendto(c2.fd.get(), "c", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.counters().refused_max_sessions == 2; }));
  EXPECT_EQ(route.flow_count(), 1u);
  EXPECT_EQ(maps_.flows.size(), 2u) << "only the admitted client's flow is in the map";
}

TEST_F(DatagramRouteTest, IdleFlowsExpireAndLeaveNothingBehind) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(8);
  DatagramRoute route(spec(0, listener, {&server}, true, std::chrono::milliseconds(50)),
                      std::move(listener.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("c", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "x", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1; }));
  route.tick();
  EXPECT_EQ(route.flow_count(), 1u) << "not idle yet";
  usleep(100000);
  route.tick();
  EXPECT_EQ(route.flow_count(), 0u);
  EXPECT_EQ(route.counters().flows_expired, 1u);
  EXPECT_TRUE(maps_.empty());
  EXPECT_EQ(budget.used(), 0u);
}

// AF_UNIX: the listener gets its own verdict instance pointing unknown
// senders at a new-client socket; a client is keyed by ITS cookie (the
// verdict program sees the sender), and a unix upstream socket gets a
// private instance keyed by its own cookie.
TEST_F(DatagramRouteTest, UnixClientKeyedBySenderCookieUpstreamPrivate) {
  Bound listener = unix_endpoint(dir_ + "/front.sock", "front", Role::Listen);
  Bound server = unix_endpoint(dir_ + "/back.sock", "back", Role::Connect);
  SessionBudget budget(8);
  uint64_t listener_cookie = socket_cookie(listener.fd.get()).value();
  // The fake does not redirect, and a steered listener is not read by user
  // space: the datagram is queued before start(), which reads it with its
  // sender's address before steering (as after socket activation).
  Bound client = unix_endpoint(dir_ + "/client.sock", "client", Role::Connect);
  uint64_t client_cookie = socket_cookie(client.fd.get()).value();
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "hi", 2, 0, to.sa(), to.length), 2);
  DatagramRoute route(spec(0, listener, {&server}, true, std::chrono::seconds(60)), std::move(listener.fd),
                      &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  ASSERT_EQ(maps_.privates.count(listener_cookie), 1u);
  uint64_t new_client_target = maps_.privates[listener_cookie].new_client_target;
  EXPECT_NE(new_client_target, 0u);
  EXPECT_EQ(maps_.targets.count(new_client_target), 1u);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1; }));
  char buf[8];
  ASSERT_EQ(recv_now(server.fd, buf, sizeof(buf)), 2);

  ASSERT_EQ(maps_.flows.count(client_cookie), 1u)
      << "UNIX clients are keyed by the sender's cookie (sock_diag)";
  uint64_t upstream = maps_.flows[client_cookie].target_cookie;
  ASSERT_EQ(maps_.privates.count(upstream), 1u) << "a unix upstream needs its own verdict instance";
  EXPECT_EQ(maps_.privates[upstream].fixed_source, upstream);
  ASSERT_EQ(maps_.flows.count(upstream), 1u);
  uint64_t reply_socket = maps_.flows[upstream].target_cookie;
  EXPECT_EQ(maps_.targets.count(reply_socket), 1u);

  route.stop();
  EXPECT_TRUE(maps_.empty());
}

// datapath = "userspace": no map at all, and replies still come back.
TEST_F(DatagramRouteTest, UserspacePathRelaysBothWaysWithoutMaps) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(8);
  DatagramRoute route(spec(0, listener, {&server}, false, std::chrono::seconds(60)), std::move(listener.fd),
                      nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("c", Role::Connect);
  const auto& to = listener.endpoint.address;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(sendto(client.fd.get(), "ping", 4, 0, to.sa(), to.length), 4);
    ASSERT_TRUE(pump([&] { return route.counters().user_packets == static_cast<uint64_t>(2 * i + 1); }));
    char buf[8];
    sockaddr_storage from{};
    socklen_t flen = sizeof(from);
    ssize_t n = -1;
    for (int t = 0; t < 100 && n < 0; ++t) {
      n = recvfrom(server.fd.get(), buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from),
                   &flen);
      if (n < 0) usleep(10000);
    }
    ASSERT_EQ(n, 4);
    ASSERT_EQ(sendto(server.fd.get(), "pong", 4, 0, reinterpret_cast<sockaddr*>(&from), flen), 4);
    ASSERT_TRUE(pump([&] { return route.counters().user_packets == static_cast<uint64_t>(2 * i + 2); }));
    ASSERT_EQ(recv_now(client.fd, buf, sizeof(buf)), 4);
    EXPECT_EQ(std::string(buf, 4), "pong");
  }
  EXPECT_TRUE(maps_.empty());
  EXPECT_EQ(route.flow_count(), 1u);
}

// Several targets: one upstream socket per target, the forward flow entry
// carries all of them with the balance and the client's hash, and each
// target's replies come back to the client.
TEST_F(DatagramRouteTest, SeveralTargetsGiveBalancedFlowEntries) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound a = udp_endpoint("a", Role::Connect), b = udp_endpoint("b", Role::Connect),
        c = udp_endpoint("c", Role::Connect);
  SessionBudget budget(8);
  DatagramRoute route(spec(3, listener, {&a, &b, &c}, true, std::chrono::seconds(60), Balance::RoundRobin),
                      std::move(listener.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("client", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "x", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1; }));
  // The forward entry is the one with n_targets = 3.
  const FlowEntry* forward = nullptr;
  for (const auto& [key, entry] : maps_.flows)
    if (entry.n_targets == 3) forward = &entry;
  ASSERT_NE(forward, nullptr);
  EXPECT_EQ(forward->balance, static_cast<uint32_t>(RELAY_BALANCE_ROUND_ROBIN));
  EXPECT_EQ(forward->route_id, 3u);
  for (int t = 0; t < 3; ++t) {
    EXPECT_NE(forward->targets[t], 0u);
    EXPECT_EQ(forward->target_index[t], t);
    ASSERT_EQ(maps_.flows.count(forward->targets[t]), 1u) << "target " << t << " has no reply flow";
  }
  EXPECT_EQ(maps_.flows.size(), 4u);  // forward + one reply flow per target
  EXPECT_EQ(route.targets().size(), 3u);
  route.stop();
  EXPECT_TRUE(maps_.empty());
}

// Broadcast: the UDP flow socket stays out of the verdict program (user
// space copies each datagram to every target) and every target gets it.
TEST_F(DatagramRouteTest, BroadcastCopiesToEveryTarget) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound a = udp_endpoint("a", Role::Connect), b = udp_endpoint("b", Role::Connect);
  SessionBudget budget(8);
  DatagramRoute route(spec(0, listener, {&a, &b}, true, std::chrono::seconds(60), Balance::Broadcast),
                      std::move(listener.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("client", Role::Connect);
  const auto& to = listener.endpoint.address;
  for (int i = 0; i < 5; ++i) ASSERT_EQ(sendto(client.fd.get(), "copy", 4, 0, to.sa(), to.length), 4);
  ASSERT_TRUE(pump([&] { return route.counters().user_packets == 10; }));
  char buf[8];
  for (const Bound* target : {&a, &b})
    for (int i = 0; i < 5; ++i) ASSERT_EQ(recv_now(target->fd, buf, sizeof(buf)), 4);
  // Only the two reply flows: nothing steers the client's datagrams.
  EXPECT_EQ(maps_.flows.size(), 2u);
  EXPECT_EQ(maps_.sources.size(), 2u);
}

// A target that refuses (ICMP port unreachable on loopback) leaves the
// rotation route-wide, the flow goes on with the others, and after its
// back-off it is tried again.
TEST_F(DatagramRouteTest, FailedTargetLeavesRotationAndIsRetried) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound dead = udp_endpoint("dead", Role::Connect), live = udp_endpoint("live", Role::Connect);
  dead.fd.reset();  // nobody listens there any more
  SessionBudget budget(8);
  DatagramRoute route(spec(2, listener, {&dead, &live}, true, std::chrono::seconds(60), Balance::RoundRobin),
                      std::move(listener.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("client", Role::Connect);
  const auto& to = listener.endpoint.address;
  // The first datagram goes to target 0 (round-robin starts there): refused.
  ASSERT_EQ(sendto(client.fd.get(), "1", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return !route.targets()[0].up; }));
  const FlowEntry* forward = nullptr;
  for (const auto& [key, entry] : maps_.flows)
    if (entry.balance == RELAY_BALANCE_ROUND_ROBIN) forward = &entry;
  ASSERT_NE(forward, nullptr);
  EXPECT_EQ(forward->n_targets, 1u) << "the verdict program must see only the live target";
  EXPECT_EQ(forward->target_index[0], 1u);
  EXPECT_EQ(route.flow_count(), 1u) << "the flow carries on with the live target";
  EXPECT_GE(route.targets()[0].failures, 1u);
  EXPECT_TRUE(route.targets()[1].up);
  // After the back-off the dead target is tried again (and put back: for
  // UDP only a refusal tells it is still dead).
  usleep(600000);
  route.tick();
  EXPECT_TRUE(route.targets()[0].up);
  for (const auto& [key, entry] : maps_.flows)
    if (entry.balance == RELAY_BALANCE_ROUND_ROBIN) {
      EXPECT_EQ(entry.n_targets, 2u) << "target 0 is back";
    }
}

}  // namespace
}  // namespace sockrelay
