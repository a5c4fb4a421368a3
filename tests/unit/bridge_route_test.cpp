// BridgeRoute's bookkeeping without privilege: datagrams on one side,
// connections on the other, on loopback and in a temp dir. The bridge is
// user space only, so no map writer is involved.
#include "sessions/bridge_route.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <optional>
#include <string>
#include <vector>

#include "socket_pairs.h"

namespace sockrelay {
namespace {

using namespace std::chrono_literals;
using namespace test_sockets;

// One datagram as it arrived, with where it came from.
struct Datagram {
  std::string data;
  SocketAddress from;
};

class BridgeRouteTest : public RouteFixture {
 protected:
  // front_ (kind `from`) is where clients send or connect; back_ (kind
  // `to`) is the target, bound by the test.
  void bind_endpoints(EndpointKind from, EndpointKind to) {
    front_ = bind_endpoint(from, "front", Role::Listen, path("front.sock"));
    back_ = bind_endpoint(to, "back", Role::Connect, path("back.sock"));
  }
  // A udp listener bridged to a UNIX `target` kind, started.
  BridgeRoute& start_udp_bridge(EndpointKind target, uint32_t max_sessions = 8,
                                std::chrono::milliseconds idle = 60s) {
    bind_endpoints(EndpointKind::Udp, target);
    return start_route(max_sessions, idle);
  }
  BridgeRoute& start_route(uint32_t max_sessions = 8, std::chrono::milliseconds idle = 60s) {
    BridgeRouteSpec spec;
    spec.route_id = 4;
    spec.from = &front_.endpoint;
    spec.to = &back_.endpoint;
    spec.idle_timeout = idle;
    budget_.emplace(max_sessions);
    route_ = std::make_unique<BridgeRoute>(spec, std::move(front_.fd), *loop_, *budget_);
    EXPECT_TRUE(route_->start().ok());
    return *route_;
  }
  SessionBudget& budget() { return *budget_; }
  void send_to_front(const Fd& client, const std::string& data) { send_to(client, front_.endpoint, data); }

  static void send_to(const Fd& client, const Endpoint& to, const std::string& data) {
    ASSERT_EQ(sendto(client.get(), data.data(), data.size(), 0, to.address.sa(), to.address.length),
              ssize_t(data.size()));
  }

  // The next datagram (or seqpacket message) on `fd`, the loop running
  // meanwhile; an empty `from` and data "<none>" when none came in time.
  Datagram next_datagram(const Fd& fd) {
    Datagram d{"<none>", {}};
    std::vector<char> buf(256 * 1024);
    pump([&] {
      sockaddr_storage from{};
      socklen_t len = sizeof(from);
      ssize_t n =
          recvfrom(fd.get(), buf.data(), buf.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) return false;
      d.data.assign(buf.data(), static_cast<size_t>(n));
      d.from.storage = from;
      d.from.length = len;
      return true;
    });
    return d;
  }
  // Nothing arrives on `fd` while the loop runs for a while.
  bool stays_quiet(const Fd& fd) {
    pump_for(50ms);
    char byte;
    return recv(fd.get(), &byte, 1, MSG_DONTWAIT | MSG_PEEK) < 0 && errno == EAGAIN;
  }

