#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bpf_loader/bpf_relay.h"
#include "common/fd.h"
#include "daemon/privileges.h"
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

// Private instances (per-socket constants in rodata) are loaded while the
// relay runs, after it dropped to its runtime capabilities (no
// CAP_PERFMON, so the verifier also checks speculative paths): they must
// pass the verifier there, whatever the constants are.
TEST(BpfRelay, PrivateInstancesLoadWithRuntimeCapabilities) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  auto loaded = BpfRelay::load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().describe();
  int result[2];
  ASSERT_EQ(pipe(result), 0);
  pid_t pid = fork();
  if (pid == 0) {
    std::string out = "ok";
    BpfRelay& bpf = **loaded;
    int pair[2];
    socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair);
    Status st = drop_capabilities_except(runtime_capabilities(false, bpf.target_bound_unavailable().empty()));
    uint64_t ca = *socket_cookie(pair[0]), cb = *socket_cookie(pair[1]);
    MapWriter::PrivateProgram fixed, listener;
    fixed.fixed_source = ca;
    listener.new_client_target = ca;
    if (st) st = bpf.add_private_source(ca, pair[0], fixed);
    if (st) st = bpf.add_private_source(cb, pair[1], listener);
    if (!st) out = st.error().describe();
    (void)!write(result[1], out.data(), out.size());
    _exit(0);
  }
  close(result[1]);
  char buf[512] = {};
  (void)!read(result[0], buf, sizeof(buf) - 1);
  close(result[0]);
  waitpid(pid, nullptr, 0);
  EXPECT_STREQ(buf, "ok");
}

}  // namespace
}  // namespace sockrelay
