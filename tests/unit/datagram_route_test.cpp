// DatagramRoute's bookkeeping against a fake map writer: which sockets go
// in which map under which key, what is removed on teardown (also after a
// failed set-up), idle expiry, max-sessions, allow-sources, target back-off,
// and the unix listener's new-client channel with its refused senders.
// Real (unprivileged) sockets on loopback; no BPF.
#include "sessions/datagram_route.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "common/clock.h"
#include "common/socket_cookie.h"
#include "fake_maps.h"
#include "relay_shared.h"
#include "sessions/peer_policy.h"

namespace sockrelay {
namespace {

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
    for (int i = 0; i < 100 && !done(); ++i)
      if (!loop_->run_once(std::chrono::milliseconds(10)).ok()) return false;
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

  // One datagram: an upstream socket, no flow socket and nothing in the
  // maps yet; the reply leaves from the listener.
  char buf[16];
  sockaddr_storage from{};
  socklen_t from_len = sizeof(from);
  ssize_t n = -1;
  for (int i = 0; i < 100 && n < 0; ++i)
    if ((n = recvfrom(server.fd.get(), buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from),
                      &from_len)) < 0)
      usleep(10000);
  ASSERT_EQ(n, 5) << "the first datagram must reach the upstream";
  EXPECT_EQ(std::string(buf, 5), "first");
  EXPECT_TRUE(maps_.flows.empty()) << "a client's flow socket waits for its second datagram";
  ASSERT_EQ(sendto(server.fd.get(), "reply", 5, 0, reinterpret_cast<sockaddr*>(&from), from_len), 5);
  sockaddr_storage replier{};
  socklen_t replier_len = sizeof(replier);
  n = -1;
  for (int i = 0; i < 100 && n < 0; ++i) {
    EXPECT_TRUE(loop_->run_once(std::chrono::milliseconds(10)).ok());
    n = recvfrom(client.fd.get(), buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&replier),
                 &replier_len);
  }
  ASSERT_EQ(n, 5) << "the reply must reach the client";
  EXPECT_EQ(replier_len, to.length);
  EXPECT_EQ(std::memcmp(&replier, &to.storage, to.length), 0) << "from the listener's address";

  // The second: the flow socket and the kernel path.
  ASSERT_EQ(sendto(client.fd.get(), "again", 5, 0, to.sa(), to.length), 5);
  ASSERT_TRUE(pump([&] { return !maps_.flows.empty() && maps_.holds.empty(); }));
  ASSERT_EQ(recv_now(server.fd, buf, sizeof(buf)), 5);
  EXPECT_EQ(std::string(buf, 5), "again");
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
  // ...and the hold channel (datagram_hold.cpp) among the targets.
  EXPECT_EQ(maps_.targets.size(), 3u);
  EXPECT_EQ(maps_.targets.count(a) + maps_.targets.count(b), 2u);
  EXPECT_EQ(route.counters().flows_created, 1u);
  EXPECT_EQ(route.counters().user_packets, 3u);

  route.stop();
  EXPECT_TRUE(maps_.empty()) << "stop() must remove every map entry";
  EXPECT_EQ(budget.used(), 0u);
}

// max-sessions = 1, taken by client c1's flow on the kernel path (its
// second datagram put it there); c2 is the newcomer.
class FullRouteTest : public DatagramRouteTest {
 protected:
  void SetUp() override {
    DatagramRouteTest::SetUp();
    route_ = std::make_unique<DatagramRoute>(spec(0, listener_, {&server_}, true, std::chrono::seconds(60)),
                                             std::move(listener_.fd), &maps_, *loop_, budget_);
    ASSERT_TRUE(route_->start().ok());
    send(c1_, "a");
    send(c1_, "a");
    ASSERT_TRUE(pump([&] { return route_->flow_count() == 1 && maps_.flows.size() == 2; }));
  }
  void send(const Bound& client, const char* data) {
    const auto& to = listener_.endpoint.address;
    ASSERT_EQ(sendto(client.fd.get(), data, 1, 0, to.sa(), to.length), 1);
  }
  Bound listener_ = udp_endpoint("front", Role::Listen);
  Bound server_ = udp_endpoint("back", Role::Connect);
  Bound c1_ = udp_endpoint("c1", Role::Connect), c2_ = udp_endpoint("c2", Role::Connect);
  SessionBudget budget_{1};
  std::unique_ptr<DatagramRoute> route_;
};

