// The matrix is built from a handful of rules rather than written out as
// 98 literals: a reader checks the rules, and a new fact is one new rule.
// Rules 1-4 are kernel facts (ARCHITECTURE.md, "Kernel facts"; measured by
// Probe.EveryTestableCellAgreesWithTheMatrix), rules 5-9 what this version
// does with them (each names the test that shows why).
#include "matrix/matrix.h"

#include <algorithm>

namespace sockrelay {

namespace {

constexpr size_t kKinds = std::size(kAllKinds);

// cell_index() relies on kAllKinds listing the kinds in enum order.
constexpr bool kinds_in_enum_order() {
  for (size_t i = 0; i < kKinds; ++i)
    if (static_cast<size_t>(kAllKinds[i]) != i) return false;
  return true;
}
static_assert(kinds_in_enum_order());

// What datapath = "auto" takes instead of the kernel path.
constexpr const char* kUserspaceFallback =
    "user-space data path: splice() for streams, recvmmsg/sendmmsg for datagrams";
constexpr const char* kSeqpacketFallback = "user-space data path (keeps message boundaries)";
constexpr const char* kBridgeFallback =
    "user-space data path: a session per datagram client or connection, each datagram sent as one message or "
    "stream write and each message or stream read as one datagram";
constexpr const char* kNoIngressFallback =
    "none: only the kernel can put data into another socket's receive queue, so the route is refused";

constexpr const char* kNoSockmap = "unix-seqpacket cannot enter a sockmap (EOPNOTSUPP)";
constexpr const char* kNoVsockIngress =
    "VSOCK cannot be a BPF_F_INGRESS target: the kernel drops it since 6.12";
constexpr const char* kBoundariesLost = "message boundaries are lost in the byte stream";
constexpr const char* kIngressMerges = "ingress can merge datagrams in one recv()";

// Each session (a datagram client, or an accepted connection) ends on its
// own, and must not cut the replies still in the psock backlog toward its
// datagram socket; unlike tcp's tcpi_bytes_acked, no per-socket counter
// says when that backlog has emptied.
constexpr const char* kBridgeReason =
    "a datagram <-> stream/seqpacket route ends each session (a datagram client, or a connection) on its "
    "own, "
    "and no counter says when the psock backlog toward a datagram socket has emptied, so ending one could "
    "cut "
    "its last replies";
// tcp <-> tcp: exact in the kernel, but with no backpressure (the psock
// backlog behind a slow reader is unbounded, and taking a socket out of
// the map under traffic drops skbs: measured), and slower than splice() in
// tests/bench/stream_bench.sh. Used when asked for by name.
constexpr const char* kTcpAutoReason =
    "the tcp kernel path has no backpressure (its psock backlog grows without bound behind a slow reader) "
    "and "
    "measured slower than splice(); set datapath = \"kernel\" for its lower latency";
// unix-dgram -> datagram: an AF_UNIX listener hands each datagram to the
// verdict program after dropping its receive lock (unix_read_skb()), from
// whichever sender's send() woke it, so two senders sending at once can
// have one's datagrams redirected out of order; and a new sender's datagrams
// pass through the hold (ARCHITECTURE.md "In order from the first
// datagram"), which a flood never leaves. Both measured
// (FlowOrder.NewClientsInOrderNothingLost, tests/bench/README.md
// "unix-dgram sources"); user space reads the listener in queue order.
constexpr const char* kUnixSourceReason =
    "an AF_UNIX listener hands datagrams to the verdict program outside its receive lock, so datagrams of "
    "senders sending at once can be redirected out of order (measured: reordered in 4-45 of 100 runs of "
    "three concurrent senders), and a sender flooding from its first datagram stays on the slower set-up "
    "path (measured 20-25k datagrams/s, against 78-139k/s in user space); set datapath = \"kernel\" when "
    "senders send one at a time";
constexpr const char* kIngressNeedsDatagrams =
    "mode = \"ingress\" is for routes to subscribers, and subscribers receive datagrams: a stream or "
    "seqpacket "
    "source feeds none";

constexpr const char* kReasonSeparator = "; ";

// Measured (StreamKernelFacts.QueuedBytesAndTheRcvlowatKick and
// EofBacklogAndCounters): a relayed stream must start with the bytes queued
// before its sockets entered the map and may only be half-closed once the
// psock backlog has emptied. tcp gives both exactly; AF_UNIX and VSOCK give
// neither.
std::string tcp_only_reason(EndpointKind other) {
  return "this version carries only tcp <-> tcp streams in the kernel: for " + std::string(kind_name(other)) +
         " the kernel neither hands bytes queued before the socket entered the map to the verdict program at "
         "once, nor tells when its psock backlog has emptied (needed to propagate a half-close without "
         "cutting "
         "the stream)";
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

void refuse_kernel(MatrixCell& cell, const char* reason, const char* fallback) {
  cell.support = Support::Unsupported;
  cell.reason = reason;
  cell.fallback = fallback;
  cell.relay = cell.mode == Mode::Ingress ? RelayPath::Refused : RelayPath::UserSpace;
}

// Rules 1-4: what the kernel can do. False when it cannot carry the cell.
bool apply_kernel_facts(MatrixCell& cell) {
  const EndpointKind source = cell.source, target = cell.target;
  const bool ingress = cell.mode == Mode::Ingress;
  // Rule 1: a socket that cannot enter a sockmap cannot be on either end.
  if (!kind_enters_sockmap(source) || !kind_enters_sockmap(target)) {
    refuse_kernel(cell, kNoSockmap, ingress ? kNoIngressFallback : kSeqpacketFallback);
    return false;
  }
  // Rule 2: BPF_F_INGRESS into VSOCK delivers nothing.
  if (ingress && kind_is_vsock(target)) {
    refuse_kernel(cell, kNoVsockIngress, kNoIngressFallback);
    return false;
  }
  // Rule 3: everything else works from the later of the two ends' kernels.
  cell.min_kernel = std::max(kind_min_kernel(source), kind_min_kernel(target));

  // Rule 4: caveats where the two ends disagree about message boundaries,
  // or where ingress queues skbs a datagram reader may get merged.
  std::vector<std::string> caveats;
  if (kind_is_stream(source) && keeps_boundaries(target)) caveats.push_back(skb_boundaries_reason(target));
  if (keeps_boundaries(source) && kind_is_stream(target)) caveats.push_back(kBoundariesLost);
  if (ingress && kind_is_datagram(target)) caveats.push_back(kIngressMerges);
  for (const auto& caveat : caveats) {
    if (!cell.reason.empty()) cell.reason += kReasonSeparator;
    cell.reason += caveat;
  }
  if (!caveats.empty()) cell.support = Support::Caveat;
  return true;
}

void stay_off_kernel(MatrixCell& cell, RelayPath path, std::string reason, const char* fallback) {
  cell.relay = path;
  cell.relay_reason = std::move(reason);
  cell.fallback = fallback;
}

// Rules 5-9: what this version takes where the kernel could carry the cell.
void apply_version_rules(MatrixCell& cell) {
  const EndpointKind source = cell.source, target = cell.target;
  const bool tcp_pair = source == EndpointKind::Tcp && target == EndpointKind::Tcp;
  if (cell.mode == Mode::Ingress) {
    // Rule 5: ingress feeds subscribers only (config validation refuses it
    // toward a connect endpoint), and they take datagram sources.
    if (!kind_is_datagram(source))
      stay_off_kernel(cell, RelayPath::Refused, kIngressNeedsDatagrams, kNoIngressFallback);
  } else if (kind_is_datagram(source) != kind_is_datagram(target)) {
    // Rule 6: datagram <-> connection routes are bridged in user space.
    stay_off_kernel(cell, RelayPath::UserSpace, kBridgeReason, kBridgeFallback);
  } else if (!kind_is_datagram(source) && !tcp_pair) {
    // Rule 7: of the connection kinds only tcp <-> tcp rides the kernel.
    stay_off_kernel(cell, RelayPath::UserSpace,
                    tcp_only_reason(source == EndpointKind::Tcp ? target : source), kUserspaceFallback);
  } else if (tcp_pair) {
    // Rule 8: tcp <-> tcp only when asked for by name.
    stay_off_kernel(cell, RelayPath::KernelIfAsked, kTcpAutoReason, kUserspaceFallback);
  } else if (source == EndpointKind::UnixDgram) {
    // Rule 9: unix-dgram sources only when asked for by name: user space
    // keeps each sender's order, and is faster under a flood.
    stay_off_kernel(cell, RelayPath::KernelIfAsked, kUnixSourceReason, kUserspaceFallback);
  }
}

MatrixCell make_cell(EndpointKind source, EndpointKind target, Mode mode) {
  MatrixCell cell{source, target, mode, Support::Supported, {}, {}, {}, RelayPath::Kernel, {}};
  if (apply_kernel_facts(cell)) apply_version_rules(cell);
  return cell;
}

std::vector<MatrixCell> build_cells() {
  std::vector<MatrixCell> cells;
  cells.reserve(std::size(kAllModes) * kKinds * kKinds);
  for (Mode mode : kAllModes)
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

std::string_view relay_path_name(RelayPath path) {
  switch (path) {
    case RelayPath::Kernel:
      return "kernel";
    case RelayPath::KernelIfAsked:
      return "kernel-if-asked";
    case RelayPath::UserSpace:
      return "userspace";
    case RelayPath::Refused:
      return "refused";
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
      "Where the BPF program cannot load (no privilege), datapath = \"auto\" takes user space and "
      "\"kernel\" is refused, as is mode = \"ingress\".",
      "Several targets (`to = [...]`): round-robin and hash pick one target per datagram in the verdict "
      "program. balance = \"broadcast\" cannot be a redirect (one skb goes to one socket): the verdict "
      "program hands each datagram to user space, which sends one copy per target; cost: a user-space "
      "receive per datagram and a send per copy (tests/bench/fanout.md: 1.5-1.7x socat, and it drops what "
      "a flat-out sender offers beyond that).",
      "Routes to a subscribe endpoint (consumers join at run time): balance = \"round-robin\" takes the "
      "kernel "
      "path wherever the kernel can carry the cell, udp/unix-dgram -> unix-stream included (subscribers only "
      "receive, so no reply can be cut); balance = \"broadcast\" copies each datagram in user space. mode = "
      "\"ingress\" is for them only: each subscriber passes the socket to fill, and the ingress grid says "
      "what "
      "they get.",
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

std::string cell_label(const MatrixCell& cell) {
  return std::string(kind_name(cell.source)) + " -> " + std::string(kind_name(cell.target)) + " (" +
         std::string(mode_name(cell.mode)) + ")";
}

std::size_t matrix_cell_index(EndpointKind source, EndpointKind target, Mode mode) {
  size_t m = mode == Mode::Egress ? 0 : 1;
  return (m * kKinds + static_cast<size_t>(source)) * kKinds + static_cast<size_t>(target);
}

const std::vector<MatrixCell>& matrix_cells() {
  static const std::vector<MatrixCell> cells = build_cells();
  return cells;
}

const MatrixCell& matrix_cell(EndpointKind source, EndpointKind target, Mode mode) {
  return matrix_cells()[matrix_cell_index(source, target, mode)];
}

}  // namespace sockrelay
