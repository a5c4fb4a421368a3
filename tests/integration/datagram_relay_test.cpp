// The datagram relay end to end: the real binary, real sockets, the real
// kernel path, each test in a private network namespace.
#include <gtest/gtest.h>

#include <future>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

struct Pairing {
  const char* from;  // "udp" or "unix-dgram"
  const char* to;
};

std::string pairing_name(const ::testing::TestParamInfo<Pairing>& info) {
  std::string n = std::string(info.param.from) + "_to_" + info.param.to;
  for (auto& c : n)
    if (c == '-') c = '_';
  return n;
}

class DatagramPairing : public ::testing::TestWithParam<Pairing> {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  bool is_unix(const char* kind) { return std::string(kind) == "unix-dgram"; }
  Addr front() {
    return is_unix(GetParam().from) ? Addr::unix_path(dir_.file("front.sock"))
                                    : Addr::inet("127.0.0.1", 5300);
  }
  Addr back() {
    return is_unix(GetParam().to) ? Addr::unix_path(dir_.file("back.sock")) : Addr::inet("127.0.0.1", 5301);
  }
  // `datapath`: empty for the kernel path (asked for by name on a
  // unix-dgram source, which takes it only then: matrix rule 9).
  std::string endpoint_config(const std::string& datapath = "") {
    auto text = [&](const char* kind, const char* role, const Addr& a, const char* name) {
      std::string addr = is_unix(kind) ? std::string(reinterpret_cast<const sockaddr_un*>(&a.ss)->sun_path)
                                       : std::string(role[0] == 'l' ? "127.0.0.1:5300" : "127.0.0.1:5301");
      return "[endpoints." + std::string(name) + "]\ntype = \"" + kind + "\"\n" + role + " = \"" + addr +
             "\"\n";
    };
    std::string path = !datapath.empty() ? datapath : is_unix(GetParam().from) ? "kernel" : "";
    return text(GetParam().from, "listen", front(), "front") +
           text(GetParam().to, "connect", back(), "back") + "[[routes]]\nfrom = \"front\"\nto = \"back\"\n" +
           (path.empty() ? "" : "datapath = \"" + path + "\"\n");
  }
  Fd client(int id) {
    if (is_unix(GetParam().from))
      return bound_dgram(Addr::unix_path(dir_.file("client" + std::to_string(id) + ".sock")));
    return bound_dgram(Addr::inet("127.0.0.1", 0));
  }
  TempDir dir_;
};

// Two concurrent clients, thousands of datagrams each: every reply comes
// back byte-exact to the client that sent it, the first datagram of each
// client is answered, and the counters add up to what was sent.
TEST_P(DatagramPairing, TwoClientsRepliesByteExactAndCounted) {
  DgramEcho echo(back());
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, endpoint_config());
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  constexpr int kCount = 3000;
  Fd c1 = client(1), c2 = client(2);
  ASSERT_TRUE(c1.valid() && c2.valid());
  Addr to = front();
  auto f1 = std::async(std::launch::async, [&] { return ping_pong(c1, to, 1, kCount); });
  auto f2 = std::async(std::launch::async, [&] { return ping_pong(c2, to, 2, kCount); });
  PingPongResult r1 = f1.get(), r2 = f2.get();
  for (const auto& r : {r1, r2}) {
    EXPECT_EQ(r.delivered(), static_cast<uint64_t>(kCount)) << "timeouts " << r.timeouts << "\n"
                                                            << relay.log();
    EXPECT_LE(r.late, static_cast<uint64_t>(kCount) / 100) << "replies slower than a second";
    EXPECT_EQ(r.foreign, 0u) << "a reply reached the wrong client";
    EXPECT_EQ(r.corrupt, 0u) << "a reply was not byte-identical to what was sent";
    EXPECT_TRUE(r.first_answered) << "the first datagram of a new client was not delivered";
  }
  std::string status = relay.status_json();
  uint64_t kernel = json_counter(status, "kernel", "packets");
  uint64_t user = json_counter(status, "user", "packets");
  EXPECT_EQ(kernel + user, 2u * 2u * kCount) << status;  // both clients, both directions
  EXPECT_GT(kernel, user) << "the kernel path should carry nearly everything: " << status;
  EXPECT_EQ(json_number(status, "sessions"), 2u) << status;
  EXPECT_EQ(json_counter(status, "drops", "no-target"), 0u) << status;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// The same traffic with datapath = "userspace": nothing in the kernel maps,
