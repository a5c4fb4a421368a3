#include "sessions/pass_up_channel.h"

#include <sys/socket.h>

#include <cstring>
#include <utility>

#include "common/socket_cookie.h"
#include "sessions/datagram_batch.h"

namespace sockrelay {

Status PassUpChannel::open(OnDatagram on_datagram, OnBatchEnd on_batch_end) {
  on_datagram_ = std::move(on_datagram);
  on_batch_end_ = std::move(on_batch_end);
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0)
    return errno_error("socketpair for datagrams passed up");
  tx_ = Fd(pair[0]);
  rx_ = Fd(pair[1]);
  // What a burst of new flows passes up waits here: room for it (the
  // verdict program's redirect waits while the queue is full, it does not
  // drop).
  int big = 4 << 20;
  setsockopt(rx_.get(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
  auto tx_cookie = socket_cookie(tx_.get());
  if (!tx_cookie) return tx_cookie.error();
  tx_cookie_ = *tx_cookie;
  if (auto st = maps_.add_target(tx_cookie_, tx_.get()); !st) return st;
  tx_in_map_ = true;
  if (auto st = loop_.add(rx_.get(), EPOLLIN, [this](uint32_t) { on_readable(); }); !st) return st;
  rx_watched_ = true;
  return {};
}

void PassUpChannel::close() {
  if (tx_is_source_) {
    maps_.remove_source(tx_cookie_);
    maps_.remove_flow(rx_cookie_);  // the entry inject() went by
  }
  if (tx_in_map_) maps_.remove_target(tx_cookie_);
  if (rx_watched_) loop_.remove(rx_.get());
  tx_in_map_ = rx_watched_ = tx_is_source_ = false;
}

Status PassUpChannel::enable_inject() {
  if (tx_is_source_) return {};
  if (!tx_in_map_) return plain_error("the channel is not open");
  auto rx_cookie = socket_cookie(rx_.get());
  if (!rx_cookie) return rx_cookie.error();
  rx_cookie_ = *rx_cookie;
  if (auto st = maps_.add_source(tx_cookie_, tx_.get()); !st) return st;
  tx_is_source_ = true;
  return {};
}

// The program runs in this send() (the receiver's data-ready wake-up), so
// the datagram is in the target's line when it returns.
bool PassUpChannel::inject(const char* data, size_t len) {
  return tx_is_source_ &&
         send(rx_.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL) == static_cast<ssize_t>(len);
}

void PassUpChannel::on_readable() {
  // A few batches per wake-up, then back to the loop.
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(rx_.get(), batch_buffer_,
                       [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
                         relay_new_client_tag tag;
                         if (size < sizeof(tag)) return;  // cannot happen: the verdict program always tags
                         std::memcpy(&tag, d, sizeof(tag));
                         on_datagram_(tag, d + sizeof(tag), size - sizeof(tag));
                       });
    if (n > 0 && on_batch_end_) on_batch_end_();
    if (n < kBatch) break;
  }
}

}  // namespace sockrelay
