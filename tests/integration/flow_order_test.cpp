// A new client's datagrams reach the target in the order sent, none lost,
// from the first one, on every datagram pairing: three clients start at
// once and each sends 300 numbered datagrams back to back to a route that
// has never seen them, so their flows are set up while their datagrams
// keep coming (the hold of ARCHITECTURE.md "How a datagram travels").
// A wildcard listener's flow sockets are bound to the address the client
// sent to, so the kernel's 4-tuple lookup finds them.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

constexpr int kClients = 3;
constexpr uint32_t kPerClient = 300;
constexpr int kRepetitions = 100;
constexpr size_t kSize = 64;

struct Pairing {
  const char* from;
  const char* to;
};

std::string pairing_name(const ::testing::TestParamInfo<Pairing>& info) {
  auto clean = [](std::string s) {
    for (char& c : s)
      if (c == '-') c = '_';
    return s;
  };
  return clean(info.param.from) + "_to_" + clean(info.param.to);
}

// What the sink saw: per client, sequence numbers in arrival order.
struct Tally {
  std::array<std::vector<uint32_t>, kClients> seqs;
  size_t total() const {
    size_t n = 0;
    for (const auto& s : seqs) n += s.size();
    return n;
  }
  size_t inversions() const {
    size_t n = 0;
    for (const auto& s : seqs)
      for (size_t i = 1; i < s.size(); ++i) n += s[i] < s[i - 1];
    return n;
  }
  // Where client `c`'s first inversion is, with its neighbours: "" if none.
  std::string first_inversion(int c) const {
    const auto& s = seqs[c];
    for (size_t i = 1; i < s.size(); ++i) {
      if (s[i] >= s[i - 1]) continue;
      std::string text = ", out of order at arrival " + std::to_string(i) + ":";
      for (size_t j = i > 4 ? i - 4 : 0; j < std::min(i + 4, s.size()); ++j)
        text += " " + std::to_string(s[j]);
      return text;
    }
    return "";
  }
};

// Reads until every datagram of a repetition arrived or none came for
// `idle_ms`. Payload: repetition, client, sequence number.
Tally collect(int sink, uint32_t rep, int idle_ms, uint64_t& foreign) {
  Tally t;
  char buf[2048];
  while (t.total() < kClients * kPerClient) {
    pollfd p{sink, POLLIN, 0};
    if (poll(&p, 1, idle_ms) != 1) break;
    ssize_t n = recv(sink, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < static_cast<ssize_t>(3 * sizeof(uint32_t))) continue;
    uint32_t head[3];
    std::memcpy(head, buf, sizeof(head));
    if (head[0] != rep || head[1] >= static_cast<uint32_t>(kClients)) {
      ++foreign;
      continue;
    }
    t.seqs[head[1]].push_back(head[2]);
  }
  return t;
}

bool send_all(int fd, const Addr& to, uint32_t rep, uint32_t client) {
  char msg[kSize] = {};
  for (uint32_t seq = 0; seq < kPerClient; ++seq) {
    uint32_t head[3] = {rep, client, seq};
    std::memcpy(msg, head, sizeof(head));
    for (;;) {
      if (sendto(fd, msg, sizeof(msg), 0, to.sa(), to.len) == static_cast<ssize_t>(sizeof(msg))) break;
      // A UNIX receiver's queue is short: wait for it.
      if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR) return false;
    }
  }
  return true;
}

// Datagrams the kernel dropped at the UDP sink on `port`: the last field
// of its line in /proc/net/udp.
uint64_t udp_drops(int port) {
  std::ifstream in("/proc/net/udp");
  std::string line;
  char want[8];
  std::snprintf(want, sizeof(want), ":%04X ", port);
  uint64_t drops = 0;
  while (std::getline(in, line)) {
    if (line.find(want) == std::string::npos || line.find(want) > 30) continue;
    std::istringstream ss(line);
    std::string field;
    while (ss >> field) {
    }
    drops += std::stoull(field);
  }
  return drops;
}

