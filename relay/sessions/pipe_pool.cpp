#include "sessions/pipe_pool.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace sockrelay {

Result<Pipe> PipePool::take() {
  taken_since_trim_ = true;
  if (!idle_.empty()) {
    Pipe pipe = std::move(idle_.back());
    idle_.pop_back();
    return pipe;
  }
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return errno_error("pipe2");
  Pipe pipe;
  pipe.r = Fd(p[0]);
  pipe.w = Fd(p[1]);
  ++opened_;
  // Best effort: a smaller pipe still works, F_GETPIPE_SZ says what we got.
  if (fcntl(pipe.w.get(), F_SETPIPE_SZ, static_cast<int>(kPipeSize)) < 0) {
    if (small_++ == 0)
      spdlog::warn(
          "pipe size {} KiB refused ({}): the relay's user is past /proc/sys/fs/pipe-user-pages-soft; "
          "pipes stay smaller (more splice() calls per byte, nothing lost). Raise the sysctl for more "
          "sessions with bytes in flight at once",
          kPipeSize / 1024, std::strerror(errno));
  }
  int capacity = fcntl(pipe.w.get(), F_GETPIPE_SZ);
  if (capacity <= 0) return errno_error("F_GETPIPE_SZ");
  pipe.capacity = static_cast<size_t>(capacity);
  return pipe;
}

void PipePool::trim() {
  if (!taken_since_trim_) idle_.clear();
  taken_since_trim_ = false;
}

void PipePool::give_back(Pipe pipe) {
  if (!pipe || idle_.size() >= kKeepIdle) return;  // closed here
  idle_.push_back(std::move(pipe));
}

}  // namespace sockrelay
