#include "sessions/upstream_pool.h"

#include <sys/socket.h>

namespace sockrelay {

UpstreamPool::UpstreamPool(EventLoop& loop, std::vector<bool> pooled)
    : loop_(loop), pooled_(std::move(pooled)), ready_(pooled_.size()) {}

UpstreamPool::~UpstreamPool() {
  for (size_t t = 0; t < ready_.size(); ++t) clear(t);
}

std::optional<Fd> UpstreamPool::take(size_t target, EventLoop::Handler handler) {
  auto& ready = ready_[target];
  if (ready.empty()) return std::nullopt;
  Fd fd = std::move(ready.front().fd);
  ready.pop_front();
  loop_.rebind(fd.get(), std::move(handler));
  return fd;
}

Status UpstreamPool::refill(size_t target, const std::function<Result<Fd>()>& open, uint64_t now_ns) {
  while (short_of(target)) {
    Result<Fd> fd = open();
    if (!fd) return fd.error();
    int raw = fd->get();
    auto discard = [this, raw](uint32_t) {
      char byte;
      while (recv(raw, &byte, sizeof(byte), MSG_DONTWAIT | MSG_TRUNC) >= 0) ++strays_;
    };
    if (auto st = loop_.add(raw, EPOLLIN, discard); !st) return st;
    ready_[target].push_back(Ready{std::move(*fd), now_ns});
  }
  return {};
}

void UpstreamPool::drop_front(size_t target) {
  loop_.remove(ready_[target].front().fd.get());
  ready_[target].pop_front();
}

void UpstreamPool::clear(size_t target) {
  while (!ready_[target].empty()) drop_front(target);
}

void UpstreamPool::expire(uint64_t now_ns) {
  for (size_t t = 0; t < ready_.size(); ++t)
    while (!ready_[t].empty() && now_ns - ready_[t].front().made_ns > kMaxAgeNs) drop_front(t);
}

}  // namespace sockrelay
