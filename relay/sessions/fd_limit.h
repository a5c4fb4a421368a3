// The relay's own descriptor limit (EMFILE: RLIMIT_NOFILE; ENFILE: the
// system's file table), met while opening a session's sockets or pipes.
// It is the relay's limit, not a peer's or a target's failure: every route
// kind counts it under the drop reason "fd-limit", logs it here at most once
// per kLogEvery, never takes a target out of the rotation for it, and pauses
// a listener whose accept() meets it (ListenerGate) instead of spinning on
// its level-triggered readiness.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "common/fd.h"
#include "loop/event_loop.h"

namespace sockrelay {

inline bool out_of_descriptors(int err) { return err == EMFILE || err == ENFILE; }

// The drop every route that opens descriptors per session reports under
// this name.
inline constexpr const char* kFdLimitDrop = "fd-limit";

// Counts one route's hits of the limit; one log line per kLogEvery with the
// count since the last line, the limit, and the fix.
class FdLimitLog {
 public:
  static constexpr std::chrono::seconds kLogEvery{10};

  // `counter` is the route's own (its report shows it as fd-limit).
  void hit(uint32_t route_id, uint64_t& counter, const std::string& what, int err);

 private:
  uint64_t since_last_line_ = 0;
  uint64_t last_line_ns_ = 0;
  bool logged_ = false;
};

// A listener on the loop that can be taken out of the poll set and put
// back: for a short back-off after accept() met the descriptor limit, and
// (when-full = "wait") while the relay has no session to give. Connections
// wait in the listen backlog meanwhile. One timerfd re-arms it.
class ListenerGate {
 public:
  static constexpr std::chrono::milliseconds kPause{100};

  explicit ListenerGate(EventLoop& loop) : loop_(loop) {}
  ~ListenerGate() { stop(); }
  ListenerGate(const ListenerGate&) = delete;
  ListenerGate& operator=(const ListenerGate&) = delete;

  // Watches `listener` (not owned) for EPOLLIN with `on_readable`.
  Status start(int listener, EventLoop::Handler on_readable);
  void stop();
  // Out of the poll set; back after kPause (or at resume()).
  void pause();
  // Back in the poll set now, if paused (a session ended: room again).
  void resume();
  bool paused() const { return paused_; }

 private:
  EventLoop& loop_;
  int listener_ = -1;
  Fd timer_;
  bool paused_ = false;
};

}  // namespace sockrelay
