// A one-way route's life: its targets, the listener's one flow entry (kernel
// path) or its reads (user space), and target health. See one_way_route.h.
#include "sessions/one_way_route.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/clock.h"
#include "common/hash.h"
#include "common/io_errors.h"
#include "common/socket_cookie.h"
#include "endpoints/endpoint.h"
#include "relay_shared.h"
#include "sessions/datagram_batch.h"

namespace sockrelay {

namespace {

constexpr size_t kMaxPending = 1024;          // per target, user space
constexpr int kMaxRepliesReadPerTick = 4096;  // per target: a chatty target cannot hold the loop

// Errors after which a target socket cannot deliver any more (the far side
// is gone), as opposed to one datagram failing (EMSGSIZE, ENOBUFS).
bool target_gone(int err) {
  return err == ECONNREFUSED || err == ENOENT || err == ENOTCONN || err == EPIPE || err == ECONNRESET ||
         err == EHOSTUNREACH || err == ENETUNREACH;
}

}  // namespace

OneWayRoute::OneWayRoute(OneWayRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop)
    : spec_(std::move(spec)),
      listener_(std::move(listener)),
      maps_(maps),
      loop_(loop),
      targets_(spec_.to.size()),
      buffer_(new char[kBatchBufferSize]) {}

OneWayRoute::~OneWayRoute() { stop(); }

size_t OneWayRoute::targets_up() const {
  return static_cast<size_t>(
      std::count_if(targets_.begin(), targets_.end(), [](const Target& t) { return t.fd && t.health.up(); }));
}

Status OneWayRoute::start() {
  auto cookie = socket_cookie(listener_.get());
  if (!cookie) return cookie.error();
  listener_cookie_ = *cookie;
  // A target that cannot be opened now (its server not up yet) leaves the
  // rotation and is retried like any failed target: the route still starts.
  for (size_t t = 0; t < targets_.size(); ++t)
    if (auto st = open_target(t); !st) target_failed(t, st.error().describe());
  if (spec_.kernel) {
    if (auto st = write_flow(); !st) return st.error().wrap("listener " + spec_.from->name);
    if (auto st = steer_listener(); !st) return st.error().wrap("listener " + spec_.from->name);
    // What was queued before the listener entered the map waits for more
    // datagrams to push it through the program: sent on from here, once.
    on_listener_readable();
    return {};
  }
  if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st)
    return st;
  listener_watched_ = true;
  return {};
}

void OneWayRoute::stop() {
  unsteer_listener();  // first: the program must stop redirecting before its targets go
  if (listener_watched_) loop_.remove(listener_.get());
  listener_watched_ = false;
  for (size_t t = 0; t < targets_.size(); ++t) {
    if (!targets_[t].pending.empty()) flush_pending(t);  // what the target takes now; the rest is counted
    close_target(t);
  }
}

void OneWayRoute::tick() {
  check_targets();
  retry_targets();
}

Status OneWayRoute::open_target(size_t t) {
  Target& target = targets_[t];
  auto fd = open_datagram_upstream(*spec_.to[t]);
  if (!fd) return fd.error();
  auto cookie = socket_cookie(fd->get());
  if (!cookie) return cookie.error();
  if (spec_.kernel) {
    if (auto st = maps_->add_target(*cookie, fd->get()); !st) return st;
    target.in_map = true;
  }
  target.fd = std::move(*fd);
  target.cookie = *cookie;
  return {};
}

void OneWayRoute::close_target(size_t t) {
  Target& target = targets_[t];
  if (target.watched) loop_.remove(target.fd.get());
  if (target.in_map) maps_->remove_target(target.cookie);
  counters_.drop_target_full += target.pending.size();  // never sent: the target or the route went away
  target.pending.clear();
  target.watched = target.in_map = false;
  target.fd = Fd();
  target.cookie = 0;
}

// The listener's one flow entry: every target that is up, for the program
// to pick from. Written before the listener enters the map, and again
// whenever a target leaves or rejoins the rotation.
Status OneWayRoute::write_flow() {
  FlowEntry entry;
  entry.route_id = spec_.route_id;
  entry.flags = RELAY_FLOW_NO_BYTES | RELAY_FLOW_ONE_WAY;
  entry.balance = spec_.balance == Balance::Hash ? RELAY_BALANCE_HASH : RELAY_BALANCE_ROUND_ROBIN;
  for (size_t t = 0; t < targets_.size(); ++t) {
    if (!targets_[t].fd || !targets_[t].health.up()) continue;
    entry.targets[entry.n_targets] = targets_[t].cookie;
    entry.target_index[entry.n_targets] = static_cast<uint8_t>(t);
    ++entry.n_targets;
  }
  if (auto st = maps_->set_flow(listener_cookie_, entry); !st) return st;
  flow_written_ = true;
  return {};
}

Status OneWayRoute::steer_listener() {
  Status st;
  if (unix_listener()) {
    // The program sees each sender's cookie: this instance looks every
    // datagram up under the listener's own instead.
    MapWriter::PrivateProgram program;
    program.fixed_source = listener_cookie_;
    st = maps_->add_private_source(listener_cookie_, listener_.get(), program);
  } else {
    st = maps_->add_source(listener_cookie_, listener_.get());
  }
  if (st) listener_steered_ = true;
  return st;
}

void OneWayRoute::unsteer_listener() {
  if (listener_steered_) {
    if (unix_listener())
      maps_->remove_private_source(listener_cookie_);
    else
      maps_->remove_source(listener_cookie_);
  }
  if (flow_written_) maps_->remove_flow(listener_cookie_);
  listener_steered_ = flow_written_ = false;
}

