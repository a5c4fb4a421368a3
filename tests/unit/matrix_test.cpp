// The matrix as data: every kernel fact (ARCHITECTURE.md, "Kernel facts")
// and every rule of what this version takes is a cell property checked
// here, and the formatters show what they should.
#include "matrix/matrix.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <tuple>

#include "matrix/datapath_choice.h"
#include "matrix/matrix_format.h"

namespace sockrelay {
namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(Matrix, HasEveryCellOnceInOrder) {
  const auto& cells = matrix_cells();
  ASSERT_EQ(cells.size(), 98u);
  std::set<std::tuple<EndpointKind, EndpointKind, Mode>> seen;
  for (const auto& cell : cells) seen.insert({cell.source, cell.target, cell.mode});
  EXPECT_EQ(seen.size(), 98u);
  EXPECT_EQ(cells.front().mode, Mode::Egress);
  EXPECT_EQ(cells.back().mode, Mode::Ingress);
  for (Mode mode : kAllModes)
    for (EndpointKind s : kAllKinds)
      for (EndpointKind t : kAllKinds) {
        const MatrixCell& cell = matrix_cell(s, t, mode);
        EXPECT_EQ(cell.source, s);
        EXPECT_EQ(cell.target, t);
        EXPECT_EQ(cell.mode, mode);
      }
}

TEST(Matrix, OnlyUnixSeqpacketCannotEnterSockmap) {
  for (EndpointKind kind : kAllKinds)
    EXPECT_EQ(kind_enters_sockmap(kind), kind != EndpointKind::UnixSeqpacket);
}

TEST(Matrix, EgressWorksBetweenEverySockmapKind) {
  for (EndpointKind s : kAllKinds)
    for (EndpointKind t : kAllKinds) {
      if (!kind_enters_sockmap(s) || !kind_enters_sockmap(t)) continue;
      const MatrixCell& cell = matrix_cell(s, t, Mode::Egress);
      EXPECT_NE(cell.support, Support::Unsupported) << kind_name(s) << " -> " << kind_name(t);
      // A fallback is named exactly where this version may stay off the kernel path.
      EXPECT_EQ(cell.fallback.empty(), cell.relay == RelayPath::Kernel) << cell_label(cell);
    }
}

TEST(Matrix, IngressWorksIntoEveryKindButVsock) {
  for (EndpointKind s : kAllKinds)
    for (EndpointKind t : kAllKinds) {
      if (!kind_enters_sockmap(s) || !kind_enters_sockmap(t)) continue;
      const MatrixCell& cell = matrix_cell(s, t, Mode::Ingress);
      if (kind_is_vsock(t)) {
        EXPECT_EQ(cell.support, Support::Unsupported) << kind_name(s) << " -> " << kind_name(t);
        EXPECT_EQ(cell.reason, "VSOCK cannot be a BPF_F_INGRESS target: the kernel drops it since 6.12");
        EXPECT_TRUE(contains(cell.fallback, "none: only the kernel can put data")) << cell.fallback;
        EXPECT_EQ(cell.relay, RelayPath::Refused);
        EXPECT_FALSE(cell.min_kernel.known());
      } else {
        EXPECT_NE(cell.support, Support::Unsupported) << kind_name(s) << " -> " << kind_name(t);
      }
    }
  // Ingress *from* vsock is fine: only the target matters.
  EXPECT_EQ(matrix_cell(EndpointKind::VsockStream, EndpointKind::UnixStream, Mode::Ingress).support,
            Support::Supported);
}

TEST(Matrix, UnixSeqpacketIsUnsupportedBothWays) {
  for (Mode mode : kAllModes)
    for (EndpointKind other : kAllKinds) {
      for (const MatrixCell* cell : {&matrix_cell(EndpointKind::UnixSeqpacket, other, mode),
                                     &matrix_cell(other, EndpointKind::UnixSeqpacket, mode)}) {
        EXPECT_EQ(cell->support, Support::Unsupported);
        EXPECT_TRUE(contains(cell->reason, "EOPNOTSUPP")) << cell->reason;
        if (mode == Mode::Egress) {
          EXPECT_EQ(cell->fallback, "user-space data path (keeps message boundaries)");
          EXPECT_EQ(cell->relay, RelayPath::UserSpace);
        } else {
          EXPECT_TRUE(contains(cell->fallback, "none:")) << "ingress has no user-space equivalent";
          EXPECT_EQ(cell->relay, RelayPath::Refused);
        }
        EXPECT_FALSE(cell->min_kernel.known());
      }
    }
}

TEST(Matrix, StreamIntoDatagramKeepsSkbBoundaries) {
  const MatrixCell& cell = matrix_cell(EndpointKind::Tcp, EndpointKind::Udp, Mode::Egress);
  EXPECT_EQ(cell.support, Support::Caveat);
  EXPECT_EQ(cell.reason, "keeps the source's skb boundaries, not message boundaries: a datagram per skb");
  EXPECT_EQ(matrix_cell(EndpointKind::UnixStream, EndpointKind::UnixDgram, Mode::Egress).reason, cell.reason);
  EXPECT_EQ(matrix_cell(EndpointKind::VsockStream, EndpointKind::Udp, Mode::Egress).reason, cell.reason);
  // A seqpacket target gets one record per skb, the same caveat.
  EXPECT_EQ(matrix_cell(EndpointKind::Tcp, EndpointKind::VsockSeqpacket, Mode::Egress).support,
            Support::Caveat);
}

TEST(Matrix, DatagramIntoStreamLosesBoundaries) {
  for (EndpointKind s : {EndpointKind::Udp, EndpointKind::UnixDgram, EndpointKind::VsockSeqpacket}) {
    const MatrixCell& cell = matrix_cell(s, EndpointKind::Tcp, Mode::Egress);
    EXPECT_EQ(cell.support, Support::Caveat) << kind_name(s);
    EXPECT_TRUE(contains(cell.reason, "message boundaries are lost")) << cell.reason;
  }
}

TEST(Matrix, IngressIntoDatagramCanMerge) {
  const MatrixCell& cell = matrix_cell(EndpointKind::Udp, EndpointKind::UnixDgram, Mode::Ingress);
  EXPECT_EQ(cell.support, Support::Caveat);
  EXPECT_EQ(cell.reason, "ingress can merge datagrams in one recv()");
  // Both caveats at once, each a separate note.
  const MatrixCell& both = matrix_cell(EndpointKind::Tcp, EndpointKind::Udp, Mode::Ingress);
  EXPECT_EQ(cell_reasons(both).size(), 2u);
}

TEST(Matrix, SameShapeIsPlainlySupported) {
  for (auto [s, t] : {std::pair{EndpointKind::Udp, EndpointKind::UnixDgram},
                      std::pair{EndpointKind::Tcp, EndpointKind::VsockStream},
                      std::pair{EndpointKind::UnixStream, EndpointKind::Tcp}}) {
    const MatrixCell& cell = matrix_cell(s, t, Mode::Egress);
    EXPECT_EQ(cell.support, Support::Supported)
        << kind_name(s) << " -> " << kind_name(t) << ": " << cell.reason;
    EXPECT_TRUE(cell.reason.empty());
  }
}

TEST(Matrix, SocketFeaturesLostAreOneGeneralNote) {
  for (const auto& cell : matrix_cells()) EXPECT_FALSE(contains(cell.reason, "SCM_RIGHTS"));
  bool found = false;
  for (const auto& note : matrix_general_notes()) found = found || contains(note, "SCM_RIGHTS");
  EXPECT_TRUE(found);
}

TEST(Matrix, MinKernelIsTheLaterEnd) {
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::Udp)), "5.13");
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::Tcp)), "5.4");
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::UnixDgram)), "5.15");
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::UnixStream)), "5.15");
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::VsockStream)), "6.4");
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::VsockSeqpacket)), "6.4");
  EXPECT_EQ(kernel_version_name(kind_min_kernel(EndpointKind::UnixSeqpacket)), "");

  auto min = [](EndpointKind s, EndpointKind t, Mode m = Mode::Egress) {
    return kernel_version_name(matrix_cell(s, t, m).min_kernel);
  };
  EXPECT_EQ(min(EndpointKind::Udp, EndpointKind::Udp), "5.13");
  EXPECT_EQ(min(EndpointKind::Tcp, EndpointKind::Tcp), "5.4");
  EXPECT_EQ(min(EndpointKind::Udp, EndpointKind::UnixDgram), "5.15");
  EXPECT_EQ(min(EndpointKind::Tcp, EndpointKind::Udp), "5.13");
  EXPECT_EQ(min(EndpointKind::UnixStream, EndpointKind::VsockStream), "6.4");
  EXPECT_EQ(min(EndpointKind::VsockSeqpacket, EndpointKind::Udp, Mode::Ingress), "6.4");
  for (const auto& cell : matrix_cells())
    EXPECT_EQ(cell.min_kernel.known(), cell.support != Support::Unsupported)
        << kind_name(cell.source) << " -> " << kind_name(cell.target);
}

