// A new client's datagrams in the order it sent them, from the first one,
// while its flow is set up (bpf/relay_shared.h, struct relay_hold).
//
// Where a client's datagrams wait while user space sets its flow up, oldest
// first:
//  1. the listener (UDP: until the flow socket is connected) or the
//     new-client channel (AF_UNIX: until the flow entry exists): forwarded
//     as user space reads them, the oldest of all;
//  2. the UDP flow socket, between connect() and its insertion in the map:
//     read just before the insertion (read_before_steering());
//  3. what the verdict program passes up while the flow is on hold.
// 2 and 3 wait in Flow::waiting until 1 is done: for UDP, a listener read
// that began after the flow socket connected came back empty; for AF_UNIX,
// the first held datagram arrived (the channel keeps one sender's order,
// and the unheld ones came before it). Then user space forwards them and
// tells the verdict program how many held ones it forwarded; the program
// sends the flow's datagrams straight to the target once that number is
// what it passed up, and the hold ends.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "sessions/datagram_batch.h"
#include "sessions/datagram_flow.h"
#include "sessions/datagram_route.h"

namespace sockrelay {

namespace {

// How often flows with datagrams lingering on their flow socket are looked
// at (linger_check()).
constexpr long kLingerCheckNs = 10'000'000;

}  // namespace

uint64_t DatagramRoute::hold_channel_key() const {
  if (unix_steering_) return unix_steering_->channel_key();
  return hold_channel_ ? hold_channel_->key() : 0;
}

// A UDP listener's kernel path: its flow sockets' held datagrams come here
// (opened with the first flow, closed at stop()).
Status DatagramRoute::open_hold_channel() {
  hold_channel_ = std::make_unique<PassUpChannel>(*maps_, loop_, listener_buffer_.get());
  auto on_datagram = [this](const relay_new_client_tag& tag, const char* d, size_t size) {
    on_held_datagram(tag.sender_cookie, d, size);
  };
  if (auto st = hold_channel_->open(on_datagram, [this] { advance_holds(); }); !st) {
    hold_channel_.reset();
    return st.error().wrap("hold channel");
  }
  return {};
}

// Before the flow entry is written: the entry carries RELAY_FLOW_HOLD
// (write_forward_flow()) and the verdict program passes every datagram up
// until user space says it forwarded what came before.
Status DatagramRoute::begin_hold(Flow& flow) {
  if (broadcast() || !flow.client_key) return {};  // broadcast: every datagram passes user space
  if (!unix_listener() && !hold_channel_)
    if (auto st = open_hold_channel(); !st) return st;
  uint64_t channel = hold_channel_key();
  if (auto st = maps_->hold_flow(flow.client_key, channel); !st) return st;
  flow.held = true;
  held_[flow.client_key] = flow.key;
  if (unix_listener()) flow.leftovers_done = false;  // until its first held datagram
  return {};
}

// Step 2: what reached the connected UDP flow socket before it enters the
// map, read now (after the insertion the verdict program takes one queued
// datagram per arriving one, and a read would race it for the queue).
void DatagramRoute::read_before_steering(Flow& flow, std::vector<Stranger>& strangers) {
  for (int round = 0; round < 64; ++round) {
    int n = read_batch(flow.client_socket.get(), buffer_.get(),
                       [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size,
                           const DatagramMeta& meta) {
                         // One that slipped in from another client before connect() goes
                         // where the listener would send it.
                         if (flow.from_client(peer, len))
                           flow.waiting.push_back({std::string(d, size), false});
                         else
                           strangers.push_back({peer, len, std::string(d, size), flow.local, flow.local_len,
                                                meta.stamp_ns, listener_reads_, flow_key(peer, len, 0)});
                       });
    if (n < kBatch) break;
  }
}

// Strangers (connect_reply_socket()) are other clients' datagrams, newer
// than some of theirs still on the listener and older than others: each
// waits here until a datagram of its client read from the listener was
// received after it (forward_parked_before()), or until a listener read
// that began after it was read comes back with less than a batch
// (forward_parked()): every datagram its client sent before it has been
// read then (one sender's datagrams are received in the order sent, and
// it was on the flow socket when it was read). Receive times come from
// SO_TIMESTAMPNS on the listener and the flow socket.
void DatagramRoute::park_strangers(std::vector<Stranger>& strangers) {
  for (Stranger& s : strangers) parked_.push_back(std::move(s));
}

void DatagramRoute::forward_parked_before(const std::string& key, uint64_t stamp_ns) {
  for (;;) {
    auto first = parked_.end();
    for (auto it = parked_.begin(); it != parked_.end(); ++it)
      if (it->key == key && it->stamp_ns < stamp_ns &&
          (first == parked_.end() || it->stamp_ns < first->stamp_ns))
        first = it;
    if (first == parked_.end()) return;
    Stranger s = std::move(*first);
    parked_.erase(first);
    forward_stranger(s);
  }
}

bool DatagramRoute::stranger_parked(const std::string& key) const {
  return std::any_of(parked_.begin(), parked_.end(), [&](const Stranger& s) { return s.key == key; });
}

void DatagramRoute::forward_parked(uint64_t read) {
  std::vector<Stranger> due;
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (it->read_after < read) {
      due.push_back(std::move(*it));
      it = parked_.erase(it);
    } else {
      ++it;
    }
  }
  std::stable_sort(due.begin(), due.end(),
                   [](const Stranger& a, const Stranger& b) { return a.stamp_ns < b.stamp_ns; });
  for (const Stranger& s : due) forward_stranger(s);
}