TEST_F(FullRouteTest, MaxSessionsRefusesNewClientsAndCounts) {
  // The target answered through the verdict program just now: both flow
  // entries stamped. An established flow active within the last second is
  // never evicted (flow_table.h).
  for (const auto& [key, entry] : maps_.flows) maps_.last_ns[key] = monotonic_ns();
  send(c2_, "b");
  send(c2_, "c");
  ASSERT_TRUE(pump([&] { return route_->counters().refused_max_sessions == 2; }));
  EXPECT_EQ(route_->flow_count(), 1u);
  EXPECT_EQ(route_->counters().flows_evicted, 0u);
  EXPECT_EQ(maps_.flows.size(), 2u) << "only the admitted client's flow is in the map";
}

// A flow the target never answered gives way to a new client at
// max-sessions once it has been silent for the protection window (1 s:
// younger, its answer may be on its way); what it wrote to the maps goes
// with it.
TEST_F(FullRouteTest, MaxSessionsEvictsAnUnrepliedFlowForANewClient) {
  std::set<uint64_t> first_keys;
  for (const auto& [key, entry] : maps_.flows) first_keys.insert(key);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  send(c2_, "b");
  ASSERT_TRUE(pump([&] { return route_->counters().flows_evicted == 1; }));
  EXPECT_EQ(route_->flow_count(), 1u);
  EXPECT_EQ(route_->counters().refused_max_sessions, 0u);
  EXPECT_EQ(budget_.used(), 1u);
  for (uint64_t key : first_keys)
    EXPECT_EQ(maps_.flows.count(key), 0u) << "the evicted flow's entries stayed";
  RouteReport r = route_->report();
  EXPECT_TRUE(r.evicts);
  EXPECT_EQ(r.sessions_evicted, 1u);
  EXPECT_EQ(r.detail_name, "flows");
  char buf[4];
  ASSERT_EQ(recv_now(server_.fd, buf, sizeof(buf)), 1);
  ASSERT_EQ(recv_now(server_.fd, buf, sizeof(buf)), 1);
  ASSERT_EQ(recv_now(server_.fd, buf, sizeof(buf)), 1)
      << "the new client's first datagram reaches the target";
  EXPECT_EQ(buf[0], 'b');
}

