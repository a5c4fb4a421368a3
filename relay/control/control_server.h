// The control socket: a UNIX stream socket answering one request line per
// connection ("status", "status json" or "status prometheus") with the
// rendered snapshot.
//
// It runs inside the relay's single-threaded event loop, so nothing here may
// wait: every socket is non-blocking, each client is a small state machine
// driven by epoll (read a line, then write the reply), and every client is
// bounded in request size, time, reply bytes kept and number at once. A
// client that connects and says nothing, sends garbage, or never reads its
// reply costs a few hundred bytes and is closed at its deadline; datagrams
// and streams keep flowing meanwhile (tests/integration/control_socket_test.cpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/fd.h"
#include "common/result.h"
#include "control/control_request.h"
#include "loop/event_loop.h"

namespace sockrelay {

struct ControlLimits {
  // A request line longer than this is answered "error: request too long".
  size_t max_request_bytes = 256;
  // Clients connected at once; one more is accepted and closed at once, and
  // counted, so a flood of connections cannot grow the relay's memory. Room
  // for a monitoring system that asks 100 times at once.
  size_t max_clients = 128;
  // Time from connect to a whole request line, and then to read the reply.
  std::chrono::milliseconds request_time{2000};
  std::chrono::milliseconds reply_time{10000};
  // Reply bytes kept for clients that read slowly, all clients together; a
  // reply that would go over is refused with "error: busy" instead.
  size_t max_pending_reply_bytes = 32u << 20;
  // Connections the kernel queues before the loop accepts them.
  int backlog = 128;
};

// What happened to clients since the socket was opened.
struct ControlCounters {
  uint64_t accepted = 0;
  uint64_t answered = 0;             // replies written out completely
  uint64_t refused_too_many = 0;     // over max_clients: closed at once
  uint64_t refused_too_long = 0;     // request line over max_request_bytes
  uint64_t refused_unknown = 0;      // a line that is no request ("error: unknown request")
  uint64_t refused_busy = 0;         // reply over max_pending_reply_bytes
  uint64_t timed_out = 0;            // silent clients, and readers too slow for their reply
  uint64_t closed_before_reply = 0;  // hung up (or reset) before the reply was written
};

class ControlServer {
 public:
  // Turns a known request into its reply; unknown ones the server answers.
  using Handler = std::function<std::string(ControlRequest request)>;

  // Binds `path` (creating its directory, replacing a stale socket).
  static Result<ControlServer> open(const std::string& path, ControlLimits limits = {});
  // Serves on a listening socket systemd created (a .socket unit with
  // FileDescriptorName=control, units/sockrelay-control.socket): its file
  // mode and group are the unit's (SocketMode=, SocketGroup=), and it must
  // be bound to `path`. The file stays when the server goes: it is systemd's.
  static Result<ControlServer> adopt(Fd listener, const std::string& path, ControlLimits limits = {});
  ControlServer(ControlServer&&) noexcept;
  ControlServer& operator=(ControlServer&&) noexcept;
  // Closes every client and removes the socket file; `loop` (from attach)
  // must still be alive.
  ~ControlServer();

  // Serves requests from `loop`: `handler` turns one request line (without
  // its newline) into the reply.
  Status attach(EventLoop& loop, Handler handler);
  const std::string& path() const;
  bool from_systemd() const;
  const ControlCounters& counters() const;
  size_t clients() const;

 private:
  struct State;  // the listener, the deadline timer and the clients
  explicit ControlServer(std::unique_ptr<State> state);
  // Behind a pointer: the loop's handlers keep the address while the server
  // itself is moved (into the daemon's std::optional, say).
  std::unique_ptr<State> state_;
};

// Client side, for `sockrelay status`: sends `request`, returns the reply.
Result<std::string> control_request(const std::string& path, const std::string& request);

}  // namespace sockrelay
