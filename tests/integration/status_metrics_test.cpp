// `sockrelay status --format prometheus` and `status --watch` against a real
// relay: promtool (Debian's, unpacked by tests/install-promtool.sh) accepts
// the exposition, --output replaces its file whole, and the watch prints
// plain timestamped blocks to a pipe and exits 0 on Ctrl-C.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>

#include "control/metrics.h"
#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

using Output = CommandOutput;

Output run_shell(const std::string& cmd) { return run_command(cmd); }
Output sockrelay(const std::string& args) { return run_sockrelay(args); }

// promtool: $SOCKRELAY_PROMTOOL, where tests/install-promtool.sh puts it,
// or on PATH; empty when none.
std::string find_promtool() {
  if (const char* env = std::getenv("SOCKRELAY_PROMTOOL"); env && access(env, X_OK) == 0) return env;
  const char* cached = "/var/cache/sockrelay/test-tools/usr/bin/promtool";
  if (access(cached, X_OK) == 0) return cached;
  Output which = run_shell("command -v promtool");
  if (which.status == 0 && !which.text.empty()) return which.text.substr(0, which.text.find('\n'));
  return {};
}

size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class StatusMetrics : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  // Two routes, one with two targets, so route, target and drop series all
  // appear; a few datagrams through the first.
  void start_relay_with_traffic() {
    echo_ = std::make_unique<DgramEcho>(Addr::inet("127.0.0.1", 5301));
    ASSERT_TRUE(echo_->ok());
    relay_ =
        std::make_unique<RelayProcess>(dir_,
                                       "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
                                       "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
                                       "[endpoints.web]\ntype = \"tcp\"\nlisten = \"127.0.0.1:6300\"\n"
                                       "[endpoints.web-a]\ntype = \"tcp\"\nconnect = \"127.0.0.1:6301\"\n"
                                       "[endpoints.web-b]\ntype = \"tcp\"\nconnect = \"127.0.0.1:6302\"\n"
                                       "[[routes]]\nfrom = \"front\"\nto = \"back\"\n"
                                       "[[routes]]\nfrom = \"web\"\nto = [\"web-a\", \"web-b\"]\n");
    ASSERT_TRUE(relay_->wait_ready()) << relay_->log();
    for (int client = 0; client < 2; ++client) {
      Fd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      Addr front = Addr::inet("127.0.0.1", 5300);
      ASSERT_EQ(sendto(s.get(), "ping", 4, 0, front.sa(), front.len), 4);
      char reply[16];
      pollfd p{s.get(), POLLIN, 0};
      EXPECT_EQ(poll(&p, 1, 2000), 1) << "no echo through the relay";
      EXPECT_EQ(recv(s.get(), reply, sizeof(reply), 0), 4);
    }
  }
  std::string control() const { return " --control " + relay_->control(); }

  TempDir dir_;
  std::unique_ptr<DgramEcho> echo_;
  std::unique_ptr<RelayProcess> relay_;
};

TEST_F(StatusMetrics, PrometheusOutputPassesPromtoolAndCarriesEveryRoute) {
  ASSERT_NO_FATAL_FAILURE(start_relay_with_traffic());
  Output o = sockrelay("status --format prometheus" + control());
  ASSERT_EQ(o.status, 0) << o.text;
  EXPECT_EQ(occurrences(o.text, "# TYPE sockrelay_route_packets_total counter\n"), 1u) << o.text;
  EXPECT_EQ(occurrences(o.text, "sockrelay_route_info{"), 2u) << o.text;
  EXPECT_NE(o.text.find("sockrelay_route_sessions_created_total{route=\"0\""), std::string::npos) << o.text;
  EXPECT_NE(o.text.find("reason=\"max-sessions\"}"), std::string::npos) << o.text;
  EXPECT_NE(o.text.find("sockrelay_target_up{route=\"1\""), std::string::npos) << o.text;
  EXPECT_NE(o.text.find("\nsockrelay_max_fds "), std::string::npos) << o.text;
  for (const auto& s : parse_prometheus(o.text)) {
    if (s.name == "sockrelay_open_fds") {
      EXPECT_GT(s.value, 3) << "descriptors of a relay with listeners";
    }
  }

  std::string promtool = find_promtool();
  if (promtool.empty())
    GTEST_SKIP() << "promtool not found: run tests/install-promtool.sh (tests/install-deps.sh does)";
  std::string file = dir_.file("metrics.prom");
  std::ofstream(file) << o.text;
  Output checked = run_shell(promtool + " check metrics < " + file);
  EXPECT_EQ(checked.status, 0) << checked.text << "\n" << o.text;
  EXPECT_EQ(checked.text, "") << "promtool's lint has something to say";
}

