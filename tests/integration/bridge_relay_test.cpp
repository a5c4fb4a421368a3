// Routes between a datagram kind and a stream/seqpacket kind: user space
// frames each datagram as one message (seqpacket) or one write (stream),
// and each message or stream read as one datagram.
#include <gtest/gtest.h>

#include "relay_harness.h"
#include "stream_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

class Bridge : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  std::string route(const std::string& from_kind, const std::string& from, const std::string& to_kind,
                    const std::string& to) {
    return "[endpoints.front]\ntype = \"" + from_kind + "\"\nlisten = \"" + from +
           "\"\n[endpoints.back]\ntype = \"" + to_kind + "\"\nconnect = \"" + to +
           "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\n";
  }
  static std::string payload(size_t i) {
    std::string p(1 + (i * 977) % 6000, '\0');
    for (size_t k = 0; k < p.size(); ++k) p[k] = static_cast<char>(i * 13 + k);
    return p;
  }
  TempDir dir_;
};

// udp -> unix-seqpacket: a burst of datagrams from two clients, each echoed
// back whole, in order, to the client that sent it.
TEST_F(Bridge, UdpToSeqpacketKeepsEveryDatagramWhole) {
  SeqpacketEcho echo(Addr::unix_path(dir_.file("back.sock")));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, route("udp", "127.0.0.1:5300", "unix-seqpacket", dir_.file("back.sock")));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
  int rcvbuf = 8 << 20;  // the whole burst's replies wait here: no drop at the client
  ASSERT_EQ(setsockopt(client.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)), 0);
  Addr front = Addr::inet("127.0.0.1", 5300);
  constexpr size_t kCount = 200;
  for (size_t i = 0; i < kCount; ++i) {
    std::string p = payload(i);
    ASSERT_EQ(sendto(client.get(), p.data(), p.size(), 0, front.sa(), front.len),
              static_cast<ssize_t>(p.size()));
  }
  std::vector<char> buf(70000);
  for (size_t i = 0; i < kCount; ++i) {
    pollfd pfd{client.get(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 3000), 1) << "reply " << i << " missing\n" << relay.status_json();
    ssize_t n = recv(client.get(), buf.data(), buf.size(), 0);
    ASSERT_EQ(std::string(buf.data(), static_cast<size_t>(std::max<ssize_t>(n, 0))), payload(i))
        << "reply " << i << " (" << n << " bytes)\n"
        << relay.status_json();
  }
  std::string status = relay.status_json();
  EXPECT_EQ(json_counter(status, "stream", "user-messages"), 2 * kCount) << status;
  EXPECT_EQ(json_counter(status, "stream", "dropped-messages"), 0u) << status;
  EXPECT_NE(status.find("\"datapath\":\"userspace\""), std::string::npos) << status;
}

