#include "probe/probe.h"

#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "bpf_loader/bpf_relay.h"
#include "common/fd.h"
#include "relay_shared.h"

namespace sockrelay {

namespace {

constexpr const char* kNoVsockLoopback =
    "no vsock loopback transport (vsock_loopback module) on this machine: run vm-tests/";

bool is_unix(EndpointKind kind) { return kind_family(kind) == AF_UNIX; }

// Why a cell stopped before its payload could be judged.
struct Stop {
  ProbeResult::Outcome outcome;
  std::string detail;
};

Stop error_stop(const Error& error) { return Stop{ProbeResult::Error, error.describe()}; }
Stop errno_stop(const std::string& what) { return error_stop(errno_error(what)); }

Result<Fd> open_socket(int family, int type, const char* what) {
  Fd s(socket(family, type | SOCK_CLOEXEC, 0));
  if (!s) return errno_error(std::string("socket(") + what + ")");
  return s;
}

// Two connected sockets of one kind. `near` is the relay's own: a source's
// receiving socket or a redirect target. `far` is its peer: the client that
// sends to a source, or the service a target sends to.
struct SocketPair {
  Fd near;
  Fd far;
};

Result<SocketPair> unix_socketpair(int type) {
  int fds[2];
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds) != 0) return errno_error("socketpair(AF_UNIX)");
  return SocketPair{Fd(fds[0]), Fd(fds[1])};
}

Result<sockaddr_in> bind_loopback(int fd) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return errno_error("bind 127.0.0.1:0");
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return errno_error("getsockname");
  return addr;
}

// A source's near end is an unconnected bound socket, like a listening
// endpoint; a target's must be connected (the kernel drops redirects to an
// unconnected datagram socket).
Result<SocketPair> udp_pair(bool connect_near) {
  auto near = open_socket(AF_INET, SOCK_DGRAM, "AF_INET, SOCK_DGRAM");
  if (!near) return near.error();
  auto far = open_socket(AF_INET, SOCK_DGRAM, "AF_INET, SOCK_DGRAM");
  if (!far) return far.error();
  auto near_addr = bind_loopback(near->get());
  if (!near_addr) return near_addr.error();
  auto far_addr = bind_loopback(far->get());
  if (!far_addr) return far_addr.error();
  if (connect(far->get(), reinterpret_cast<sockaddr*>(&*near_addr), sizeof(sockaddr_in)) != 0)
    return errno_error("connect udp peer");
  if (connect_near && connect(near->get(), reinterpret_cast<sockaddr*>(&*far_addr), sizeof(sockaddr_in)) != 0)
    return errno_error("connect udp target");
  return SocketPair{std::move(*near), std::move(*far)};
}