// unreplied-timeout: a flow the target never answered goes first; one it
// answered (through user space here) and whose client sent again stays
// until idle-timeout.
TEST_F(DatagramRouteTest, UnrepliedFlowExpiresBeforeAnAnsweredOne) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(8);
  DatagramRouteSpec s = spec(0, listener, {&server}, false, std::chrono::seconds(60));
  s.unreplied_timeout = std::chrono::milliseconds(50);
  DatagramRoute route(s, std::move(listener.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound answered = udp_endpoint("c1", Role::Connect), silent = udp_endpoint("c2", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(answered.fd.get(), "a", 1, 0, to.sa(), to.length), 1);
  ASSERT_EQ(sendto(silent.fd.get(), "b", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 2; }));
  // The target answers client "a" only (its upstream socket is the sender
  // of "a").
  char buf[4];
  for (int i = 0; i < 2; ++i) {
    sockaddr_storage from{};
    socklen_t len = sizeof(from);
    ssize_t n = -1;
    for (int t = 0; t < 100 && n < 0; ++t)
      if ((n = recvfrom(server.fd.get(), buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from),
                        &len)) < 0)
        usleep(10000);
    ASSERT_EQ(n, 1);
    if (buf[0] == 'a') {
      ASSERT_EQ(sendto(server.fd.get(), "r", 1, 0, reinterpret_cast<sockaddr*>(&from), len), 1);
    }
  }
  bool got = false;  // pump() asks again at the end: the reply is read once
  ASSERT_TRUE(
      pump([&] { return got = got || recv(answered.fd.get(), buf, sizeof(buf), MSG_DONTWAIT) == 1; }));
  ASSERT_EQ(sendto(answered.fd.get(), "a", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.counters().user_packets == 4; }));
  usleep(200000);
  route.tick();
  EXPECT_EQ(route.flow_count(), 1u) << "the unreplied flow expired, the established one stays";
  EXPECT_EQ(route.counters().flows_expired, 1u);
  EXPECT_EQ(route.counters().expired_unreplied, 1u);
  EXPECT_EQ(route.flow_table().established(), 1u);
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
  ASSERT_EQ(sendto(client.fd.get(), "x", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1 && !maps_.flows.empty(); }));
  route.tick();
  EXPECT_EQ(route.flow_count(), 1u) << "not idle yet";
  usleep(100000);
  route.tick();
  EXPECT_EQ(route.flow_count(), 0u);
  EXPECT_EQ(route.counters().flows_expired, 1u);
  // Nothing of the flow; the route's hold channel stays until stop().
  EXPECT_TRUE(maps_.flows.empty() && maps_.sources.empty() && maps_.holds.empty() && maps_.passed.empty());
  EXPECT_EQ(maps_.targets.size(), 1u);
  EXPECT_EQ(budget.used(), 0u);
  route.stop();
  EXPECT_TRUE(maps_.empty());
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
  ASSERT_EQ(sendto(client.fd.get(), "y", 1, 0, to.sa(), to.length), 1);  // the kernel path
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1 && !maps_.flows.empty(); }));
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
  // The first datagram goes to target 0 (round-robin starts there):
  // refused. The second puts the flow on the kernel path.
  ASSERT_EQ(sendto(client.fd.get(), "1", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return !route.targets()[0].up; }));
  ASSERT_EQ(sendto(client.fd.get(), "2", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return !maps_.flows.empty(); }));
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

// A retried target that fails again waits twice as long (the one back-off
// rule, TargetHealth): 500 ms, then 1 s.
TEST_F(DatagramRouteTest, RetriedTargetThatFailsAgainBacksOffLonger) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound dead = udp_endpoint("dead", Role::Connect), live = udp_endpoint("live", Role::Connect);
  dead.fd.reset();
  SessionBudget budget(8);
  DatagramRoute route(spec(2, listener, {&dead, &live}, false, std::chrono::seconds(60), Balance::RoundRobin),
                      std::move(listener.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("client", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "1", 1, 0, to.sa(), to.length), 1);  // round-robin: target 0
  ASSERT_TRUE(pump([&] { return !route.targets()[0].up; }));
  EXPECT_GT(route.targets()[0].retry_in_ms, 0);
  EXPECT_LE(route.targets()[0].retry_in_ms, 500);
  usleep(600000);
  route.tick();
  ASSERT_TRUE(route.targets()[0].up);
  ASSERT_EQ(sendto(client.fd.get(), "2", 1, 0, to.sa(), to.length), 1);  // target 1
  ASSERT_EQ(sendto(client.fd.get(), "3", 1, 0, to.sa(), to.length), 1);  // target 0 again: refused
  ASSERT_TRUE(pump([&] { return !route.targets()[0].up; }));
  EXPECT_GT(route.targets()[0].retry_in_ms, 500);
  EXPECT_LE(route.targets()[0].retry_in_ms, 1000);
  EXPECT_EQ(route.targets()[0].failures, 2u);
  EXPECT_EQ(route.targets()[1].user_packets, 1u) << "per-target user counters are kept";
}

