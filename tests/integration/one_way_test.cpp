// One-way routes and BPF maps sized from the config, against the real
// binary started with a service's file limit (soft 1024):
//   - a one-way route carries 10,000 distinct senders (8 loopback source
//     addresses, a port each) with no descriptor per sender, and the
//     verdict program counts every datagram;
//   - the relay's maps have the sizes max-sessions asks for (read from the
//     kernel with bpf_obj_get_info_by_fd), and a reload that needs more is
//     refused with the reason and the fix (restart).
#include <bpf/bpf.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

// A service's file limit: soft 1024 (the hard one stays: raising it needs
// CAP_SYS_RESOURCE, which a test container may lack).
const std::vector<std::string> kServiceLimits = {"prlimit", "--nofile=1024:", "--"};

size_t open_descriptors(pid_t pid) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// Counts the datagrams a sink socket receives, on a thread of its own.
class DgramSink {
 public:
  explicit DgramSink(const Addr& addr) : sock_(bound_dgram(addr)) {
    int size = 64 << 20;  // a burst must not overflow it while the thread is off the CPU
    setsockopt(sock_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
    thread_ = std::thread([this] {
      char buf[2048];
      while (!stop_) {
        pollfd p{sock_.get(), POLLIN, 0};
        if (poll(&p, 1, 50) != 1) continue;
        while (recv(sock_.get(), buf, sizeof(buf), MSG_DONTWAIT) >= 0) ++received_;
      }
    });
  }
  ~DgramSink() {
    stop_ = true;
    thread_.join();
  }
  bool ok() const { return sock_.valid(); }
  uint64_t received() const { return received_; }
  // Until `n` have arrived or `limit` passed (not a timing assertion: the
  // count is checked after).
  bool wait_for(uint64_t n, std::chrono::milliseconds limit = std::chrono::seconds(20)) const {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (received_ < n && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return received_ >= n;
  }

 private:
  Fd sock_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> received_{0};
  std::thread thread_;
};

constexpr const char* kOneWay =
    "[endpoints.logs]\ntype = \"udp\"\nlisten = \"127.0.0.1:5514\"\n"
    "[endpoints.collector]\ntype = \"udp\"\nconnect = \"127.0.0.1:5515\"\n"
    "[[routes]]\nfrom = \"logs\"\nto = \"collector\"\none-way = true\n";

TEST(OneWay, TenThousandSendersNoDescriptorEachEveryDatagramCounted) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  DgramSink sink(Addr::inet("127.0.0.1", 5515));
  ASSERT_TRUE(sink.ok());
  RelayProcess relay(dir, "max-sessions = 100\n" + std::string(kOneWay), kServiceLimits);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  std::string status = relay.status_json();
  if (status.find("\"datapath\":\"kernel\"") == std::string::npos)
    GTEST_SKIP() << "the kernel path is unavailable here: " << status;
  EXPECT_NE(status.find("\"one-way\":{"), std::string::npos) << status;
  const size_t baseline = open_descriptors(relay.pid());

  constexpr int kSenders = 10'000;
  constexpr int kAddresses = 8;  // 127.0.0.2-9: ephemeral ports per address stay plentiful
  const Addr to = Addr::inet("127.0.0.1", 5514);
  size_t peak = baseline;
  for (int i = 0; i < kSenders; ++i) {
    Fd s = bound_dgram(Addr::inet("127.0.0." + std::to_string(2 + i % kAddresses), 0));
    ASSERT_TRUE(s.valid()) << "sender " << i << ": " << std::strerror(errno);
    std::string line = "<14>sender " + std::to_string(i);
    ASSERT_EQ(sendto(s.get(), line.data(), line.size(), 0, to.sa(), to.len),
              static_cast<ssize_t>(line.size()));
    // Paced by the sink, so the test measures the relay, not a queue
    // overflowing behind a thread that was off the CPU.
    if (i % 500 == 499) {
      ASSERT_TRUE(sink.wait_for(static_cast<uint64_t>(i + 1))) << sink.received() << " of " << i + 1;
      peak = std::max(peak, open_descriptors(relay.pid()));
    }
  }
  ASSERT_TRUE(sink.wait_for(kSenders)) << sink.received() << " of " << kSenders << "\n"
                                       << relay.status_json();
  EXPECT_EQ(sink.received(), static_cast<uint64_t>(kSenders));
  // No descriptor per sender, at any point.
  EXPECT_EQ(peak, baseline);
  EXPECT_EQ(open_descriptors(relay.pid()), baseline);
  status = relay.status_json();
  EXPECT_EQ(json_counter(status, "kernel", "packets"), static_cast<uint64_t>(kSenders)) << status;
  EXPECT_EQ(json_number(status, "sessions"), 0u) << status;
  EXPECT_EQ(json_counter(status, "drops", "no-target"), 0u) << status;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// A unix-dgram one-way source (the verdict program sees each sender, so
// the listener has its own instance) with balance = "hash" over two
// targets: each sender sticks to one target, the senders spread over
// both, and every datagram arrives.
TEST(OneWay, UnixSendersHashedOverTwoTargets) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  DgramSink a(Addr::inet("127.0.0.1", 5601)), b(Addr::inet("127.0.0.1", 5602));
  const std::string in = dir.file("in.sock");
  RelayProcess relay(
      dir, "[endpoints.in]\ntype = \"unix-dgram\"\nlisten = \"" + in +
               "\"\n[endpoints.a]\ntype = \"udp\"\nconnect = \"127.0.0.1:5601\"\n"
               "[endpoints.b]\ntype = \"udp\"\nconnect = \"127.0.0.1:5602\"\n"
               "[[routes]]\nfrom = \"in\"\nto = [\"a\", \"b\"]\none-way = true\nbalance = \"hash\"\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  if (relay.status_json().find("\"datapath\":\"kernel\"") == std::string::npos)
    GTEST_SKIP() << "the kernel path is unavailable here: " << relay.status_json();
  constexpr int kSenders = 40, kEach = 5;
  const Addr to = Addr::unix_path(in);
  for (int i = 0; i < kSenders; ++i) {
    Fd s(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    uint64_t before = a.received() + b.received();
    for (int k = 0; k < kEach; ++k)
      ASSERT_EQ(sendto(s.get(), "x", 1, 0, to.sa(), to.len), 1) << std::strerror(errno);
    // One sender's datagrams all land on one target.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (a.received() + b.received() < before + kEach && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_EQ(a.received() + b.received(), before + kEach) << relay.status_json();
  }
  EXPECT_EQ(a.received() % kEach, 0u) << "a sender was split across targets";
  EXPECT_GT(a.received(), 0u);
  EXPECT_GT(b.received(), 0u);
  EXPECT_EQ(json_counter(relay.status_json(), "kernel", "packets"), uint64_t{kSenders * kEach});
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

struct LoadedMap {
  uint32_t max_entries = 0;
  uint64_t memlock = 0;  // /proc/PID/fdinfo: what the kernel charges for it
};

// The relay's own maps by name: its bpf-map descriptors, each one's id from
// fdinfo, and the kernel's own description of it (bpf_obj_get_info_by_fd).
std::map<std::string, LoadedMap> relay_maps(pid_t pid) {
  std::map<std::string, LoadedMap> maps;
  const std::string proc = "/proc/" + std::to_string(pid);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(proc + "/fd", ec)) {
    if (std::filesystem::read_symlink(entry.path(), ec).string() != "anon_inode:bpf-map") continue;
    std::string info = read_file(proc + "/fdinfo/" + entry.path().filename().string());
    auto field = [&](const std::string& key) -> uint64_t {
      size_t at = info.find(key + ":");
      return at == std::string::npos ? 0 : std::stoull(info.substr(at + key.size() + 1));
    };
    int fd = bpf_map_get_fd_by_id(static_cast<uint32_t>(field("map_id")));
    if (fd < 0) continue;
    bpf_map_info map{};
    uint32_t len = sizeof(map);
    if (bpf_obj_get_info_by_fd(fd, &map, &len) == 0)
      maps[map.name] = LoadedMap{map.max_entries, field("memlock")};
    close(fd);
  }
  return maps;
}

constexpr const char* kDatagramRoute =
    "[endpoints.dns]\ntype = \"udp\"\nlisten = \"127.0.0.1:5353\"\n"
    "[endpoints.resolver]\ntype = \"udp\"\nconnect = \"127.0.0.1:5354\"\n"
    "[[routes]]\nfrom = \"dns\"\nto = \"resolver\"\n";

// max-sessions = 3000 on a udp -> udp route: a flow socket and an upstream
// socket per session (map_sizes.h), plus room for 16 route slots' fixed
// entries (10 sockets, 1 flow each); a reload asking for more than that is refused, one asking for
// less applied.
TEST(MapSizing, MapsFollowMaxSessionsAndAReloadPastThemIsRefused) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  RelayProcess relay(dir, "max-sessions = 3000\n" + std::string(kDatagramRoute), kServiceLimits);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  auto maps = relay_maps(relay.pid());
  if (maps.empty()) GTEST_SKIP() << "BPF unavailable here: " << relay.log();
  EXPECT_EQ(maps["relay_sources"].max_entries, 3000u * 2 + 160);
  EXPECT_EQ(maps["relay_targets"].max_entries, 3000u * 2 + 160);
  EXPECT_EQ(maps["relay_flows"].max_entries, 3000u * 2 + 16);
  EXPECT_EQ(maps["relay_route_sta"].max_entries, 16u);  // names are cut at 15 characters
  for (const auto& [name, m] : maps)
    std::printf("[ measured ] %s: max_entries %u, memlock %llu bytes\n", name.c_str(), m.max_entries,
                static_cast<unsigned long long>(m.memlock));
  EXPECT_NE(
      relay.log().find("BPF maps sized for max-sessions 3000: 6160 sockets, 6016 flows, 16 route slots"),
      std::string::npos)
      << relay.log();

  rewrite(relay, "max-sessions = 100000\n" + std::string(kDatagramRoute));
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads-refused", 1)) << relay.log();
  EXPECT_NE(relay.log().find("it needs 200160 socket entries, the maps loaded at start hold 6160"),
            std::string::npos)
      << relay.log();
  EXPECT_NE(relay.log().find("restart the relay"), std::string::npos) << relay.log();
  EXPECT_EQ(json_number(relay.status_json(), "max-sessions"), 3000u);

  rewrite(relay, "max-sessions = 2000\n" + std::string(kDatagramRoute));
  kill(relay.pid(), SIGHUP);
  ASSERT_TRUE(wait_reloads(relay, "reloads", 1)) << relay.log();
  EXPECT_EQ(json_number(relay.status_json(), "max-sessions"), 2000u);
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

}  // namespace
}  // namespace sockrelay::testing
