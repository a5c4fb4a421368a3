#include "sessions/unix_listener_steering.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "common/socket_cookie.h"
#include "relay_shared.h"
#include "sessions/datagram_batch.h"

namespace sockrelay {

namespace {

constexpr size_t kMaxRefusedSenders = 65536;  // remembered refusals; past it, start afresh
// Refused senders given a flow entry (relay_flows is shared with live
// flows and holds RELAY_MAX_SOCKETS); past it they are dropped in user space.
constexpr size_t kMaxRefusedInKernel = 4096;

}  // namespace

UnixListenerSteering::UnixListenerSteering(uint32_t route_id, MapWriter& maps, EventLoop& loop,
                                           char* batch_buffer)
    : route_id_(route_id), maps_(maps), channel_(maps, loop, batch_buffer) {}

Status UnixListenerSteering::start(int listener_fd, uint64_t listener_cookie,
                                   const DrainListener& drain_listener, NewSender on_new_sender,
                                   PassUpChannel::OnBatchEnd on_batch_end) {
  // Datagrams already queued are read with their senders before the
  // verdict program takes over (bounded: senders that never pause must not
  // keep it from starting).
  for (int round = 0; round < 64 && !drain_listener(); ++round) {
  }
  auto on_datagram = [on_new_sender = std::move(on_new_sender)](const relay_new_client_tag& tag,
                                                                const char* d, size_t size) {
    // No SO_PASSCRED on the channel: credentials arriving there would be
    // the kernel worker's that re-sent the datagram (measured: pid of a
    // kworker, uid 0, gid 0, whoever the sender), never the sender's.
    on_new_sender(tag.sender_cookie, tag.sender_uid, tag.held != 0, d, size);
  };
  if (auto st = channel_.open(on_datagram, std::move(on_batch_end)); !st) return st;
  MapWriter::PrivateProgram program;
  program.new_client_target = channel_.key();
  if (auto st = maps_.add_private_source(listener_cookie, listener_fd, program); !st) return st;
  listener_cookie_ = listener_cookie;
  listener_in_map_ = true;
  // What arrived since the read above would wait for later datagrams to
  // push it through the program (one queued skb per arriving one): read it
  // once more, now that the program takes the rest (the queue only shrinks
  // now).
  while (!drain_listener()) {
  }
  return {};
}

void UnixListenerSteering::stop() {
  while (!refused_.empty()) forget(refused_.begin()->first);
  // The listener first: the program must stop redirecting before its
  // target goes.
  if (listener_in_map_) maps_.remove_private_source(listener_cookie_);
  channel_.close();
  listener_in_map_ = false;
}

bool UnixListenerSteering::refused_before(uint64_t cookie, uint64_t now_ns) {
  auto it = refused_.find(cookie);
  if (it == refused_.end()) return false;
  it->second.last_ns = now_ns;
  return true;
}

void UnixListenerSteering::refuse(uint64_t cookie, uint64_t now_ns) {
  if (refused_.size() >= kMaxRefusedSenders)
    while (!refused_.empty()) forget(refused_.begin()->first);
  RefusedSender& sender = refused_[cookie];
  sender.last_ns = now_ns;
  if (!sender.in_map && refused_in_map_ < kMaxRefusedInKernel) {
    FlowEntry entry;
    entry.route_id = route_id_;
    entry.flags = RELAY_FLOW_REFUSED;
    // Not in the map (full, say): its datagrams keep coming to the
    // new-client channel and are dropped here, as past the limit.
    sender.in_map = maps_.set_flow(cookie, entry).ok();
    refused_in_map_ += sender.in_map;
  }
}

void UnixListenerSteering::forget_idle(uint64_t now_ns, uint64_t idle_ns) {
  std::vector<uint64_t> silent;
  for (const auto& [cookie, sender] : refused_) {
    // In the map, the verdict program drops its datagrams: the flow entry
    // knows when it last sent one.
    uint64_t last = sender.in_map ? std::max(sender.last_ns, maps_.flow_last_ns(cookie)) : sender.last_ns;
    if (now_ns - std::min(now_ns, last) > idle_ns) silent.push_back(cookie);
  }
  for (uint64_t cookie : silent) forget(cookie);
}

void UnixListenerSteering::forget(uint64_t cookie) {
  auto it = refused_.find(cookie);
  if (it == refused_.end()) return;
  if (it->second.in_map) {
    maps_.remove_flow(cookie);
    --refused_in_map_;
  }
  refused_.erase(it);
}

}  // namespace sockrelay