Result<SocketPair> unix_dgram_pair(bool connect_near) {
  if (connect_near) return unix_socketpair(SOCK_DGRAM);
  auto near = open_socket(AF_UNIX, SOCK_DGRAM, "AF_UNIX, SOCK_DGRAM");
  if (!near) return near.error();
  // Autobind: the kernel picks a free abstract name, so probes never collide.
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (bind(near->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(sa_family_t)) != 0)
    return errno_error("bind unix-dgram (autobind)");
  socklen_t len = sizeof(addr);
  if (getsockname(near->get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return errno_error("getsockname");
  auto far = open_socket(AF_UNIX, SOCK_DGRAM, "AF_UNIX, SOCK_DGRAM");
  if (!far) return far.error();
  if (connect(far->get(), reinterpret_cast<sockaddr*>(&addr), len) != 0)
    return errno_error("connect unix-dgram");
  return SocketPair{std::move(*near), std::move(*far)};
}

// near = the accepted connection, far = the client.
Result<SocketPair> accept_pair(Fd listener, const sockaddr* addr, socklen_t len, int family, int type,
                               const char* what) {
  if (listen(listener.get(), 1) != 0) return errno_error(std::string("listen ") + what);
  auto far = open_socket(family, type, what);
  if (!far) return far.error();
  if (connect(far->get(), addr, len) != 0) return errno_error(std::string("connect ") + what);
  Fd near(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!near) return errno_error(std::string("accept ") + what);
  return SocketPair{std::move(near), std::move(*far)};
}

Result<SocketPair> tcp_pair() {
  auto listener = open_socket(AF_INET, SOCK_STREAM, "AF_INET, SOCK_STREAM");
  if (!listener) return listener.error();
  auto addr = bind_loopback(listener->get());
  if (!addr) return addr.error();
  return accept_pair(std::move(*listener), reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_in), AF_INET,
                     SOCK_STREAM, "tcp 127.0.0.1");
}

// Only ever VMADDR_CID_LOCAL: on a guest every other CID leads to its host.
Result<SocketPair> vsock_loopback_pair(int type) {
  auto listener = open_socket(AF_VSOCK, type, "AF_VSOCK");
  if (!listener) return listener.error();
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_LOCAL;
  addr.svm_port = VMADDR_PORT_ANY;
  if (bind(listener->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return errno_error("bind vsock CID 1 (loopback)");
  socklen_t len = sizeof(addr);
  if (getsockname(listener->get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return errno_error("getsockname");
  addr.svm_cid = VMADDR_CID_LOCAL;
  return accept_pair(std::move(*listener), reinterpret_cast<sockaddr*>(&addr), sizeof(addr), AF_VSOCK, type,
                     "vsock CID 1 (loopback)");
}

Result<SocketPair> connected_pair(EndpointKind kind, bool is_source) {
  switch (kind) {
    case EndpointKind::Udp:
      return udp_pair(!is_source);
    case EndpointKind::Tcp:
      return tcp_pair();
    case EndpointKind::UnixDgram:
      return unix_dgram_pair(!is_source);
    case EndpointKind::UnixStream:
      return unix_socketpair(SOCK_STREAM);
    case EndpointKind::UnixSeqpacket:
      return unix_socketpair(SOCK_SEQPACKET);
    case EndpointKind::VsockStream:
      return vsock_loopback_pair(SOCK_STREAM);
    case EndpointKind::VsockSeqpacket:
      return vsock_loopback_pair(SOCK_SEQPACKET);
  }
  return plain_error("unknown endpoint kind");
}

// One end of a cell and the cookies the maps know it by.
struct End {
  SocketPair sockets;
  uint64_t cookie = 0;    // of `near`: its key in relay_sources / relay_targets
  uint64_t flow_key = 0;  // what the verdict program looks up for skbs arriving at `near`
};

// The sockets and map entries of one cell. The destructor deletes the map
// entries; the members' destructors then close the sockets.
class Cell {
 public:
  explicit Cell(BpfRelay& bpf) : bpf_(bpf) {}
  Cell(const Cell&) = delete;
  Cell& operator=(const Cell&) = delete;
  ~Cell() {
    if (flow_set_) bpf_.remove_flow(source.flow_key);
    if (source_in_) bpf_.remove_source(source.cookie);
    if (target_in_) bpf_.remove_target(target.cookie);
  }

  // Opens one end and puts its near socket in the map it belongs to.
  std::optional<Stop> open(EndpointKind kind, bool is_source) {
    End& end = is_source ? source : target;
    auto pair = connected_pair(kind, is_source);
    if (!pair) return error_stop(pair.error().wrap(std::string("open ") + std::string(kind_name(kind))));
    end.sockets = std::move(*pair);
    auto near_cookie = socket_cookie(end.sockets.near.get());
    if (!near_cookie) return error_stop(near_cookie.error());
    end.cookie = *near_cookie;
    end.flow_key = end.cookie;
    if (is_source && is_unix(kind)) {
      // AF_UNIX shows the verdict program the sender, not the receiver
      // (ARCHITECTURE.md, "Kernel facts").
      auto sender_cookie = socket_cookie(end.sockets.far.get());
      if (!sender_cookie) return error_stop(sender_cookie.error());
      end.flow_key = *sender_cookie;
    }
    Status inserted = is_source ? bpf_.add_source(end.cookie, end.sockets.near.get())
                                : bpf_.add_target(end.cookie, end.sockets.near.get());
    if (!inserted) {
      auto error = inserted.error().wrap(std::string(kind_name(kind)));
      if (error.code == EOPNOTSUPP)
        return Stop{ProbeResult::CannotEnterMap, "EOPNOTSUPP: " + error.describe()};
      return error_stop(error);
    }
    (is_source ? source_in_ : target_in_) = true;
    return std::nullopt;
  }

  std::optional<Stop> route(Mode mode) {
    FlowEntry flow{target.cookie, kProbeRouteId, mode == Mode::Ingress ? RELAY_FLOW_INGRESS : 0u};
    if (Status st = bpf_.set_flow(source.flow_key, flow); !st) return error_stop(st.error());
    flow_set_ = true;
    return std::nullopt;
  }

  End source;
  End target;

 private:
  BpfRelay& bpf_;
  bool source_in_ = false;
  bool target_in_ = false;
  bool flow_set_ = false;
};

// Reads from `fd` until `want` bytes arrived, the peer closed, or the
// timeout passed. Tries recv() on every round, not only when poll() says
// so: data a redirect queued on a psock is what we are looking for.
std::string receive_for(int fd, size_t want, int timeout_ms) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string got;
  char buf[4096];
  while (got.size() < want) {
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      got.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) break;  // a stream peer closed (or an empty datagram: never sent here)
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd pfd{fd, POLLIN, 0};
    poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 50)));
  }
  return got;
}

std::string payload_for(EndpointKind source, EndpointKind target, Mode mode) {
  return "sockrelay probe " + std::string(kind_name(source)) + " -> " + std::string(kind_name(target)) +
         " (" + std::string(mode_name(mode)) + ")";
}

}  // namespace

