// Kernel facts the stream relay relies on, measured on the running kernel
// with the real verdict program (BpfRelay) and no daemon: how EOF shows on
// a socket in a sockmap, which cookie the verdict sees for AF_UNIX stream,
// and what a stopped reader does to the psock backlog and socket memory.
#include <gtest/gtest.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>

#include <iostream>

#include "bpf_loader/bpf_relay.h"
#include "common/socket_cookie.h"
#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

struct Pair {
  Fd client, accepted;  // client <-> accepted
};

Pair connected_pair(int family, const std::string& path, uint16_t port) {
  Addr a = family == AF_UNIX ? Addr::unix_path(path) : Addr::inet("127.0.0.1", port);
  Fd l(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (family == AF_UNIX) unlink(path.c_str());
  int one = 1;
  setsockopt(l.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  EXPECT_EQ(bind(l.get(), a.sa(), a.len), 0);
  EXPECT_EQ(listen(l.get(), 8), 0);
  Pair p;
  p.client = Fd(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(connect(p.client.get(), a.sa(), a.len), 0);
  p.accepted = Fd(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  return p;
}

uint32_t meminfo(int fd, int which) {
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(mem);
  getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len);
  return mem[which];
}
int ioctl_int(int fd, unsigned long req) {
  int v = -1;
  ioctl(fd, req, &v);
  return v;
}

class StreamKernelFacts : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  TempDir dir_;
};

// Front pair (client <-> a) and back pair (u <-> server): a's skbs are
// redirected out of u and u's out of a, as a stream session wires them.
TEST_P(StreamKernelFacts, EofBacklogAndCounters) {
  const int family = GetParam();
  auto loaded = BpfRelay::load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().describe();
  BpfRelay& bpf = **loaded;
  Pair front = connected_pair(family, dir_.file("f.sock"), 7000);
  Pair back = connected_pair(family, dir_.file("b.sock"), 7001);
  int a = front.accepted.get(), u = back.client.get();
  uint64_t ca = socket_cookie(a).value(), cu = socket_cookie(u).value();
  ASSERT_TRUE(bpf.add_target(ca, a).ok());
  ASSERT_TRUE(bpf.add_target(cu, u).ok());
  ASSERT_TRUE(bpf.set_flow(ca, FlowEntry{cu, 0, RELAY_FLOW_STREAM}).ok());
  ASSERT_TRUE(bpf.set_flow(cu, FlowEntry{ca, 0, RELAY_FLOW_STREAM}).ok());
  if (family == AF_UNIX) {
    // First: the shared program keyed by the receiving socket's cookie.
    ASSERT_TRUE(bpf.add_source(ca, a).ok());
    ASSERT_EQ(send(front.client.get(), "x", 1, 0), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    GlobalCounters g = bpf.global_counters();
    std::cout << "unix-stream, shared program keyed by receiver cookie: unknown-source=" << g.unknown_source
              << " flow bytes=" << bpf.flow_bytes(ca) << "\n";
    EXPECT_EQ(g.unknown_source, 1u) << "expected the verdict to see the sender's cookie for unix-stream";
    bpf.remove_source(ca);
    char c;
    ASSERT_EQ(recv(a, &c, 1, 0), 1);  // passed up to a's own queue
    MapWriter::PrivateProgram pa{ca, 0}, pu{cu, 0};
    ASSERT_TRUE(bpf.add_private_source(ca, a, pa).ok());
    ASSERT_TRUE(bpf.add_private_source(cu, u, pu).ok());
  } else {
    ASSERT_TRUE(bpf.add_source(ca, a).ok());
    ASSERT_TRUE(bpf.add_source(cu, u).ok());
  }
  Fd ep(epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLRDHUP;
  ASSERT_EQ(epoll_ctl(ep.get(), EPOLL_CTL_ADD, a, &ev), 0);

  // The server does not read: push until the client blocks (5 s) or 64 MiB.
  fcntl(front.client.get(), F_SETFL, O_NONBLOCK);
  std::vector<char> chunk(65536, 'z');
  uint64_t pushed = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (pushed < (64u << 20) && std::chrono::steady_clock::now() < until) {
    ssize_t n = send(front.client.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n > 0)
      pushed += n;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto snapshot = [&](const char* when) {
    tcp_info ti{};
    socklen_t tl = sizeof(ti);
    uint64_t received = 0, acked = 0;
    if (family != AF_UNIX && getsockopt(a, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0)
      received = ti.tcpi_bytes_received;
    if (family != AF_UNIX && getsockopt(u, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0) acked = ti.tcpi_bytes_acked;
    std::cout << when << ": client pushed " << pushed << ", flow bytes a->u " << bpf.flow_bytes(ca)
              << ", a: inq " << ioctl_int(a, SIOCINQ) << " rmem " << meminfo(a, SK_MEMINFO_RMEM_ALLOC)
              << " bytes_received " << received << "; u: outq " << ioctl_int(u, SIOCOUTQ) << " wmem "
              << meminfo(u, SK_MEMINFO_WMEM_ALLOC) << " sndbuf " << meminfo(u, SK_MEMINFO_SNDBUF) << " acked "
              << acked << "; client outq " << ioctl_int(front.client.get(), SIOCOUTQ) << "; server inq "
              << ioctl_int(back.accepted.get(), SIOCINQ) << "\n"
              << read_file("/proc/net/sockstat");
  };
  snapshot("stopped reader");
  ASSERT_EQ(shutdown(front.client.get(), SHUT_WR), 0);
  epoll_event out{};
  int n = epoll_wait(ep.get(), &out, 1, 1000);
  std::cout << "after client shutdown(SHUT_WR): epoll_wait=" << n << " events=0x" << std::hex << out.events
            << std::dec << "\n";
  EXPECT_EQ(n, 1);
  EXPECT_TRUE(out.events & EPOLLRDHUP);
  snapshot("after FIN");
  // The server now reads everything.
  uint64_t got = 0;
  std::vector<char> buf(1 << 20);
  fcntl(back.accepted.get(), F_SETFL, O_NONBLOCK);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (got < pushed && std::chrono::steady_clock::now() < deadline) {
    ssize_t r = recv(back.accepted.get(), buf.data(), buf.size(), 0);
    if (r > 0)
      got += r;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  snapshot("after the server read all");
  EXPECT_EQ(got, pushed);
  EXPECT_EQ(bpf.flow_bytes(ca), pushed);
}

// Bytes queued before a socket enters the map. tcp: they wait for the next
// segment, and setting SO_RCVLOWAT hands the whole queue to the verdict
// program at once (tcp_set_rcvlowat() runs tcp_data_ready()); the stream
// kernel path relies on it. AF_UNIX: they wait too, SO_RCVLOWAT does
// nothing, and each later send hands over one queued skb only; which is
// why unix-stream rides the user-space path.
TEST_P(StreamKernelFacts, QueuedBytesAndTheRcvlowatKick) {
  const int family = GetParam();
  auto loaded = BpfRelay::load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().describe();
  BpfRelay& bpf = **loaded;
  Pair front = connected_pair(family, dir_.file("f.sock"), 7000);
  Pair back = connected_pair(family, dir_.file("b.sock"), 7001);
  int a = front.accepted.get(), u = back.client.get();
  uint64_t ca = socket_cookie(a).value(), cu = socket_cookie(u).value();
  for (int i = 0; i < 3; ++i) ASSERT_EQ(send(front.client.get(), "0123456789", 10, 0), 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(bpf.add_target(cu, u).ok());
  ASSERT_TRUE(bpf.set_flow(ca, FlowEntry{cu, 0, RELAY_FLOW_STREAM}).ok());
  if (family == AF_UNIX)
    ASSERT_TRUE(bpf.add_private_source(ca, a, MapWriter::PrivateProgram{ca, 0}).ok());
  else
    ASSERT_TRUE(bpf.add_source(ca, a).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(bpf.flow_bytes(ca), 0u) << "queued bytes were redirected without a wake-up";
  int one = 1;
  ASSERT_EQ(setsockopt(a, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  uint64_t after_kick = bpf.flow_bytes(ca);
  ASSERT_EQ(send(front.client.get(), "abcdefghij", 10, 0), 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  uint64_t after_send = bpf.flow_bytes(ca);
  std::cout << (family == AF_UNIX ? "unix" : "tcp") << ": 30 bytes queued before the map; redirected after "
            << "SO_RCVLOWAT " << after_kick << ", after one more 10-byte send " << after_send << "\n";
  if (family == AF_UNIX) {
    EXPECT_EQ(after_kick, 0u);
    EXPECT_EQ(after_send, 10u) << "each send hands over one queued skb (the oldest)";
  } else {
    EXPECT_EQ(after_kick, 30u);
    EXPECT_EQ(after_send, 40u);
  }
}

INSTANTIATE_TEST_SUITE_P(Stream, StreamKernelFacts, ::testing::Values(AF_INET, AF_UNIX),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return i.param == AF_UNIX ? "unix" : "tcp";
                         });

}  // namespace
}  // namespace sockrelay::testing
