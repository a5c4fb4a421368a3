// allow-uids / allow-gids on unix-dgram sources, on both data paths: the
// real binary, senders running under other ids (forked, setresuid/setresgid
// before they open their socket), each test in a private network namespace.
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

// An abstract address: no file whose permissions would keep another uid
// out, and private to the test's network namespace.
Addr abstract_addr(const std::string& name) {
  Addr a;
  auto* sun = reinterpret_cast<sockaddr_un*>(&a.ss);
  sun->sun_family = AF_UNIX;
  std::memcpy(sun->sun_path + 1, name.data(), name.size());
  a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

struct Sender {
  uid_t uid = 0;
  gid_t gid = 0;
  bool bound = true;  // false: never binds, so it has no address to reply to
};

// Runs a sender as `who` in a child: it drops to those ids, then opens its
// socket and sends `count` datagrams to `to`, each waiting up to `wait` for
// its echo. Returns how many echoes came back (bound senders only), or -1.
int run_sender(const Sender& who, const Addr& to, int count, std::chrono::milliseconds wait) {
  // Built before fork(): the child of a threaded test allocates nothing.
  static int serial = 0;
  Addr self = abstract_addr("pol-client-" + std::to_string(getpid()) + "-" + std::to_string(++serial));
  char payload[64];
  std::snprintf(payload, sizeof(payload), "uid=%u gid=%u", who.uid, who.gid);
  size_t len = std::strlen(payload);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setresgid(who.gid, who.gid, who.gid) != 0 ||
        setresuid(who.uid, who.uid, who.uid) != 0)
      _exit(250);
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0 || (who.bound && bind(s, self.sa(), self.len) != 0)) _exit(251);
    int echoes = 0;
    char buf[256];
    for (int i = 0; i < count; ++i) {
      if (sendto(s, payload, len, 0, to.sa(), to.len) != static_cast<ssize_t>(len)) _exit(252);
      if (!who.bound) continue;
      pollfd p{s, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(wait.count())) == 1 &&
          recv(s, buf, sizeof(buf), 0) == static_cast<ssize_t>(len) && std::memcmp(buf, payload, len) == 0)
        ++echoes;
    }
    // An unnamed sender sends and exits at once, like logger(1): on the
    // kernel path its uid travels in the verdict program's tag, so a
    // socket already closed is still judged by its owner.
    _exit(echoes);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) >= 250) return -1;
  return WEXITSTATUS(status);
}

// Waits until the echo server has answered `n` datagrams in all (or gives up).
bool wait_echoed(const DgramEcho& echo, uint64_t n) {
  for (int i = 0; i < 100 && echo.echoed() < n; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return echo.echoed() == n;
}

class DgramPolicy : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  std::string config(const std::string& policy, const char* datapath) {
    return "[endpoints.front]\ntype = \"unix-dgram\"\nlisten = \"@" + front_name_ +
           "\"\n[endpoints.back]\ntype = \"unix-dgram\"\nconnect = \"" + dir_.file("back.sock") +
           "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\ndatapath = \"" + datapath + "\"\n" + policy;
  }
  Addr front() const { return abstract_addr(front_name_); }
  Addr back() const { return Addr::unix_path(dir_.file("back.sock")); }

  TempDir dir_;
  std::string front_name_ = "pol-front-" + std::to_string(getpid());
};

constexpr int kCount = 20;
constexpr auto kWait = std::chrono::milliseconds(1000);
constexpr auto kShortWait = std::chrono::milliseconds(100);  // for echoes that must not come

// allow-uids: a listed sender is relayed both ways, every datagram; an
// unlisted one never reaches the target, and each of its datagrams is
// counted as a policy drop.
TEST_P(DgramPolicy, AllowUidsAdmitsListedSendersOnly) {
  DgramEcho echo(back());
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, config("allow-uids = [0, 4242]\n", GetParam()));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  EXPECT_EQ(run_sender({0, 0}, front(), kCount, kWait), kCount) << relay.log();
  EXPECT_EQ(run_sender({4242, 4300}, front(), kCount, kWait), kCount) << relay.log();
  ASSERT_TRUE(wait_echoed(echo, 2 * kCount));
  EXPECT_EQ(json_counter(relay.status_json(), "drops", "policy"), 0u) << relay.status_json();

  EXPECT_EQ(run_sender({4243, 4242}, front(), kCount, kShortWait), 0) << "a refused sender got replies";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(echo.echoed(), 2u * kCount) << "a refused sender's datagram reached the target";
  std::string status = relay.status_json();
  EXPECT_EQ(json_counter(status, "drops", "policy"), static_cast<uint64_t>(kCount)) << status;
  EXPECT_EQ(json_number(status, "sessions-created"), 2u) << "a refused sender got a flow\n" << status;
  // Kernel path: after the first refusal the verdict program drops the
  // sender's datagrams itself (RELAY_FLOW_REFUSED), without user space.
  if (std::string(GetParam()) == "kernel")
    EXPECT_GE(json_counter(status, "kernel", "policy-drops"), static_cast<uint64_t>(kCount) - 1) << status;
  else
    EXPECT_EQ(json_counter(status, "kernel", "policy-drops"), 0u) << status;
  EXPECT_NE(relay.log().find("uid 4243 is not in allow-uids"), std::string::npos) << relay.log();

  // The listed ones still pass after the refusals.
  EXPECT_EQ(run_sender({4242, 4300}, front(), 3, kWait), 3) << relay.log();
}