TEST(Matrix, CellReasonsSplitJoinedCaveats) {
  MatrixCell cell = matrix_cell(EndpointKind::Udp, EndpointKind::Udp, Mode::Egress);
  EXPECT_TRUE(cell_reasons(cell).empty());
  cell.reason = "a; b";
  EXPECT_EQ(cell_reasons(cell), (std::vector<std::string>{"a", "b"}));
}

// What this version takes (rules 5-9 in matrix.cpp): plan_route reads
// these, `sockrelay matrix` prints them.
TEST(MatrixVersion, UdpSourcesTakeTheKernel) {
  for (EndpointKind t : {EndpointKind::Udp, EndpointKind::UnixDgram}) {
    const MatrixCell& cell = matrix_cell(EndpointKind::Udp, t, Mode::Egress);
    EXPECT_EQ(cell.relay, RelayPath::Kernel) << cell_label(cell);
    EXPECT_TRUE(cell.relay_reason.empty());
  }
}

// An AF_UNIX listener can reorder concurrent senders in the kernel (rule 9).
TEST(MatrixVersion, UnixDgramSourcesRideTheKernelOnlyWhenAsked) {
  for (EndpointKind t : {EndpointKind::Udp, EndpointKind::UnixDgram}) {
    const MatrixCell& cell = matrix_cell(EndpointKind::UnixDgram, t, Mode::Egress);
    EXPECT_EQ(cell.support, Support::Supported) << cell_label(cell);
    EXPECT_EQ(cell.relay, RelayPath::KernelIfAsked) << cell_label(cell);
    EXPECT_TRUE(contains(cell.relay_reason, "out of order")) << cell.relay_reason;
    EXPECT_EQ(choose_datapath(Datapath::Auto, cell, "").kernel, false);
    EXPECT_TRUE(choose_datapath(Datapath::Auto, cell, "").fell_back);
    EXPECT_TRUE(choose_datapath(Datapath::Kernel, cell, "").kernel);
  }
}