bool vsock_loopback_usable(std::string* why) {
  auto fail = [&](const std::string& what) {
    if (why) *why = std::string(kNoVsockLoopback) + " (" + errno_error(what).describe() + ")";
    return false;
  };
  Fd s(socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return fail("socket(AF_VSOCK)");
  // Binding to CID 1 succeeds only with the loopback transport; listening
  // opens no connection to anyone.
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_LOCAL;
  addr.svm_port = VMADDR_PORT_ANY;
  if (bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return fail("bind AF_VSOCK CID 1");
  if (listen(s.get(), 1) != 0) return fail("listen AF_VSOCK CID 1");
  return true;
}

Prober::Prober(std::unique_ptr<BpfRelay> bpf) : bpf_(std::move(bpf)) {}
Prober::Prober(Prober&&) noexcept = default;
Prober& Prober::operator=(Prober&&) noexcept = default;
Prober::~Prober() = default;

Result<Prober> Prober::create() {
  auto loaded = BpfRelay::load();
  if (!loaded) return loaded.error().wrap("probe");
  return Prober(std::move(*loaded));
}

const std::string& Prober::target_bound_unavailable() const { return bpf_->target_bound_unavailable(); }

ProbeResult Prober::probe_cell(EndpointKind source, EndpointKind target, Mode mode) {
  ProbeResult result{source, target, mode, ProbeResult::Error, {}};
  auto stop = [&](Stop s) {
    result.outcome = s.outcome;
    result.detail = std::move(s.detail);
    return result;
  };
  if (vsock_usable_ < 0) vsock_usable_ = vsock_loopback_usable(&vsock_why_) ? 1 : 0;

  Cell cell(*bpf_);
  // The end that needs no VSOCK goes first, so a unix-seqpacket end is
  // measured (refused by the map) even where VSOCK cannot be tested.
  const bool target_first = kind_is_vsock(source) && !kind_is_vsock(target);
  for (bool is_source : {!target_first, target_first}) {
    EndpointKind kind = is_source ? source : target;
    if (kind_is_vsock(kind) && vsock_usable_ == 0)
      return stop({ProbeResult::NotTestableHere, kNoVsockLoopback});
    if (auto s = cell.open(kind, is_source)) return stop(std::move(*s));
  }
  if (auto s = cell.route(mode)) return stop(std::move(*s));

  const RouteCounters before = bpf_->route_counters(kProbeRouteId);
  const GlobalCounters global_before = bpf_->global_counters();
  const std::string payload = payload_for(source, target, mode);
  ssize_t sent = send(cell.source.sockets.far.get(), payload.data(), payload.size(), MSG_NOSIGNAL);
  if (sent != static_cast<ssize_t>(payload.size())) return stop(errno_stop("send the payload to the source"));

  // Egress sends from the target to its peer; ingress queues on the target.
  const bool egress = mode == Mode::Egress;
  const int reader = egress ? cell.target.sockets.far.get() : cell.target.sockets.near.get();
  std::string got = receive_for(reader, payload.size(), kProbeTimeoutMs);
  if (got == payload) {
    return stop(
        {ProbeResult::Delivered, std::to_string(got.size()) + " bytes byte-exact " +
                                     (egress ? "at the target's peer" : "in the target's receive queue")});
  }

  const RouteCounters after = bpf_->route_counters(kProbeRouteId);
  const GlobalCounters global_after = bpf_->global_counters();
  std::string detail = got.empty() ? "nothing arrived within " + std::to_string(kProbeTimeoutMs) + " ms"
                                   : std::to_string(got.size()) + " bytes arrived that differ from the " +
                                         std::to_string(payload.size()) + " sent";
  detail += " (verdict: " + std::to_string(after.packets - before.packets) + " redirected, " +
            std::to_string(after.drop_no_target - before.drop_no_target) + " dropped for no target, " +
            std::to_string(global_after.unknown_source - global_before.unknown_source) + " with no flow)";
  return stop({ProbeResult::NotDelivered, std::move(detail)});
}

std::vector<ProbeResult> Prober::probe_matrix() {
  std::vector<ProbeResult> results;
  results.reserve(matrix_cells().size());
  for (const MatrixCell& cell : matrix_cells())
    results.push_back(probe_cell(cell.source, cell.target, cell.mode));
  return results;
}

std::vector<ProbeResult> probe_matrix() {
  auto prober = Prober::create();
  if (prober) return prober->probe_matrix();
  std::vector<ProbeResult> results;
  for (const MatrixCell& cell : matrix_cells())
    results.push_back({cell.source, cell.target, cell.mode, ProbeResult::Error, prober.error().describe()});
  return results;
}

ProbeResult probe_cell(EndpointKind source, EndpointKind target, Mode mode) {
  auto prober = Prober::create();
  if (prober) return prober->probe_cell(source, target, mode);
  return {source, target, mode, ProbeResult::Error, prober.error().describe()};
}

}  // namespace sockrelay