// Senders with no address share no identity the relay could keep apart by
// name: each one is still judged by its own credentials.
TEST_P(DgramPolicy, UnnamedSendersAreJudgedEachByItsOwnIds) {
  DgramEcho echo(back());
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, config("allow-uids = [4242]\n", GetParam()));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  EXPECT_EQ(run_sender({4242, 4242, false}, front(), kCount, kWait), 0);
  ASSERT_TRUE(wait_echoed(echo, kCount)) << relay.log();
  EXPECT_EQ(run_sender({4243, 4242, false}, front(), kCount, kWait), 0);
  EXPECT_EQ(run_sender({0, 0, false}, front(), kCount, kWait), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(echo.echoed(), static_cast<uint64_t>(kCount)) << "a refused sender's datagram reached the target";
  std::string status = relay.status_json();
  EXPECT_EQ(json_counter(status, "drops", "policy"), 2u * kCount) << status;
}

INSTANTIATE_TEST_SUITE_P(Datapaths, DgramPolicy, ::testing::Values("kernel", "userspace"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return info.param; });

// allow-gids on the user-space path: each datagram's SCM_CREDENTIALS gid.
void check_gids_on_the_user_path(const char* datapath) {
  TempDir dir;
  std::string front_name = "pol-front-gid-" + std::string(datapath) + std::to_string(getpid());
  Addr front = abstract_addr(front_name);
  DgramEcho echo(Addr::unix_path(dir.file("back.sock")));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir, "[endpoints.front]\ntype = \"unix-dgram\"\nlisten = \"@" + front_name +
                              "\"\n[endpoints.back]\ntype = \"unix-dgram\"\nconnect = \"" +
                              dir.file("back.sock") +
                              "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\ndatapath = \"" + datapath +
                              "\"\nallow-uids = [4242, 4243]\nallow-gids = [4300]\n");
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  EXPECT_EQ(run_sender({4242, 4300}, front, kCount, kWait), kCount) << relay.log();
  EXPECT_EQ(run_sender({4243, 4301}, front, kCount, kShortWait), 0) << "a refused gid got replies";
  EXPECT_EQ(run_sender({0, 4300}, front, kCount, kShortWait), 0) << "a refused uid got replies";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(echo.echoed(), static_cast<uint64_t>(kCount)) << "a refused sender's datagram reached the target";
  std::string status = relay.status_json();
  EXPECT_EQ(json_counter(status, "drops", "policy"), 2u * kCount) << status;
  EXPECT_NE(relay.log().find("gid 4301 is not in allow-gids"), std::string::npos) << relay.log();
}

// "auto" takes the user-space path for a unix-dgram source (matrix rule 9).
TEST(DgramPolicyGids, UserspacePathAdmitsListedGidsOnly) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  for (const char* datapath : {"userspace", "auto"}) {
    SCOPED_TRACE(datapath);
    check_gids_on_the_user_path(datapath);
    if (HasFatalFailure()) return;
  }
}

// The kernel path cannot learn a sender's gid: allow-gids there is refused
// up front, naming the fix, rather than half enforced.
TEST(DgramPolicyGids, KernelPathRefusesAllowGids) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  TempDir dir;
  RelayProcess relay(dir, std::string("[endpoints.front]\ntype = \"unix-dgram\"\nlisten = \"@pol-gid-k\"\n"
                                      "[endpoints.back]\ntype = \"unix-dgram\"\nconnect = \"") +
                              dir.file("back.sock") +
                              "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\ndatapath = \"kernel\"\n"
                              "allow-gids = [0]\n");
  EXPECT_FALSE(relay.wait_ready()) << "started with allow-gids on the kernel path";
  EXPECT_NE(relay.log().find("allow-gids on unix-dgram endpoint"), std::string::npos) << relay.log();
  EXPECT_NE(relay.log().find("datapath = \"auto\" or \"userspace\""), std::string::npos) << relay.log();
}

}  // namespace
}  // namespace sockrelay::testing
