#include "daemon/privileges.h"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_env.h"

namespace sockrelay {
namespace {

// In a child (dropping is one-way): root keeps exactly the runtime set.
TEST(Privileges, DropKeepsOnlyTheRuntimeCapabilities) {
  SOCKRELAY_REQUIRE_ROOT();
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    Status st = drop_capabilities_except(runtime_capabilities(false, false));
    std::string result = st ? effective_capabilities() : "error: " + st.error().describe();
    // The bounding set must have lost CAP_SYS_ADMIN too.
    if (prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) != 0)
      result += " (bounding set still has cap_sys_admin)";
    (void)!write(pipefd[1], result.data(), result.size());
    _exit(0);
  }
  close(pipefd[1]);
  char buf[256] = {};
  ssize_t n = read(pipefd[0], buf, sizeof(buf) - 1);
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  ASSERT_GT(n, 0);
  EXPECT_STREQ(buf, "cap_net_admin,cap_bpf");
}

}  // namespace
}  // namespace sockrelay
