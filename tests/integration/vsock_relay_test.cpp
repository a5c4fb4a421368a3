// The relay with VSOCK endpoints, end to end. These run only where a vsock
// loopback transport exists: inside the vm-tests guests (vm-tests/run), over
// CID 1. On the dev machine they skip: it is itself a VSOCK guest whose
// every other CID leads to its real host, which is not ours to talk to.
#include <gtest/gtest.h>

#include <future>

#include "probe/probe.h"
#include "relay_harness.h"
#include "stream_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kFrontPort = 6400, kBackPort = 6401;

struct KindPair {
  const char* from;
  const char* to;
};

std::string kind_pair_name(const ::testing::TestParamInfo<KindPair>& info) {
  std::string n = std::string(info.param.from) + "_to_" + info.param.to;
  for (auto& c : n)
    if (c == '-') c = '_';
  return n;
}

class VsockTest {
 protected:
  static bool vsock_here(std::string* why) { return vsock_loopback_usable(why); }
  // Where the test's own server listens (role "connect" in the config) and
  // where the relay listens (role "listen"), per kind.
  Addr addr(const std::string& kind, const char* name, uint32_t port, bool relay_side) {
    if (kind.rfind("vsock", 0) == 0) return Addr::vsock(relay_side ? VMADDR_CID_LOCAL : VMADDR_CID_ANY, port);
    if (kind == "tcp") return Addr::inet("127.0.0.1", static_cast<uint16_t>(port));
    return Addr::unix_path(dir_.file(std::string(name) + ".sock"));
  }
  std::string endpoint(const std::string& kind, const char* name, const char* role, uint32_t port) {
    std::string a = kind.rfind("vsock", 0) == 0
                        ? (std::string(role) == "listen" ? "any:" : "local:") + std::to_string(port)
                    : kind == "tcp" ? "127.0.0.1:" + std::to_string(port)
                                    : dir_.file(std::string(name) + ".sock");
    return "[endpoints." + std::string(name) + "]\ntype = \"" + kind + "\"\n" + role + " = \"" + a + "\"\n";
  }
  std::string config(const std::string& from, const std::string& to, const std::string& route_extra = "") {
    return endpoint(from, "front", "listen", kFrontPort) + endpoint(to, "back", "connect", kBackPort) +
           "[[routes]]\nfrom = \"front\"\nto = \"back\"\n" + route_extra;
  }
  TempDir dir_;
};

class VsockPairing : public VsockTest, public ::testing::TestWithParam<KindPair> {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    std::string why;
    if (!vsock_here(&why)) GTEST_SKIP() << why;
    SOCKRELAY_PRIVATE_NETNS();
  }
};

// Two connections push 2 MiB each way (the guest runs under TCG: small
// but checksummed), half-close, and both ends check every byte and the
// EOF. VSOCK streams ride the user-space path, which says why.
TEST_P(VsockPairing, ChecksummedTransfersBothWaysWithHalfClose) {
  const auto& p = GetParam();
  const uint64_t kBytes = 2 * kMiB;
  StreamServer server(addr(p.to, "back", kBackPort, false), kBytes);
  ASSERT_TRUE(server.ok()) << std::strerror(errno);
  RelayProcess relay(dir_, config(p.from, p.to));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  std::vector<std::future<TransferResult>> clients;
  for (int i = 0; i < 2; ++i) {
    clients.push_back(std::async(std::launch::async, [&, i] {
      Fd c = stream_connect(addr(p.from, "front", kFrontPort, true));
      if (!c) return TransferResult{0, 0, false, false, errno, false};
      TransferPlan plan;
      plan.send_bytes = kBytes;
      plan.out_seed = 77 + static_cast<uint64_t>(i);
      plan.in_seed = plan.out_seed ^ 0x5555aaaa5555aaaaull;
      plan.send_seed_header = true;
      return run_transfer(c.get(), plan);
    }));
  }
  for (auto& f : clients) {
    TransferResult r = f.get();
    EXPECT_EQ(r.error, 0) << std::strerror(r.error) << "\n" << relay.log();
    EXPECT_EQ(r.sent, kBytes);
    EXPECT_EQ(r.received, kBytes) << relay.status_json();
    EXPECT_TRUE(r.intact);
    EXPECT_TRUE(r.got_eof);
  }
  ASSERT_TRUE(server.wait_finished(2, std::chrono::seconds(20)));
  for (const auto& r : server.results()) {
    EXPECT_EQ(r.received, kBytes);
    EXPECT_TRUE(r.intact);
    EXPECT_TRUE(r.got_eof);
  }
  std::string status = relay.status_json();
  EXPECT_NE(status.find("\"datapath\":\"userspace\""), std::string::npos) << status;
  EXPECT_NE(status.find("psock backlog"), std::string::npos) << status;
  EXPECT_EQ(json_counter(status, "stream", "sessions-closed"), 2u) << status;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

INSTANTIATE_TEST_SUITE_P(Vsock, VsockPairing,
                         ::testing::Values(KindPair{"vsock-stream", "unix-stream"},
                                           KindPair{"unix-stream", "vsock-stream"},
                                           KindPair{"vsock-stream", "tcp"}, KindPair{"tcp", "vsock-stream"},
                                           KindPair{"vsock-stream", "vsock-stream"}),
                         kind_pair_name);

class VsockRelay : public VsockTest, public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    std::string why;
    if (!vsock_here(&why)) GTEST_SKIP() << why;
    SOCKRELAY_PRIVATE_NETNS();
  }
};

