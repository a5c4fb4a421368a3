// StreamRoute's bookkeeping without privilege: real loopback and UNIX
// connections, the route's EventLoop driven from the test, and a fake map
// writer for the kernel path (it never redirects, so a kernel session's
// bytes stay where the verdict program would have taken them).
#include "sessions/stream_route.h"

#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <set>
#include <string>
#include <vector>

#include "fake_maps.h"
#include "relay_shared.h"
#include "socket_pairs.h"

namespace sockrelay {
namespace {

using namespace std::chrono_literals;
using test_sockets::bind_endpoint;
using test_sockets::Bound;
using test_sockets::connect_client;
using test_sockets::pattern;
using test_sockets::Peer;

StreamRouteSpec stream_spec(uint32_t id, const Bound& from, std::vector<const Bound*> to, bool kernel,
                            std::chrono::milliseconds idle = 60s, Balance balance = Balance::Single) {
  StreamRouteSpec s;
  s.route_id = id;
  s.from = &from.endpoint;
  for (const Bound* b : to) s.to.push_back(&b->endpoint);
  s.balance = balance;
  s.kernel = kernel;
  s.idle_timeout = idle;
  return s;
}

class StreamRouteTest : public test_sockets::RouteFixture {
 protected:
  Bound tcp(const std::string& name, Role role) { return bind_endpoint(EndpointKind::Tcp, name, role); }

  // A client connected through `front` and the upstream connection the
  // route opened for it on `server`, once the session counts as created.
  struct Session {
    Peer client, upstream;
  };
  Session open_session(StreamRoute& route, const Bound& front, const Bound& server) {
    Session s;
    uint64_t created = route.counters().sessions_created;
    s.client.fd = connect_client(front.endpoint);
    s.upstream = accept_peer(server.fd);
    EXPECT_TRUE(pump([&] { return route.counters().sessions_created == created + 1; }));
    return s;
  }
  // Both ends shut down their writing side; every byte each sent reaches the
  // other and the session closes cleanly.
  void finish(StreamRoute& route, Session& s) {
    shutdown(s.client.fd.get(), SHUT_WR);
    ASSERT_TRUE(pump([&] {
      s.upstream.step();
      return s.upstream.ended();
    }));
    shutdown(s.upstream.fd.get(), SHUT_WR);
    ASSERT_TRUE(pump([&] {
      s.client.step();
      return s.client.ended() && route.session_count() == 0;
    }));
  }

  static int queued_in(const Fd& fd) {
    int n = -1;
    ioctl(fd.get(), SIOCINQ, &n);
    return n;
  }
  static int queued_out(const Fd& fd) {
    int n = -1;
    ioctl(fd.get(), SIOCOUTQ, &n);
    return n;
  }