// unix-seqpacket -> udp: each message becomes one datagram to the target,
// each reply datagram one message back.
TEST_F(Bridge, SeqpacketToUdpKeepsEveryMessageWhole) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, route("unix-seqpacket", dir_.file("front.sock"), "udp", "127.0.0.1:5301"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = stream_connect(Addr::unix_path(dir_.file("front.sock")), SOCK_SEQPACKET);
  ASSERT_TRUE(c.valid());
  std::vector<char> buf(70000);
  for (size_t i = 0; i < 100; ++i) {
    std::string p = payload(i);
    ASSERT_EQ(send(c.get(), p.data(), p.size(), 0), static_cast<ssize_t>(p.size()));
    pollfd pfd{c.get(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 3000), 1) << "reply " << i << " missing\n" << relay.status_json();
    ssize_t n = recv(c.get(), buf.data(), buf.size(), 0);
    ASSERT_EQ(std::string(buf.data(), static_cast<size_t>(std::max<ssize_t>(n, 0))), p) << i;
  }
  c.reset();
  EXPECT_TRUE([&] {
    for (int i = 0; i < 100 && json_number(relay.status_json(), "sessions") != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return json_number(relay.status_json(), "sessions") == 0;
  }()) << "the session should end with the connection";
  EXPECT_EQ(json_counter(relay.status_json(), "stream", "sessions-closed"), 1u) << relay.status_json();
}

// udp <-> tcp, request/response: a datagram is written to the stream; the
// answer, read from the stream, comes back as a datagram.
TEST_F(Bridge, UdpToTcpRequestResponse) {
  SeqpacketEcho echo(Addr::inet("127.0.0.1", 6301), SOCK_STREAM);
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, route("udp", "127.0.0.1:5300", "tcp", "127.0.0.1:6301"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
  Addr front = Addr::inet("127.0.0.1", 5300);
  std::vector<char> buf(70000);
  for (size_t i = 0; i < 50; ++i) {
    std::string p = "request " + std::to_string(i);
    ASSERT_EQ(sendto(client.get(), p.data(), p.size(), 0, front.sa(), front.len),
              static_cast<ssize_t>(p.size()));
    pollfd pfd{client.get(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 3000), 1) << "reply " << i << " missing\n" << relay.status_json();
    ssize_t n = recv(client.get(), buf.data(), buf.size(), 0);
    ASSERT_EQ(std::string(buf.data(), static_cast<size_t>(std::max<ssize_t>(n, 0))), p);
  }
  std::string status = relay.status_json();
  EXPECT_EQ(json_number(status, "sessions-created"), 1u) << status;
  EXPECT_NE(status.find("no counter says when the psock backlog"), std::string::npos) << status;
}

// The target is not there: the client's datagrams are dropped and counted,
// and `check` would have said which path the route takes.
TEST_F(Bridge, UnreachableStreamTargetCountsTheDrop) {
  RelayProcess relay(dir_, route("udp", "127.0.0.1:5300", "unix-stream", dir_.file("nobody.sock")));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
  Addr front = Addr::inet("127.0.0.1", 5300);
  ASSERT_EQ(sendto(client.get(), "x", 1, 0, front.sa(), front.len), 1);
  std::string status;
  for (int i = 0; i < 100; ++i) {
    status = relay.status_json();
    if (json_counter(status, "stream", "connect-failed") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(json_counter(status, "stream", "connect-failed"), 1u) << status;
  EXPECT_EQ(json_number(status, "sessions"), 0u) << status;
}

// SIGTERM: what the relay took in for a connection that was not reading is
// written before the connection is closed.
TEST_F(Bridge, SigtermDeliversWhatWasTakenIn) {
  std::string back = dir_.file("back.sock");
  Fd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Addr back_addr = Addr::unix_path(back);
  ASSERT_EQ(bind(listener.get(), back_addr.sa(), back_addr.len), 0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  RelayProcess relay(dir_, route("udp", "127.0.0.1:5300", "unix-stream", back));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
  Addr front = Addr::inet("127.0.0.1", 5300);
  constexpr size_t kCount = 2000, kSize = 1000;  // 2 MB: more than the socket buffers hold
  std::string msg(kSize, 'b');
  for (size_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(sendto(client.get(), msg.data(), msg.size(), 0, front.sa(), front.len), ssize_t(kSize));
    if (i % 32 == 31) std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  Fd conn(accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(conn.valid());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the relay takes in the burst
  std::string status = relay.status_json();
  ASSERT_EQ(json_counter(status, "stream", "dropped-messages"), 0u) << status;
  // Nobody has read yet: most of it waits in the relay. Stop it, then read.
  ASSERT_LT(json_counter(status, "user", "packets"), kCount) << "nothing was left queued: " << status;
  kill(relay.pid(), SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  uint64_t got = 0;
  char buf[65536];
  for (;;) {
    pollfd p{conn.get(), POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) break;
    ssize_t n = recv(conn.get(), buf, sizeof(buf), 0);
    if (n <= 0) break;
    got += static_cast<uint64_t>(n);
  }
  EXPECT_EQ(got, uint64_t(kCount) * kSize) << relay.log();
  EXPECT_EQ(relay.terminate(), 0);
}

}  // namespace
}  // namespace sockrelay::testing
