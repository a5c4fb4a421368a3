// A small epoll loop: one callback per fd, a periodic tick, and work kept
// for a moment with no event (when_idle(), close_later()). The relay
// is single-threaded; the kernel moves the data, this loop only handles
// set-up, teardown and what the kernel hands to user space.
#pragma once

#include <sys/epoll.h>

#include <chrono>
#include <functional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "common/result.h"

namespace sockrelay {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;

  static Result<EventLoop> create();

  // Watch `fd` (not owned) for `events`; the handler runs from run().
  Status add(int fd, uint32_t events, Handler handler);
  Status modify(int fd, uint32_t events);
  // Hands a watched fd's events to `handler` from now on (no system call).
  void rebind(int fd, Handler handler);
  // Stops watching `fd` and closes it at the next idle moment (see
  // when_idle()): the close and its epoll_ctl stay off the path of the
  // events waiting. Sooner if it has an event first, or when kMaxClosing
  // wait already (a loop never idle must not hoard descriptors).
  void close_later(Fd fd);
  static constexpr size_t kMaxClosing = 64;  // the fd budget's kClosingAtMost
  // Safe to call from inside a handler.
  void remove(int fd);

  // Runs `task` once, the first time a wait finds no event ready: work
  // that can wait for a quiet moment (making sockets ahead of need) stays
  // off the path of the events already waiting. A busy loop may never get
  // there; such work must be optional. `owner` names the task for
  // forget_idle(), which an owner calls before it goes.
  void when_idle(const void* owner, std::function<void()> task);
  void forget_idle(const void* owner);

  // Waits up to `timeout` for events and runs their handlers once.
  Status run_once(std::chrono::milliseconds timeout);

  // Runs until stop(); `tick` is called about every `period`.
  Status run(std::chrono::milliseconds period, const std::function<void()>& tick);
  void stop() { running_ = false; }

 private:
  explicit EventLoop(Fd epoll) : epoll_(std::move(epoll)) {}

  Fd epoll_;
  // Handlers by fd. A generation counter per registration lets a handler
  // removed (and its fd number reused) during one epoll_wait batch be
  // skipped instead of called with stale events.
  struct Entry {
    Handler handler;
    uint64_t generation;
  };
  std::unordered_map<int, Entry> handlers_;
  std::vector<std::pair<const void*, std::function<void()>>> idle_;
  std::unordered_map<int, Fd> closing_;
  void close_now(int fd);
  void close_all_waiting();
  uint64_t next_generation_ = 1;
  bool running_ = false;
};

}  // namespace sockrelay