TEST(MatrixVersion, DatagramConnectionRoutesAreBridgedInUserSpace) {
  for (auto [s, t] :
       {std::pair{EndpointKind::Udp, EndpointKind::Tcp}, std::pair{EndpointKind::Tcp, EndpointKind::Udp},
        std::pair{EndpointKind::UnixDgram, EndpointKind::UnixStream},
        std::pair{EndpointKind::Udp, EndpointKind::VsockSeqpacket}}) {
    const MatrixCell& cell = matrix_cell(s, t, Mode::Egress);
    EXPECT_NE(cell.support, Support::Unsupported) << "the kernel could: " << cell_label(cell);
    EXPECT_EQ(cell.relay, RelayPath::UserSpace) << cell_label(cell);
    EXPECT_TRUE(contains(cell.relay_reason, "psock backlog toward a datagram socket")) << cell.relay_reason;
    EXPECT_TRUE(contains(cell.fallback, "a session per datagram client or connection")) << cell.fallback;
  }
}

TEST(MatrixVersion, OnlyTcpStreamsRideTheKernelAndOnlyWhenAsked) {
  const MatrixCell& tcp = matrix_cell(EndpointKind::Tcp, EndpointKind::Tcp, Mode::Egress);
  EXPECT_EQ(tcp.relay, RelayPath::KernelIfAsked);
  EXPECT_TRUE(contains(tcp.relay_reason, "no backpressure")) << tcp.relay_reason;
  EXPECT_TRUE(contains(tcp.fallback, "splice()")) << tcp.fallback;
  for (auto [s, t, named] :
       {std::tuple{EndpointKind::UnixStream, EndpointKind::UnixStream, "unix-stream"},
        std::tuple{EndpointKind::Tcp, EndpointKind::UnixStream, "unix-stream"},
        std::tuple{EndpointKind::VsockStream, EndpointKind::Tcp, "vsock-stream"},
        std::tuple{EndpointKind::VsockSeqpacket, EndpointKind::VsockSeqpacket, "vsock-seqpacket"}}) {
    const MatrixCell& cell = matrix_cell(s, t, Mode::Egress);
    EXPECT_EQ(cell.relay, RelayPath::UserSpace) << cell_label(cell);
    EXPECT_TRUE(contains(cell.relay_reason, "only tcp <-> tcp streams")) << cell.relay_reason;
    EXPECT_TRUE(contains(cell.relay_reason, std::string("for ") + named + " the kernel"))
        << cell.relay_reason;
  }
}