class FlowOrder : public ::testing::TestWithParam<Pairing> {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
    // Per network namespace: a UNIX receiver queues this many datagrams
    // (10 by default), enough for the sink to keep up.
    std::ofstream("/proc/sys/net/unix/max_dgram_qlen") << 4096;
  }
  bool unix_from() const { return std::string(GetParam().from) == "unix-dgram"; }
  bool unix_to() const { return std::string(GetParam().to) == "unix-dgram"; }
  TempDir dir_;
};

TEST_P(FlowOrder, NewClientsInOrderNothingLost) {
  Addr sink_addr = unix_to() ? Addr::unix_path(dir_.file("sink.sock")) : Addr::inet("127.0.0.1", 5401);
  Fd sink = bound_dgram(sink_addr);
  ASSERT_TRUE(sink.valid());
  int big = 64 << 20;
  setsockopt(sink.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
  Addr front = unix_from() ? Addr::unix_path(dir_.file("front.sock")) : Addr::inet("127.0.0.1", 5400);
  std::string listen = unix_from() ? dir_.file("front.sock") : "127.0.0.1:5400";
  std::string connect = unix_to() ? dir_.file("sink.sock") : "127.0.0.1:5401";
  RelayProcess relay(dir_, "[endpoints.front]\ntype = \"" + std::string(GetParam().from) + "\"\nlisten = \"" +
                               listen + "\"\n[endpoints.back]\ntype = \"" + GetParam().to +
                               "\"\nconnect = \"" + connect +
                               "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  size_t inversions = 0, lost = 0;
  uint64_t foreign = 0;
  int bad_reps = 0;
  std::string first_bad;  // what the first few went wrong with, for the messages below
  for (uint32_t rep = 0; rep < kRepetitions; ++rep) {
    std::vector<Fd> clients;
    for (int c = 0; c < kClients; ++c) {
      Addr a = unix_from() ? Addr::unix_path(dir_.file("c" + std::to_string(rep) + "-" + std::to_string(c)))
                           : Addr::inet("127.0.0.1", 0);
      clients.push_back(bound_dgram(a));
      ASSERT_TRUE(clients.back().valid());
    }
    std::atomic<int> failed{0};
    std::vector<std::thread> senders;
    for (int c = 0; c < kClients; ++c)
      senders.emplace_back([&, c] {
        if (!send_all(clients[c].get(), front, rep, c)) ++failed;
      });
    Tally t = collect(sink.get(), rep, 1000, foreign);
    for (auto& s : senders) s.join();
    ASSERT_EQ(failed.load(), 0) << strerror(errno);
    size_t inv = t.inversions(), miss = kClients * kPerClient - t.total();
    inversions += inv;
    lost += miss;
    if (inv || miss) {
      ++bad_reps;
      if (bad_reps <= 3)
        for (int c = 0; c < kClients; ++c)
          if (!t.seqs[c].empty())
            first_bad += "\nrepetition " + std::to_string(rep) + " client " + std::to_string(c) + ": " +
                         std::to_string(t.seqs[c].size()) + " arrived, first " +
                         std::to_string(t.seqs[c].front()) + t.first_inversion(c);
    }
  }
  // A udp client's datagram that a lookup matched to another new flow
  // socket just before its connect() is dropped there by that socket's
  // filter and counted (stray; ARCHITECTURE.md "How a datagram travels"):
  // 0 on a quiet machine, 1-3 in 3 of 30 runs with both CPUs busy. Every
  // loss is counted; none is allowed on a unix source. Strays are counted
  // when the filter goes, two ticks after its flow began.
  std::string status;
  uint64_t counted = 0;
  for (int i = 0; i < 20; ++i) {
    status = relay.status_json();
    counted = unix_from()
                  ? 0
                  : json_counter(status, "drops", "stray") + json_counter(status, "drops", "target-full");
    if (counted >= lost) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  uint64_t kernel_drops = unix_to() ? 0 : udp_drops(5401);
  EXPECT_EQ(inversions, 0u) << bad_reps << " repetitions went wrong:" << first_bad << "\n" << status;
  EXPECT_LE(lost, counted) << bad_reps << " repetitions went wrong:" << first_bad
                           << "\nkernel drops at the sink: " << kernel_drops
                           << (unix_from()
                                   ? ""
                                   : ", at the listener and flow sockets: " + std::to_string(udp_drops(5400)))
                           << "; " << status;
  EXPECT_EQ(foreign, 0u);
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// A unix-dgram source takes user space unless datapath = "kernel" (matrix
// rule 9): it reads the listener in queue order, each sender's order. On
// the kernel path the same test reordered in 4-45 of 100 repetitions on a
// quiet machine, also once every flow was set up: the AF_UNIX listener
// hands datagrams to the verdict program outside its receive lock
// (ARCHITECTURE.md "Kernel facts").
INSTANTIATE_TEST_SUITE_P(UnixSources, FlowOrder,
                         ::testing::Values(Pairing{"unix-dgram", "udp"}, Pairing{"unix-dgram", "unix-dgram"}),
                         pairing_name);
// Strangers (datagrams a flow socket, bound and not yet connected, caught
// from other new clients) are gone but for one whose lookup races
// connect(): put in its place by receive time, or, queued after the
// socket's filter went on, dropped and counted. The order under load
// (r8): 9 of 20 runs with both CPUs busy had one repetition out of order;
// 0 of 30 after the four fixes in ARCHITECTURE.md "In order from the first
// datagram". About 2 s a run.
INSTANTIATE_TEST_SUITE_P(UdpSources, FlowOrder,
                         ::testing::Values(Pairing{"udp", "udp"}, Pairing{"udp", "unix-dgram"}),
                         pairing_name);

// A flow socket of a wildcard listener is bound to the address its client
// sent to, not to the wildcard: getsockname() on it says so (read from
// /proc/net/udp: every socket on the listener's port but the listener).
TEST(FlowSocketAddress, WildcardListenerBindsFlowToTheLocalAddress) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  DgramEcho echo(Addr::inet("127.0.0.1", 5411));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir,
                     "[endpoints.front]\ntype = \"udp\"\nlisten = \"0.0.0.0:5410\"\n"
                     "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5411\"\n"
                     "[[routes]]\nfrom = \"front\"\nto = \"back\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Fd client = bound_dgram(Addr::inet("127.0.0.7", 0));
  ASSERT_TRUE(client.valid());
  // The first answer leaves from the listener (a client's flow socket waits
  // for its second datagram), from the address the client sent to: routing
  // alone would pick 127.0.0.1.
  Addr front = Addr::inet("127.0.0.7", 5410);
  ASSERT_EQ(sendto(client.get(), "first", 5, 0, front.sa(), front.len), 5);
  pollfd p{client.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 2000), 1) << relay.log();
  sockaddr_in from{};
  socklen_t from_len = sizeof(from);
  char buf[64];
  ASSERT_GT(recvfrom(client.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &from_len), 0);
  EXPECT_EQ(from.sin_addr.s_addr, htonl(0x7f000007)) << "the first answer came from another address";
  EXPECT_EQ(ntohs(from.sin_port), 5410);
  PingPongResult r = ping_pong(client, front, 1, 3);
  EXPECT_EQ(r.delivered(), 3u) << relay.log();
  // Local addresses of UDP sockets on port 5410, as /proc shows them.
  std::ifstream in("/proc/net/udp");
  std::string line;
  int wildcard = 0, bound_to_client_side = 0;
  while (std::getline(in, line)) {
    if (line.find(":1522 ") == std::string::npos) continue;  // 5410
    if (line.find("00000000:1522") != std::string::npos) ++wildcard;
    if (line.find("0700007F:1522") != std::string::npos) ++bound_to_client_side;  // 127.0.0.7
  }
  EXPECT_EQ(wildcard, 1) << "only the listener is on the wildcard";
  EXPECT_EQ(bound_to_client_side, 1) << "the flow socket is bound to 127.0.0.7";
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

}  // namespace
}  // namespace sockrelay::testing
