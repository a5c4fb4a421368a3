// The datagram flow table end to end (relay/sessions/flow_table.h): the real
// binary on the kernel path, in a private network namespace. Flows that
// never saw a reply expire at unreplied-timeout; a full table evicts
// unreplied flows first (oldest first), then the least recently active
// established flow, and refuses a client only when every flow was active
// within the last second. No timed assertions: every wait is "eventually,
// within a generous bound", and the flows that must stay are kept busy.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

// A target that echoes ping_pong()'s datagrams ("client=...") and ignores
// every other one, so a client can have a flow that never sees a reply.
bool answers(const char* data, size_t len) { return len >= 7 && std::memcmp(data, "client=", 7) == 0; }

class FlowTableRelay : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  static std::string config(const std::string& relay_keys) {
    return relay_keys +
           "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
           "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
           "[[routes]]\nfrom = \"front\"\nto = \"back\"\ndatapath = \"kernel\"\n";
  }
  // A client whose datagrams the target never answers: its flow stays unreplied.
  static void send_silent(Fd& client) {
    Addr to = Addr::inet("127.0.0.1", 5300);
    ASSERT_EQ(sendto(client.get(), "silent", 6, 0, to.sa(), to.len), 6);
  }
  static uint16_t port_of(const Fd& s) {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
  }
  // Polls `status json` until `done` holds for it or `limit` passes,
  // running `meanwhile` between polls; the last status.
  template <typename Done, typename Meanwhile>
  static std::string eventually(RelayProcess& relay, Done done, Meanwhile meanwhile,
                                std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    std::string status = relay.status_json();
    while (!done(status) && std::chrono::steady_clock::now() < deadline) {
      meanwhile();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      status = relay.status_json();
    }
    return status;
  }
  // The position of the log line that says the client on `port` was
  // evicted, its flow `state` ("unreplied" or "established").
  static size_t evicted_at(const std::string& log, uint16_t port, const std::string& state) {
    return log.find("flow from 127.0.0.1:" + std::to_string(port) + " (" + state + ") evicted");
  }
  TempDir dir_;
  Addr to_ = Addr::inet("127.0.0.1", 5300);
};

TEST_F(FlowTableRelay, UnrepliedFlowsExpireAtTheirShorterTimeout) {
  DgramEcho target(Addr::inet("127.0.0.1", 5301), answers);
  RelayProcess relay(dir_, config("unreplied-timeout = \"300ms\"\nidle-timeout = \"2s\"\n"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd answered = bound_dgram(Addr::inet("127.0.0.1", 0)), silent = bound_dgram(Addr::inet("127.0.0.1", 0));
  ASSERT_EQ(ping_pong(answered, to_, 1, 5).matched, 5u);
  send_silent(silent);
  std::string status = eventually(
      relay, [](const std::string& s) { return json_counter(s, "flows", "expired-unreplied") >= 1; },
      [&] { ping_pong(answered, to_, 1, 1); });  // kept busy: it must stay
  EXPECT_EQ(json_counter(status, "flows", "expired-unreplied"), 1u) << status;
  EXPECT_EQ(json_number(status, "sessions-expired"), 1u) << "only the unreplied flow: " << status;
  EXPECT_EQ(json_number(status, "sessions"), 1u) << status;
  // The established one goes too, at idle-timeout, once silent.
  status = eventually(
      relay, [](const std::string& s) { return json_number(s, "sessions") == 0; }, [] {});
  EXPECT_EQ(json_number(status, "sessions-expired"), 2u) << status;
  EXPECT_EQ(json_counter(status, "flows", "expired-unreplied"), 1u) << status;
}

TEST_F(FlowTableRelay, FullTableEvictsUnrepliedFirstThenTheLeastRecentlyActive) {
  DgramEcho target(Addr::inet("127.0.0.1", 5301), answers);
  RelayProcess relay(dir_, config("max-sessions = 4\nunreplied-timeout = \"20s\"\nidle-timeout = \"30s\"\n"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  auto client = [] { return bound_dgram(Addr::inet("127.0.0.1", 0)); };
  Fd a = client(), b = client(), u1 = client(), u2 = client();
  ASSERT_EQ(ping_pong(a, to_, 1, 3).matched, 3u);
  ASSERT_EQ(ping_pong(b, to_, 2, 3).matched, 3u);
  send_silent(u1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  send_silent(u2);  // unreplied, and newer than a and b
  std::string status = eventually(
      relay, [](const std::string& s) { return json_number(s, "sessions") == 4; }, [] {});
  ASSERT_EQ(json_number(status, "sessions"), 4u) << status;
  // Past the protection window (an unreplied flow younger than that may
  // still get its answer: protected, as an active established one is).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));

  // Two new clients: the unreplied flows go, oldest first.
  Fd c = client(), d = client();
  EXPECT_TRUE(ping_pong(c, to_, 3, 3).first_answered);
  EXPECT_TRUE(ping_pong(d, to_, 4, 3).first_answered);
  status = relay.status_json();
  EXPECT_EQ(json_number(status, "sessions-evicted"), 2u) << status;
  std::string log = relay.log();
  ASSERT_NE(evicted_at(log, port_of(u1), "unreplied"), std::string::npos) << log;
  ASSERT_NE(evicted_at(log, port_of(u2), "unreplied"), std::string::npos) << log;
  EXPECT_LT(evicted_at(log, port_of(u1), "unreplied"), evicted_at(log, port_of(u2), "unreplied"))
      << "oldest unreplied first";

  // Four established flows, all just active: a fifth client is refused.
  for (auto [fd, id] : {std::pair{&a, 1}, std::pair{&b, 2}, std::pair{&c, 3}, std::pair{&d, 4}})
    ASSERT_EQ(ping_pong(*fd, to_, id, 1).matched, 1u);
  Fd e = client();
  EXPECT_EQ(ping_pong(e, to_, 5, 1).matched, 0u) << "evicted a flow active within the last second";
  status = relay.status_json();
  EXPECT_EQ(json_counter(status, "drops", "max-sessions"), 1u) << status;
  EXPECT_EQ(json_number(status, "sessions-evicted"), 2u) << status;

  // a falls silent while b, c and d keep talking: past the protection
  // window, the next new client takes a's place.
  auto t_silent = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t_silent < std::chrono::milliseconds(1500))
    for (auto [fd, id] : {std::pair{&b, 2}, std::pair{&c, 3}, std::pair{&d, 4}}) ping_pong(*fd, to_, id, 1);
  Fd f = client();
  EXPECT_TRUE(ping_pong(f, to_, 6, 3).first_answered);
  status = relay.status_json();
  EXPECT_EQ(json_number(status, "sessions-evicted"), 3u) << status;
  EXPECT_NE(evicted_at(relay.log(), port_of(a), "established"), std::string::npos)
      << "the least recently active flow is evicted: " << relay.log();
  for (auto [fd, id] : {std::pair{&b, 2}, std::pair{&c, 3}, std::pair{&d, 4}})
    EXPECT_EQ(ping_pong(*fd, to_, id, 3).matched, 3u) << "client " << id << " lost its flow";
  EXPECT_EQ(json_number(relay.status_json(), "sessions-evicted"), 3u);
}

}  // namespace
}  // namespace sockrelay::testing