TEST(MatrixVersion, IngressFeedsSubscribersOfDatagramSources) {
  EXPECT_EQ(matrix_cell(EndpointKind::Udp, EndpointKind::UnixStream, Mode::Ingress).relay, RelayPath::Kernel);
  EXPECT_EQ(matrix_cell(EndpointKind::UnixDgram, EndpointKind::Tcp, Mode::Ingress).relay, RelayPath::Kernel);
  const MatrixCell& from_stream = matrix_cell(EndpointKind::Tcp, EndpointKind::Udp, Mode::Ingress);
  EXPECT_EQ(from_stream.relay, RelayPath::Refused);
  EXPECT_TRUE(contains(from_stream.relay_reason, "subscribers receive datagrams"))
      << from_stream.relay_reason;
  EXPECT_TRUE(contains(from_stream.fallback, "none:")) << from_stream.fallback;
}

TEST(MatrixVersion, EveryCellOffTheKernelSaysWhyAndWhatInstead) {
  for (const MatrixCell& cell : matrix_cells()) {
    if (cell.relay == RelayPath::Kernel) continue;
    EXPECT_FALSE(cell.fallback.empty()) << cell_label(cell);
    EXPECT_TRUE(cell.support == Support::Unsupported || !cell.relay_reason.empty()) << cell_label(cell);
  }
}

TEST(MatrixFormat, GridShowsWhatThisVersionTakes) {
  std::string grid = format_matrix_grid();
  EXPECT_TRUE(contains(grid, "kN = only with datapath = \"kernel\"")) << grid;
  EXPECT_TRUE(contains(grid,
                       "This version takes it only with datapath = \"kernel\"; \"auto\" takes the "
                       "user-space data path: splice()"))
      << grid;
  EXPECT_TRUE(contains(grid, "(datapath = \"kernel\" is refused), because a datagram <-> stream/seqpacket"))
      << grid;
  EXPECT_TRUE(
      contains(grid, "This version runs no route over it: mode = \"ingress\" is for routes to subscribers"))
      << grid;
  EXPECT_TRUE(contains(grid, "Routes to a subscribe endpoint")) << grid;
  EXPECT_TRUE(contains(grid, "routes to subscribers only")) << "the ingress heading says whom it answers for";
  // tcp -> tcp egress: the kernel can, this version only when asked.
  EXPECT_TRUE(contains(grid, " ok k")) << grid;
}

TEST(MatrixFormat, GridShowsKindsSymbolsAndNotes) {
  std::string grid = format_matrix_grid();
  for (EndpointKind kind : kAllKinds)
    EXPECT_TRUE(contains(grid, std::string(kind_name(kind)))) << kind_name(kind);
  EXPECT_TRUE(contains(grid, "mode egress"));
  EXPECT_TRUE(contains(grid, "mode ingress"));
  EXPECT_TRUE(contains(grid, "Legend"));
  EXPECT_TRUE(contains(grid, "EOPNOTSUPP"));
  EXPECT_TRUE(contains(grid, "BPF_F_INGRESS target"));
  EXPECT_TRUE(contains(grid, "a datagram per skb"));
  EXPECT_TRUE(contains(grid, "SCM_RIGHTS"));
  EXPECT_TRUE(contains(grid, "user-space data path: splice()"));
  EXPECT_FALSE(contains(grid, "[got]")) << "no measurements without a probe";
  EXPECT_FALSE(contains(grid, "!!"));
}