// every datagram copied by the relay, same results.
TEST_P(DatagramPairing, UserspaceDatapathCarriesTheSame) {
  DgramEcho echo(back());
  ASSERT_TRUE(echo.ok());
  std::string config = endpoint_config("userspace");
  RelayProcess relay(dir_, config);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c1 = client(1);
  PingPongResult r = ping_pong(c1, front(), 1, 500);
  EXPECT_EQ(r.matched, 500u) << relay.log();
  std::string status = relay.status_json();
  EXPECT_NE(status.find("\"datapath\":\"userspace\""), std::string::npos) << status;
  EXPECT_EQ(json_counter(status, "user", "packets"), 1000u) << status;
  EXPECT_EQ(json_counter(status, "kernel", "packets"), 0u) << status;
  EXPECT_EQ(relay.terminate(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllFour, DatagramPairing,
                         ::testing::Values(Pairing{"udp", "udp"}, Pairing{"udp", "unix-dgram"},
                                           Pairing{"unix-dgram", "udp"}, Pairing{"unix-dgram", "unix-dgram"}),
                         pairing_name);

class DatagramRelay : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  static constexpr const char* kUdpToUdp =
      "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
      "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
      "[[routes]]\nfrom = \"front\"\nto = \"back\"\n";
  TempDir dir_;
};

TEST_F(DatagramRelay, IdleFlowsExpire) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, std::string("idle-timeout = \"1s\"\n") + kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = bound_dgram(Addr::inet("127.0.0.1", 0));
  ASSERT_EQ(ping_pong(c, Addr::inet("127.0.0.1", 5300), 1, 10).matched, 10u);
  EXPECT_EQ(json_number(relay.status_json(), "sessions"), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  std::string status = relay.status_json();
  EXPECT_EQ(json_number(status, "sessions"), 0u) << status;
  EXPECT_EQ(json_number(status, "sessions-expired"), 1u) << status;
  // The client comes back: a new flow, first datagram answered again.
  EXPECT_TRUE(ping_pong(c, Addr::inet("127.0.0.1", 5300), 1, 5).first_answered);
  EXPECT_EQ(json_number(relay.status_json(), "sessions-created"), 2u);
}

TEST_F(DatagramRelay, MaxSessionsRefusesAndCounts) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, std::string("max-sessions = 2\n") + kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd a = bound_dgram(Addr::inet("127.0.0.1", 0)), b = bound_dgram(Addr::inet("127.0.0.1", 0)),
     c = bound_dgram(Addr::inet("127.0.0.1", 0));
  Addr to = Addr::inet("127.0.0.1", 5300);
  EXPECT_EQ(ping_pong(a, to, 1, 20).matched, 20u);
  EXPECT_EQ(ping_pong(b, to, 2, 20).matched, 20u);
  // Both established and just active: neither may be evicted (flows active
  // within the last second are protected, see flow_table.h), so c's three
  // datagrams, sent at once, are refused.
  EXPECT_EQ(ping_pong(a, to, 1, 1).matched, 1u);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(sendto(c.get(), "refused", 7, 0, to.sa(), to.len), 7);
  std::string status = relay.status_json();
  for (int i = 0; i < 100 && json_counter(status, "drops", "max-sessions") < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    status = relay.status_json();
  }
  pollfd p{c.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 200), 0) << "a third session was admitted past max-sessions = 2";
  EXPECT_EQ(json_counter(status, "drops", "max-sessions"), 3u) << status;
  EXPECT_EQ(json_number(status, "sessions-evicted"), 0u) << status;
  EXPECT_EQ(json_number(status, "sessions"), 2u) << status;
  // The admitted clients are unaffected.
  EXPECT_EQ(ping_pong(a, to, 1, 20).matched, 20u);
}

TEST_F(DatagramRelay, SigtermCleansUpAndExitsZero) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = bound_dgram(Addr::inet("127.0.0.1", 0));
  ASSERT_EQ(ping_pong(c, Addr::inet("127.0.0.1", 5300), 1, 50).matched, 50u);
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
  EXPECT_FALSE(std::filesystem::exists(relay.control())) << "control socket left behind";
  // Every socket of the relay is gone: the port binds without SO_REUSEADDR.
  EXPECT_TRUE(bound_dgram(Addr::inet("127.0.0.1", 5300)).valid());
  EXPECT_NE(relay.log().find("stopped cleanly"), std::string::npos) << relay.log();
}

