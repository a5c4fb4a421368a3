// Once the verdict program steers a flow, user space keeps its hands off
// it: a flood right after the flow was set up is carried by the kernel
// alone (the route's user-space counter stays at the first datagram) and
// reaches the target in the order it was sent. A relay that still reads a
// steered socket races the program's read_skb for the same receive queue:
// what it takes goes out by another path, out of order.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

constexpr uint32_t kFlood = 20000;
constexpr size_t kSize = 64;

// What the target received: sequence numbers in arrival order.
struct Arrivals {
  std::vector<uint32_t> seqs;
  size_t out_of_order() const {
    size_t n = 0;
    for (size_t i = 1; i < seqs.size(); ++i) n += seqs[i] < seqs[i - 1];
    return n;
  }
};

// Reads datagrams until `want` arrived or nothing came for `idle_ms`.
Arrivals collect(Fd& sink, size_t want, int idle_ms) {
  Arrivals a;
  char buf[2048];
  while (a.seqs.size() < want) {
    pollfd p{sink.get(), POLLIN, 0};
    if (poll(&p, 1, idle_ms) != 1) break;
    ssize_t n = recv(sink.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n < static_cast<ssize_t>(sizeof(uint32_t))) continue;
    uint32_t seq;
    std::memcpy(&seq, buf, sizeof(seq));
    a.seqs.push_back(seq);
  }
  return a;
}

bool send_seq(Fd& client, const Addr& to, uint32_t seq) {
  char msg[kSize] = {};
  std::memcpy(msg, &seq, sizeof(seq));
  for (;;) {
    if (sendto(client.get(), msg, sizeof(msg), 0, to.sa(), to.len) == static_cast<ssize_t>(sizeof(msg)))
      return true;
    // A UNIX receiver's queue is short (net.unix.max_dgram_qlen): wait.
    if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR) return false;
  }
}

class DatagramSteering : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  bool unix_source() const { return std::string(GetParam()) == "unix-dgram"; }
  TempDir dir_;
};

