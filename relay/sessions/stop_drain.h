// Stop and reload deliver what the relay took in before closing: the routes
// that queue bytes in user space write them out first, for a bounded time.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

namespace sockrelay {

// How long a stopping route may spend writing out what it queued; a peer
// still not reading after that loses the rest (counted by the route).
inline constexpr std::chrono::milliseconds kStopDrain{2000};

// Until kStopDrain has passed or nothing is pending: `pending()` lists
// (fd, id) of the connections with bytes queued, and `flush(id)` writes
// what one of them takes now (it may close and forget the connection).
template <typename Pending, typename Flush>
void drain_before_stop(Pending pending, Flush flush) {
  const auto deadline = std::chrono::steady_clock::now() + kStopDrain;
  for (;;) {
    std::vector<std::pair<int, uint64_t>> waiting = pending();
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (waiting.empty() || left.count() <= 0) return;
    std::vector<pollfd> fds;
    for (const auto& [fd, id] : waiting) fds.push_back({fd, POLLOUT, 0});
    if (poll(fds.data(), fds.size(), static_cast<int>(left.count())) <= 0) return;
    for (size_t i = 0; i < fds.size(); ++i)
      if (fds[i].revents) flush(waiting[i].second);
  }
}

}  // namespace sockrelay
