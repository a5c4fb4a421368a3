// Where the verdict program hands datagrams to user space whole and with
// their flow's key (bpf/relay.bpf.c, tag_to_channel()): a socket pair of
// ours, its sending end in relay_targets, its receiving end read a batch at
// a time, each datagram with the tag the program prepended. A unix-dgram
// listener's new senders come this way (unix_listener_steering.h), and the
// datagrams of every flow on hold (datagram_hold.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "bpf_loader/map_writer.h"
#include "common/fd.h"
#include "common/result.h"
#include "loop/event_loop.h"
#include "relay_shared.h"

namespace sockrelay {

class PassUpChannel {
 public:
  using OnDatagram = std::function<void(const relay_new_client_tag& tag, const char* data, size_t len)>;
  using OnBatchEnd = std::function<void()>;

  // `batch_buffer`: kBatchBufferSize bytes to read into.
  PassUpChannel(MapWriter& maps, EventLoop& loop, char* batch_buffer)
      : maps_(maps), loop_(loop), batch_buffer_(batch_buffer) {}
  ~PassUpChannel() { close(); }
  PassUpChannel(const PassUpChannel&) = delete;
  PassUpChannel& operator=(const PassUpChannel&) = delete;

  // `on_batch_end` (may be empty) runs after each batch read.
  Status open(OnDatagram on_datagram, OnBatchEnd on_batch_end = {});
  // Out of the map and the loop (what is still queued is lost with it).
  void close();
  // The relay_targets key the program redirects to; 0 until open.
  uint64_t key() const { return tx_cookie_; }

  // The way back in: a datagram user space writes with inject() reaches
  // the sending end, which (once enable_inject() put it in relay_sources)
  // runs the verdict program on it as a datagram of the flow keyed
  // inject_key() (AF_UNIX: the program sees the sender, our receiving
  // end), whose entry the caller writes first (close() removes it). It
  // then waits in line behind what the program already queued toward the
  // same target.
  Status enable_inject();
  uint64_t inject_key() const { return rx_cookie_; }
  // False when it could not be written (the caller sends it itself).
  bool inject(const char* data, size_t len);

 private:
  void on_readable();

  MapWriter& maps_;
  EventLoop& loop_;
  char* batch_buffer_;
  OnDatagram on_datagram_;
  OnBatchEnd on_batch_end_;
  Fd tx_, rx_;  // the program redirects to tx; user space reads rx
  uint64_t tx_cookie_ = 0, rx_cookie_ = 0;
  bool tx_in_map_ = false, rx_watched_ = false, tx_is_source_ = false;
};

}  // namespace sockrelay