  Bound front_, back_;
  std::optional<SessionBudget> budget_;
  std::unique_ptr<BridgeRoute> route_;  // declared last: stopped before what it uses goes
};

// udp -> unix-stream: each datagram is appended to the byte stream whole
// and in order (one write each); what the upstream writes comes back as a
// datagram from the listener's address.
TEST_F(BridgeRouteTest, DatagramsJoinTheStreamInOrderAndRepliesComeBackAsDatagrams) {
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixStream);
  Fd client = udp_client();
  const std::vector<std::string> datagrams = {"first ", pattern(30'000, 7), " third"};
  for (const std::string& d : datagrams) send_to_front(client, d);

  Peer upstream = accept_peer(back_.fd);
  const std::string expected = datagrams[0] + datagrams[1] + datagrams[2];
  EXPECT_TRUE(read_until(upstream, expected)) << "the stream must hold every datagram, in order";
  EXPECT_EQ(route.counters().user_messages, datagrams.size()) << "one write per datagram";
  EXPECT_EQ(route.counters().sessions_created, 1u);
  EXPECT_EQ(route.session_count(), 1u);
  EXPECT_EQ(budget().used(), 1u);

  ASSERT_EQ(send(upstream.fd.get(), "reply", 5, 0), 5);
  Datagram reply = next_datagram(client);
  EXPECT_EQ(reply.data, "reply");
  EXPECT_TRUE(reply.from == front_.endpoint.address) << "a reply comes from the address the client sent to";
  EXPECT_EQ(route.counters().dropped_messages, 0u);
}

// udp -> unix-seqpacket: the boundaries survive both ways, one datagram
// per message and one message per datagram.
TEST_F(BridgeRouteTest, EachDatagramIsOneSeqpacketMessageAndBack) {
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixSeqpacket);
  Fd client = udp_client();
  const std::vector<std::string> datagrams = {"a", pattern(1200, 8), "ccc"};
  for (const std::string& d : datagrams) send_to_front(client, d);

  Peer upstream = accept_peer(back_.fd);
  for (const std::string& d : datagrams) EXPECT_EQ(next_datagram(upstream.fd).data, d);
  EXPECT_TRUE(stays_quiet(upstream.fd)) << "more messages than datagrams";

  for (const char* m : {"r1", "reply two"})
    ASSERT_EQ(send(upstream.fd.get(), m, strlen(m), 0), ssize_t(strlen(m)));
  EXPECT_EQ(next_datagram(client).data, "r1");
  EXPECT_EQ(next_datagram(client).data, "reply two");
  EXPECT_EQ(route.counters().user_messages, 5u);
}

// Two clients: a session (an upstream connection) each, however many
// datagrams they send, and each one's replies go to it alone.
TEST_F(BridgeRouteTest, OneSessionPerClientAddress) {
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixSeqpacket);
  Fd alice = udp_client(), bob = udp_client();
  send_to_front(alice, "alice 1");
  Peer first = accept_peer(back_.fd);
  send_to_front(bob, "bob 1");
  Peer second = accept_peer(back_.fd);
  send_to_front(alice, "alice 2");
  send_to_front(bob, "bob 2");
  send_to_front(alice, "alice 3");

  EXPECT_EQ(next_datagram(first.fd).data, "alice 1");
  EXPECT_EQ(next_datagram(first.fd).data, "alice 2");
  EXPECT_EQ(next_datagram(first.fd).data, "alice 3");
  EXPECT_EQ(next_datagram(second.fd).data, "bob 1");
  EXPECT_EQ(next_datagram(second.fd).data, "bob 2");
  EXPECT_FALSE(took_a_connection(back_.fd)) << "a known client's datagram opened another connection";
  EXPECT_EQ(route.session_count(), 2u);
  EXPECT_EQ(route.counters().sessions_created, 2u);

  ASSERT_EQ(send(second.fd.get(), "for bob", 7, 0), 7);
  EXPECT_EQ(next_datagram(bob).data, "for bob");
  EXPECT_TRUE(stays_quiet(alice)) << "bob's reply went to alice";
}

TEST_F(BridgeRouteTest, MaxSessionsRefusesANewClientAndCounts) {
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixStream, 1);
  Fd admitted = udp_client(), refused = udp_client();
  send_to_front(admitted, "in");
  Peer upstream = accept_peer(back_.fd);
  send_to_front(refused, "out 1");
  send_to_front(refused, "out 2");
  ASSERT_TRUE(pump([&] { return route.counters().refused_max_sessions == 2; }))
      << "each datagram of a refused client is counted";
  EXPECT_FALSE(took_a_connection(back_.fd)) << "no connection for a refused client";
  EXPECT_EQ(route.session_count(), 1u);
  EXPECT_EQ(budget().used(), 1u);
  EXPECT_TRUE(read_until(upstream, "in"));
}

// Nobody listens at the target's path: counted, nothing left behind.
TEST_F(BridgeRouteTest, UnreachableTargetCountsConnectFailed) {
  bind_endpoints(EndpointKind::Udp, EndpointKind::UnixStream);
  back_.fd.reset();
  std::filesystem::remove(path("back.sock"));
  BridgeRoute& route = start_route();
  Fd client = udp_client();
  send_to_front(client, "anyone?");
  ASSERT_TRUE(pump([&] { return route.counters().connect_failed == 1; }));
  EXPECT_EQ(route.session_count(), 0u);
  EXPECT_EQ(route.counters().sessions_created, 0u);
  EXPECT_EQ(budget().used(), 0u);
}

