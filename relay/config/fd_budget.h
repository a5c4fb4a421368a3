// The file descriptors the relay needs at max-sessions, from the config
// alone: one place that knows what each route kind opens per session, so
// `check` and `run` say the same number. Pure arithmetic, no syscalls: the
// caller passes the limit it compares against.
//
// Per session (measured with /proc/PID/fd, ARCHITECTURE.md "Descriptors
// per session"):
//   datagram flow            1 reply socket + 1 upstream socket per target
//   stream, user path        2 sockets, + 2 per direction with bytes in flight
//                            (a pipe, taken from a shared pool): 6 at most
//   stream, message copies   2 sockets (seqpacket, vsock: no pipes)
//   stream, kernel path      2 sockets (tcp <-> tcp, datapath = "kernel")
//   bridge                   2 (the connection and its datagram socket)
//   subscriber               1 connection (+1 passed socket, mode = "ingress")
// max-sessions is one budget for the whole relay, so the need is the fixed
// overhead plus max-sessions times the dearest session any route can open.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "config/model.h"

namespace sockrelay {

// Held besides the sessions, in the fixed need: the upstream sockets made
// ahead for new flows, per IP target of a datagram route
// (sessions/upstream_pool.h), and the sockets of ended flows waiting for an
// idle moment to be closed (EventLoop::close_later(), at most this many).
inline constexpr uint64_t kReadyUpstreamsPerTarget = 8;
inline constexpr uint64_t kClosingAtMost = 64;

struct FdNeed {
  uint64_t fixed = 0;        // stdio, epoll, signals, BPF objects, control socket and its clients, listeners
  uint64_t per_session = 0;  // the dearest route's session
  std::string dearest;       // "route #2 (stream, user path)"
  uint64_t total = 0;        // fixed + max-sessions * per_session
};

// Descriptors one session of `route` can hold at most.
uint64_t fds_per_session(const Config& config, const Route& route, std::string* what = nullptr);
FdNeed fd_need(const Config& config);
// A warning when `hard_limit` (RLIMIT_NOFILE's hard limit: the soft one is
// raised to it at start) cannot hold the need, with the number and the fix;
// nullopt when it can.
std::optional<std::string> fd_budget_warning(const Config& config, const FdNeed& need, uint64_t hard_limit);

}  // namespace sockrelay
