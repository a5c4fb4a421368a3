// Upstream sockets made ahead of need, per target of a datagram route: a new
// client's first datagram leaves at once through one of them, and the
// socket(), connect() and epoll registration of its replacement run when
// the relay has nothing else to do (EventLoop::when_idle()). On this 2-vCPU
// machine the three calls were a fifth of the relay's time per new client,
// all on the path of the client's first answer (tests/bench/README.md,
// "Many clients").
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "config/fd_budget.h"
#include "loop/event_loop.h"

namespace sockrelay {

class UpstreamPool {
 public:
  // Sockets kept ready per target (the fd budget counts them).
  static constexpr size_t kDepth = kReadyUpstreamsPerTarget;
  // A socket kept longer is closed unused: connect() fixed its source
  // address then, and a quiet route should not hold descriptors.
  static constexpr uint64_t kMaxAgeNs = 5'000'000'000;

  // `pooled[t]`: whether target t's sockets may be made ahead. A connected
  // UDP socket is only an address; a connected AF_UNIX one is bound to the
  // target's socket of the moment and would outlive a restarted server.
  UpstreamPool(EventLoop& loop, std::vector<bool> pooled);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  bool pooled(size_t target) const { return pooled_[target]; }
  // A ready socket to `target` (the oldest), its events handed to `handler`
  // from now on; none when there is none.
  std::optional<Fd> take(size_t target, EventLoop::Handler handler);
  // Whether `target` has fewer than kDepth ready.
  bool short_of(size_t target) const { return pooled_[target] && ready_[target].size() < kDepth; }
  // Tops `target` up to kDepth sockets from `open`, each watched for input
  // at once; the first failure stops it and is returned (the next new
  // client opens its own socket and meets the error where it is counted).
  Status refill(size_t target, const std::function<Result<Fd>()>& open, uint64_t now_ns);
  // Closes `target`'s sockets (a target that failed: they may hold its error).
  void clear(size_t target);
  // Closes the sockets older than kMaxAgeNs.
  void expire(uint64_t now_ns);
  size_t ready(size_t target) const { return ready_[target].size(); }
  // Datagrams that reached a socket before any flow had it: a late answer
  // to an earlier socket on the same port. Read and dropped, never sent to
  // the client that takes the socket.
  uint64_t strays() const { return strays_; }

 private:
  struct Ready {
    Fd fd;
    uint64_t made_ns;
  };
  void drop_front(size_t target);

  EventLoop& loop_;
  std::vector<bool> pooled_;
  std::vector<std::deque<Ready>> ready_;  // by target, oldest first
  uint64_t strays_ = 0;
};

}  // namespace sockrelay
