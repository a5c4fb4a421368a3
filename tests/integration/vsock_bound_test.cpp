// A VSOCK target that stops reading holds the relay to a bound, the way a
// stalled datagram target does on the kernel path (target_bound_test.cpp):
// no route enters a VSOCK socket in the kernel, so the bound is the user
// path's. A udp -> vsock-seqpacket bridge queues at most kQueueLimit
// (4 MiB) per session and drops the rest, counted as dropped-messages
// (and what its listener's full queue dropped, listener-overflow); a
// stream route into vsock-stream drops nothing and holds its sender back
// instead. Under the relay, VSOCK's own send side is credit-limited by the
// peer's buffer (256 KiB by default). Like the other Vsock* tests these run
// only inside the vm-tests guests, over vsock loopback (CID 1).
#include <gtest/gtest.h>

#include <algorithm>
#include <future>

#include "kernel_memory.h"
#include "probe/probe.h"
#include "relay_harness.h"
#include "stream_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kTargetPort = 6420;
constexpr size_t kDatagram = 1000;

class VsockBound : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    std::string why;
    if (!vsock_loopback_usable(&why)) GTEST_SKIP() << why;
    SOCKRELAY_PRIVATE_NETNS();
  }
  // Kernel memory and the relay's RSS, the highest seen while sampling.
  struct Peaks {
    uint64_t kernel_before = 0, kernel_peak = 0, rss_before = 0, rss_peak = 0;
    void start(pid_t relay) {
      kernel_before = kernel_peak = kernel_skb_memory();
      rss_before = rss_peak = process_rss(relay);
    }
    void sample(pid_t relay) {
      kernel_peak = std::max(kernel_peak, kernel_skb_memory());
      rss_peak = std::max(rss_peak, process_rss(relay));
    }
    uint64_t kernel_growth() const { return kernel_peak - kernel_before; }
    uint64_t rss_growth() const { return rss_peak - rss_before; }
  };
  // A route from `from` on 127.0.0.1:5300 to the test's VSOCK service.
  std::string config(const char* from, const char* to) const {
    return "[endpoints.front]\ntype = \"" + std::string(from) + "\"\nlisten = \"127.0.0.1:5300\"\n" +
           "[endpoints.back]\ntype = \"" + to + "\"\nconnect = \"local:" + std::to_string(kTargetPort) +
           "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\n";
  }
  TempDir dir_;
};

// The test's VSOCK service socket on kTargetPort: it accepts, and reads only
// when the test says.
Fd vsock_listener(int type) {
  Fd l(socket(AF_VSOCK, type | SOCK_CLOEXEC, 0));
  Addr at = Addr::vsock(VMADDR_CID_ANY, kTargetPort);
  if (!l || bind(l.get(), at.sa(), at.len) != 0 || listen(l.get(), 8) != 0) return Fd();
  return l;
}

Fd accept_within(int listener, std::chrono::milliseconds limit) {
  pollfd p{listener, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(limit.count())) != 1) return Fd();
  return Fd(accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
}

