#include "matrix/datapath_choice.h"

namespace sockrelay {

DatapathChoice choose_datapath(Datapath requested, const MatrixCell& cell,
                               const std::string& kernel_unavailable) {
  DatapathChoice c;
  if (requested == Datapath::Userspace) {
    c.reason = "datapath = \"userspace\" in the config";
    return c;
  }
  std::string why_not;
  if (cell.support == Support::Unsupported)
    why_not = "the matrix says the kernel cannot carry " + std::string(kind_name(cell.source)) + " -> " +
              std::string(kind_name(cell.target)) + " (" + std::string(mode_name(cell.mode)) +
              "): " + cell.reason;
  else if (!kernel_unavailable.empty())
    why_not = "the kernel path is unavailable: " + kernel_unavailable;
  if (why_not.empty() && kind_is_datagram(cell.source) != kind_is_datagram(cell.target))
    // Each session (a datagram client, or an accepted connection) ends on
    // its own, and must not cut the replies still in the psock backlog
    // toward its datagram socket; unlike tcp's tcpi_bytes_acked, no
    // per-socket counter says when that backlog has emptied.
    why_not =
        "a datagram <-> stream/seqpacket route ends each session (a datagram client, or a connection) on "
        "its own, and no counter says when the psock backlog toward a datagram socket has emptied, so "
        "ending one could cut its last replies: user space sends each datagram as one message or stream "
        "write, and each message or stream read as one datagram";
  if (why_not.empty() && !kind_is_datagram(cell.source) &&
      (cell.source != EndpointKind::Tcp || cell.target != EndpointKind::Tcp))
    // Measured (StreamKernelFacts, stream_relay_test.cpp): a relayed stream
    // must start with the bytes queued before its sockets entered the map
    // and may only be half-closed once the psock backlog has emptied. tcp
    // gives both exactly; AF_UNIX and VSOCK give neither.
    why_not = "this version carries only tcp <-> tcp streams in the kernel: for " +
              std::string(kind_name(cell.source == EndpointKind::Tcp ? cell.target : cell.source)) +
              " the kernel neither hands bytes queued before the socket entered the map to the "
              "verdict program at once, nor tells when its psock backlog has emptied (needed to "
              "propagate a half-close without cutting the stream)";
  if (why_not.empty() && requested == Datapath::Auto && !kind_is_datagram(cell.source)) {
    // tcp <-> tcp: exact in the kernel, but with no backpressure (the psock
    // backlog behind a slow reader is unbounded, and taking a socket out of
    // the map under traffic drops skbs: measured), and slower than splice()
    // in tests/bench/stream_bench.sh. Used when asked for by name.
    c.fell_back = true;
    c.reason =
        "user space: the tcp kernel path has no backpressure (its psock backlog grows without bound behind "
        "a slow reader) and measured slower than splice(); set datapath = \"kernel\" for its lower latency";
    return c;
  }
  if (why_not.empty()) {
    c.kernel = true;
    c.reason =
        cell.support == Support::Caveat ? "sockmap redirect; caveat: " + cell.reason : "sockmap redirect";
    return c;
  }
  if (requested == Datapath::Kernel) {
    c.refused = true;
    c.reason =
        "datapath = \"kernel\" but " + why_not + "; use datapath = \"auto\" to fall back to user space";
    return c;
  }
  c.fell_back = true;
  c.reason = "user space because " + why_not;
  return c;
}

DatapathChoice choose_subscriber_datapath(Datapath requested, Balance balance, const MatrixCell* cell,
                                          const std::string& kernel_unavailable) {
  DatapathChoice c;
  if (requested == Datapath::Userspace) {
    c.reason = "datapath = \"userspace\" in the config: user space writes each datagram to the subscribers";
    return c;
  }
  std::string why_not;
  if (balance == Balance::Broadcast)
    why_not =
        "balance = \"broadcast\": one skb can be redirected to one socket only, so user space copies each "
        "datagram to every subscriber";
  else if (cell != nullptr && cell->support == Support::Unsupported)
    why_not = "the matrix says the kernel cannot carry " + std::string(kind_name(cell->source)) + " -> " +
              std::string(kind_name(cell->target)) + ": " + cell->reason;
  else if (!kernel_unavailable.empty())
    why_not = "the kernel path is unavailable: " + kernel_unavailable;
  if (why_not.empty()) {
    c.kernel = true;
    c.reason = cell == nullptr ? "sockmap redirect (ingress) into the socket each subscriber passes"
               : cell->support == Support::Caveat
                   ? "sockmap redirect into each subscriber's connection; caveat: " + cell->reason
                   : "sockmap redirect into each subscriber's connection";
    return c;
  }
  if (requested == Datapath::Kernel || cell == nullptr) {
    // Ingress (no cell) has no user-space equivalent.
    c.refused = true;
    c.reason =
        (cell == nullptr ? "mode = \"ingress\" needs the kernel path, but " : "datapath = \"kernel\" but ") +
        why_not + (cell == nullptr ? "" : "; use datapath = \"auto\"");
    return c;
  }
  c.fell_back = balance != Balance::Broadcast;  // broadcast to subscribers is user space by design
  c.reason = "user space because " + why_not;
  return c;
}

}  // namespace sockrelay
