// The matrix measured on this kernel: every cell the machine can test is
// probed through the relay's real BPF program and must agree with the
// matrix. VSOCK cells need a loopback transport this machine lacks; they
// run in vm-tests/.
#include "probe/probe.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "matrix/matrix.h"
#include "matrix/matrix_format.h"
#include "test_env.h"

namespace sockrelay {
namespace {

bool is_vsock(EndpointKind kind) {
  return kind == EndpointKind::VsockStream || kind == EndpointKind::VsockSeqpacket;
}

std::string label(const ProbeResult& r) {
  return std::string(kind_name(r.source)) + " -> " + std::string(kind_name(r.target)) + " (" +
         std::string(mode_name(r.mode)) + ")";
}

int open_fd_count() {
  int n = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir)) ++n;
    closedir(dir);
  }
  return n;
}

TEST(Probe, EveryTestableCellAgreesWithTheMatrix) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  auto prober = Prober::create();
  ASSERT_TRUE(prober.ok()) << prober.error().describe();

  const int fds_before = open_fd_count();
  std::vector<ProbeResult> results = prober->probe_matrix();
  EXPECT_EQ(open_fd_count(), fds_before) << "a probe left a socket open";
  ASSERT_EQ(results.size(), matrix_cells().size());

  for (size_t i = 0; i < results.size(); ++i) {
    const ProbeResult& r = results[i];
    const MatrixCell& cell = matrix_cells()[i];
    std::printf("  %-42s %-12s %-18s %s\n", label(r).c_str(), std::string(support_name(cell.support)).c_str(),
                std::string(outcome_name(r.outcome)).c_str(), r.detail.c_str());
    EXPECT_NE(r.outcome, ProbeResult::Error) << label(r) << ": " << r.detail;
    EXPECT_TRUE(probe_agrees(cell, r)) << label(r) << ": matrix says " << support_name(cell.support)
                                       << ", measured " << outcome_name(r.outcome) << ": " << r.detail;
    if (!is_vsock(r.source) && !is_vsock(r.target)) {
      EXPECT_NE(r.outcome, ProbeResult::NotTestableHere) << label(r) << " must be testable on any kernel";
    }
  }
  std::printf("%s", format_matrix_grid(results).c_str());
}

TEST(Probe, VsockCellsAreNotTestableWithoutLoopback) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  std::string why;
  if (vsock_loopback_usable(&why))
    GTEST_SKIP() << "vsock loopback is loaded here: vsock cells are really probed";
  EXPECT_NE(why.find("vsock_loopback"), std::string::npos) << why;
  auto prober = Prober::create();
  ASSERT_TRUE(prober.ok()) << prober.error().describe();
  for (Mode mode : {Mode::Egress, Mode::Ingress}) {
    for (auto [s, t] : {std::pair{EndpointKind::VsockStream, EndpointKind::Udp},
                        std::pair{EndpointKind::UnixStream, EndpointKind::VsockSeqpacket},
                        std::pair{EndpointKind::VsockSeqpacket, EndpointKind::VsockStream}}) {
      ProbeResult r = prober->probe_cell(s, t, mode);
      EXPECT_EQ(r.outcome, ProbeResult::NotTestableHere) << label(r) << ": " << r.detail;
      EXPECT_EQ(r.detail,
                "no vsock loopback transport (vsock_loopback module) on this machine: run vm-tests/");
    }
  }
  // A unix-seqpacket end is refused by the map before VSOCK is needed.
  ProbeResult r = prober->probe_cell(EndpointKind::VsockStream, EndpointKind::UnixSeqpacket, Mode::Egress);
  EXPECT_EQ(r.outcome, ProbeResult::CannotEnterMap) << r.detail;
}

TEST(Probe, UdpToUnixDgramEgressDeliversByteExact) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  ProbeResult r = probe_cell(EndpointKind::Udp, EndpointKind::UnixDgram, Mode::Egress);
  EXPECT_EQ(r.outcome, ProbeResult::Delivered) << r.detail;
  EXPECT_NE(r.detail.find("byte-exact at the target's peer"), std::string::npos) << r.detail;
}

TEST(Probe, UnixSenderCookieKeysTheFlow) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  // Both AF_UNIX source kinds, keyed by their sender (ARCHITECTURE.md, "Kernel facts").
  for (EndpointKind s : {EndpointKind::UnixDgram, EndpointKind::UnixStream}) {
    ProbeResult r = probe_cell(s, EndpointKind::Udp, Mode::Egress);
    EXPECT_EQ(r.outcome, ProbeResult::Delivered) << label(r) << ": " << r.detail;
  }
}

TEST(Probe, UnixSeqpacketCannotEnterTheMap) {
  SOCKRELAY_REQUIRE_ROOT();
  SOCKRELAY_PRIVATE_NETNS();
  auto prober = Prober::create();
  ASSERT_TRUE(prober.ok()) << prober.error().describe();
  for (Mode mode : {Mode::Egress, Mode::Ingress}) {
    for (auto [s, t] : {std::pair{EndpointKind::UnixSeqpacket, EndpointKind::Udp},
                        std::pair{EndpointKind::Tcp, EndpointKind::UnixSeqpacket},
                        std::pair{EndpointKind::UnixSeqpacket, EndpointKind::UnixSeqpacket}}) {
      ProbeResult r = prober->probe_cell(s, t, mode);
      EXPECT_EQ(r.outcome, ProbeResult::CannotEnterMap) << label(r) << ": " << r.detail;
      EXPECT_NE(r.detail.find("EOPNOTSUPP"), std::string::npos) << r.detail;
    }
  }
}

}  // namespace
}  // namespace sockrelay