// A UNIX client that never bound has no address: its datagrams still reach
// the upstream (in the kernel, keyed by its cookie) but replies cannot, and
// are counted rather than lost silently.
TEST_F(DatagramRelay, UnnamedUnixClientForwardedRepliesCounted) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  std::string front = dir_.file("front.sock");
  RelayProcess relay(dir_, "[endpoints.front]\ntype = \"unix-dgram\"\nlisten = \"" + front +
                               "\"\n[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
                               "[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd anon(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  Addr to = Addr::unix_path(front);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(sendto(anon.get(), "hello", 5, 0, to.sa(), to.len), 5);
  for (int i = 0; i < 100 && echo.echoed() < 20; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(echo.echoed(), 20u);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string status = relay.status_json();
  EXPECT_EQ(json_counter(status, "drops", "no-reply-path"), 20u) << status;
}

// A UNIX client that connect()ed to the listener only accepts datagrams
// from it: its replies go out of the listener, through user space.
TEST_F(DatagramRelay, ConnectedUnixClientGetsReplies) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  std::string front = dir_.file("front.sock");
  RelayProcess relay(dir_, "[endpoints.front]\ntype = \"unix-dgram\"\nlisten = \"" + front +
                               "\"\n[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
                               "[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd c = bound_dgram(Addr::unix_path(dir_.file("client.sock")));
  Addr to = Addr::unix_path(front);
  ASSERT_EQ(connect(c.get(), to.sa(), to.len), 0);
  PingPongResult r = ping_pong(c, to, 1, 200);
  EXPECT_EQ(r.matched, 200u) << relay.log();
  EXPECT_TRUE(r.first_answered);
}

// Socket activation: systemd-socket-activate owns the listener, starts the
// relay on the first datagram and passes the socket by FileDescriptorName=;
// that first datagram is answered.
TEST_F(DatagramRelay, SocketActivatedByNameFirstDatagramDelivered) {
  if (access("/usr/bin/systemd-socket-activate", X_OK) != 0)
    GTEST_SKIP() << "systemd-socket-activate not installed (Debian package systemd)";
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  std::string config = std::string(kUdpToUdp);
  RelayProcess relay(
      dir_, config,
      {"/usr/bin/systemd-socket-activate", "--datagram", "-l", "127.0.0.1:5300", "--fdname=front"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // until it listens
  Fd c = bound_dgram(Addr::inet("127.0.0.1", 0));
  PingPongResult r = ping_pong(c, Addr::inet("127.0.0.1", 5300), 1, 100);
  EXPECT_TRUE(r.first_answered) << relay.log();
  EXPECT_EQ(r.matched, 100u) << relay.log();
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  EXPECT_NE(relay.log().find("socket from systemd"), std::string::npos) << relay.log();
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// Several named sockets of different kinds in one activation: each
// endpoint takes the fd with its FileDescriptorName=.
TEST_F(DatagramRelay, SocketActivatedSeveralKindsByName) {
  if (access("/usr/bin/systemd-socket-activate", X_OK) != 0)
    GTEST_SKIP() << "systemd-socket-activate not installed (Debian package systemd)";
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  std::string unix_front = dir_.file("front.sock");
  std::string config =
      "[endpoints.udp-in]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
      "[endpoints.unix-in]\ntype = \"unix-dgram\"\nlisten = \"" +
      unix_front +
      "\"\n"
      "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
      "[[routes]]\nfrom = [\"udp-in\", \"unix-in\"]\nto = \"back\"\n";
  RelayProcess relay(dir_, config,
                     {"/usr/bin/systemd-socket-activate", "--datagram", "-l", "127.0.0.1:5300", "-l",
                      unix_front, "--fdname=udp-in:unix-in"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Fd udp_client = bound_dgram(Addr::inet("127.0.0.1", 0));
  EXPECT_EQ(ping_pong(udp_client, Addr::inet("127.0.0.1", 5300), 1, 50).matched, 50u) << relay.log();
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd unix_client = bound_dgram(Addr::unix_path(dir_.file("client.sock")));
  EXPECT_EQ(ping_pong(unix_client, Addr::unix_path(unix_front), 2, 50).matched, 50u) << relay.log();
  std::string log = relay.log();
  size_t first = log.find("socket from systemd");
  EXPECT_NE(first, std::string::npos) << log;
  EXPECT_NE(log.find("socket from systemd", first + 1), std::string::npos)
      << "both endpoints from systemd: " << log;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

}  // namespace
}  // namespace sockrelay::testing
