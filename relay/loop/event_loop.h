// A small epoll loop: one callback per fd, plus a periodic tick. The relay
// is single-threaded; the kernel moves the data, this loop only handles
// set-up, teardown and what the kernel hands to user space.
#pragma once

#include <sys/epoll.h>

#include <chrono>
#include <functional>
#include <unordered_map>

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
  void remove(int fd);  // safe to call from inside a handler

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
  uint64_t next_generation_ = 1;
  bool running_ = false;
};

}  // namespace sockrelay
