#include "sessions/send_queue.h"

#include <sys/socket.h>

#include <cerrno>

#include "common/io_errors.h"

namespace sockrelay {

SendQueue::Written SendQueue::write_to(int fd) {
  Written out;
  while (!entries_.empty()) {
    std::string& front = entries_.front();
    ssize_t n = send(fd, front.data(), front.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (!would_block(errno)) out.error = errno;
      return out;
    }
    size_t taken = static_cast<size_t>(n);
    out.bytes += taken;
    bytes_ -= taken;
    if (taken < front.size()) {
      front.erase(0, taken);  // a stream took part of it: full for now
      return out;
    }
    ++out.entries;
    entries_.pop_front();
  }
  return out;
}

}  // namespace sockrelay