// udp -> vsock-seqpacket: the service stops reading while a client floods
// for 3 s. What the relay holds is its 4 MiB session queue (RSS) and what
// VSOCK credit lets into the kernel (the service's 256 KiB buffer, plus
// the udp socket's receive queue); everything beyond is dropped and
// counted, by the relay or at its listener. Once the service reads again,
// a new datagram gets through.
TEST_F(VsockBound, StalledSeqpacketTargetHoldsTheBoundAndRecovers) {
  Fd listener = vsock_listener(SOCK_SEQPACKET);
  ASSERT_TRUE(listener.valid()) << std::strerror(errno);
  RelayProcess relay(dir_, config("udp", "vsock-seqpacket"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = bound_dgram(Addr::inet("127.0.0.1", 0));
  const Addr front = Addr::inet("127.0.0.1", 5300);
  ASSERT_EQ(sendto(c.get(), "hello", 5, 0, front.sa(), front.len), 5);
  Fd target = accept_within(listener.get(), std::chrono::seconds(10));
  ASSERT_TRUE(target.valid()) << "the relay did not connect: " << relay.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));

  Peaks peaks;
  peaks.start(relay.pid());
  std::atomic<bool> stop{false};
  auto sender = std::async(std::launch::async, [&] { return flood(c.get(), front, stop, kDatagram); });
  for (int i = 0; i < 30; ++i) {  // 3 s of flood, sampled every 100 ms
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    peaks.sample(relay.pid());
  }
  stop = true;
  const uint64_t sent = sender.get();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the relay reads what its listener holds
  std::string status = relay.status_json();
  const uint64_t dropped = json_counter(status, "drops", "dropped-messages");
  const uint64_t overflow = json_counter(status, "drops", "listener-overflow");
  const uint64_t carried = json_counter(status, "stream", "user-messages");
  std::cout << "udp -> vsock-seqpacket, target stalled: " << sent + 1 << " datagrams of " << kDatagram
            << " bytes in 3 s, " << carried << " carried, " << dropped << " dropped-messages, " << overflow
            << " listener-overflow, kernel memory +" << peaks.kernel_growth() / kMemKiB << " KiB, relay RSS +"
            << peaks.rss_growth() / kMemKiB << " KiB at most\n";
  ASSERT_NE(dropped, UINT64_MAX) << status;
  ASSERT_NE(overflow, UINT64_MAX) << status;
  // Every datagram is carried, counted as dropped, or waits in the
  // session's queue (at most 4 MiB of them).
  EXPECT_LE(sent + 1 - carried - dropped - overflow, (4 * kMiB) / kDatagram) << status;
  // The relay's share is its 4 MiB queue (plus allocator slack): 16 MiB
  // still fails a queue without a limit (the flood offers 80-190 MiB).
  // The kernel holds VSOCK credit (256 KiB of payload, a few times that in
  // skbs) and the udp receive queue; the slab figure also keeps pages the
  // allocator cached during the flood's churn (+3.5 to +15.5 MiB between runs
  // with the same backlog), hence 32 MiB.
  EXPECT_LT(peaks.rss_growth(), 16 * kMiB) << status;
  EXPECT_LT(peaks.kernel_growth(), 32 * kMiB) << status;
  EXPECT_GT(dropped, 0u) << "a stalled target, yet nothing dropped: " << status;

  // The service reads again: what was queued drains, and a new datagram
  // arrives.
  const char* marker = "after the stall";
  auto reader = std::async(std::launch::async,
                           [&] { return read_until_marker(target.get(), marker, std::chrono::seconds(30)); });
  for (int i = 0; i < 300 && reader.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready;
       ++i)
    sendto(c.get(), marker, std::strlen(marker), MSG_DONTWAIT, front.sa(), front.len);
  EXPECT_TRUE(reader.get()) << "no datagram reached the service after it read again: " << relay.status_json();
}

// tcp -> vsock-stream: the service stops reading for 3 s after its first
// MiB while the client offers 12 MiB. A stream drops nothing: the relay
// reads only what its pipe holds and VSOCK credit lets through, so memory
// stays flat and tcp flow control holds the client back; afterwards every
// byte arrives, in order, with the FIN.
TEST_F(VsockBound, StalledStreamTargetBackPressuresTheSender) {
  const uint64_t offered = 12 * kMiB;
  TransferPlan server_plan;
  server_plan.pause_reading = std::chrono::milliseconds(3000);
  StreamServer server(Addr::vsock(VMADDR_CID_ANY, kTargetPort), 0, server_plan);
  ASSERT_TRUE(server.ok()) << std::strerror(errno);
  RelayProcess relay(dir_, config("tcp", "vsock-stream"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Peaks peaks;
  peaks.start(relay.pid());
  auto client = std::async(std::launch::async, [&] {
    Fd c = stream_connect(Addr::inet("127.0.0.1", 5300));
    TransferPlan plan;
    plan.send_bytes = offered;
    plan.out_seed = 21;
    plan.in_seed = 21 ^ 0x5555aaaa5555aaaaull;
    plan.send_seed_header = true;
    return run_transfer(c.get(), plan);
  });
  // Sample through the pause; its middle says what the relay passed on
  // while the service read nothing.
  std::string mid;
  for (int i = 0; i < 30; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    peaks.sample(relay.pid());
    if (i == 20) mid = relay.status_json();
  }
  const uint64_t passed = json_counter(mid, "stream", "user-bytes");
  TransferResult r = client.get();
  std::cout << "tcp -> vsock-stream, target stalled: " << passed / kMiB << " MiB passed on of "
            << offered / kMiB << " MiB offered, kernel memory +" << peaks.kernel_growth() / kMemKiB
            << " KiB, relay RSS +" << peaks.rss_growth() / kMemKiB << " KiB at most\n";
  // 1 MiB read before the pause, the relay's pipe and VSOCK credit: the
  // rest waits in the client (tcp buffers, counted in the kernel growth).
  EXPECT_LT(passed, 4 * kMiB) << mid;
  EXPECT_LT(peaks.rss_growth(), 16 * kMiB) << mid;
  EXPECT_LT(peaks.kernel_growth(), 32 * kMiB) << mid;
  EXPECT_EQ(r.sent, offered) << relay.status_json();
  EXPECT_TRUE(r.got_eof);
  ASSERT_TRUE(server.wait_finished(1, std::chrono::seconds(30))) << relay.status_json();
  TransferResult got = server.results()[0];
  EXPECT_EQ(got.received, offered) << relay.status_json();
  EXPECT_TRUE(got.intact);
  EXPECT_TRUE(got.got_eof);
}

}  // namespace
}  // namespace sockrelay::testing