// The upstream closes its connection: the client's session ends (counted
// closed), and the client's next datagram opens a new one.
TEST_F(BridgeRouteTest, UpstreamCloseEndsTheSessionAndTheNextDatagramOpensAnother) {
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixStream);
  Fd client = udp_client();
  send_to_front(client, "one");
  {
    Peer upstream = accept_peer(back_.fd);
    // Read first: an AF_UNIX socket closed with unread bytes resets its peer.
    ASSERT_TRUE(read_until(upstream, "one"));
  }  // closed here
  ASSERT_TRUE(pump([&] { return route.session_count() == 0; }));
  EXPECT_EQ(route.counters().sessions_closed, 1u);
  EXPECT_EQ(route.counters().sessions_failed, 0u);
  EXPECT_EQ(budget().used(), 0u);

  send_to_front(client, "two");
  Peer again = accept_peer(back_.fd);
  ASSERT_TRUE(read_until(again, "two"));
  EXPECT_EQ(route.counters().sessions_created, 2u);
}

TEST_F(BridgeRouteTest, IdleSessionExpiresAfterItsTimeoutNotBefore) {
  constexpr auto kIdle = 150ms;
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixStream, 8, kIdle);
  Fd client = udp_client();
  uint64_t last_sent = monotonic_ns();
  send_to_front(client, "x");
  Peer upstream = accept_peer(back_.fd);
  ASSERT_TRUE(read_until(upstream, "x"));
  uint64_t expired_at = expire_until_empty(route);
  ASSERT_NE(expired_at, 0u) << "never expired";
  EXPECT_GE(expired_at - last_sent, ms_to_ns(kIdle.count())) << "expired before its idle timeout";
  EXPECT_EQ(route.counters().sessions_expired, 1u);
  EXPECT_EQ(budget().used(), 0u);
  EXPECT_TRUE(read_until_ended(upstream)) << "the upstream connection is closed";
}

// A connection source: unix-seqpacket clients, a udp target. Each message
// is one datagram, each reply datagram one message, one datagram socket
// per connection; the client's close ends the session cleanly.
TEST_F(BridgeRouteTest, ConnectionSourceEachMessageIsOneDatagramAndBack) {
  bind_endpoints(EndpointKind::UnixSeqpacket, EndpointKind::Udp);
  BridgeRoute& route = start_route();
  Peer client{connect_client(front_.endpoint)};
  ASSERT_TRUE(pump([&] { return route.counters().sessions_created == 1; }));
  for (const char* m : {"m1", "message two"})
    ASSERT_EQ(send(client.fd.get(), m, strlen(m), 0), ssize_t(strlen(m)));
  Datagram first = next_datagram(back_.fd);
  EXPECT_EQ(first.data, "m1");
  Datagram second = next_datagram(back_.fd);
  EXPECT_EQ(second.data, "message two");
  EXPECT_TRUE(first.from == second.from) << "one datagram socket per connection";

  ASSERT_EQ(sendto(back_.fd.get(), "r1", 2, 0, first.from.sa(), first.from.length), 2);
  EXPECT_EQ(next_datagram(client.fd).data, "r1");
  EXPECT_EQ(budget().used(), 1u);

  client.fd.reset();
  ASSERT_TRUE(pump([&] { return route.session_count() == 0; }));
  EXPECT_EQ(route.counters().sessions_closed, 1u);
  EXPECT_EQ(budget().used(), 0u);
}

TEST_F(BridgeRouteTest, StopClosesEverySession) {
  BridgeRoute& route = start_udp_bridge(EndpointKind::UnixStream);
  Fd a = udp_client(), b = udp_client();
  send_to_front(a, "a");
  Peer first = accept_peer(back_.fd);
  send_to_front(b, "b");
  Peer second = accept_peer(back_.fd);
  ASSERT_TRUE(pump([&] { return route.counters().sessions_created == 2; }));

  route.stop();
  EXPECT_EQ(route.session_count(), 0u);
  EXPECT_EQ(budget().used(), 0u);
  ASSERT_TRUE(read_until_ended(first));
  ASSERT_TRUE(read_until_ended(second));
  EXPECT_EQ(first.received, "a") << "what was taken in is delivered before the close";
  EXPECT_EQ(second.received, "b");
  send_to_front(a, "after");
  pump_for(50ms);
  EXPECT_FALSE(took_a_connection(back_.fd)) << "a stopped route opens no session";
}

}  // namespace
}  // namespace sockrelay
