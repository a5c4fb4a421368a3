// Opening the sockets an endpoint names, when systemd did not pass them.
#pragma once

#include "common/fd.h"
#include "common/result.h"
#include "config/model.h"

namespace sockrelay {

// A bound (and for stream kinds, listening) non-blocking socket. Inet
// sockets get SO_REUSEADDR: UDP flow sockets bind the same address. A stale
// UNIX socket file nobody listens on is replaced; a live one is an error.
Result<Fd> open_listener(const Endpoint& endpoint);

// A non-blocking datagram socket connected to the endpoint's address. UNIX
// sockets are autobound first so the far side can reply to them.
Result<Fd> open_datagram_upstream(const Endpoint& endpoint);

// A stream or seqpacket connection to a `connect` endpoint, started
// non-blocking: EINPROGRESS (tcp, vsock) is success for now; the caller
// waits for EPOLLOUT and reads SO_ERROR.
Result<Fd> open_stream_upstream(const Endpoint& endpoint);

// A new UDP flow socket's receive buffer while its flow is set up.
inline constexpr int kFlowSetupReceiveBuffer = 4 << 20;

// A UDP socket bound to `local` (the listener's address, with
// SO_REUSEADDR), its receive buffer kFlowSetupReceiveBuffer. Once the
// caller connect()s it to a client, the kernel delivers that client's
// datagrams to it rather than to the listener; until then, as the newest
// socket on the address, it takes everyone's.
Result<Fd> bind_udp_flow_socket(const sockaddr* local, socklen_t local_len);

// A UNIX datagram socket connected to `peer` (a client's bound address).
Result<Fd> open_unix_flow_socket(const sockaddr* peer, socklen_t peer_len);

// Checks that an inherited fd really is a socket of the endpoint's kind.
Status check_socket_kind(int fd, const Endpoint& endpoint);

}  // namespace sockrelay
