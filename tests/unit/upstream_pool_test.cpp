// Work kept off a new client's path: the event loop's idle tasks and
// deferred closes, and the upstream sockets a datagram route makes ahead.
#include "sessions/upstream_pool.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/fd.h"
#include "loop/event_loop.h"

namespace sockrelay {
namespace {

using std::chrono::milliseconds;

EventLoop make_loop() {
  auto loop = EventLoop::create();
  EXPECT_TRUE(loop.ok());
  return std::move(*loop);
}

bool fd_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

// A UDP socket on 127.0.0.1 and its address.
Fd bound_udp(sockaddr_in& addr) {
  Fd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  addr = sockaddr_in{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  return fd;
}

Result<Fd> connected_udp(const sockaddr_in& to) {
  Fd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd || connect(fd.get(), reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0)
    return errno_error("connect");
  return fd;
}

TEST(EventLoop, AnIdleTaskWaitsUntilNoEventIsReady) {
  EventLoop loop = make_loop();
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, pair), 0);
  Fd a(pair[0]), b(pair[1]);
  std::vector<std::string> order;
  ASSERT_TRUE(loop.add(a.get(), EPOLLIN,
                       [&](uint32_t) {
                         char c;
                         while (recv(a.get(), &c, 1, 0) > 0) order.push_back("event");
                       })
                  .ok());
  ASSERT_EQ(send(b.get(), "x", 1, 0), 1);
  loop.when_idle(&order, [&] { order.push_back("idle"); });
  ASSERT_TRUE(loop.run_once(milliseconds(100)).ok());  // the datagram first
  ASSERT_TRUE(loop.run_once(milliseconds(100)).ok());  // then nothing is ready: the task
  ASSERT_TRUE(loop.run_once(milliseconds(0)).ok());    // once only
  EXPECT_EQ(order, (std::vector<std::string>{"event", "idle"}));
}

TEST(EventLoop, AForgottenIdleTaskNeverRuns) {
  EventLoop loop = make_loop();
  int ran = 0;
  int owner = 0;
  loop.when_idle(&owner, [&] { ++ran; });
  loop.forget_idle(&owner);
  ASSERT_TRUE(loop.run_once(milliseconds(0)).ok());
  EXPECT_EQ(ran, 0);
}

TEST(EventLoop, CloseLaterClosesWhenIdleOrAtItsNextEvent) {
  EventLoop loop = make_loop();
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, pair), 0);
  Fd quiet(pair[0]), talker(pair[1]);
  int quiet_raw = quiet.get(), talker_raw = talker.get();
  int calls = 0;
  ASSERT_TRUE(loop.add(quiet_raw, EPOLLIN, [&](uint32_t) { ++calls; }).ok());
  ASSERT_TRUE(loop.add(talker_raw, EPOLLIN, [&](uint32_t) { ++calls; }).ok());
  ASSERT_EQ(send(talker_raw, "x", 1, 0), 1);  // the quiet end has an event now
  loop.close_later(std::move(quiet));
  EXPECT_TRUE(fd_open(quiet_raw)) << "closed at once";
  ASSERT_TRUE(loop.run_once(milliseconds(100)).ok());  // its event closes it, no handler called
  EXPECT_FALSE(fd_open(quiet_raw));
  EXPECT_EQ(calls, 0);

  loop.close_later(std::move(talker));
  EXPECT_TRUE(fd_open(talker_raw));
  ASSERT_TRUE(loop.run_once(milliseconds(0)).ok());  // nothing ready: idle closes it
  EXPECT_FALSE(fd_open(talker_raw));
  EXPECT_EQ(calls, 0);
}

TEST(EventLoop, CloseLaterHoldsAtMostKMaxClosing) {
  EventLoop loop = make_loop();
  std::vector<int> raws;
  for (size_t i = 0; i <= EventLoop::kMaxClosing; ++i) {
    Fd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    raws.push_back(fd.get());
    ASSERT_TRUE(loop.add(fd.get(), EPOLLIN, [](uint32_t) {}).ok());
    loop.close_later(std::move(fd));
  }
  // The one past the limit closed those that waited, without a wait.
  size_t open = 0;
  for (int raw : raws) open += fd_open(raw);
  EXPECT_EQ(open, 1u);
}