class VsockSeqpacket : public VsockRelay, public ::testing::WithParamInterface<KindPair> {};

// vsock-seqpacket <-> unix-seqpacket, both directions of the route: every
// message arrives whole, as one message, in order.
TEST_P(VsockSeqpacket, BoundariesKept) {
  const auto& p = GetParam();
  SeqpacketEcho echo(addr(p.to, "back", kBackPort, false));
  ASSERT_TRUE(echo.ok()) << std::strerror(errno);
  RelayProcess relay(dir_, config(p.from, p.to));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = stream_connect(addr(p.from, "front", kFrontPort, true), SOCK_SEQPACKET);
  ASSERT_TRUE(c.valid()) << std::strerror(errno);
  std::vector<size_t> sizes;
  ASSERT_EQ(seqpacket_round_trips(c.get(), 10, &sizes), "");
  shutdown(c.get(), SHUT_WR);
  char x;
  EXPECT_EQ(recv(c.get(), &x, 1, 0), 0) << "EOF did not come back";
  EXPECT_EQ(json_counter(relay.status_json(), "stream", "user-messages"), 2u * 10 * sizes.size())
      << relay.status_json();
}

INSTANTIATE_TEST_SUITE_P(Vsock, VsockSeqpacket,
                         ::testing::Values(KindPair{"vsock-seqpacket", "unix-seqpacket"},
                                           KindPair{"unix-seqpacket", "vsock-seqpacket"}),
                         kind_pair_name);

