// A unix-dgram listener on the kernel path. AF_UNIX shows the verdict
// program the sender of a datagram, not the socket receiving it, so the
// listener gets a program instance of its own: it steers the datagrams of
// senders with a flow (keyed by the sender's cookie) and tags every other
// sender's datagram with its cookie and owner and redirects it to the
// new-client channel, a socket pair of ours, where the datagram arrives
// whole and user space sets up the sender's flow. A flow on hold
// (datagram_hold.cpp) gets its datagrams passed up the same way, tagged
// `held`.
//
// Senders refused by allow-uids are remembered here (by cookie: never
// reused), so their next datagrams are dropped without another sock_diag
// dump; the first kMaxRefusedInKernel get a flow entry marked
// RELAY_FLOW_REFUSED, so the verdict program drops (and counts) them
// itself. Forgotten after idle-timeout without a datagram.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <unordered_map>

#include "bpf_loader/map_writer.h"
#include "common/fd.h"
#include "common/result.h"
#include "loop/event_loop.h"
#include "sessions/pass_up_channel.h"

namespace sockrelay {

class UnixListenerSteering {
 public:
  // A new sender's datagram, as the verdict program tagged it.
  // `held`: the sender's flow is on hold (else it has no flow entry yet).
  using NewSender = std::function<void(uint64_t sender_cookie, uint32_t sender_uid, bool held,
                                       const char* data, size_t len)>;
  // Reads a batch from the listener; true once its queue is empty.
  using DrainListener = std::function<bool()>;

  // `batch_buffer`: kBatchBufferSize bytes the new-client channel reads
  // into (the listener's: the listener itself is not read once steered).
  UnixListenerSteering(uint32_t route_id, MapWriter& maps, EventLoop& loop, char* batch_buffer);
  // Undoes whatever start() set up, also when it failed half-way.
  ~UnixListenerSteering() { stop(); }
  UnixListenerSteering(const UnixListenerSteering&) = delete;
  UnixListenerSteering& operator=(const UnixListenerSteering&) = delete;

  // Opens the new-client channel and gives the listener its program
  // instance. `drain_listener` reads what was queued before, with its
  // senders (systemd may have started us for it).
  // `on_batch_end` runs after each batch the new-client channel read.
  Status start(int listener_fd, uint64_t listener_cookie, const DrainListener& drain_listener,
               NewSender on_new_sender, PassUpChannel::OnBatchEnd on_batch_end = {});
  // Removes every map entry start() and refuse() wrote.
  void stop();
  // Where the listener's program instance passes datagrams up.
  uint64_t channel_key() const { return channel_.key(); }

  // True, and the sender seen now, when `cookie` was refused before.
  bool refused_before(uint64_t cookie, uint64_t now_ns);
  void refuse(uint64_t cookie, uint64_t now_ns);
  // Forgets the refused senders silent for longer than `idle_ns`.
  void forget_idle(uint64_t now_ns, uint64_t idle_ns);

 private:
  struct RefusedSender {
    uint64_t last_ns = 0;  // user space's last sight of it
    bool in_map = false;
  };

  void forget(uint64_t cookie);

  uint32_t route_id_;
  MapWriter& maps_;
  PassUpChannel channel_;  // the new-client channel
  uint64_t listener_cookie_ = 0;
  bool listener_in_map_ = false;

  std::unordered_map<uint64_t, RefusedSender> refused_;
  size_t refused_in_map_ = 0;
};

}  // namespace sockrelay