// allow-sources is decided in one place (PeerPolicy::source_allowed): inet
// peers inside a network, everyone when the list is empty.
TEST(PeerPolicyTest, SourceAllowedDecidesForInetPeersOnly) {
  SourceNetwork net;
  net.family = AF_INET;
  net.address[0] = 127;
  net.address[3] = 2;
  net.prefix = 32;
  sockaddr_storage peer{};
  auto* in = reinterpret_cast<sockaddr_in*>(&peer);
  in->sin_family = AF_INET;
  in->sin_addr.s_addr = htonl(0x7f000002);
  EXPECT_TRUE(PeerPolicy::source_allowed({net}, peer));
  in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_FALSE(PeerPolicy::source_allowed({net}, peer));
  EXPECT_TRUE(PeerPolicy::source_allowed({}, peer));
  PeerPolicy policy;
  policy.allow_sources = {net};
  EXPECT_EQ(policy.refusal(-1, peer), "not in allow-sources");
  sockaddr_storage unix_peer{};
  unix_peer.ss_family = AF_UNIX;
  EXPECT_TRUE(PeerPolicy::source_allowed({net}, unix_peer));
}

// A client outside allow-sources gets no flow, no map entry and no session.
TEST_F(DatagramRouteTest, AllowSourcesRefusesOutsidersBeforeAnyFlow) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(8);
  DatagramRouteSpec s = spec(0, listener, {&server}, true, std::chrono::seconds(60));
  SourceNetwork other;
  other.family = AF_INET;
  other.address[0] = 127;
  other.address[3] = 2;
  other.prefix = 32;
  s.allow_sources = {other};
  DatagramRoute route(s, std::move(listener.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("client", Role::Connect);  // 127.0.0.1
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "a", 1, 0, to.sa(), to.length), 1);
  ASSERT_EQ(sendto(client.fd.get(), "b", 1, 0, to.sa(), to.length), 1);
  ASSERT_TRUE(pump([&] { return route.counters().refused_policy == 2; }));
  EXPECT_EQ(route.flow_count(), 0u);
  EXPECT_TRUE(maps_.empty());
  EXPECT_EQ(budget.used(), 0u);
}

// Map entries that cannot be written leave the flow to user space, with
// nothing of its half-done wiring left in the maps.
TEST_F(DatagramRouteTest, KernelWiringFailureLeavesTheFlowToUserSpace) {
  Bound listener = udp_endpoint("front", Role::Listen);
  Bound server = udp_endpoint("back", Role::Connect);
  SessionBudget budget(8);
  maps_.fail_add_source = true;
  DatagramRoute route(spec(0, listener, {&server}, true, std::chrono::seconds(60)), std::move(listener.fd),
                      &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Bound client = udp_endpoint("client", Role::Connect);
  const auto& to = listener.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "ping", 4, 0, to.sa(), to.length), 4);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1; }));
  EXPECT_TRUE(maps_.empty()) << "a half-wired flow must not stay in the maps";
  char buf[8];
  sockaddr_storage from{};
  socklen_t flen = sizeof(from);
  ssize_t n = -1;
  for (int t = 0; t < 100 && n < 0; ++t) {
    n = recvfrom(server.fd.get(), buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) usleep(10000);
  }
  ASSERT_EQ(n, 4);
  ASSERT_EQ(sendto(server.fd.get(), "pong", 4, 0, reinterpret_cast<sockaddr*>(&from), flen), 4);
  ASSERT_TRUE(pump([&] { return route.counters().user_packets == 2; }));
  ASSERT_EQ(recv_now(client.fd, buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf, 4), "pong");
  ASSERT_EQ(sendto(client.fd.get(), "more", 4, 0, to.sa(), to.length), 4);
  ASSERT_TRUE(pump([&] { return route.counters().user_packets == 3; })) << "user space reads the flow socket";
}

