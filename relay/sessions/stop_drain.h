// Stop and reload deliver what the relay took in before closing: every
// connection route writes out what it queued (and the stream route's kernel
// sessions let their psock backlogs empty), for a bounded time.
#pragma once

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

namespace sockrelay {

// How long a stopping route may spend writing out what it queued; a peer
// still not reading after that loses the rest (counted by the route).
inline constexpr std::chrono::milliseconds kStopDrain{2000};
// How often a connection no fd reports on (see drain_before_stop) is looked
// at again.
inline constexpr std::chrono::milliseconds kStopDrainRecheck{5};

// Until kStopDrain has passed or nothing is pending: `pending()` lists
// (fd, id) of the connections with bytes queued, and `flush(id)` writes
// what one of them takes now (it may close and forget the connection);
// a connection listed twice is flushed twice. An entry with fd -1 has no fd
// that says when it moves (the kernel's psock backlog emptying into a
// socket): it keeps the drain going, pending() is asked again every
// kStopDrainRecheck, and flush() is not called for it.
template <typename Pending, typename Flush>
void drain_before_stop(Pending pending, Flush flush) {
  const auto deadline = std::chrono::steady_clock::now() + kStopDrain;
  for (;;) {
    std::vector<std::pair<int, uint64_t>> waiting = pending();
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (waiting.empty() || left.count() <= 0) return;
    bool unwatched = std::any_of(waiting.begin(), waiting.end(), [](const auto& w) { return w.first < 0; });
    auto wait = unwatched ? std::min(left, kStopDrainRecheck) : left;
    std::vector<pollfd> fds;
    for (const auto& [fd, id] : waiting) fds.push_back({fd, POLLOUT, 0});  // poll() skips fd -1
    int ready = poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    if (ready < 0 && errno != EINTR) return;
    if (ready == 0 && !unwatched) return;  // the deadline passed and no connection took more
    for (size_t i = 0; i < fds.size(); ++i)
      if (fds[i].revents) flush(waiting[i].second);
  }
}

}  // namespace sockrelay
