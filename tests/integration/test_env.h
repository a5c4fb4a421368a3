// Shared set-up for integration tests: root check, a private network
// namespace per test, and running the sockrelay binary.
#pragma once

#include <gtest/gtest.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <string>

namespace sockrelay::testing {

// Skips the current test (with the reason printed) unless we are root.
#define SOCKRELAY_REQUIRE_ROOT()                                                              \
  do {                                                                                        \
    if (geteuid() != 0) GTEST_SKIP() << "needs root (BPF maps, sockmap, netns); run as root"; \
  } while (0)

// Moves this process into a fresh network namespace with `lo` up, so each
// test has its own ports and nothing leaves it. Returns false on failure.
inline bool enter_private_netns(std::string* why) {
  if (unshare(CLONE_NEWNET) != 0) {
    *why = std::string("unshare(CLONE_NEWNET): ") + strerror(errno);
    return false;
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr = {};
  strcpy(ifr.ifr_name, "lo");
  bool ok = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  ifr.ifr_flags |= IFF_UP;
  ok = ok && ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  if (!ok) *why = std::string("bring lo up: ") + strerror(errno);
  if (s >= 0) close(s);
  return ok;
}

#define SOCKRELAY_PRIVATE_NETNS()                                          \
  do {                                                                     \
    std::string why_;                                                      \
    ASSERT_TRUE(::sockrelay::testing::enter_private_netns(&why_)) << why_; \
  } while (0)

}  // namespace sockrelay::testing
