// BridgeRoute's bookkeeping without privilege: datagrams on one side,
// connections on the other, on loopback and in a temp dir. The bridge is
// user space only, so no map writer is involved.
#include "sessions/bridge_route.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "socket_pairs.h"

namespace sockrelay {
namespace {

using namespace std::chrono_literals;
using test_sockets::bind_endpoint;
using test_sockets::Bound;
using test_sockets::connect_client;
using test_sockets::pattern;
using test_sockets::Peer;
using test_sockets::udp_client;

BridgeRouteSpec bridge_spec(uint32_t id, const Bound& from, const Bound& to,
                            std::chrono::milliseconds idle = 60s) {
  BridgeRouteSpec s;
  s.route_id = id;
  s.from = &from.endpoint;
  s.to = &to.endpoint;
  s.idle_timeout = idle;
  return s;
}

// One datagram as it arrived, with where it came from.
struct Datagram {
  std::string data;
  SocketAddress from;
};

class BridgeRouteTest : public test_sockets::RouteFixture {
 protected:
  Bound udp_front() { return bind_endpoint(EndpointKind::Udp, "front", Role::Listen); }
  Bound unix_back(EndpointKind kind) { return bind_endpoint(kind, "back", Role::Connect, path("back.sock")); }

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
};

// udp -> unix-stream: each datagram is appended to the byte stream whole
// and in order (one write each); what the upstream writes comes back as a
// datagram from the listener's address.
TEST_F(BridgeRouteTest, DatagramsJoinTheStreamInOrderAndRepliesComeBackAsDatagrams) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixStream);
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd client = udp_client();
  const std::vector<std::string> datagrams = {"first ", pattern(30'000, 7), " third"};
  for (const std::string& d : datagrams) send_to(client, front.endpoint, d);

  Peer upstream = accept_peer(back.fd);
  const std::string expected = datagrams[0] + datagrams[1] + datagrams[2];
  ASSERT_TRUE(pump([&] {
    upstream.read_available();
    return upstream.received.size() >= expected.size() || upstream.ended();
  }));
  EXPECT_TRUE(upstream.received == expected) << "the stream must hold every datagram, in order";
  EXPECT_EQ(route.counters().user_messages, datagrams.size()) << "one write per datagram";
  EXPECT_EQ(route.counters().sessions_created, 1u);
  EXPECT_EQ(route.session_count(), 1u);
  EXPECT_EQ(budget.used(), 1u);

  ASSERT_EQ(send(upstream.fd.get(), "reply", 5, 0), 5);
  Datagram reply = next_datagram(client);
  EXPECT_EQ(reply.data, "reply");
  EXPECT_TRUE(reply.from == front.endpoint.address) << "a reply comes from the address the client sent to";
  EXPECT_EQ(route.counters().dropped_messages, 0u);
}

// udp -> unix-seqpacket: the boundaries survive both ways, one datagram
// per message and one message per datagram.
TEST_F(BridgeRouteTest, EachDatagramIsOneSeqpacketMessageAndBack) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixSeqpacket);
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd client = udp_client();
  const std::vector<std::string> datagrams = {"a", pattern(1200, 8), "ccc"};
  for (const std::string& d : datagrams) send_to(client, front.endpoint, d);

  Peer upstream = accept_peer(back.fd);
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
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixSeqpacket);
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd alice = udp_client(), bob = udp_client();
  send_to(alice, front.endpoint, "alice 1");
  Peer first = accept_peer(back.fd);
  send_to(bob, front.endpoint, "bob 1");
  Peer second = accept_peer(back.fd);
  send_to(alice, front.endpoint, "alice 2");
  send_to(bob, front.endpoint, "bob 2");
  send_to(alice, front.endpoint, "alice 3");

  EXPECT_EQ(next_datagram(first.fd).data, "alice 1");
  EXPECT_EQ(next_datagram(first.fd).data, "alice 2");
  EXPECT_EQ(next_datagram(first.fd).data, "alice 3");
  EXPECT_EQ(next_datagram(second.fd).data, "bob 1");
  EXPECT_EQ(next_datagram(second.fd).data, "bob 2");
  EXPECT_FALSE(took_a_connection(back.fd)) << "a known client's datagram opened another connection";
  EXPECT_EQ(route.session_count(), 2u);
  EXPECT_EQ(route.counters().sessions_created, 2u);

  ASSERT_EQ(send(second.fd.get(), "for bob", 7, 0), 7);
  EXPECT_EQ(next_datagram(bob).data, "for bob");
  EXPECT_TRUE(stays_quiet(alice)) << "bob's reply went to alice";
}

TEST_F(BridgeRouteTest, MaxSessionsRefusesANewClientAndCounts) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixStream);
  SessionBudget budget(1);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd admitted = udp_client(), refused = udp_client();
  send_to(admitted, front.endpoint, "in");
  Peer upstream = accept_peer(back.fd);
  send_to(refused, front.endpoint, "out 1");
  send_to(refused, front.endpoint, "out 2");
  ASSERT_TRUE(pump([&] { return route.counters().refused_max_sessions == 2; }))
      << "each datagram of a refused client is counted";
  EXPECT_FALSE(took_a_connection(back.fd)) << "no connection for a refused client";
  EXPECT_EQ(route.session_count(), 1u);
  EXPECT_EQ(budget.used(), 1u);
  upstream.read_available();
  EXPECT_EQ(upstream.received, "in");
}