std::vector<ProbeResult> pretend_probe(const MatrixCell* wrong) {
  std::vector<ProbeResult> results;
  for (const auto& cell : matrix_cells()) {
    ProbeResult::Outcome outcome =
        cell.support == Support::Unsupported ? ProbeResult::NotDelivered : ProbeResult::Delivered;
    if (&cell == wrong) outcome = ProbeResult::NotDelivered;
    if (cell.target == EndpointKind::VsockStream) outcome = ProbeResult::NotTestableHere;
    results.push_back({cell.source, cell.target, cell.mode, outcome, "pretend"});
  }
  return results;
}

TEST(MatrixFormat, GridWithProbeMarksMismatchesLoudly) {
  EXPECT_TRUE(probe_agrees(matrix_cell(EndpointKind::Udp, EndpointKind::Udp, Mode::Egress),
                           {EndpointKind::Udp, EndpointKind::Udp, Mode::Egress, ProbeResult::Delivered, ""}));

  std::string clean = format_matrix_grid(pretend_probe(nullptr));
  EXPECT_TRUE(contains(clean, "[got]"));
  EXPECT_TRUE(contains(clean, "[n/t]"));
  EXPECT_TRUE(contains(clean, "0 DISAGREE"));
  EXPECT_FALSE(contains(clean, "MISMATCH"));
  EXPECT_FALSE(contains(clean, "!! ~")) << "no cell marked";

  const MatrixCell& wrong = matrix_cell(EndpointKind::Udp, EndpointKind::Tcp, Mode::Egress);
  std::string grid = format_matrix_grid(pretend_probe(&wrong));
  EXPECT_TRUE(contains(grid, "1 DISAGREE"));
  EXPECT_TRUE(contains(grid, "MISMATCH"));
  EXPECT_TRUE(contains(grid, "!! ~")) << "the wrong cell is marked in the grid";
  EXPECT_TRUE(
      contains(grid, "!! udp -> tcp (egress): matrix says caveat, probe measured not-delivered: pretend"))
      << grid;
}

TEST(MatrixFormat, JsonHasEveryCellWithItsFields) {
  std::string json = format_matrix_json();
  ASSERT_FALSE(json.empty());
  EXPECT_EQ(json.front(), '[');
  EXPECT_EQ(json.back(), ']');
  size_t objects = 0;
  for (size_t at = json.find("\"source\":"); at != std::string::npos; at = json.find("\"source\":", at + 1))
    ++objects;
  EXPECT_EQ(objects, 98u);
  EXPECT_TRUE(
      contains(json, R"({"source":"udp","target":"udp","mode":"egress","support":"supported",)"
                     R"("min-kernel":"5.13","reason":"","fallback":"","relay":"kernel","relay-reason":""})"));
  EXPECT_TRUE(contains(json,
                       R"({"source":"tcp","target":"tcp","mode":"egress","support":"supported",)"
                       R"("min-kernel":"5.4","reason":"","fallback":"user-space data path: splice() for )"
                       R"(streams, recvmmsg/sendmmsg for datagrams","relay":"kernel-if-asked",)"
                       R"("relay-reason":"the tcp kernel path has no backpressure)"));
  EXPECT_TRUE(contains(
      json, R"("target":"vsock-stream","mode":"ingress","support":"unsupported","min-kernel":null)"));
  EXPECT_TRUE(contains(json, "\"fallback\":\"user-space data path (keeps message boundaries)\""));
  EXPECT_FALSE(contains(json, "\"probe\""));

  std::string probed = format_matrix_json(pretend_probe(nullptr));
  EXPECT_TRUE(contains(probed, R"("probe":{"outcome":"delivered","detail":"pretend","agrees":true})"));
  EXPECT_TRUE(contains(probed, R"("probe":{"outcome":"not-testable-here")"));
}

}  // namespace
}  // namespace sockrelay
