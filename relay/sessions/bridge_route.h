// A route between a datagram kind (udp, unix-dgram) and a stream or
// seqpacket kind (tcp, unix-stream, unix-seqpacket, vsock-*), carried in
// user space: the sockmap keeps skb boundaries, not message boundaries, so
// the relay does the framing itself, one rule each way:
//   datagram -> connection: each datagram is written as one message
//                (seqpacket) or appended to the byte stream (stream);
//   connection -> datagram: each message (seqpacket) or each read of up to
//                64 KiB (stream) is sent as one datagram.
// A byte stream has no boundaries to keep: a protocol that needs them must
// frame its own messages (the matrix's caveat, printed by `check`).
//
// Datagram source: one session per client address, each with its own
// upstream connection; replies go back from the listener to that address.
// Connection source: one session per accepted connection, each with its own
// connected datagram socket toward the target.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "common/fd.h"
#include "config/model.h"
#include "loop/event_loop.h"
#include "sessions/admission.h"
#include "sessions/fd_limit.h"
#include "sessions/live_route.h"
#include "sessions/peer_policy.h"
#include "sessions/session_budget.h"
#include "sessions/stream_route.h"

namespace sockrelay {

struct BridgeRouteSpec {
  uint32_t route_id = 0;
  const Endpoint* from = nullptr;
  const Endpoint* to = nullptr;
  PeerPolicy policy;
  std::chrono::milliseconds idle_timeout = kDefaultIdleTimeout;
  std::chrono::milliseconds connect_timeout{5'000};
  bool wait_when_full = false;  // connection source: see StreamRouteSpec
};

class BridgeRoute final : public LiveRoute {
 public:
  BridgeRoute(BridgeRouteSpec spec, Fd listener, EventLoop& loop, SessionBudget& budget);
  ~BridgeRoute();
  BridgeRoute(const BridgeRoute&) = delete;
  BridgeRoute& operator=(const BridgeRoute&) = delete;

  Status start() override;
  void expire_idle();
  void stop() override;
  // tick() runs expire_idle(); both it and report() are in bridge_route_report.cpp.
  void tick() override;
  RouteReport report() const override;

  size_t session_count() const { return sessions_.size(); }
  // The stream counters: sessions, refusals, user bytes and messages, and
  // dropped_messages (a datagram that could not be queued or sent).
  const StreamCounters& counters() const { return counters_; }
  const BridgeRouteSpec& spec() const { return spec_; }

 private:
  struct Session;

  bool datagram_source() const;
  bool keeps_messages() const;
  void on_listener_readable();
  void on_datagram(const char* data, size_t len, const sockaddr_storage& peer, socklen_t peer_len);
  Session* open_datagram_session(const sockaddr_storage& peer, socklen_t peer_len, std::string key);
  void open_connection_session(Admission::Peer client);
  // A socket for a new session could not be opened: counted as fd-limit or
  // connect-failed.
  void count_open_failure(const std::string& peer, const Error& error);
  Session* add_session(std::unique_ptr<Session> owned);
  bool watch(Session& s, int fd, uint32_t events, EventLoop::Handler handler);
  void on_connected(Session& s);
  void on_conn_event(Session& s, uint32_t events);
  bool read_conn(Session& s);
  void on_upstream_dgram_readable(Session& s);
  bool queue_to_conn(Session& s, const char* data, size_t len);
  bool flush_to_conn(Session& s);
  bool update_events(Session& s);
  void close_session(uint64_t id, bool failed);
  void deliver_before_stop();

  BridgeRouteSpec spec_;
  Fd listener_;
  EventLoop& loop_;
  SessionBudget& budget_;
  StreamCounters counters_;
  Admission admission_;  // refers to spec_.policy and counters_: declared after them
  ListenerGate gate_;    // the listener, paused while out of descriptors or full (connection source)
  FdLimitLog fd_limit_log_;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::map<std::string, uint64_t> by_client_;  // datagram source: client address -> session
  uint64_t next_id_ = 1;
  bool started_ = false;
};

}  // namespace sockrelay