// Datagram <-> VSOCK: udp clients reach a vsock-seqpacket service (each
// datagram one message, boundaries kept), and a vsock-seqpacket client
// reaches a udp service.
TEST_F(VsockRelay, DatagramBridgesToAndFromVsock) {
  {
    SeqpacketEcho echo(addr("vsock-seqpacket", "back", kBackPort, false));
    ASSERT_TRUE(echo.ok()) << std::strerror(errno);
    RelayProcess relay(dir_, "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n" +
                                 endpoint("vsock-seqpacket", "back", "connect", kBackPort) +
                                 "[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
    ASSERT_TRUE(relay.wait_ready()) << relay.log();
    Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
    Addr front = Addr::inet("127.0.0.1", 5300);
    std::vector<char> buf(70000);
    for (size_t i = 0; i < 20; ++i) {
      std::string p(1 + i * 1500, static_cast<char>('a' + i));
      ASSERT_EQ(sendto(client.get(), p.data(), p.size(), 0, front.sa(), front.len),
                static_cast<ssize_t>(p.size()));
      pollfd pfd{client.get(), POLLIN, 0};
      ASSERT_EQ(poll(&pfd, 1, 5000), 1) << "reply " << i << " missing\n" << relay.status_json();
      ssize_t n = recv(client.get(), buf.data(), buf.size(), 0);
      ASSERT_EQ(std::string(buf.data(), static_cast<size_t>(std::max<ssize_t>(n, 0))), p);
    }
  }
  DgramEcho udp_echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, endpoint("vsock-seqpacket", "front", "listen", kFrontPort) +
                               "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
                               "[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = stream_connect(addr("vsock-seqpacket", "front", kFrontPort, true), SOCK_SEQPACKET);
  ASSERT_TRUE(c.valid()) << std::strerror(errno);
  std::vector<char> buf(70000);
  for (size_t i = 0; i < 20; ++i) {
    std::string p(1 + i * 1500, static_cast<char>('A' + i));
    ASSERT_EQ(send(c.get(), p.data(), p.size(), 0), static_cast<ssize_t>(p.size()));
    pollfd pfd{c.get(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 5000), 1) << "reply " << i << " missing\n" << relay.status_json();
    ssize_t n = recv(c.get(), buf.data(), buf.size(), 0);
    ASSERT_EQ(std::string(buf.data(), static_cast<size_t>(std::max<ssize_t>(n, 0))), p);
  }
}

// allow-cids: a peer whose CID is not listed is closed at accept, logged
// and counted.
TEST_F(VsockRelay, AllowCidsRefusesUnlistedPeers) {
  StreamServer server(addr("unix-stream", "back", kBackPort, false), 0);
  RelayProcess relay(dir_, config("vsock-stream", "unix-stream", "allow-cids = [\"host\"]\n"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = stream_connect(addr("vsock-stream", "front", kFrontPort, true));
  ASSERT_TRUE(c.valid());
  pollfd p{c.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "the refused peer was left hanging";
  char x;
  EXPECT_LE(recv(c.get(), &x, 1, 0), 0);
  std::string status = relay.status_json();
  EXPECT_EQ(json_counter(status, "stream", "refused-policy"), 1u) << status;
  EXPECT_EQ(json_number(status, "sessions-created"), 0u) << status;
  EXPECT_EQ(server.accepted(), 0) << "a refused peer reached the target";
  EXPECT_NE(relay.log().find("CID 1 is not in allow-cids"), std::string::npos) << relay.log();
}

// ...and a listed one gets through.
TEST_F(VsockRelay, AllowCidsLetsListedPeersIn) {
  StreamServer server(addr("unix-stream", "back", kBackPort, false), 0);
  RelayProcess relay(dir_, config("vsock-stream", "unix-stream", "allow-cids = [\"local\", 3]\n"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = stream_connect(addr("vsock-stream", "front", kFrontPort, true));
  TransferPlan plan;
  plan.send_bytes = 64 * 1024;
  plan.out_seed = 5;
  plan.in_seed = 5 ^ 0x5555aaaa5555aaaaull;
  plan.send_seed_header = true;
  plan.limit = std::chrono::seconds(20);
  TransferResult r = run_transfer(c.get(), plan);
  EXPECT_EQ(r.sent, 64u * 1024);
  EXPECT_TRUE(r.got_eof);
  EXPECT_EQ(json_counter(relay.status_json(), "stream", "refused-policy"), 0u);
}

// `check` refuses the kernel path for VSOCK streams, and ingress into VSOCK,
// each with its reason.
TEST_F(VsockRelay, CheckRefusesKernelPathAndIngressIntoVsock) {
  auto check = [&](const std::string& body) {
    std::string path = dir_.file("check.toml");
    std::ofstream(path) << body;
    std::string cmd = std::string(relay_binary()) + " check --config " + path + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
    int st = pclose(p);
    return std::pair{WIFEXITED(st) ? WEXITSTATUS(st) : -1, text};
  };
  auto [kernel_rc, kernel_text] = check(config("unix-stream", "vsock-stream", "datapath = \"kernel\"\n"));
  EXPECT_NE(kernel_rc, 0) << kernel_text;
  EXPECT_NE(kernel_text.find("datapath = \"kernel\" but"), std::string::npos) << kernel_text;
  auto [ingress_rc, ingress_text] = check(config("unix-stream", "vsock-stream", "mode = \"ingress\"\n"));
  EXPECT_NE(ingress_rc, 0) << ingress_text;
  EXPECT_NE(ingress_text.find("BPF_F_INGRESS"), std::string::npos) << ingress_text;
  auto [auto_rc, auto_text] = check(config("unix-stream", "vsock-stream"));
  EXPECT_EQ(auto_rc, 0) << auto_text;
}

}  // namespace
}  // namespace sockrelay::testing
