// The `sockrelay` command line as users meet it: exit statuses, messages
// naming FILE:LINE:COL, --help on every subcommand, the probe.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

using Output = CommandOutput;  // stdout + stderr, exit status

Output sockrelay(const std::string& args) { return run_sockrelay(args); }

TEST(Cli, HelpOnEverySubcommandAndVersion) {
  for (const char* sub : {"run", "check", "matrix", "status"}) {
    Output o = sockrelay(std::string(sub) + " --help");
    EXPECT_EQ(o.status, 0) << sub;
    EXPECT_NE(o.text.find("Usage: sockrelay " + std::string(sub)), std::string::npos) << o.text;
  }
  EXPECT_EQ(sockrelay("--version").status, 0);
  EXPECT_EQ(sockrelay("frobnicate").status, 2);
  EXPECT_EQ(sockrelay("run --bogus").status, 2);
}

TEST(Cli, CheckAcceptsTheShippedConfigs) {
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(SOCKRELAY_SOURCE_DIR) + "/config")) {
    std::string path = entry.path().string();
    if (!path.ends_with(".toml")) continue;
    Output o = sockrelay("check --no-probe --config " + path);
    EXPECT_EQ(o.status, 0) << path << "\n" << o.text;
  }
}

TEST(Cli, CheckSaysHowBroadcastIsCarried) {
  TempDir dir;
  std::string text = read_file(std::string(SOCKRELAY_SOURCE_DIR) + "/config/fan-out.toml");
  text.replace(text.rfind("\"round-robin\""), 13, "\"broadcast\"");
  std::ofstream(dir.file("b.toml")) << text;
  Output o = sockrelay("check --no-probe --config " + dir.file("b.toml"));
  EXPECT_EQ(o.status, 0) << o.text;
  EXPECT_NE(o.text.find("sends a copy to each of the 3 targets"), std::string::npos) << o.text;
  EXPECT_NE(sockrelay("matrix").text.find("balance = \"broadcast\" cannot be a redirect"), std::string::npos);
}

TEST(Cli, CheckRefusesKernelDatapathOnUnsupportedPairingWithPosition) {
  TempDir dir;
  std::ofstream(dir.file("bad.toml"))
      << "[endpoints.a]\ntype = \"unix-seqpacket\"\nlisten = \"" << dir.file("a.sock")
      << "\"\n[endpoints.b]\ntype = \"tcp\"\nconnect = \"127.0.0.1:9\"\n"
         "[[routes]]\nfrom = \"a\"\nto = \"b\"\ndatapath = \"kernel\"\n";
  Output o = sockrelay("check --no-probe --config " + dir.file("bad.toml"));
  EXPECT_EQ(o.status, 1) << o.text;
  EXPECT_NE(o.text.find(dir.file("bad.toml") + ":7:1: error:"), std::string::npos) << o.text;
  EXPECT_NE(o.text.find("unix-seqpacket cannot enter a sockmap"), std::string::npos) << o.text;
  // The same with auto: a warning, and it would run.
  std::ofstream(dir.file("auto.toml"))
      << "[endpoints.a]\ntype = \"unix-seqpacket\"\nlisten = \"" << dir.file("a.sock")
      << "\"\n[endpoints.b]\ntype = \"tcp\"\nconnect = \"127.0.0.1:9\"\n"
         "[[routes]]\nfrom = \"a\"\nto = \"b\"\n";
  o = sockrelay("check --no-probe --config " + dir.file("auto.toml"));
  EXPECT_EQ(o.status, 0) << o.text;
  EXPECT_NE(o.text.find("warning:"), std::string::npos) << o.text;
}

// What this version refuses says so, with the fix: subscribers (ingress
// into a local socket), broadcast of a stream, the stream kernel path for
// unix-stream. What it runs in user space is a warning naming why.
TEST(Cli, CheckRefusesWhatThisVersionCannotRun) {
  TempDir dir;
  const std::string endpoints =
      "[endpoints.a]\ntype = \"unix-stream\"\nlisten = \"/run/a.sock\"\n"
      "[endpoints.b]\ntype = \"unix-stream\"\nconnect = \"/run/b.sock\"\n"
      "[endpoints.c]\ntype = \"unix-stream\"\nconnect = \"/run/c.sock\"\n";
  for (auto [route, expect] :
       {std::pair{"from = \"a\"\nto = \"b\"\nmode = \"ingress\"\n", "send to a subscribe endpoint"},
        std::pair{"from = \"a\"\nto = [\"b\", \"c\"]\nbalance = \"broadcast\"\n", "use \"round-robin\""},
        std::pair{"from = \"a\"\nto = \"b\"\ndatapath = \"kernel\"\n", "psock backlog"}}) {
    std::ofstream(dir.file("c.toml")) << endpoints << "[[routes]]\n" << route;
    Output o = sockrelay("check --no-probe --config " + dir.file("c.toml"));
    EXPECT_EQ(o.status, 1) << o.text;
    EXPECT_NE(o.text.find(expect), std::string::npos) << o.text;
  }
  Output o = sockrelay(std::string("check --no-probe --config ") + SOCKRELAY_SOURCE_DIR +
                       "/config/unix-to-unix.toml");
  EXPECT_EQ(o.status, 0) << o.text;
  EXPECT_NE(o.text.find("user space because"), std::string::npos) << o.text;
}

TEST(Cli, CheckReportsSyntaxErrorsWithLineAndColumn) {
  TempDir dir;
  std::ofstream(dir.file("broken.toml")) << "[relay]\nmax-sessions = \n";
  Output o = sockrelay("check --no-probe --config " + dir.file("broken.toml"));
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.text.find(dir.file("broken.toml") + ":2:"), std::string::npos) << o.text;
}

TEST(Cli, CheckProbesTheLiveKernel) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  Output o = sockrelay(std::string("check --json --config ") + SOCKRELAY_SOURCE_DIR +
                       "/config/udp-to-unix-dgram.toml");
  EXPECT_EQ(o.status, 0) << o.text;
  EXPECT_NE(o.text.find("\"probe\":\"delivered"), std::string::npos) << o.text;
}

TEST(Cli, MatrixProbeAgreesOnThisKernel) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  Output o = sockrelay("matrix --probe");
  EXPECT_EQ(o.status, 0) << o.text;
  EXPECT_NE(o.text.find(" 0 DISAGREE"), std::string::npos) << o.text;
}

TEST(Cli, RunRefusesABadConfigAndNamesIt) {
  TempDir dir;
  std::ofstream(dir.file("r.toml")) << "[endpoints.a]\ntype = \"udpp\"\nlisten = \"127.0.0.1:1\"\n";
  Output o = sockrelay("run --config " + dir.file("r.toml"));
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.text.find(dir.file("r.toml") + ":2:"), std::string::npos) << o.text;
}

TEST(Cli, StatusWithoutRelaySaysHowToFixIt) {
  TempDir dir;
  Output o = sockrelay("status --control " + dir.file("none.sock"));
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.text.find("is `sockrelay run` running?"), std::string::npos) << o.text;
}

}  // namespace
}  // namespace sockrelay::testing
