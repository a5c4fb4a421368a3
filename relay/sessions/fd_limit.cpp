#include "sessions/fd_limit.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/timerfd.h>

#include <cstring>

#include "common/clock.h"

namespace sockrelay {

void FdLimitLog::hit(uint32_t route_id, uint64_t& counter, const std::string& what, int err) {
  ++counter;
  ++since_last_line_;
  uint64_t now = monotonic_ns();
  uint64_t every = static_cast<uint64_t>(std::chrono::nanoseconds(kLogEvery).count());
  if (logged_ && now - last_line_ns_ < every) return;
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  std::string limit = err == ENFILE
                          ? "the system's file table (fs.file-max) is full"
                          : "the relay's limit is " + std::to_string(lim.rlim_cur) +
                                " open files (raise LimitNOFILE= in the unit, or lower max-sessions)";
  spdlog::warn(
      "route {}: out of file descriptors ({}: {}): {} time(s) since the last line; {} (counted as {})",
      route_id, what, std::strerror(err), since_last_line_, limit, kFdLimitDrop);
  since_last_line_ = 0;
  last_line_ns_ = now;
  logged_ = true;
}

Status ListenerGate::start(int listener, EventLoop::Handler on_readable) {
  timer_ = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_) return errno_error("timerfd_create");
  if (auto st = loop_.add(timer_.get(), EPOLLIN,
                          [this](uint32_t) {
                            uint64_t expirations = 0;
                            if (read(timer_.get(), &expirations, sizeof(expirations)) < 0) {
                              // Nothing to read: a resume() already disarmed it.
                            }
                            resume();
                          });
      !st)
    return st;
  if (auto st = loop_.add(listener, EPOLLIN, std::move(on_readable)); !st) {
    loop_.remove(timer_.get());
    return st;
  }
  listener_ = listener;
  paused_ = false;
  return {};
}

void ListenerGate::stop() {
  if (listener_ < 0) return;
  loop_.remove(listener_);
  loop_.remove(timer_.get());
  timer_.reset();
  listener_ = -1;
  paused_ = false;
}

void ListenerGate::pause() {
  if (listener_ < 0 || paused_) return;
  // No events asked for: a listening socket reports neither HUP nor ERR,
  // so it stays quiet until resume().
  if (auto st = loop_.modify(listener_, 0); !st) return;
  paused_ = true;
  itimerspec at{};
  at.it_value.tv_nsec = std::chrono::nanoseconds(kPause).count();
  timerfd_settime(timer_.get(), 0, &at, nullptr);
}

void ListenerGate::resume() {
  if (listener_ < 0 || !paused_) return;
  itimerspec off{};
  timerfd_settime(timer_.get(), 0, &off, nullptr);
  if (auto st = loop_.modify(listener_, EPOLLIN); !st) return;
  paused_ = false;
}

}  // namespace sockrelay
