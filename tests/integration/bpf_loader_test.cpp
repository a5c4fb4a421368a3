#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "bpf_loader/bpf_relay.h"
#include "common/fd.h"
#include "relay_shared.h"
#include "test_env.h"

namespace sockrelay {
namespace {

Fd udp_bound(sockaddr_in* addr) {
  Fd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr->sin_port = 0;
  bind(s.get(), reinterpret_cast<sockaddr*>(addr), sizeof(*addr));
  socklen_t len = sizeof(*addr);
  getsockname(s.get(), reinterpret_cast<sockaddr*>(addr), &len);
  return s;
}

// The loader's whole contract on a real kernel: a datagram arriving on a
// source socket is redirected to the flow's target and counted.
TEST(BpfRelay, RedirectsUdpDatagramAndCounts) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  auto loaded = BpfRelay::load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().describe();
  BpfRelay& bpf = **loaded;

  sockaddr_in src_addr{}, sink_addr{}, out_addr{};
  Fd src = udp_bound(&src_addr);    // the relay's receiving socket
  Fd sink = udp_bound(&sink_addr);  // where the redirected datagram must land
  Fd out = udp_bound(&out_addr);    // the relay's sending socket, connected to sink
  ASSERT_EQ(connect(out.get(), reinterpret_cast<sockaddr*>(&sink_addr), sizeof(sink_addr)), 0);

  uint64_t src_cookie = *socket_cookie(src.get());
  uint64_t out_cookie = *socket_cookie(out.get());
  ASSERT_TRUE(bpf.set_flow(src_cookie, FlowEntry{out_cookie, 3, 0}).ok());
  ASSERT_TRUE(bpf.add_target(out_cookie, out.get()).ok());
  ASSERT_TRUE(bpf.add_source(src_cookie, src.get()).ok());

  Fd client(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const char payload[] = "through the kernel";
  ASSERT_EQ(sendto(client.get(), payload, sizeof(payload), 0, reinterpret_cast<sockaddr*>(&src_addr),
                   sizeof(src_addr)),
            static_cast<ssize_t>(sizeof(payload)));
  char buf[64] = {};
  struct timeval tv = {2, 0};
  setsockopt(sink.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ASSERT_EQ(recv(sink.get(), buf, sizeof(buf), 0), static_cast<ssize_t>(sizeof(payload)));
  EXPECT_STREQ(buf, payload);

  RouteCounters c = bpf.route_counters(3);
  EXPECT_EQ(c.packets, 1u);
  EXPECT_EQ(c.bytes, sizeof(payload));
  EXPECT_NE(bpf.flow_last_ns(src_cookie), 0u);
  bpf.remove_source(src_cookie);
  bpf.remove_target(out_cookie);
}

}  // namespace
}  // namespace sockrelay