// A unix listener whose program instance cannot be attached: start() fails
// and the new-client channel it opened leaves the maps again.
TEST_F(DatagramRouteTest, UnixSteeringThatFailsLeavesNothingBehind) {
  Bound listener = unix_endpoint(dir_ + "/front.sock", "front", Role::Listen);
  Bound server = unix_endpoint(dir_ + "/back.sock", "back", Role::Connect);
  SessionBudget budget(8);
  maps_.fail_add_private_source = true;
  DatagramRoute route(spec(0, listener, {&server}, true, std::chrono::seconds(60)), std::move(listener.fd),
                      &maps_, *loop_, budget);
  EXPECT_FALSE(route.start().ok());
  EXPECT_TRUE(maps_.empty());
}

// The unix listener's new-client channel, fed as the verdict program would:
// each datagram tagged with its sender's cookie and owner.
class UnixNewSenderTest : public DatagramRouteTest {
 protected:
  // Starts a kernel route from a unix listener with `allow_uids`.
  void start_route(std::vector<uint32_t> allow_uids, std::chrono::milliseconds idle) {
    listener_ = unix_endpoint(dir_ + "/front.sock", "front", Role::Listen);
    server_ = unix_endpoint(dir_ + "/back.sock", "back", Role::Connect);
    client_ = unix_endpoint(dir_ + "/client.sock", "client", Role::Connect);
    client_cookie_ = socket_cookie(client_.fd.get()).value();
    uint64_t listener_cookie = socket_cookie(listener_.fd.get()).value();
    DatagramRouteSpec s = spec(5, listener_, {&server_}, true, idle);
    s.allow_uids = std::move(allow_uids);
    route_ = std::make_unique<DatagramRoute>(s, std::move(listener_.fd), &maps_, *loop_, budget_);
    ASSERT_TRUE(route_->start().ok());
    ASSERT_EQ(maps_.privates.count(listener_cookie), 1u);
    channel_ = maps_.target_fds.at(maps_.privates[listener_cookie].new_client_target);
  }
  // What the listener's program instance does with a new sender's datagram.
  void send_tagged(uint32_t uid, const std::string& payload) {
    relay_new_client_tag tag{};
    tag.sender_cookie = client_cookie_;
    tag.sender_uid = uid;
    std::string d(reinterpret_cast<const char*>(&tag), sizeof(tag));
    d += payload;
    ASSERT_EQ(send(channel_, d.data(), d.size(), 0), static_cast<ssize_t>(d.size()));
  }

  Bound listener_, server_, client_;
  uint64_t client_cookie_ = 0;
  int channel_ = -1;
  SessionBudget budget_{8};
  std::unique_ptr<DatagramRoute> route_;
};