void DatagramRoute::forward_stranger(const Stranger& s) {
  DatagramMeta meta;
  meta.local = s.local;
  meta.local_len = s.local_len;
  meta.stamp_ns = s.stamp_ns;
  handle_client_datagram(s.peer, s.peer_len, 0, std::nullopt, &meta, s.data.data(), s.data.size());
}

// Right after the flow socket entered the map: anything still queued
// arrived between the read above and the insertion. The verdict program
// takes it, in order, as more datagrams arrive; if none do, it lingers.
void DatagramRoute::note_lingering(Flow& flow) {
  if (!datagrams_queued(flow.client_socket.get())) return;
  flow.may_linger = true;
  flow.linger_last_ns = 0;
  lingering_.push_back(flow.key);
  if (!linger_timer_) {
    linger_timer_ = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!linger_timer_ ||
        !loop_.add(linger_timer_.get(), EPOLLIN, [this](uint32_t) { linger_check(); }).ok()) {
      linger_timer_ = Fd();  // the tick looks instead
      return;
    }
  }
  itimerspec every{{0, kLingerCheckNs}, {0, kLingerCheckNs}};
  timerfd_settime(linger_timer_.get(), 0, &every, nullptr);
}

// A UDP flow socket had room for a burst while its flow was set up
// (bind_udp_flow_socket()); set up, it gets the kernel's default back: a
// steered socket's queue is taken as datagrams arrive, and on the
// user-space path the default bounds what one flow may hold.
void DatagramRoute::narrow_receive_buffer(Flow& flow) {
  static const int default_bytes = [] {
    int bytes = 212992;
    if (FILE* f = std::fopen("/proc/sys/net/core/rmem_default", "re")) {
      if (std::fscanf(f, "%d", &bytes) != 1) bytes = 212992;
      std::fclose(f);
    }
    return bytes;
  }();
  if (!flow.client_socket_is_udp) return;
  // What is queued beyond it stays; only later arrivals meet the smaller
  // one. The kernel doubles what it is given.
  int bytes = default_bytes / 2;
  setsockopt(flow.client_socket.get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}

void DatagramRoute::on_held_datagram(uint64_t key, const char* data, size_t len) {
  auto it = held_.find(key);
  Flow* flow = nullptr;
  if (it != held_.end()) {
    auto f = flows_.find(it->second);
    if (f != flows_.end()) flow = f->second.get();
  }
  if (!flow && !unix_listener()) {
    // Its hold ended while the datagram was on its way (end_hold()): it
    // goes on now.
    auto ended = hold_ended_.find(key);
    if (ended != hold_ended_.end()) {
      auto f = flows_.find(ended->second.first);
      if (f != flows_.end()) {
        send_to_upstream(*f->second, data, len);
        return;
      }
    }
  }
  if (!flow) {
    // Its flow ended while the datagram was on its way: a unix sender
    // starts afresh; a UDP one's datagram has nowhere to go.
    if (unix_listener())
      handle_client_datagram(sockaddr_storage{}, 0, key, std::nullopt, nullptr, data, len);
    else
      ++counters_.drop_setup_failed;
    return;
  }
  if (unix_listener() && !flow->leftovers_done) {
    // The channel keeps one sender's order: every datagram passed up
    // before the flow entry existed has been read.
    flow->leftovers_done = true;
    flush_waiting(*flow);
  }
  catch_early(*flow, data, len, true);
  touched_holds_.push_back(flow->key);
}

// A datagram of a flow still being set up: forwarded now if what came
// before it has been, else it waits.
void DatagramRoute::catch_early(Flow& flow, const char* data, size_t len, bool held) {
  if (!flow.leftovers_done) {
    flow.waiting.push_back({std::string(data, len), held});
    return;
  }
  send_to_upstream(flow, data, len);
  if (held) ++flow.forwarded;
}

// A UDP listener read `read` came back with less than a batch (`drained`):
// the client of every flow whose socket connected before that read began
// has no datagram left on the listener; strangers read before it go first.
void DatagramRoute::listener_read_done(uint64_t read, bool drained) {
  if (drained && !parked_.empty()) forward_parked(read);
  if (!drained || awaiting_listener_.empty()) return;
  std::vector<std::string> still;
  std::vector<std::string> done;
  for (const std::string& key : awaiting_listener_) {
    auto it = flows_.find(key);
    if (it == flows_.end()) continue;
    // A stranger of this client still parked is older than what its own
    // socket caught: the flow waits for it too (else the kernel path,
    // once the hold ended, overtook it: "296 297 298 299 294", measured).
    (it->second->connected_in_read < read && !stranger_parked(key) ? done : still).push_back(key);
  }
  awaiting_listener_ = std::move(still);
  for (const std::string& key : done) {
    auto it = flows_.find(key);
    if (it != flows_.end()) leftovers_forwarded(*it->second);
  }
}

void DatagramRoute::leftovers_forwarded(Flow& flow) {
  flow.leftovers_done = true;
  flush_waiting(flow);
  advance_hold(flow);
}

void DatagramRoute::flush_waiting(Flow& flow) {
  while (!flow.waiting.empty()) {
    Flow::Waiting& w = flow.waiting.front();
    send_to_upstream(flow, w.data.data(), w.data.size());
    if (w.held) ++flow.forwarded;
    flow.waiting.pop_front();
  }
}

// After a batch of held datagrams: each flow they came for moves on.
void DatagramRoute::advance_holds() {
  std::vector<std::string> keys;
  keys.swap(touched_holds_);
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  for (const std::string& key : keys) {
    auto it = flows_.find(key);
    if (it != flows_.end()) advance_hold(*it->second);
  }
}

// The verdict program learns how many held datagrams user space forwarded;
// when that is all it passed up, the flow leaves the hold.
void DatagramRoute::advance_hold(Flow& flow) {
  if (!flow.held || !flow.leftovers_done) return;
  // Forwarded means gone from user space: what waits for a full target's
  // queue here (Upstream::pending) would be overtaken by what the program
  // sends straight on (measured: udp -> unix-dgram with the CPUs busy,
  // "296 297 298 299 278 ..."). flush_pending() moves the hold on.
  for (const Upstream& up : flow.upstreams)
    if (!up.pending.empty()) return;
  if (flow.forwarded != flow.forwarded_written) {
    if (auto st = maps_->set_forwarded(flow.client_key, hold_channel_key(), flow.forwarded); !st) {
      spdlog::warn("route {}: {}", spec_.route_id, st.error().describe());
      return;  // the flow stays on hold: user space carries it, in order
    }
    flow.forwarded_written = flow.forwarded;
  }
  if (maps_->held_passed(flow.client_key) == flow.forwarded) end_hold(flow);
}

// Passed up == forwarded, and the program sees it so: it sends every
// later datagram straight on and passes none up again, so the hold's
// entries can go (a program that still finds them redirects too). The
// program counts a datagram before it compares the two (relay.bpf.c,
// hold_verdict()), so none should be passed up after user space read them
// equal; should one still come, it is forwarded when it comes
// (on_held_datagram(), hold_ended_).
void DatagramRoute::end_hold(Flow& flow) {
  flow.held = false;
  update_forward_flow(flow);  // without RELAY_FLOW_HOLD
  forget_hold(flow);
  if (flow.client_key && !unix_listener()) hold_ended_[flow.client_key] = {flow.key, ticks_};
}

void DatagramRoute::forget_hold(Flow& flow) {
  if (flow.client_key) hold_ended_.erase(flow.client_key);
  if (!flow.client_key || !held_.erase(flow.client_key)) return;
  maps_->release_hold(flow.client_key);
  flow.held = false;
}

// Datagrams lingering on a steered flow socket (note_lingering()) are read
// once the flow has been quiet for a check period and the hold is over: no
// datagram is on its way through the program then, and they are the newest.
void DatagramRoute::linger_check() {
  if (linger_timer_) {
    uint64_t expirations;
    [[maybe_unused]] ssize_t r = read(linger_timer_.get(), &expirations, sizeof(expirations));
  }
  std::vector<std::string> still;
  for (const std::string& key : lingering_) {
    auto it = flows_.find(key);
    if (it == flows_.end()) continue;
    Flow& flow = *it->second;
    if (!datagrams_queued(flow.client_socket.get())) {
      flow.may_linger = false;
      continue;
    }
    uint64_t last = maps_->flow_last_ns(flow.client_key);
    if (flow.held || last != flow.linger_last_ns) {
      flow.linger_last_ns = last;
      still.push_back(key);
      continue;
    }
    read_lingering(flow, true);
  }
  lingering_ = std::move(still);
  if (lingering_.empty() && linger_timer_) {
    itimerspec off{};
    timerfd_settime(linger_timer_.get(), 0, &off, nullptr);
  }
}

// The lingering datagrams, the newest of their flow, go on once the flow
// is quiet (linger_check()), or when it closes with them still there
// (count_lost_at_close(): out of the map, nothing else would read them).
// Sent from user space they could overtake the flow's earlier datagrams,
// which the program queued toward the target and its psock worker sends
// when it runs: measured with the CPUs busy (FlowOrder, udp sources),
// "296 297 298 299 278 279 ...", the lingering ones first. So
// `through_kernel`, they go back through the verdict program, in line
// behind those (PassUpChannel::inject()).
void DatagramRoute::read_lingering(Flow& flow, bool through_kernel) {
  flow.may_linger = false;
  const bool inject = through_kernel && inject_for(flow);
  for (int round = 0; round < 64; ++round)
    if (read_batch(flow.client_socket.get(), buffer_.get(),
                   [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
                     if (!inject || !hold_channel_->inject(d, size)) send_to_upstream(flow, d, size);
                   }) < kBatch)
      break;
}

// The channel's way back in, pointed at this flow's targets.
bool DatagramRoute::inject_for(const Flow& flow) {
  if (!flow.kernel || !hold_channel_) return false;
  Status st = hold_channel_->enable_inject();
  if (st) st = maps_->set_flow(hold_channel_->inject_key(), forward_entry(flow));
  if (!st)
    spdlog::debug("route {}: {}; lingering datagrams go from user space", spec_.route_id,
                  st.error().describe());
  return st.ok();
}

}  // namespace sockrelay