TEST_P(DatagramSteering, FloodOnASteeredFlowStaysInTheKernelInOrder) {
  Fd sink = bound_dgram(Addr::inet("127.0.0.1", 5301));
  ASSERT_TRUE(sink.valid());
  int big = 64 << 20;
  ASSERT_EQ(setsockopt(sink.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)), 0);

  Addr front = unix_source() ? Addr::unix_path(dir_.file("front.sock")) : Addr::inet("127.0.0.1", 5300);
  std::string listen = unix_source() ? dir_.file("front.sock") : "127.0.0.1:5300";
  RelayProcess relay(dir_, "[endpoints.front]\ntype = \"" + std::string(GetParam()) + "\"\nlisten = \"" +
                               listen +
                               "\"\n[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
                               "[[routes]]\nfrom = \"front\"\nto = \"back\"\n"
                               // The flood outruns the target's psock worker on a quiet
                               // machine; this test is about steering, not the bound
                               // (TargetBound.* test that).
                               "target-buffer = \"256MiB\"\n"
                               // A unix-dgram source is steered only when asked (matrix
                               // rule 9); one sender keeps its order there.
                               "datapath = \"kernel\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd client = unix_source() ? bound_dgram(Addr::unix_path(dir_.file("client.sock")))
                            : bound_dgram(Addr::inet("127.0.0.1", 0));
  ASSERT_TRUE(client.valid());

  // The first datagrams set the flow up (user space forwards them; a UDP
  // client's second one gives it its flow socket and the kernel path)...
  ASSERT_TRUE(send_seq(client, front, 0));
  Arrivals first = collect(sink, 1, 2000);
  ASSERT_EQ(first.seqs.size(), 1u) << relay.log();
  if (!unix_source()) {
    ASSERT_TRUE(send_seq(client, front, 0));
    ASSERT_EQ(collect(sink, 1, 2000).seqs.size(), 1u) << relay.log();
  }
  // ...then, well inside the first half second of the flow's life, a flood.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (uint32_t seq = 1; seq <= kFlood; ++seq) ASSERT_TRUE(send_seq(client, front, seq)) << strerror(errno);
  Arrivals flood = collect(sink, kFlood, 2000);

  std::string status = relay.status_json();
  EXPECT_EQ(flood.seqs.size(), kFlood) << status << [&] {
    std::vector<bool> seen(kFlood + 1);
    for (uint32_t q : flood.seqs)
      if (q <= kFlood) seen[q] = true;
    std::string missing = "\nmissing:";
    for (uint32_t q = 1; q <= kFlood; ++q)
      if (!seen[q]) missing += " " + std::to_string(q);
    return missing;
  }();
  EXPECT_EQ(flood.out_of_order(), 0u) << "datagrams overtook each other";
  // While a new flow is on hold (ARCHITECTURE.md, "How a datagram
  // travels": RELAY_FLOW_HOLD), what user space has not forwarded yet goes
  // up behind it, in order, until user space has caught up; a flood that
  // outruns user space from its first datagram stays on that path until it
  // pauses (all 20,000 here on a loaded machine, 1-10 % on a quiet one).
  // Every datagram is counted once; after a pause the kernel carries it.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(send_seq(client, front, kFlood + 1));
  ASSERT_EQ(collect(sink, 1, 2000).seqs.size(), 1u) << relay.log();
  std::string after = relay.status_json();
  const uint64_t user = json_counter(after, "user", "packets");
  const uint64_t kernel = json_counter(after, "kernel", "packets");
  EXPECT_EQ(user + kernel, static_cast<uint64_t>(kFlood) + (unix_source() ? 2 : 3)) << after;
  EXPECT_EQ(kernel - json_counter(status, "kernel", "packets"), 1u)
      << "the datagram after the pause did not take the kernel path: " << after;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// A steered flow socket is not watched by epoll (that would cost a wake-up
// call per datagram); its errors are polled every tick. A client that went
// away is seen when a reply bounces (ICMP port unreachable on the flow
// socket), and its flow ends.
TEST(DatagramSteeringErrors, GoneClientEndsItsFlowWithinATick) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  Fd server = bound_dgram(Addr::inet("127.0.0.1", 5301));
  ASSERT_TRUE(server.valid());
  RelayProcess relay(dir,
                     "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
                     "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
                     "[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Addr front = Addr::inet("127.0.0.1", 5300);
  sockaddr_storage upstream{};
  socklen_t upstream_len = sizeof(upstream);
  {
    Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
    // Two datagrams: the second gives the flow its flow socket, the kernel's
    // reply path.
    char buf[16];
    for (const char* d : {"hello", "again"}) {
      ASSERT_EQ(sendto(client.get(), d, 5, 0, front.sa(), front.len), 5);
      pollfd p{server.get(), POLLIN, 0};
      ASSERT_EQ(poll(&p, 1, 2000), 1) << relay.log();
      upstream_len = sizeof(upstream);
      ASSERT_EQ(
          recvfrom(server.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&upstream), &upstream_len),
          5);
    }
    // A reply while the client is there: through the kernel.
    ASSERT_EQ(sendto(server.get(), "r1", 2, 0, reinterpret_cast<sockaddr*>(&upstream), upstream_len), 2);
    pollfd c{client.get(), POLLIN, 0};
    ASSERT_EQ(poll(&c, 1, 2000), 1) << relay.log();
  }  // the client closes its socket
  ASSERT_EQ(json_number(relay.status_json(), "sessions"), 1u);
  // A reply to nobody: the kernel's send from the flow socket bounces.
  ASSERT_EQ(sendto(server.get(), "r2", 2, 0, reinterpret_cast<sockaddr*>(&upstream), upstream_len), 2);
  std::string status;
  for (int i = 0; i < 50; ++i) {
    status = relay.status_json();
    if (json_number(status, "sessions") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(json_number(status, "sessions"), 0u) << status;
  EXPECT_EQ(json_number(status, "sessions-failed"), 1u) << status;
  EXPECT_EQ(json_counter(status, "user", "packets"), 2u) << status;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

INSTANTIATE_TEST_SUITE_P(Sources, DatagramSteering, ::testing::Values("udp", "unix-dgram"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param) == "udp" ? std::string("udp")
                                                                   : std::string("unix_dgram");
                         });

}  // namespace
}  // namespace sockrelay::testing
