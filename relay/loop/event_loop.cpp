#include "loop/event_loop.h"

#include <sys/epoll.h>

namespace sockrelay {

Result<EventLoop> EventLoop::create() {
  Fd ep(epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return errno_error("epoll_create1");
  return EventLoop(std::move(ep));
}

Status EventLoop::add(int fd, uint32_t events, Handler handler) {
  uint64_t generation = next_generation_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = (generation << 32) | static_cast<uint32_t>(fd);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return errno_error("epoll_ctl(ADD)");
  handlers_[fd] = Entry{std::move(handler), generation};
  return {};
}

Status EventLoop::modify(int fd, uint32_t events) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end()) return plain_error("epoll modify: fd not registered");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = (it->second.generation << 32) | static_cast<uint32_t>(fd);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return errno_error("epoll_ctl(MOD)");
  return {};
}

void EventLoop::rebind(int fd, Handler handler) {
  auto it = handlers_.find(fd);
  if (it != handlers_.end()) it->second.handler = std::move(handler);
}

void EventLoop::close_later(Fd fd) {
  int raw = fd.get();
  if (!handlers_.count(raw)) return;  // not watched: closed here, now
  if (closing_.size() >= kMaxClosing) close_all_waiting();
  rebind(raw, [this, raw](uint32_t) { close_now(raw); });
  if (closing_.empty()) when_idle(&closing_, [this] { close_all_waiting(); });
  closing_.emplace(raw, std::move(fd));
}

void EventLoop::close_now(int fd) {
  remove(fd);
  closing_.erase(fd);
}

void EventLoop::close_all_waiting() {
  for (auto& [fd, owned] : closing_) remove(fd);
  closing_.clear();
  forget_idle(&closing_);
}

void EventLoop::remove(int fd) {
  if (handlers_.erase(fd) > 0) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

void EventLoop::when_idle(const void* owner, std::function<void()> task) {
  idle_.emplace_back(owner, std::move(task));
}

void EventLoop::forget_idle(const void* owner) {
  std::erase_if(idle_, [owner](const auto& entry) { return entry.first == owner; });
}

Status EventLoop::run_once(std::chrono::milliseconds timeout) {
  epoll_event events[64];
  // With idle work waiting, a look without waiting first.
  int n = epoll_wait(epoll_.get(), events, 64, idle_.empty() ? static_cast<int>(timeout.count()) : 0);
  if (n < 0) return errno == EINTR ? Status() : Status(errno_error("epoll_wait"));
  if (n == 0 && !idle_.empty()) {
    auto tasks = std::move(idle_);
    idle_.clear();
    for (auto& [owner, task] : tasks) task();
    return {};
  }
  for (int i = 0; i < n; ++i) {
    int fd = static_cast<int>(events[i].data.u64 & 0xffffffffu);
    uint64_t generation = events[i].data.u64 >> 32;
    auto it = handlers_.find(fd);
    if (it == handlers_.end() || it->second.generation != generation) continue;
    Handler handler = it->second.handler;  // a copy: the handler may remove itself
    handler(events[i].events);
  }
  return {};
}

Status EventLoop::run(std::chrono::milliseconds period, const std::function<void()>& tick) {
  running_ = true;
  auto next_tick = std::chrono::steady_clock::now() + period;
  while (running_) {
    auto now = std::chrono::steady_clock::now();
    auto wait = now >= next_tick ? std::chrono::milliseconds(0)
                                 : std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - now);
    if (auto st = run_once(wait); !st) return st;
    if (std::chrono::steady_clock::now() >= next_tick) {
      tick();
      next_tick = std::chrono::steady_clock::now() + period;
    }
  }
  return {};
}

}  // namespace sockrelay
