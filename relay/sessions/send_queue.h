// What a route holds in user space for one connection whose socket is full,
// written out in order once it has room. Each entry is a whole message (a
// seqpacket socket takes one whole or not at all) or a run of a byte stream
// (a stream socket may take part of one: the rest stays at the front). The
// bridge and the subscriber route keep one per connection.
#pragma once

#include <cstddef>
#include <deque>
#include <string>

namespace sockrelay {

class SendQueue {
 public:
  bool empty() const { return entries_.empty(); }
  size_t entries() const { return entries_.size(); }
  size_t bytes() const { return bytes_; }

  void push(const char* data, size_t len) {
    entries_.emplace_back(data, len);
    bytes_ += len;
  }

  struct Written {
    size_t bytes = 0;    // taken by the socket
    size_t entries = 0;  // entries it took whole
    int error = 0;       // errno of a send that failed for good (0: none)
  };
  // Sends what `fd` takes now, oldest first, until it is full or the queue
  // is empty. A failed send stops it and leaves the queue as it is.
  Written write_to(int fd);

 private:
  std::deque<std::string> entries_;
  size_t bytes_ = 0;
};

}  // namespace sockrelay