void OneWayRoute::on_listener_readable() {
  // A few batches per wake-up, then back to the loop so one busy route
  // cannot starve the others.
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(listener_.get(), buffer_.get(),
                       [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size) {
                         forward(peer, len, d, size);
                       });
    if (n < kBatch) return;
  }
}

void OneWayRoute::forward(const sockaddr_storage& peer, socklen_t peer_len, const char* data, size_t len) {
  if (!source_allowed(peer)) {
    ++counters_.refused_policy;
    return;
  }
  auto t = pick_target(peer, peer_len);
  if (!t) {
    ++counters_.drop_all_targets_down;
    return;
  }
  send_or_queue(*t, data, len);
}

bool OneWayRoute::source_allowed(const sockaddr_storage& peer) const {
  if (spec_.allow_sources.empty() || peer.ss_family == AF_UNIX) return true;
  const auto* sa = reinterpret_cast<const sockaddr*>(&peer);
  return std::any_of(spec_.allow_sources.begin(), spec_.allow_sources.end(),
                     [&](const SourceNetwork& net) { return net.contains(sa); });
}

// Round-robin over the targets that are up, or by a hash of the sender's
// address (stable across restarts: common/hash.h).
std::optional<size_t> OneWayRoute::pick_target(const sockaddr_storage& peer, socklen_t peer_len) {
  size_t live[RELAY_MAX_TARGETS];
  size_t n = 0;
  for (size_t t = 0; t < targets_.size() && n < RELAY_MAX_TARGETS; ++t)
    if (targets_[t].fd && targets_[t].health.up()) live[n++] = t;
  if (n == 0) return std::nullopt;
  uint64_t pick = spec_.balance == Balance::Hash
                      ? stable_hash(std::string_view(reinterpret_cast<const char*>(&peer), peer_len))
                      : next_++;
  return live[pick % n];
}

// Sent now, or queued behind what waits for the target's queue to drain
// (a unix-dgram target takes net.unix.max_dgram_qlen datagrams at a time).
void OneWayRoute::send_or_queue(size_t t, const char* data, size_t len) {
  Target& target = targets_[t];
  if (target.pending.empty()) {
    if (send(target.fd.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) {
      ++counters_.user_packets;
      counters_.user_bytes += len;
      ++target.user_packets;
      target.user_bytes += len;
      return;
    }
    if (!would_block(errno)) {
      int err = errno;
      ++counters_.drop_send_error;
      if (target_gone(err)) target_failed(t, std::strerror(err));
      return;
    }
  }
  if (target.pending.size() >= kMaxPending) {
    ++counters_.drop_target_full;
    return;
  }
  target.pending.emplace_back(data, len);
  if (target.pending.size() == 1) watch_target(t);
}

void OneWayRoute::flush_pending(size_t t) {
  Target& target = targets_[t];
  while (!target.pending.empty()) {
    const std::string& d = target.pending.front();
    if (send(target.fd.get(), d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
      if (would_block(errno)) return;  // the next EPOLLOUT
      ++counters_.drop_send_error;
    } else {
      ++counters_.user_packets;
      counters_.user_bytes += d.size();
      ++target.user_packets;
      target.user_bytes += d.size();
    }
    target.pending.pop_front();
  }
  watch_target(t);
}

// EPOLLOUT only while something waits: a target is never watched for
// input (replies are read once per tick, check_targets()).
void OneWayRoute::watch_target(size_t t) {
  Target& target = targets_[t];
  bool want = !target.pending.empty();
  if (want == target.watched) return;
  if (!want) {
    loop_.remove(target.fd.get());
    target.watched = false;
    return;
  }
  target.watched = loop_.add(target.fd.get(), EPOLLOUT, [this, t](uint32_t) { flush_pending(t); }).ok();
}

// Once per tick: what each target sent back (read and counted: a one-way
// route has no one to give it to), and its error, which takes it out of
// the rotation (a udp target's ICMP port unreachable, a unix target gone).
void OneWayRoute::check_targets() {
  for (size_t t = 0; t < targets_.size(); ++t) {
    if (!targets_[t].fd) continue;
    int fd = targets_[t].fd.get();
    char byte;
    int err = 0;
    for (int i = 0; i < kMaxRepliesReadPerTick; ++i) {
      if (recv(fd, &byte, sizeof(byte), MSG_DONTWAIT | MSG_TRUNC) >= 0) {
        ++counters_.target_replies;
        continue;
      }
      if (!would_block(errno)) err = errno;  // recv() reports and clears the socket's error
      break;
    }
    if (err) target_failed(t, std::strerror(err));
  }
}

void OneWayRoute::target_failed(size_t t, const std::string& why) {
  close_target(t);
  TargetHealth& health = targets_[t].health;
  if (!health.failed(monotonic_ns())) return;  // already out: counted
  spdlog::warn("route {}: target {} failed ({}); out of the rotation, retry in {} ms", spec_.route_id,
               spec_.to[t]->name, why, health.backoff_ms());
  if (flow_written_)
    if (auto st = write_flow(); !st) spdlog::warn("route {}: {}", spec_.route_id, st.error().describe());
}

void OneWayRoute::retry_targets() {
  uint64_t now = monotonic_ns();
  for (size_t t = 0; t < targets_.size(); ++t) {
    TargetHealth& health = targets_[t].health;
    if (!health.retry_due(now)) continue;
    health.recovered();
    if (auto st = open_target(t); !st) {
      target_failed(t, st.error().describe());
      continue;
    }
    spdlog::info("route {}: target {} is back in the rotation", spec_.route_id, spec_.to[t]->name);
    if (flow_written_)
      if (auto st = write_flow(); !st) spdlog::warn("route {}: {}", spec_.route_id, st.error().describe());
  }
}

}  // namespace sockrelay