TEST_F(UnixNewSenderTest, AdmittedSenderGetsAFlowKeyedByItsCookie) {
  start_route({getuid()}, std::chrono::seconds(60));
  send_tagged(getuid(), "hello");
  ASSERT_TRUE(pump([&] { return route_->flow_count() == 1; }));
  char buf[8];
  ASSERT_EQ(recv_now(server_.fd, buf, sizeof(buf)), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  ASSERT_EQ(maps_.flows.count(client_cookie_), 1u);
  EXPECT_EQ(maps_.flows[client_cookie_].flags & RELAY_FLOW_REFUSED, 0u);
  route_->stop();
  EXPECT_TRUE(maps_.empty());
}

// Refused by its owner's uid: remembered (a flow entry the verdict program
// drops by), not looked up again, forgotten after idle-timeout.
TEST_F(UnixNewSenderTest, RefusedSenderIsRememberedThenForgotten) {
  start_route({getuid() + 1}, std::chrono::milliseconds(50));
  send_tagged(getuid(), "no");
  ASSERT_TRUE(pump([&] { return route_->counters().refused_policy == 1; }));
  EXPECT_EQ(route_->flow_count(), 0u);
  ASSERT_EQ(maps_.flows.count(client_cookie_), 1u);
  EXPECT_EQ(maps_.flows[client_cookie_].flags, static_cast<uint32_t>(RELAY_FLOW_REFUSED));
  EXPECT_EQ(maps_.flows[client_cookie_].route_id, 5u);
  send_tagged(getuid(), "again");
  ASSERT_TRUE(pump([&] { return route_->counters().refused_policy == 2; }));
  EXPECT_EQ(budget_.used(), 0u);
  usleep(100000);
  route_->tick();
  EXPECT_EQ(maps_.flows.count(client_cookie_), 0u) << "forgotten after idle-timeout";
  route_->stop();
  EXPECT_TRUE(maps_.empty());
}

// The hold (datagram_hold.cpp): a new UDP flow's entry carries
// RELAY_FLOW_HOLD and its relay_hold entry says "leftovers" until a
// listener read came back empty; the datagrams the verdict program passed
// up meanwhile reach the target after the flow's first ones, in order; the
// hold ends when what user space forwarded is what was passed up.
class DatagramHoldTest : public DatagramRouteTest {
 protected:
  // Plays the verdict program passing `payloads` up for flow `key`.
  void pass_up(uint64_t key, const std::vector<std::string>& payloads) {
    int channel = maps_.target_fds.at(maps_.holds.at(key).channel);
    for (const std::string& p : payloads) {
      relay_new_client_tag tag{};
      tag.sender_cookie = key;
      tag.held = 1;
      std::string d(reinterpret_cast<const char*>(&tag), sizeof(tag));
      d += p;
      ASSERT_EQ(send(channel, d.data(), d.size(), 0), static_cast<ssize_t>(d.size()));
      ++maps_.passed[key];
    }
  }
  // A kernel route from a UDP listener to one UDP server, and a client.
  void start_udp_route() {
    listener_ = udp_endpoint("front", Role::Listen);
    server_ = udp_endpoint("back", Role::Connect);
    client_ = udp_endpoint("client", Role::Connect);
    route_ = std::make_unique<DatagramRoute>(spec(3, listener_, {&server_}, true, std::chrono::seconds(60)),
                                             std::move(listener_.fd), &maps_, *loop_, budget_);
    ASSERT_TRUE(route_->start().ok());
  }
  std::vector<std::string> received(const Fd& fd, size_t want) {
    std::vector<std::string> got;
    char buf[64];
    while (got.size() < want) {
      ssize_t n = recv_now(fd, buf, sizeof(buf));
      if (n < 0) break;
      got.emplace_back(buf, n);
    }
    return got;
  }

  Bound listener_, server_, client_;
  SessionBudget budget_{8};
  std::unique_ptr<DatagramRoute> route_;
};

TEST_F(DatagramHoldTest, UdpFlowHeldUntilForwardedEqualsPassedInOrder) {
  start_udp_route();
  DatagramRoute& route = *route_;
  Bound& client = client_;
  const auto& to = listener_.endpoint.address;
  uint64_t held_key = 0;
  maps_.on_hold = [&](uint64_t key) {
    held_key = key;
    // After connect(), before the flow socket enters the map: the client's
    // next datagram waits on the flow socket (read just before steering)...
    ASSERT_EQ(sendto(client.fd.get(), "p", 1, 0, to.sa(), to.length), 1);
    usleep(10000);
    // ...and the verdict program passes two up.
    pass_up(key, {"h1", "h2"});
  };
  // Two on the listener before the relay reads: "L" is a leftover there.
  ASSERT_EQ(sendto(client.fd.get(), "0", 1, 0, to.sa(), to.length), 1);
  ASSERT_EQ(sendto(client.fd.get(), "L", 1, 0, to.sa(), to.length), 1);
  usleep(10000);
  ASSERT_TRUE(pump([&] { return route.flow_count() == 1 && maps_.holds.empty(); })) << "the hold never ended";
  ASSERT_NE(held_key, 0u);
  EXPECT_EQ(received(server_.fd, 5), (std::vector<std::string>{"0", "L", "p", "h1", "h2"}));
  // The entry was written on hold before the socket was steered; the hold
  // went once forwarded (2) equalled passed (2).
  EXPECT_LT(maps_.first("hold_flow", held_key), maps_.first("set_flow", held_key));
  EXPECT_LT(maps_.first("set_flow", held_key), maps_.first("add_source", held_key));
  EXPECT_LT(maps_.first("set_forwarded", held_key), maps_.first("release_hold", held_key));
  EXPECT_EQ(maps_.flows.at(held_key).flags & RELAY_FLOW_HOLD, 0u);
  EXPECT_TRUE(maps_.verdict_redirects(held_key)) << "after the hold, straight to the target";
  EXPECT_EQ(route.counters().user_packets, 5u);
  route.stop();
  EXPECT_TRUE(maps_.empty());
}

// While user space has forwarded fewer than were passed up, the verdict
// program keeps passing up; a flow that ends on hold leaves no hold entry.
TEST_F(DatagramHoldTest, FewerForwardedThanPassedKeepsTheHold) {
  start_udp_route();
  DatagramRoute& route = *route_;
  Bound& client = client_;
  uint64_t held_key = 0;
  // One passed up that never reaches user space (still on its way).
  maps_.on_hold = [&](uint64_t key) {
    held_key = key;
    maps_.passed[key] = 1;
  };
  const auto& to = listener_.endpoint.address;
  ASSERT_EQ(sendto(client.fd.get(), "0", 1, 0, to.sa(), to.length), 1);
  ASSERT_EQ(sendto(client.fd.get(), "1", 1, 0, to.sa(), to.length), 1);  // the kernel path
  ASSERT_TRUE(pump([&] { return maps_.holds.count(held_key) && maps_.holds[held_key].forwarded == 0; }));
  EXPECT_NE(maps_.flows.at(held_key).flags & RELAY_FLOW_HOLD, 0u);
  EXPECT_FALSE(maps_.verdict_redirects(held_key)) << "passed 1, forwarded 0: passed up";
  EXPECT_EQ(maps_.passed[held_key], 2u);
  pass_up(held_key, {});  // nothing more: the hold stays
  route.tick();
  EXPECT_EQ(maps_.holds.count(held_key), 1u);
  route.stop();
  EXPECT_TRUE(maps_.empty()) << "stop() removes the hold's entries too";
}

// AF_UNIX: datagrams tagged before the flow entry existed come first on
// the new-client channel; the first held one ends the leftovers.
TEST_F(UnixNewSenderTest, HeldDatagramsFollowTheUnheldOnes) {
  start_route({}, std::chrono::seconds(60));
  maps_.on_hold = [&](uint64_t key) { EXPECT_EQ(key, client_cookie_); };
  send_tagged(getuid(), "0");
  send_tagged(getuid(), "1");  // sent before the entry existed: not held
  ASSERT_TRUE(pump([&] { return route_->flow_count() == 1; }));
  ASSERT_EQ(maps_.holds.count(client_cookie_), 1u);
  EXPECT_EQ(maps_.holds[client_cookie_].forwarded, RELAY_HOLD_LEFTOVERS) << "until a held one arrives";
  relay_new_client_tag tag{};
  tag.sender_cookie = client_cookie_;
  tag.held = 1;
  std::string d(reinterpret_cast<const char*>(&tag), sizeof(tag));
  d += "2";
  ASSERT_EQ(send(channel_, d.data(), d.size(), 0), static_cast<ssize_t>(d.size()));
  maps_.passed[client_cookie_] = 1;
  ASSERT_TRUE(pump([&] { return maps_.holds.empty(); }));
  char buf[8];
  for (const char* want : {"0", "1", "2"}) {
    ASSERT_EQ(recv_now(server_.fd, buf, sizeof(buf)), 1);
    EXPECT_EQ(std::string(buf, 1), want);
  }
  EXPECT_EQ(maps_.flows[client_cookie_].flags & RELAY_FLOW_HOLD, 0u);
  route_->stop();
  EXPECT_TRUE(maps_.empty());
}

}  // namespace
}  // namespace sockrelay