// Nobody listens at the target's path: counted, nothing left behind.
TEST_F(BridgeRouteTest, UnreachableTargetCountsConnectFailed) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixStream);
  back.fd.reset();
  std::filesystem::remove(path("back.sock"));
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd client = udp_client();
  send_to(client, front.endpoint, "anyone?");
  ASSERT_TRUE(pump([&] { return route.counters().connect_failed == 1; }));
  EXPECT_EQ(route.session_count(), 0u);
  EXPECT_EQ(route.counters().sessions_created, 0u);
  EXPECT_EQ(budget.used(), 0u);
}

// The upstream closes its connection: the client's session ends (counted
// closed), and the client's next datagram opens a new one.
TEST_F(BridgeRouteTest, UpstreamCloseEndsTheSessionAndTheNextDatagramOpensAnother) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixStream);
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd client = udp_client();
  send_to(client, front.endpoint, "one");
  {
    Peer upstream = accept_peer(back.fd);
    // Read first: an AF_UNIX socket closed with unread bytes resets its peer.
    ASSERT_TRUE(pump([&] {
      upstream.read_available();
      return upstream.received == "one";
    }));
  }  // closed here
  ASSERT_TRUE(pump([&] { return route.session_count() == 0; }));
  EXPECT_EQ(route.counters().sessions_closed, 1u);
  EXPECT_EQ(route.counters().sessions_failed, 0u);
  EXPECT_EQ(budget.used(), 0u);

  send_to(client, front.endpoint, "two");
  Peer again = accept_peer(back.fd);
  ASSERT_TRUE(pump([&] {
    again.read_available();
    return again.received == "two";
  }));
  EXPECT_EQ(route.counters().sessions_created, 2u);
}

TEST_F(BridgeRouteTest, IdleSessionExpiresAfterItsTimeoutNotBefore) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixStream);
  SessionBudget budget(8);
  constexpr auto kIdle = 150ms;
  BridgeRoute route(bridge_spec(4, front, back, kIdle), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd client = udp_client();
  uint64_t last_sent = monotonic_ns();
  send_to(client, front.endpoint, "x");
  Peer upstream = accept_peer(back.fd);
  ASSERT_TRUE(pump([&] {
    upstream.read_available();
    return upstream.received == "x";
  }));
  uint64_t expired_at = 0;
  ASSERT_TRUE(pump([&] {
    route.expire_idle();
    if (route.session_count() != 0) return false;
    expired_at = monotonic_ns();
    return true;
  }));
  EXPECT_GE(expired_at - last_sent, ms_to_ns(kIdle.count())) << "expired before its idle timeout";
  EXPECT_EQ(route.counters().sessions_expired, 1u);
  EXPECT_EQ(budget.used(), 0u);
  ASSERT_TRUE(pump([&] {
    upstream.read_available();
    return upstream.ended();
  })) << "the upstream connection is closed";
}

// A connection source: unix-seqpacket clients, a udp target. Each message
// is one datagram, each reply datagram one message, one datagram socket
// per connection; the client's close ends the session cleanly.
TEST_F(BridgeRouteTest, ConnectionSourceEachMessageIsOneDatagramAndBack) {
  Bound front = bind_endpoint(EndpointKind::UnixSeqpacket, "front", Role::Listen, path("front.sock"));
  Bound target = bind_endpoint(EndpointKind::Udp, "back", Role::Connect);
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, target), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Peer client{connect_client(front.endpoint)};
  ASSERT_TRUE(pump([&] { return route.counters().sessions_created == 1; }));
  for (const char* m : {"m1", "message two"})
    ASSERT_EQ(send(client.fd.get(), m, strlen(m), 0), ssize_t(strlen(m)));
  Datagram first = next_datagram(target.fd);
  EXPECT_EQ(first.data, "m1");
  Datagram second = next_datagram(target.fd);
  EXPECT_EQ(second.data, "message two");
  EXPECT_TRUE(first.from == second.from) << "one datagram socket per connection";

  ASSERT_EQ(sendto(target.fd.get(), "r1", 2, 0, first.from.sa(), first.from.length), 2);
  EXPECT_EQ(next_datagram(client.fd).data, "r1");
  EXPECT_EQ(budget.used(), 1u);

  client.fd.reset();
  ASSERT_TRUE(pump([&] { return route.session_count() == 0; }));
  EXPECT_EQ(route.counters().sessions_closed, 1u);
  EXPECT_EQ(budget.used(), 0u);
}

TEST_F(BridgeRouteTest, StopClosesEverySession) {
  Bound front = udp_front();
  Bound back = unix_back(EndpointKind::UnixStream);
  SessionBudget budget(8);
  BridgeRoute route(bridge_spec(4, front, back), std::move(front.fd), *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Fd a = udp_client(), b = udp_client();
  send_to(a, front.endpoint, "a");
  Peer first = accept_peer(back.fd);
  send_to(b, front.endpoint, "b");
  Peer second = accept_peer(back.fd);
  ASSERT_TRUE(pump([&] { return route.counters().sessions_created == 2; }));

  route.stop();
  EXPECT_EQ(route.session_count(), 0u);
  EXPECT_EQ(budget.used(), 0u);
  ASSERT_TRUE(pump([&] {
    first.read_available();
    second.read_available();
    return first.ended() && second.ended();
  }));
  EXPECT_EQ(first.received, "a") << "what was taken in is delivered before the close";
  EXPECT_EQ(second.received, "b");
  send_to(a, front.endpoint, "after");
  pump_for(50ms);
  EXPECT_FALSE(took_a_connection(back.fd)) << "a stopped route opens no session";
}

}  // namespace
}  // namespace sockrelay