  FakeMaps maps_;
};

// ---- user path, every byte-stream pairing ---------------------------------

struct Pairing {
  const char* name;
  EndpointKind from, to;
};
// gtest prints a failing test's parameter: its name, not its bytes.
void PrintTo(const Pairing& pairing, std::ostream* out) { *out << pairing.name; }

class StreamPairingTest : public StreamRouteTest, public ::testing::WithParamInterface<Pairing> {
 protected:
  Bound endpoint(EndpointKind kind, const std::string& name, Role role) {
    return bind_endpoint(kind, name, role, path(name + ".sock"));
  }
};

// 1 MiB each way at once, both directions read while written: what arrives
// is what was sent, byte for byte, and the FINs pass on in both directions.
TEST_P(StreamPairingTest, RelaysBothWaysByteExactThenClosesCleanly) {
  Bound front = endpoint(GetParam().from, "front", Role::Listen);
  Bound server = endpoint(GetParam().to, "back", Role::Connect);
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Session s = open_session(route, front, server);
  EXPECT_EQ(route.session_count(), 1u);
  EXPECT_EQ(budget.used(), 1u);

  constexpr size_t kSize = 1 << 20;
  s.client.to_send = pattern(kSize, 1);
  s.upstream.to_send = pattern(kSize, 2);
  ASSERT_TRUE(pump([&] {
    s.client.step();
    s.upstream.step();
    return s.upstream.received.size() >= kSize && s.client.received.size() >= kSize;
  })) << "upstream got "
      << s.upstream.received.size() << ", client got " << s.client.received.size();
  EXPECT_TRUE(s.upstream.received == s.client.to_send) << "client -> upstream bytes differ";
  EXPECT_TRUE(s.client.received == s.upstream.to_send) << "upstream -> client bytes differ";
  EXPECT_EQ(route.counters().user_bytes, 2 * kSize);

  finish(route, s);
  EXPECT_TRUE(s.upstream.eof && s.client.eof) << "a clean close is a FIN, not a reset";
  EXPECT_EQ(s.upstream.received.size(), kSize) << "nothing after the last byte";
  EXPECT_EQ(route.counters().half_closes, 2u);
  EXPECT_EQ(route.counters().sessions_closed, 1u);
  EXPECT_EQ(route.counters().sessions_failed, 0u);
  EXPECT_EQ(budget.used(), 0u);
}

// ---- half-close --------------------------------------------------------------

// The client sends until every buffer on the way is full (the upstream
// does not read yet), then shuts down its writing side. The FIN must wait
// for every byte before it: while the relay holds bytes the upstream sees
// no EOF; once it reads, it gets every byte and then EOF. The buffers at
// the client's side are small, so that when the upstream reads, the relay
// takes the client's last bytes and its EOF at once while its pipe toward
// the upstream still holds bytes: a FIN passed on then would cut them off.
TEST_P(StreamPairingTest, HalfClosePassesOnOnlyAfterEveryByte) {
  Bound front = endpoint(GetParam().from, "front", Role::Listen);
  Bound server = endpoint(GetParam().to, "back", Role::Connect);
  int small = 16 * 1024, upstream_buffer = 64 * 1024;
  // Accepted sockets inherit these (tcp; AF_UNIX queues against the sender).
  setsockopt(front.fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  setsockopt(server.fd.get(), SOL_SOCKET, SO_RCVBUF, &upstream_buffer, sizeof(upstream_buffer));
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Session s = open_session(route, front, server);
  setsockopt(s.client.fd.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));

  // Send until nothing more is taken for 200 ms: every buffer on the way is full.
  s.client.to_send = pattern(16 << 20, 5);
  size_t last = 0;
  uint64_t still_since = monotonic_ns();
  ASSERT_TRUE(pump([&] {
    s.client.step();
    if (s.client.sent != last) {
      last = s.client.sent;
      still_since = monotonic_ns();
    }
    return s.client.all_sent() || monotonic_ns() - still_since > ms_to_ns(200);
  }));
  ASSERT_LT(s.client.sent, s.client.to_send.size())
      << "the relay's buffers never filled: the test proves nothing";
  s.client.to_send.resize(s.client.sent);
  ASSERT_EQ(shutdown(s.client.fd.get(), SHUT_WR), 0);

  pump_for(100ms);
  EXPECT_EQ(route.counters().half_closes, 0u) << "FIN passed on while bytes still wait in the relay";
  s.upstream.read_available();
  EXPECT_FALSE(s.upstream.ended()) << "EOF after " << s.upstream.received.size() << " of " << s.client.sent;

  ASSERT_TRUE(pump([&] {
    s.upstream.read_available();
    return s.upstream.ended();
  }));
  EXPECT_TRUE(s.upstream.eof) << "a FIN, not a reset: " << std::strerror(s.upstream.error);
  EXPECT_EQ(s.upstream.received.size(), s.client.sent) << "EOF came before every byte";
  EXPECT_TRUE(s.upstream.received == s.client.to_send) << "bytes differ";
  EXPECT_EQ(route.counters().half_closes, 1u);
  EXPECT_EQ(route.session_count(), 1u) << "the other direction is still open";

  // The upstream answers after the client's FIN: still delivered.
  ASSERT_EQ(send(s.upstream.fd.get(), "late reply", 10, 0), 10);
  ASSERT_EQ(shutdown(s.upstream.fd.get(), SHUT_WR), 0);
  ASSERT_TRUE(pump([&] {
    s.client.read_available();
    return s.client.ended();
  }));
  EXPECT_EQ(s.client.received, "late reply");
  EXPECT_TRUE(pump([&] { return route.session_count() == 0; }));
  EXPECT_EQ(route.counters().half_closes, 2u);
  EXPECT_EQ(route.counters().sessions_closed, 1u);
  EXPECT_EQ(budget.used(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    StreamUserPath, StreamPairingTest,
    ::testing::Values(Pairing{"tcp_to_tcp", EndpointKind::Tcp, EndpointKind::Tcp},
                      Pairing{"unix_stream_to_unix_stream", EndpointKind::UnixStream,
                              EndpointKind::UnixStream},
                      Pairing{"tcp_to_unix_stream", EndpointKind::Tcp, EndpointKind::UnixStream},
                      Pairing{"unix_stream_to_tcp", EndpointKind::UnixStream, EndpointKind::Tcp}),
    [](const ::testing::TestParamInfo<Pairing>& info) { return info.param.name; });

// seqpacket <-> seqpacket: one recv/send per message, so each message
// arrives whole and alone, including an empty one.
TEST_F(StreamRouteTest, SeqpacketKeepsEveryMessageBoundary) {
  Bound front = bind_endpoint(EndpointKind::UnixSeqpacket, "front", Role::Listen, path("front.sock"));
  Bound server = bind_endpoint(EndpointKind::UnixSeqpacket, "back", Role::Connect, path("back.sock"));
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Session s = open_session(route, front, server);

  const std::vector<std::string> messages = {"a", pattern(1000, 3), "", pattern(60'000, 4), "end"};
  for (const std::string& m : messages)
    ASSERT_EQ(send(s.client.fd.get(), m.data(), m.size(), 0), ssize_t(m.size()));
  std::vector<std::string> got;
  std::vector<char> buf(256 * 1024);
  ASSERT_TRUE(pump([&] {
    ssize_t n = recv(s.upstream.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n >= 0) got.emplace_back(buf.data(), static_cast<size_t>(n));
    return got.size() == messages.size();
  }));
  EXPECT_EQ(got, messages);
  EXPECT_EQ(route.counters().user_messages, messages.size());
  EXPECT_EQ(route.counters().user_bytes, 1 + 1000 + 60'000 + 3u);
}

// The user path's rule, seen exactly: AF_UNIX puts what the relay writes
// straight into the upstream's receive queue (SIOCINQ there) and the
// client's SIOCOUTQ is 0 once the relay has read everything, so the bytes
// in the relay's pipe are what was sent less what the upstream holds. The
// client's FIN arrives while the pipe holds bytes: it must wait for them.
TEST_F(StreamRouteTest, UserPathHoldsTheFinWhileItsPipeHoldsBytes) {
  Bound front = bind_endpoint(EndpointKind::UnixStream, "front", Role::Listen, path("front.sock"));
  Bound server = bind_endpoint(EndpointKind::UnixStream, "back", Role::Connect, path("back.sock"));
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Session s = open_session(route, front, server);

  // 16 KiB at a time, the upstream not reading, until the relay has read
  // everything but could not write all of it on.
  const std::string data = pattern(4 << 20, 6);
  constexpr size_t kChunk = 16 * 1024;
  size_t sent = 0, in_pipe = 0;
  while (sent < data.size() && in_pipe == 0) {
    ssize_t n = send(s.client.fd.get(), data.data() + sent, kChunk, MSG_DONTWAIT);
    ASSERT_EQ(n, ssize_t(kChunk)) << "the client's buffer filled: the relay stopped reading";
    sent += kChunk;
    ASSERT_TRUE(pump([&] { return queued_out(s.client.fd) == 0; }, 2000ms)) << "the relay stopped reading";
    in_pipe = sent - static_cast<size_t>(queued_in(s.upstream.fd));
  }
  ASSERT_GT(in_pipe, 0u) << "the upstream took everything: the test proves nothing";
  s.client.to_send = data.substr(0, sent);
  ASSERT_EQ(shutdown(s.client.fd.get(), SHUT_WR), 0);
  pump_for(100ms);
  EXPECT_EQ(route.counters().half_closes, 0u) << "FIN passed on with " << in_pipe << " bytes in the pipe";

  ASSERT_TRUE(pump([&] {
    s.upstream.read_available();
    return s.upstream.ended();
  }));
  EXPECT_TRUE(s.upstream.eof) << "a FIN, not a reset: " << std::strerror(s.upstream.error);
  EXPECT_EQ(s.upstream.received.size(), sent) << "EOF came before every byte";
  EXPECT_TRUE(s.upstream.received == s.client.to_send) << "bytes differ";
  EXPECT_EQ(route.counters().half_closes, 1u);
  EXPECT_EQ(route.counters().sessions_failed, 0u);
}

// ---- admission: max-sessions ---------------------------------------------------

TEST_F(StreamRouteTest, MaxSessionsRefusesTheSecondConnectionAndCounts) {
  Bound front = tcp("front", Role::Listen);
  Bound server = tcp("back", Role::Connect);
  SessionBudget budget(1);
  StreamRoute route(stream_spec(1, front, {&server}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Session first = open_session(route, front, server);
  EXPECT_EQ(budget.used(), 1u);

  Peer refused{connect_client(front.endpoint)};
  ASSERT_TRUE(pump([&] { return route.counters().refused_max_sessions == 1; }));
  ASSERT_TRUE(pump([&] {
    refused.read_available();
    return refused.ended();
  })) << "a refused client is closed at once";
  EXPECT_EQ(route.session_count(), 1u);
  EXPECT_EQ(route.counters().sessions_created, 1u);
  EXPECT_FALSE(took_a_connection(server.fd)) << "no upstream connection for a refused client";

  // The first session ends: its share of the budget comes back.
  finish(route, first);
  EXPECT_EQ(budget.used(), 0u);
  Session next = open_session(route, front, server);
  EXPECT_EQ(route.counters().sessions_created, 2u);
  EXPECT_EQ(route.counters().refused_max_sessions, 1u);
}

// ---- targets: refusal and back-off ----------------------------------------------

// The only target refuses: the client is closed, counted as connect_failed,
// and the target is reported down with its first back-off (500 ms).
TEST_F(StreamRouteTest, RefusingTargetCountsConnectFailedAndClosesTheClient) {
  Bound front = tcp("front", Role::Listen);
  Bound refusing = test_sockets::refusing_tcp_endpoint("dead");
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&refusing}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  uint64_t before = monotonic_ns();
  Peer client{connect_client(front.endpoint)};
  ASSERT_TRUE(pump([&] { return route.counters().connect_failed == 1; }));
  uint64_t elapsed_ms = (monotonic_ns() - before) / 1'000'000;
  ASSERT_TRUE(pump([&] {
    client.read_available();
    return client.ended();
  }));
  EXPECT_EQ(route.session_count(), 0u);
  EXPECT_EQ(route.counters().sessions_created, 0u);
  EXPECT_EQ(budget.used(), 0u);
  std::vector<TargetReport> targets = route.targets();
  ASSERT_EQ(targets.size(), 1u);
  EXPECT_FALSE(targets[0].up);
  EXPECT_EQ(targets[0].failures, 1u);
  EXPECT_GT(targets[0].retry_in_ms, 0) << "a down target says when it is tried again";
  EXPECT_LE(targets[0].retry_in_ms, 500);
  // retry_in_ms + the time since the failure is the back-off; the time
  // since `before` bounds the latter from above (+2: two roundings down).
  EXPECT_GE(targets[0].retry_in_ms + int64_t(elapsed_ms) + 2, 500) << "the first back-off is 500 ms";
}

// Two targets, round-robin, the first refuses: the session goes on to the
// live one (the client never notices), the refusing target leaves the
// rotation and new sessions skip it until its back-off has passed; tried
// again and refusing again, its back-off doubles.
TEST_F(StreamRouteTest, RefusingTargetLeavesTheRotationAndBacksOff) {
  Bound front = tcp("front", Role::Listen);
  Bound refusing = test_sockets::refusing_tcp_endpoint("dead");
  Bound live = tcp("live", Role::Connect);
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&refusing, &live}, false, 60s, Balance::RoundRobin),
                    std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());

  // Every client lands on the live target, whatever the rotation's position.
  std::vector<Session> sessions;
  auto serve_one = [&] {
    sessions.push_back(open_session(route, front, live));
    Session& s = sessions.back();
    s.client.to_send = "hello";
    ASSERT_TRUE(pump([&] {
      s.client.step();
      s.upstream.step();
      return s.upstream.received == "hello";
    }));
  };
  for (int i = 0; i < 2; ++i) serve_one();
  std::vector<TargetReport> t = route.targets();
  ASSERT_EQ(t.size(), 2u);
  EXPECT_FALSE(t[0].up);
  EXPECT_EQ(t[0].failures, 1u) << "within its back-off a down target is not tried";
  EXPECT_GT(t[0].retry_in_ms, 0);
  EXPECT_TRUE(t[1].up);
  EXPECT_EQ(t[1].sessions, 2u);
  EXPECT_EQ(t[0].sessions, 0u);
  EXPECT_EQ(route.counters().connect_failed, 0u) << "connect_failed counts clients no target could serve";
  EXPECT_EQ(route.counters().sessions_created, 2u);

  // Once its retry is due, a new session tries it again (the rotation may
  // start at either target: at most two clients until it is its turn).
  ASSERT_TRUE(pump([&] { return route.targets()[0].retry_in_ms == 0; }, 2000ms));
  uint64_t before = 0;
  for (int i = 0; i < 2 && route.targets()[0].failures < 2; ++i) {
    before = monotonic_ns();
    serve_one();
  }
  t = route.targets();
  uint64_t elapsed_ms = (monotonic_ns() - before) / 1'000'000;
  EXPECT_EQ(t[0].failures, 2u) << "retried once its back-off passed";
  EXPECT_FALSE(t[0].up);
  EXPECT_LE(t[0].retry_in_ms, 1000);
  EXPECT_GE(t[0].retry_in_ms + int64_t(elapsed_ms) + 2, 1000) << "the second back-off doubles the first";
  EXPECT_EQ(t[1].sessions, sessions.size());
  EXPECT_EQ(route.counters().sessions_created, sessions.size());
}

// ---- idle expiry and stop ---------------------------------------------------------

TEST_F(StreamRouteTest, IdleSessionExpiresAfterItsTimeoutNotBefore) {
  Bound front = tcp("front", Role::Listen);
  Bound server = tcp("back", Role::Connect);
  SessionBudget budget(8);
  constexpr auto kIdle = 150ms;
  StreamRoute route(stream_spec(1, front, {&server}, false, kIdle), std::move(front.fd), nullptr, *loop_,
                    budget);
  ASSERT_TRUE(route.start().ok());
  Session s = open_session(route, front, server);
  uint64_t last_sent = monotonic_ns();
  s.client.to_send = "x";
  ASSERT_TRUE(pump([&] {
    s.client.step();
    s.upstream.step();
    return s.upstream.received == "x";
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
  EXPECT_EQ(route.counters().sessions_closed, 0u);
  EXPECT_EQ(budget.used(), 0u);
  ASSERT_TRUE(pump([&] {
    s.client.read_available();
    s.upstream.read_available();
    return s.client.ended() && s.upstream.ended();
  })) << "both ends are closed";
}

TEST_F(StreamRouteTest, StopClosesEverySessionAndStopsAccepting) {
  Bound front = tcp("front", Role::Listen);
  Bound server = tcp("back", Role::Connect);
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, false), std::move(front.fd), nullptr, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  std::vector<Session> sessions;
  for (int i = 0; i < 3; ++i) sessions.push_back(open_session(route, front, server));
  EXPECT_EQ(route.session_count(), 3u);

  route.stop();
  EXPECT_EQ(route.session_count(), 0u);
  EXPECT_EQ(budget.used(), 0u);
  ASSERT_TRUE(pump([&] {
    bool all = true;
    for (Session& s : sessions) {
      s.client.read_available();
      s.upstream.read_available();
      all = all && s.client.ended() && s.upstream.ended();
    }
    return all;
  })) << "every client and upstream connection is closed";
  Peer late{connect_client(front.endpoint)};
  pump_for(50ms);
  EXPECT_FALSE(took_a_connection(server.fd)) << "a stopped route opens no session";
  EXPECT_EQ(route.counters().sessions_created, 3u);
}

// ---- kernel path, against the fake map writer ------------------------------------

// Both sockets of a tcp session enter the maps: a flow each, pointing at
// the other, as targets before they are steered as sources; user space
// leaves their bytes to the verdict program. stop() takes every entry out,
// sources first (nothing is steered toward a socket that left the map).
TEST_F(StreamRouteTest, KernelSessionEntersTheMapsAndLeavesAtStop) {
  Bound front = tcp("front", Role::Listen);
  Bound server = tcp("back", Role::Connect);
  SessionBudget budget(8);
  StreamRoute route(stream_spec(9, front, {&server}, true), std::move(front.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  EXPECT_TRUE(maps_.empty()) << "a stream listener never enters the maps";
  Session s = open_session(route, front, server);

  ASSERT_EQ(maps_.flows.size(), 2u);
  auto it = maps_.flows.begin();
  uint64_t a = it->first;
  FlowEntry fa = it->second;
  ++it;
  uint64_t b = it->first;
  FlowEntry fb = it->second;
  EXPECT_EQ(fa.target_cookie, b);
  EXPECT_EQ(fb.target_cookie, a);
  for (const FlowEntry& f : {fa, fb}) {
    EXPECT_EQ(f.route_id, 9u);
    EXPECT_EQ(f.flags, uint32_t(RELAY_FLOW_STREAM));
  }
  EXPECT_EQ(maps_.targets, (std::set<uint64_t>{a, b}));
  EXPECT_EQ(maps_.sources, (std::set<uint64_t>{a, b}));
  for (uint64_t key : {a, b}) {
    EXPECT_LT(maps_.first("set_flow", key), maps_.first("add_source", key))
        << "steered before its flow exists";
    EXPECT_LT(maps_.first("add_target", key), maps_.first("add_source", key));
  }
  EXPECT_EQ(route.counters().user_fallbacks, 0u);

  s.client.to_send = "for the verdict program";
  s.client.step();
  pump_for(50ms);
  s.upstream.read_available();
  EXPECT_EQ(s.upstream.received, "") << "user space read a kernel session's bytes";
  EXPECT_EQ(route.counters().user_bytes, 0u);

  route.stop();
  EXPECT_TRUE(maps_.empty()) << "stop() must remove every map entry";
  for (uint64_t key : {a, b}) {
    EXPECT_LT(maps_.first("remove_source", key), maps_.first("remove_flow", key));
    EXPECT_LT(maps_.first("remove_flow", key), maps_.first("remove_target", key));
  }
  EXPECT_EQ(budget.used(), 0u);
}

// The kernel path's half-close rule with the counts the fake reports: a
// FIN with nothing before it passes on at once; a FIN after bytes the
// verdict program has not carried (or that have not left the target's
// backlog) waits.
TEST_F(StreamRouteTest, KernelHalfCloseWaitsForTheVerdictToCarryEveryByte) {
  Bound front = tcp("front", Role::Listen);
  Bound server = tcp("back", Role::Connect);
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, true), std::move(front.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());

  Session empty = open_session(route, front, server);
  ASSERT_EQ(shutdown(empty.client.fd.get(), SHUT_WR), 0);
  ASSERT_TRUE(pump([&] {
    empty.upstream.read_available();
    return empty.upstream.ended();
  })) << "a FIN with no bytes before it must pass on";
  EXPECT_TRUE(empty.upstream.eof);
  EXPECT_EQ(route.counters().half_closes, 1u);

  Session busy = open_session(route, front, server);
  std::set<uint64_t> keys;
  for (const auto& [key, flow] : maps_.flows) keys.insert(key);
  ASSERT_EQ(send(busy.client.fd.get(), "0123456789", 10, 0), 10);
  ASSERT_EQ(shutdown(busy.client.fd.get(), SHUT_WR), 0);
  pump_for(100ms);
  EXPECT_EQ(route.counters().half_closes, 1u) << "FIN passed on before the verdict carried the bytes";
  // The verdict program says it carried them, but none has reached the
  // upstream socket's send path: still held.
  for (uint64_t key : keys) maps_.redirected[key] = 10;
  pump_for(100ms);
  EXPECT_EQ(route.counters().half_closes, 1u) << "FIN passed on with the bytes still in the backlog";
  busy.upstream.read_available();
  EXPECT_FALSE(busy.upstream.ended());

  // Else stop() would wait its whole drain time for a backlog the fake
  // never empties.
  maps_.redirected.clear();
  route.stop();
  EXPECT_TRUE(maps_.empty());
}

// A sockmap takes established tcp sockets only: a client whose request and
// FIN arrived before the session was wired is carried by user space, from
// the first byte, and never enters the maps.
TEST_F(StreamRouteTest, KernelRouteCarriesAnAlreadyHalfClosedClientInUserSpace) {
  Bound front = tcp("front", Role::Listen);
  Bound server = tcp("back", Role::Connect);
  SessionBudget budget(8);
  StreamRoute route(stream_spec(1, front, {&server}, true), std::move(front.fd), &maps_, *loop_, budget);
  ASSERT_TRUE(route.start().ok());
  Peer client{connect_client(front.endpoint)};
  ASSERT_EQ(send(client.fd.get(), "request", 7, 0), 7);
  ASSERT_EQ(shutdown(client.fd.get(), SHUT_WR), 0);

  Peer upstream = accept_peer(server.fd);
  ASSERT_TRUE(pump([&] {
    upstream.read_available();
    return upstream.ended();
  }));
  EXPECT_EQ(upstream.received, "request");
  EXPECT_TRUE(upstream.eof);
  EXPECT_EQ(route.counters().user_fallbacks, 1u);
  EXPECT_EQ(maps_.count("set_flow"), 0u);
  EXPECT_TRUE(maps_.empty());
}

}  // namespace
}  // namespace sockrelay
