// SIGHUP: a bad config is refused whole and the old one keeps serving; a
// good one is applied as a difference, and flows on unchanged routes keep
// flowing (the same flow: no new session is created for them).
#include <gtest/gtest.h>

#include <future>

#include "relay_harness.h"
#include "stream_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

constexpr const char* kRouteA =
    "[endpoints.a]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
    "[endpoints.echo]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
    "[[routes]]\nfrom = \"a\"\nto = \"echo\"\n";
constexpr const char* kRouteB =
    "[endpoints.b]\ntype = \"udp\"\nlisten = \"127.0.0.1:5400\"\n"
    "[[routes]]\nfrom = \"b\"\nto = \"echo\"\n";

TEST(Reload, KeepsUnchangedRoutesRefusesBadConfigsAppliesDifferences) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir, kRouteA);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
  Addr a = Addr::inet("127.0.0.1", 5300), b = Addr::inet("127.0.0.1", 5400);
  ASSERT_EQ(ping_pong(client, a, 1, 200).matched, 200u);

  // A broken config: refused, the old one keeps serving.
  rewrite(relay, std::string(kRouteA) + "[[routes]]\nfrom = \"a\"\nto = \"nowhere\"\n");
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads-refused", 1)) << relay.log();
  EXPECT_NE(relay.log().find("reload refused"), std::string::npos) << relay.log();
  EXPECT_EQ(ping_pong(client, a, 1, 200).matched, 200u);

  // Route A unchanged, route B added: A's flow goes on untouched.
  rewrite(relay, std::string(kRouteA) + kRouteB);
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads", 1)) << relay.log();
  EXPECT_EQ(ping_pong(client, a, 1, 500).matched, 500u) << relay.log();
  Fd client_b = bound_dgram(Addr::inet("127.0.0.1", 0));
  EXPECT_EQ(ping_pong(client_b, b, 2, 100).matched, 100u) << relay.log();
  std::string status = relay.status_json();
  EXPECT_EQ(json_number(status, "sessions-created"), 1u)
      << "route A's flow must survive the reload: " << status;

  // Route A removed: its port is closed, B still works.
  rewrite(relay, std::string("[endpoints.echo]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n") + kRouteB);
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads", 2)) << relay.log();
  EXPECT_TRUE(bound_dgram(a).valid()) << "route A's listener should be closed";
  EXPECT_EQ(ping_pong(client_b, b, 2, 100).matched, 100u) << relay.log();
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// A tcp transfer running across reloads (a route added, a bad config
// refused, the route removed again) completes byte-exact, in the same
// session, on the kernel path.
TEST(Reload, TcpTransferAcrossReloadsIsByteExact) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  const std::string tcp_route =
      "[endpoints.front]\ntype = \"tcp\"\nlisten = \"127.0.0.1:6300\"\n"
      "[endpoints.back]\ntype = \"tcp\"\nconnect = \"127.0.0.1:6301\"\n"
      "[[routes]]\nfrom = \"front\"\nto = \"back\"\n";
  const uint64_t kBytes = 48 << 20;
  TransferPlan server_plan;
  server_plan.pause_reading = std::chrono::milliseconds(1500);  // keeps the transfer running
  StreamServer server(Addr::inet("127.0.0.1", 6301), kBytes, server_plan);
  RelayProcess relay(dir, tcp_route);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  auto client = std::async(std::launch::async, [&] {
    Fd c = stream_connect(Addr::inet("127.0.0.1", 6300));
    TransferPlan plan;
    plan.send_bytes = kBytes;
    plan.out_seed = 31;
    plan.in_seed = 31 ^ 0x5555aaaa5555aaaaull;
    plan.send_seed_header = true;
    return run_transfer(c.get(), plan);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(json_number(relay.status_json(), "sessions"), 1u) << relay.status_json();
  const std::string udp_route =
      "[endpoints.u]\ntype = \"udp\"\nlisten = \"127.0.0.1:5400\"\n"
      "[endpoints.echo]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
      "[[routes]]\nfrom = \"u\"\nto = \"echo\"\n";
  rewrite(relay, tcp_route + udp_route);
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads", 1)) << relay.log();
  rewrite(relay, tcp_route + "[[routes]]\nfrom = \"front\"\nto = \"nowhere\"\n");
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads-refused", 1)) << relay.log();
  rewrite(relay, tcp_route);
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads", 2)) << relay.log();
  TransferResult r = client.get();
  EXPECT_EQ(r.sent, kBytes);
  EXPECT_EQ(r.received, kBytes);
  EXPECT_TRUE(r.intact);
  EXPECT_TRUE(r.got_eof);
  ASSERT_TRUE(server.wait_finished(1, std::chrono::seconds(10)));
  TransferResult got = server.results()[0];
  EXPECT_EQ(got.received, kBytes);
  EXPECT_TRUE(got.intact);
  EXPECT_TRUE(got.got_eof);
  std::string status = relay.status_json();
  EXPECT_EQ(json_number(status, "sessions-created"), 1u) << status;
  EXPECT_EQ(json_counter(status, "stream", "sessions-closed"), 1u) << status;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

}  // namespace
}  // namespace sockrelay::testing
