// The stream route's kernel path (tcp <-> tcp): both sockets of a session
// in the sockmaps, the verdict program carrying both directions. User space
// sees EOF and errors only; tcp's own byte counts tell it where the bytes
// are (backlog(), and the half-close rule in stream_half_close.cpp).
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <string>

#include "relay_shared.h"
#include "sessions/stream_session.h"

namespace sockrelay {

namespace {

bool read_tcp_info(int fd, tcp_info& info) {
  socklen_t len = sizeof(info);
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0;
}

}  // namespace

// Bytes ever handed to a tcp socket's send path (the stream's baseline
// included: tcpi_bytes_acked counts the SYN). tcpi_bytes_acked is read
// first: an ACK arriving between the two reads moves bytes from outq to
// acked, so the sum can only come out low, never high.
uint64_t tcp_bytes_written(int fd) {
  tcp_info info{};
  if (!read_tcp_info(fd, info)) return 0;
  int outq = 0;
  if (ioctl(fd, SIOCOUTQ, &outq) != 0 || outq < 0) outq = 0;
  return info.tcpi_bytes_acked + static_cast<uint64_t>(outq);
}

uint64_t tcp_bytes_received(int fd) {
  tcp_info info{};
  return read_tcp_info(fd, info) ? info.tcpi_bytes_received : 0;
}

// False for a socket that is not tcp (TCP_INFO fails) or not established.
bool tcp_established(int fd) {
  constexpr uint8_t kEstablished = 1;  // TCP_ESTABLISHED in the kernel's tcp_states.h
  tcp_info info{};
  return read_tcp_info(fd, info) && info.tcpi_state == kEstablished;
}

// A sockmap takes established tcp sockets only: a client that sent its
// bytes and FIN before the session was wired (or a server that already
// closed) is carried by user space, from the first byte. spec_.kernel is
// set only for tcp <-> tcp routes: the stream kernel path's rule lives in
// the datapath decision, not here.
bool StreamRoute::kernel_path_possible(const Session& s) const {
  return spec_.kernel && tcp_established(s.client.fd.get()) && tcp_established(s.upstream.fd.get());
}

Status StreamRoute::wire_kernel(Session& s) {
  const uint32_t route = spec_.route_id;
  s.kernel = true;
  // The verdict program looks a flow up by the receiving socket's cookie
  // (tcp), steers its bytes to the partner with an egress redirect.
  if (auto st = maps_->set_flow(s.client.cookie, FlowEntry{s.upstream.cookie, route, RELAY_FLOW_STREAM}); !st)
    return st;
  s.client.flow_set = true;
  if (auto st = maps_->set_flow(s.upstream.cookie, FlowEntry{s.client.cookie, route, RELAY_FLOW_STREAM}); !st)
    return st;
  s.upstream.flow_set = true;
  for (Side* side : {&s.client, &s.upstream}) {
    if (auto st = maps_->add_target(side->cookie, side->fd.get()); !st) return st;
    side->target_added = true;
  }
  for (Side* side : {&s.client, &s.upstream}) {
    if (auto st = maps_->add_source(side->cookie, side->fd.get()); !st) return st;
    side->source_added = true;
  }
  s.attached = true;
  // Bytes that arrived before a socket entered the map wait in its receive
  // queue until the next segment wakes the verdict program, which for a
  // client waiting for an answer is never. Setting SO_RCVLOWAT runs
  // tcp_data_ready() under the socket lock: the verdict program takes the
  // whole queue, oldest first, so nothing is stranded and no user-space
  // read can race it (measured: StreamKernelFacts.QueuedBytesAndTheRcvlowatKick,
  // tests/integration/stream_kernel_facts_test.cpp).
  for (Side* side : {&s.client, &s.upstream}) {
    int one = 1;
    if (setsockopt(side->fd.get(), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) != 0)
      return errno_error(std::string("SO_RCVLOWAT on the ") + side->name + " socket");
  }
  spdlog::debug("route {}: session {}: in the maps", spec_.route_id, s.id);
  return {};
}

// Out of the maps, in reverse: stop steering first, then forget the flows,
// then the targets, so the verdict program never finds a flow without its
// target.
void StreamRoute::unwire_kernel(Session& s) {
  stop_steering(s);
  for (Side* side : {&s.client, &s.upstream})
    if (side->flow_set) maps_->remove_flow(side->cookie);
  for (Side* side : {&s.client, &s.upstream})
    if (side->target_added) maps_->remove_target(side->cookie);
}

// The verdict program takes no more bytes from the session's sockets; what
// it already redirected still drains from the psock backlogs.
void StreamRoute::stop_steering(Session& s) {
  for (Side* side : {&s.client, &s.upstream})
    if (side->source_added) {
      maps_->remove_source(side->cookie);
      side->source_added = false;
    }
}

// Bytes in the psock backlog from `from` toward `to`: redirected by the
// verdict program, not yet in `to`'s send path.
uint64_t StreamRoute::backlog(const Side& from, const Side& to) const {
  uint64_t redirected = maps_->flow_bytes(from.cookie);
  uint64_t written = tcp_bytes_written(to.fd.get()) - to.baseline - to.user_out;
  return redirected > written ? redirected - written : 0;
}

}  // namespace sockrelay