TEST(UpstreamPool, RefillsToItsDepthAndHandsOutTheOldestFirst) {
  EventLoop loop = make_loop();
  sockaddr_in target;
  Fd server = bound_udp(target);
  UpstreamPool pool(loop, {true, false});
  EXPECT_TRUE(pool.short_of(0));
  EXPECT_FALSE(pool.short_of(1)) << "a target not pooled is never short";
  std::vector<int> made;
  auto open = [&]() -> Result<Fd> {
    auto fd = connected_udp(target);
    if (fd) made.push_back(fd->get());
    return fd;
  };
  ASSERT_TRUE(pool.refill(0, open, 1000).ok());
  EXPECT_EQ(pool.ready(0), UpstreamPool::kDepth);
  EXPECT_FALSE(pool.short_of(0));

  int answered = -1;
  auto first = pool.take(0, [&](uint32_t) { answered = 1; });
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->get(), made.front());
  EXPECT_EQ(pool.ready(0), UpstreamPool::kDepth - 1);
  ASSERT_TRUE(pool.refill(0, open, 2000).ok());
  EXPECT_EQ(made.size(), UpstreamPool::kDepth + 1) << "topped up by the one taken";
  // Watched already: an answer reaches the handler given at take().
  ASSERT_EQ(send(first->get(), "q", 1, 0), 1);
  char buf[8];
  sockaddr_in from;
  socklen_t from_len = sizeof(from);
  ASSERT_EQ(
      recvfrom(server.get(), buf, sizeof(buf), MSG_WAITALL, reinterpret_cast<sockaddr*>(&from), &from_len),
      1);
  ASSERT_EQ(sendto(server.get(), "a", 1, 0, reinterpret_cast<sockaddr*>(&from), from_len), 1);
  ASSERT_TRUE(loop.run_once(milliseconds(1000)).ok());
  EXPECT_EQ(answered, 1);
}

TEST(UpstreamPool, ADatagramForASocketNoFlowHasIsReadAndCountedAsStray) {
  EventLoop loop = make_loop();
  sockaddr_in target;
  Fd server = bound_udp(target);
  UpstreamPool pool(loop, {true});
  std::vector<int> made;
  ASSERT_TRUE(pool.refill(
                      0,
                      [&]() -> Result<Fd> {
                        auto fd = connected_udp(target);
                        if (fd) made.push_back(fd->get());
                        return fd;
                      },
                      0)
                  .ok());
  // The target answers a socket no flow has taken yet (a late answer to an
  // earlier socket on the same port).
  sockaddr_in local;
  socklen_t len = sizeof(local);
  ASSERT_EQ(getsockname(made.back(), reinterpret_cast<sockaddr*>(&local), &len), 0);
  ASSERT_EQ(sendto(server.get(), "late", 4, 0, reinterpret_cast<sockaddr*>(&local), len), 4);
  ASSERT_TRUE(loop.run_once(milliseconds(1000)).ok());
  EXPECT_EQ(pool.strays(), 1u);
  ASSERT_TRUE(loop.run_once(milliseconds(0)).ok());  // read: no event left to spin on
  EXPECT_EQ(pool.strays(), 1u);
}

TEST(UpstreamPool, ExpiresOldSocketsAndClearsAFailedTarget) {
  EventLoop loop = make_loop();
  sockaddr_in target;
  Fd server = bound_udp(target);
  UpstreamPool pool(loop, {true, true});
  const uint64_t t0 = 1'000'000'000;
  ASSERT_TRUE(pool.refill(
                      0, [&] { return connected_udp(target); }, t0)
                  .ok());
  ASSERT_TRUE(pool.refill(
                      1, [&] { return connected_udp(target); }, t0 + UpstreamPool::kMaxAgeNs)
                  .ok());
  pool.expire(t0 + UpstreamPool::kMaxAgeNs + 1);
  EXPECT_EQ(pool.ready(0), 0u) << "older than kMaxAgeNs";
  EXPECT_EQ(pool.ready(1), UpstreamPool::kDepth);
  pool.clear(1);
  EXPECT_EQ(pool.ready(1), 0u);
  EXPECT_FALSE(pool.take(1, [](uint32_t) {}).has_value());
}

TEST(UpstreamPool, StopsAtTheFirstFailureAndSaysWhy) {
  EventLoop loop = make_loop();
  UpstreamPool pool(loop, {true});
  int calls = 0;
  Status st = pool.refill(
      0,
      [&]() -> Result<Fd> {
        if (++calls == 3) return Error{EMFILE, "socket"};
        return Fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      },
      0);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, EMFILE);
  EXPECT_EQ(pool.ready(0), 2u);
}

}  // namespace
}  // namespace sockrelay
