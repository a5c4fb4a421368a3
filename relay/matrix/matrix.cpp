// The matrix is built from a handful of rules, each one a kernel fact from
// DESIGN.md ("Kernel facts"), rather than written out as 98 literals: a
// reader checks the rules, and a new fact is one new rule.
#include "matrix/matrix.h"

#include <algorithm>
#include <cstddef>

namespace sockrelay {

namespace {

constexpr size_t kKinds = std::size(kAllKinds);
constexpr Mode kModes[] = {Mode::Egress, Mode::Ingress};

// cell_index() relies on kAllKinds listing the kinds in enum order.
constexpr bool kinds_in_enum_order() {
  for (size_t i = 0; i < kKinds; ++i)
    if (static_cast<size_t>(kAllKinds[i]) != i) return false;
  return true;
}
static_assert(kinds_in_enum_order());

// What datapath = "auto" does when the kernel path is not available.
constexpr const char* kUserspaceFallback =
    "user-space data path: splice() for streams, recvmmsg/sendmmsg for datagrams";
constexpr const char* kSeqpacketFallback = "user-space data path (keeps message boundaries)";

constexpr const char* kNoSockmap = "unix-seqpacket cannot enter a sockmap (EOPNOTSUPP)";
constexpr const char* kNoVsockIngress =
    "VSOCK cannot be a BPF_F_INGRESS target: the kernel drops it since 6.12";
constexpr const char* kBoundariesLost = "message boundaries are lost in the byte stream";
constexpr const char* kIngressMerges = "ingress can merge datagrams in one recv()";

constexpr const char* kReasonSeparator = "; ";

bool is_vsock(EndpointKind kind) {
  return kind == EndpointKind::VsockStream || kind == EndpointKind::VsockSeqpacket;
}

// Kinds whose every send is one message the reader gets whole: datagrams
// and seqpacket records.
bool keeps_boundaries(EndpointKind kind) { return !kind_is_stream(kind); }

// A stream has no message boundaries, so the target emits one message per
// skb the source happened to receive.
std::string skb_boundaries_reason(EndpointKind target) {
  return std::string("keeps the source's skb boundaries, not message boundaries: a ") +
         (kind_is_datagram(target) ? "datagram" : "record") + " per skb";
}

MatrixCell make_cell(EndpointKind source, EndpointKind target, Mode mode) {
  MatrixCell cell{source, target, mode, Support::Supported, {}, {}, {}};

  // Rule 1: a socket that cannot enter a sockmap cannot be on either end.
  if (!kind_enters_sockmap(source) || !kind_enters_sockmap(target)) {
    cell.support = Support::Unsupported;
    cell.reason = kNoSockmap;
    cell.fallback = kSeqpacketFallback;
    return cell;
  }
  // Rule 2: BPF_F_INGRESS into VSOCK delivers nothing.
  if (mode == Mode::Ingress && is_vsock(target)) {
    cell.support = Support::Unsupported;
    cell.reason = kNoVsockIngress;
    cell.fallback = kUserspaceFallback;
    return cell;
  }
  // Rule 3: everything else works from the later of the two ends' kernels.
  cell.min_kernel = std::max(kind_min_kernel(source), kind_min_kernel(target));

  // Rule 4: caveats where the two ends disagree about message boundaries,
  // or where ingress queues skbs a datagram reader may get merged.
  std::vector<std::string> caveats;
  if (kind_is_stream(source) && keeps_boundaries(target)) caveats.push_back(skb_boundaries_reason(target));
  if (keeps_boundaries(source) && kind_is_stream(target)) caveats.push_back(kBoundariesLost);
  if (mode == Mode::Ingress && kind_is_datagram(target)) caveats.push_back(kIngressMerges);
  for (const auto& caveat : caveats) {
    if (!cell.reason.empty()) cell.reason += kReasonSeparator;
    cell.reason += caveat;
  }
  if (!caveats.empty()) cell.support = Support::Caveat;
  return cell;
}

size_t cell_index(EndpointKind source, EndpointKind target, Mode mode) {
  size_t m = mode == Mode::Egress ? 0 : 1;
  return (m * kKinds + static_cast<size_t>(source)) * kKinds + static_cast<size_t>(target);
}

std::vector<MatrixCell> build_cells() {
  std::vector<MatrixCell> cells;
  cells.reserve(std::size(kModes) * kKinds * kKinds);
  for (Mode mode : kModes)
    for (EndpointKind source : kAllKinds)
      for (EndpointKind target : kAllKinds) cells.push_back(make_cell(source, target, mode));
  return cells;
}

}  // namespace

std::string_view support_name(Support support) {
  switch (support) {
    case Support::Supported:
      return "supported";
    case Support::Caveat:
      return "caveat";
    case Support::Unsupported:
      return "unsupported";
  }
  return "unknown";
}

std::string kernel_version_name(KernelVersion version) {
  if (!version.known()) return "";
  return std::to_string(version.major) + "." + std::to_string(version.minor);
}

bool kind_enters_sockmap(EndpointKind kind) { return kind != EndpointKind::UnixSeqpacket; }

KernelVersion kind_min_kernel(EndpointKind kind) {
  switch (kind) {
    case EndpointKind::Udp:
      return {5, 13};
    // Sockmap redirect for TCP dates from 4.20; 5.4 is the first LTS where
    // it is solid.
    case EndpointKind::Tcp:
      return {5, 4};
    case EndpointKind::UnixDgram:
    case EndpointKind::UnixStream:
      return {5, 15};
    case EndpointKind::UnixSeqpacket:
      return {0, 0};
    case EndpointKind::VsockStream:
    case EndpointKind::VsockSeqpacket:
      return {6, 4};
  }
  return {0, 0};
}

const std::vector<std::string>& matrix_general_notes() {
  static const std::vector<std::string> notes = {
      "Every cell through the kernel loses SCM_RIGHTS, credentials (SCM_CREDENTIALS) and MSG_OOB data.",
      "Minimum kernel = the later of both ends: udp 5.13, tcp 5.4, unix-dgram/unix-stream 5.15, "
      "vsock 6.4 (use >= 6.12 with stable fixes).",
      "Version numbers lie because of backports: `sockrelay matrix --probe` measures this kernel.",
      "Several targets (`to = [...]`): round-robin and hash pick one target per datagram in the verdict "
      "program. balance = \"broadcast\" cannot be a redirect (one skb goes to one socket): the verdict "
      "program hands each datagram to user space, which sends one copy per target; cost: a user-space "
      "receive per datagram and a send per copy (tests/bench/fanout.md: 1.5-1.7x socat, and it drops what "
      "a flat-out sender offers beyond that).",
  };
  return notes;
}

std::vector<std::string> cell_reasons(const MatrixCell& cell) {
  std::vector<std::string> parts;
  std::string_view rest = cell.reason;
  const std::string_view separator = kReasonSeparator;
  while (!rest.empty()) {
    size_t at = rest.find(separator);
    parts.emplace_back(rest.substr(0, at));
    if (at == std::string_view::npos) break;
    rest.remove_prefix(at + separator.size());
  }
  return parts;
}

const std::vector<MatrixCell>& matrix_cells() {
  static const std::vector<MatrixCell> cells = build_cells();
  return cells;
}

const MatrixCell& matrix_cell(EndpointKind source, EndpointKind target, Mode mode) {
  return matrix_cells()[cell_index(source, target, mode)];
}

}  // namespace sockrelay
