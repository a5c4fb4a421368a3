// One stream route source: a tcp, unix-stream or unix-seqpacket listener
// relayed to an upstream of one of those kinds.
//
// Each accepted connection is a session: the client's socket plus an
// upstream socket connected for it (non-blocking, with a connect timeout).
// On the kernel path (tcp <-> tcp) both sockets go into the sockmaps and the
// verdict program carries both directions; user space only sees EOF, errors
// and the half-close bookkeeping. On the user-space path the relay moves
// the bytes itself: splice() through a pipe for byte streams, one recv/send
// per message when a seqpacket end keeps message boundaries.
//
// Why only tcp rides the kernel path (measured, see StreamKernelFacts):
// a tcp socket's queued bytes can be handed to the verdict program at once
// (SO_RCVLOWAT runs tcp_data_ready()), and tcp counts every byte in and
// out, so the half-close rule below is exact. AF_UNIX has neither: bytes
// queued before the socket entered the map are handed over one skb per
// later send (a request sent before accept() would wait forever), and no
// counter says when the psock backlog has emptied into the target.
//
// Half-close on the kernel path (for one direction X -> Y; X's peer sent
// FIN): shutdown(Y, SHUT_WR) is issued only when
//   1. X has seen EOF (EPOLLRDHUP: the verdict program never sees the FIN,
//      but poll on a socket in a sockmap still reports RCV_SHUTDOWN),
//   2. every byte X received has passed the verdict program:
//      tcpi_bytes_received(X) - 1 (the FIN) == redirected(X), and
//   3. every one of them has left Y's psock backlog into Y's send path:
//      tcpi_bytes_acked(Y) + SIOCOUTQ(Y) - baseline >= redirected(X). Y's
//      send sequence holds this direction's bytes only; acked is read
//      before outq, so a concurrent ACK can only make the sum smaller
//      (wait longer), never larger.
// A shutdown issued earlier would cut the stream: the redirected bytes
// still in Y's psock backlog would then fail with EPIPE and be lost. On the
// user path the rule is simply: the pipe toward Y is empty.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpf_loader/map_writer.h"
#include "common/fd.h"
#include "config/model.h"
#include "loop/event_loop.h"
#include "sessions/admission.h"
#include "sessions/fd_limit.h"
#include "sessions/live_route.h"
#include "sessions/peer_policy.h"
#include "sessions/pipe_pool.h"
#include "sessions/session_budget.h"
#include "sessions/target_health.h"

namespace sockrelay {

struct StreamCounters {
  uint64_t sessions_created = 0;      // accepted and connected upstream
  uint64_t sessions_closed = 0;       // both directions finished cleanly
  uint64_t sessions_failed = 0;       // reset / socket error on either side
  uint64_t sessions_expired = 0;      // idle for idle-timeout
  uint64_t refused_max_sessions = 0;  // connections closed at accept: max-sessions reached
  uint64_t refused_policy = 0;        // connections closed at accept: allow-cids/uids/gids
  uint64_t connect_failed = 0;        // upstream unreachable / refused / timed out
  uint64_t half_closes = 0;           // FINs propagated (shutdown(SHUT_WR) issued)
  uint64_t user_fallbacks = 0;        // kernel route, user space carries a session whose side was
                                      // half-closed before it was wired (a sockmap takes established only)
  uint64_t user_bytes = 0;            // bytes user space moved (user path)
  uint64_t user_messages = 0;         // seqpacket messages user space moved
  uint64_t dropped_messages = 0;      // datagram <-> stream bridges: a datagram not queued or not sent
  uint64_t fd_limit = 0;              // the relay's descriptor limit met: accept() paused, or a session
                                      // closed because its socket or pipe could not be opened
};

// What stream routes and datagram <-> stream bridges report alike: the
// session and user-space counts, and the "stream" section (the names
// scripts read). Defined in stream_route_report.cpp.
void report_stream_counters(const StreamCounters& counters, RouteReport& report);

struct StreamRouteSpec {
  uint32_t route_id = 0;
  const Endpoint* from = nullptr;
  std::vector<const Endpoint*> to;    // 1..RELAY_MAX_TARGETS: each session connects to one
  Balance balance = Balance::Single;  // round-robin or hash over `to`, per connection
  bool kernel = true;                 // kernel data path; false: user space carries it all
  PeerPolicy policy;                  // who may open a session
  std::chrono::milliseconds idle_timeout = kDefaultIdleTimeout;
  std::chrono::milliseconds connect_timeout{5'000};
  // when-full = "wait": at max-sessions the listener leaves the poll set
  // and connections wait in its backlog; false ("reset"): each is accepted
  // and closed, counted as max-sessions.
  bool wait_when_full = false;
};

class StreamRoute final : public LiveRoute {
 public:
  // `maps` may be null only when !spec.kernel.
  StreamRoute(StreamRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop, SessionBudget& budget);
  ~StreamRoute();
  StreamRoute(const StreamRoute&) = delete;
  StreamRoute& operator=(const StreamRoute&) = delete;