TEST_F(StatusMetrics, OutputReplacesTheFileWhole) {
  ASSERT_NO_FATAL_FAILURE(start_relay_with_traffic());
  std::string file = dir_.file("sockrelay.prom");
  std::ofstream(file) << "stale\n";
  Output o = sockrelay("status --format prometheus --output " + file + control());
  ASSERT_EQ(o.status, 0) << o.text;
  EXPECT_EQ(o.text, "") << "--output writes nothing to stdout";
  std::string written = read_file(file);
  EXPECT_EQ(written.rfind("# HELP sockrelay_info ", 0), 0u) << written;
  struct stat st {};
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  // No temporary file left next to it.
  EXPECT_EQ(run_shell("ls " + dir_.file("") + " | grep -c 'sockrelay.prom.'").text, "0\n");

  Output unwritable = sockrelay("status --format prometheus --output /nonexistent/dir/x.prom" + control());
  EXPECT_EQ(unwritable.status, 1);
  EXPECT_NE(unwritable.text.find("/nonexistent/dir/x.prom"), std::string::npos) << unwritable.text;
}

TEST_F(StatusMetrics, WatchPrintsTimestampedPlainBlocksWhenNotATerminal) {
  ASSERT_NO_FATAL_FAILURE(start_relay_with_traffic());
  Output o = sockrelay("status --watch 0.2 --count 2" + control());
  ASSERT_EQ(o.status, 0) << o.text;
  EXPECT_EQ(o.text.find('\033'), std::string::npos) << "no terminal codes into a pipe";
  EXPECT_EQ(occurrences(o.text, "Z  sockrelay pid "), 2u) << o.text;
  EXPECT_EQ(occurrences(o.text, "route 0: front (udp 127.0.0.1:5300) -> back (udp 127.0.0.1:5301)\n"), 2u)
      << o.text;
  EXPECT_EQ(occurrences(o.text, "  packets/s "), 4u) << o.text;
  EXPECT_EQ(occurrences(o.text, "  drops/s   "), 4u) << o.text;
  EXPECT_NE(o.text.find(", max-sessions 0.0"), std::string::npos) << o.text;
  // Blocks start with an ISO 8601 UTC time: 2026-12-04T01:02:03Z.
  EXPECT_EQ(o.text[4], '-');
  EXPECT_EQ(o.text[10], 'T');
  EXPECT_EQ(o.text[19], 'Z');
}

TEST_F(StatusMetrics, WatchEndsWithExitZeroOnCtrlC) {
  ASSERT_NO_FATAL_FAILURE(start_relay_with_traffic());
  std::string out = dir_.file("watch.out");
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    execl(relay_binary(), relay_binary(), "status", "--watch", "0.2", "--control", relay_->control().c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_GT(pid, 0);
  for (int i = 0; i < 250 && read_file(out).find("packets/s") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_NE(read_file(out).find("packets/s"), std::string::npos) << "no block printed";
  kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST(StatusOptions, BadCombinationsAreUsageErrors) {
  TempDir dir;
  const std::string control = " --control " + dir.file("none.sock");
  for (const char* args : {"--watch --json", "--watch 0", "--watch abc", "--format xml", "--count 2",
                           "--watch --output x.prom", "--watch 1 --format prometheus"}) {
    Output o = sockrelay(std::string("status ") + args + control);
    EXPECT_EQ(o.status, 2) << args << "\n" << o.text;
    EXPECT_NE(o.text.find("Try 'sockrelay status --help'"), std::string::npos) << args << "\n" << o.text;
  }
  Output lost = sockrelay("status --watch 0.2 --count 1" + control);
  EXPECT_EQ(lost.status, 1) << lost.text;
}

}  // namespace
}  // namespace sockrelay::testing
