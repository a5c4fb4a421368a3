#include "sessions/admission.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>

#include "common/io_errors.h"
#include "config/address.h"
#include "sessions/fd_limit.h"

namespace sockrelay {

bool Admission::admit(int fd, const sockaddr_storage& peer, const std::string& peer_text) {
  if (std::string why = policy_.refusal(fd, peer); !why.empty()) {
    if (refused_policy_++ % kRefusalLogEvery == 0)
      spdlog::warn("route {}: refused {}: {} (counted)", route_id_, peer_text, why);
    return false;
  }
  if (!budget_.try_take()) {
    if (refused_max_sessions_++ % kRefusalLogEvery == 0)
      spdlog::warn("route {}: max-sessions ({}) reached, refusing {} (counted)", route_id_, budget_.max(),
                   peer_text);
    return false;
  }
  return true;
}

Admission::Outcome Admission::accept_batch(int listener, const std::function<void(Peer)>& on_admitted,
                                           bool wait_when_full) {
  for (int round = 0; round < kAcceptBatch; ++round) {
    if (wait_when_full && budget_.used() >= budget_.max()) return {Stop::Full};
    Peer peer;
    socklen_t peer_len = sizeof(peer.addr);
    peer.fd = Fd(
        accept4(listener, reinterpret_cast<sockaddr*>(&peer.addr), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!peer.fd) {
      // The connection stays in the backlog: the route counts and pauses.
      if (out_of_descriptors(errno)) return {Stop::OutOfDescriptors, errno};
      // ECONNABORTED: the client left before we took it; nothing to tell.
      if (!would_block(errno) && errno != ECONNABORTED)
        spdlog::warn("route {}: accept: {}", route_id_, std::strerror(errno));
      return {};
    }
    // A unix client's address is its (usually unbound, empty) socket name:
    // nothing a log reader could use.
    peer.text = peer.addr.ss_family == AF_UNIX
                    ? "unix client"
                    : format_address(reinterpret_cast<const sockaddr*>(&peer.addr), peer_len);
    if (admit(peer.fd.get(), peer.addr, peer.text)) on_admitted(std::move(peer));
  }
  return {};
}

void Admission::serve(const Listener& listener, const std::function<void(Peer)>& on_admitted) {
  Outcome outcome = accept_batch(listener.fd, on_admitted, listener.wait_when_full);
  if (outcome.stop == Stop::OutOfDescriptors)
    listener.log.hit(route_id_, listener.fd_limit, "accept", outcome.error);
  if (outcome.stop != Stop::Drained) listener.gate.pause();
}

}  // namespace sockrelay