  Status start() override;
  // Tears down sessions idle for longer than idle_timeout, and upstream
  // connects older than connect_timeout.
  void expire_idle();
  // Removes every map entry and closes every session socket.
  void stop() override;
  // tick() runs expire_idle(); both it and report() are in stream_route_report.cpp.
  void tick() override;
  RouteReport report() const override;

  size_t session_count() const { return sessions_.size(); }
  const StreamCounters& counters() const { return counters_; }
  const StreamRouteSpec& spec() const { return spec_; }
  std::vector<TargetReport> targets() const;  // per-target sessions, failures, up/down

 private:
  struct Side;
  struct Session;
  struct CopyState;
  struct Sent;

  // stream_route.cpp: sessions, their targets, and the events of their sockets.
  void on_listener_readable();
  void open_session(Admission::Peer client);
  // A socket or pipe the session needed could not be opened: `err` is the
  // relay's descriptor limit (counted, fd-limit) or another failure.
  void session_setup_failed(Session& s, const std::string& what, int err);
  uint32_t client_hash(int fd, const sockaddr_storage& peer) const;
  int pick_target(const Session& s);
  void target_failed(size_t target, const std::string& why);
  bool connect_upstream(Session& s);
  void on_connected(Session& s);
  void on_connect_error(Session& s, int err);
  bool start_data_path(Session& s);
  bool watch(Session& s, Side& side, uint32_t events);
  void on_side_event(Session& s, Side& side, uint32_t events);
  bool update_events(Session& s);
  uint32_t wanted_events(Session& s, Side& side);
  void deliver_before_stop();
  void flush_before_stop(uint64_t id);
  void close_session(uint64_t id, const char* why);
  void fail_session(uint64_t id, Side& failed, int err);
  uint64_t last_activity_ns(const Session& s) const;

  // stream_kernel_path.cpp: tcp <-> tcp sessions in the sockmaps.
  bool kernel_path_possible(const Session& s) const;
  Status wire_kernel(Session& s);
  void unwire_kernel(Session& s);
  void stop_steering(Session& s);
  uint64_t backlog(const Side& from, const Side& to) const;

  // stream_user_copy.cpp: sessions whose bytes user space moves.
  // The pipe toward `to`, taken from pipes_ when it has none. False when
  // none could be had (the session closed).
  bool take_pipe(Session& s, Side& to);
  void release_pipe_if_empty(Side& to);
  // `from_readable`: epoll reported `from` readable (EPOLLIN/RDHUP/HUP).
  void user_copy(Session& s, Side& from, Side& to, bool from_readable = false);
  bool send_queued_messages(Session& s, Side& to, CopyState& state);
  bool splice_out(Session& s, Side& to, CopyState& state);
  bool recv_message(Session& s, Side& from, Side& to, CopyState& state);
  bool splice_in(Session& s, Side& from, Side& to, CopyState& state);
  Sent send_message(Session& s, Side& to, const char* data, size_t size);

  // stream_half_close.cpp: when a FIN is passed on (the rule above).
  void check_half_close(Session& s);
  bool direction_flushed(Session& s, Side& from, Side& to);
  void arm_timer(bool on);
  void on_timer();

  StreamRouteSpec spec_;
  Fd listener_;
  MapWriter* maps_;
  EventLoop& loop_;
  SessionBudget& budget_;
  StreamCounters counters_;
  Admission admission_;  // refers to spec_.policy and counters_: declared after them
  ListenerGate gate_;    // the listener, out of the poll set while the relay is out of descriptors or full
  FdLimitLog fd_limit_log_;
  Fd timer_;  // fast half-close checks while a session waits to propagate a FIN
  bool timer_armed_ = false;
  std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;
  uint64_t next_id_ = 1;
  std::vector<TargetHealth> health_;       // one per spec_.to
  std::vector<uint64_t> target_sessions_;  // one per spec_.to: sessions connected to it
  uint64_t next_target_ = 0;               // round-robin position
  PipePool pipes_;                         // user path, byte streams: pipes only while bytes are in flight
  std::unique_ptr<char[]> recv_buffer_;    // user path, message copies: what one recv() takes in
  bool started_ = false;
};

}  // namespace sockrelay
