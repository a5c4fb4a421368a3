#include "sessions/stream_route.h"

#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/clock.h"
#include "common/hash.h"
#include "common/io_errors.h"
#include "common/socket_cookie.h"
#include "endpoints/endpoint.h"
#include "sessions/stop_drain.h"
#include "sessions/stream_session.h"

namespace sockrelay {

void StreamRoute::Side::set_kind(EndpointKind kind) {
  tcp = kind == EndpointKind::Tcp;
  seqpacket = kind_socktype(kind) == SOCK_SEQPACKET;
  messages = seqpacket || kind_family(kind) == AF_VSOCK;
}

StreamRoute::StreamRoute(StreamRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop,
                         SessionBudget& budget)
    : spec_(std::move(spec)),
      listener_(std::move(listener)),
      maps_(maps),
      loop_(loop),
      budget_(budget),
      admission_(spec_.route_id, spec_.policy, budget, counters_.refused_policy,
                 counters_.refused_max_sessions),
      gate_(loop),
      health_(spec_.to.size()),
      target_sessions_(spec_.to.size(), 0) {}

StreamRoute::~StreamRoute() { stop(); }

std::vector<TargetReport> StreamRoute::targets() const {
  std::vector<TargetReport> out;
  uint64_t now = monotonic_ns();
  for (size_t t = 0; t < spec_.to.size(); ++t) {
    TargetReport r;
    r.name = spec_.to[t]->name;
    r.up = health_[t].up();
    r.failures = health_[t].failures();
    r.sessions = target_sessions_[t];
    r.retry_in_ms = health_[t].retry_in_ms(now);
    out.push_back(r);
  }
  return out;
}

Status StreamRoute::start() {
  timer_ = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_) return errno_error("timerfd_create");
  if (auto st = loop_.add(timer_.get(), EPOLLIN, [this](uint32_t) { on_timer(); }); !st) return st;
  if (auto st = gate_.start(listener_.get(), [this](uint32_t) { on_listener_readable(); }); !st) {
    loop_.remove(timer_.get());
    return st;
  }
  started_ = true;
  return {};
}

void StreamRoute::on_listener_readable() {
  admission_.serve({listener_.get(), gate_, fd_limit_log_, counters_.fd_limit, spec_.wait_when_full},
                   [this](Admission::Peer client) { open_session(std::move(client)); });
}

void StreamRoute::session_setup_failed(Session& s, const std::string& what, int err) {
  if (out_of_descriptors(err)) {
    fd_limit_log_.hit(spec_.route_id, counters_.fd_limit, what, err);
  } else {
    spdlog::warn("route {}: {}: {}: {}; closing the session", spec_.route_id, s.peer, what,
                 std::strerror(err));
    ++counters_.sessions_failed;
  }
  close_session(s.id, nullptr);
}

void StreamRoute::stop() {
  if (!started_) return;
  deliver_before_stop();
  while (!sessions_.empty()) close_session(sessions_.begin()->first, nullptr);
  gate_.stop();
  loop_.remove(timer_.get());
  started_ = false;
}

// An admitted client: its session starts with the upstream connection.
void StreamRoute::open_session(Admission::Peer client) {
  auto s = std::make_unique<Session>();
  s->id = next_id_++;
  s->peer = std::move(client.text);
  s->client_hash = client_hash(client.fd.get(), client.addr);
  s->started_ns = s->last_user_ns = monotonic_ns();
  s->client.name = "client";
  s->upstream.name = "upstream";
  s->client.fd = std::move(client.fd);
  s->client.set_kind(spec_.from->kind);
  Session* raw = s.get();
  sessions_[raw->id] = std::move(s);
  connect_upstream(*raw);
}

// balance = "hash": one client's connections go to one target. A client is
// its address without the port (tcp), its CID (vsock), its process (unix,
// SO_PEERCRED pid).
uint32_t StreamRoute::client_hash(int fd, const sockaddr_storage& peer) const {
  std::string identity;
  if (peer.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(peer);
    identity.assign(reinterpret_cast<const char*>(&in.sin_addr), sizeof(in.sin_addr));
  } else if (peer.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(peer);
    identity.assign(reinterpret_cast<const char*>(&in6.sin6_addr), sizeof(in6.sin6_addr));
  } else if (peer.ss_family == AF_VSOCK) {
    identity = std::to_string(reinterpret_cast<const sockaddr_vm&>(peer).svm_cid);
  } else {
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) identity = std::to_string(cred.pid);
  }
  return stable_hash(identity);
}

// The next target in the rotation that is up (or due for a retry), or -1.
int StreamRoute::pick_target(const Session& s) {
  const size_t n = spec_.to.size();
  size_t start = spec_.balance == Balance::Hash ? s.client_hash % n : next_target_++ % n;
  uint64_t now = monotonic_ns();
  for (size_t k = 0; k < n; ++k) {
    size_t t = (start + k) % n;
    if (health_[t].usable(now)) return static_cast<int>(t);
  }
  return -1;
}

void StreamRoute::target_failed(size_t t, const std::string& why) {
  // Logged when it leaves the rotation, not for every session that finds
  // it still down.
  if (health_[t].failed(monotonic_ns()) && spec_.to.size() > 1)
    spdlog::warn("route {}: target {} failed ({}); out of the rotation, retry in {} ms", spec_.route_id,
                 spec_.to[t]->name, why, health_[t].backoff_ms());
}

// Starts the session's upstream connection, on the next target that is up;
// closes the client (counted) when there is none. False when it closed.
bool StreamRoute::connect_upstream(Session& s) {
  for (size_t tries = 0; tries < spec_.to.size(); ++tries) {
    int t = pick_target(s);
    if (t < 0) break;
    const Endpoint& target = *spec_.to[static_cast<size_t>(t)];
    auto upstream = open_stream_upstream(target);
    if (!upstream && out_of_descriptors(upstream.error().code)) {
      // The relay's limit, not the target's failure: it stays in the rotation.
      session_setup_failed(s, "upstream socket", upstream.error().code);
      return false;
    }
    if (!upstream) {
      target_failed(static_cast<size_t>(t), upstream.error().describe());
      spdlog::warn("route {}: {}: {}", spec_.route_id, s.peer, upstream.error().describe());
      continue;
    }
    s.target = static_cast<size_t>(t);
    s.upstream.fd = std::move(*upstream);
    s.upstream.set_kind(target.kind);
    // Writable = connected (or failed: SO_ERROR tells).
    return watch(s, s.upstream, EPOLLOUT);
  }
  ++counters_.connect_failed;
  spdlog::warn("route {}: {}: no target can be reached; closing the client (counted)", spec_.route_id,
               s.peer);
  close_session(s.id, nullptr);
  return false;
}

// Puts one of the session's sockets on the loop; its events go to
// on_connected (the upstream, until connected) or on_side_event. False when
// the loop refused it and the session closed.
bool StreamRoute::watch(Session& s, Side& side, uint32_t events) {
  Session* raw = &s;
  Side* watched = &side;
  auto handler = [this, raw, watched](uint32_t ev) {
    if (raw->connecting)
      on_connected(*raw);
    else
      on_side_event(*raw, *watched, ev);
  };
  if (auto st = loop_.add(side.fd.get(), events, handler); !st) {
    spdlog::warn("route {}: {}: {}; closing the session", spec_.route_id, s.peer, st.error().describe());
    ++counters_.sessions_failed;
    close_session(s.id, nullptr);
    return false;
  }
  side.registered = true;
  side.events = events;
  return true;
}

// The upstream connect() finished, or failed (then the next target is tried).
void StreamRoute::on_connected(Session& s) {
  if (int err = socket_error(s.upstream.fd.get()); err != 0) return on_connect_error(s, err);
  s.connecting = false;
  ++counters_.sessions_created;
  health_[s.target].recovered();  // it answered
  ++target_sessions_[s.target];
  for (Side* side : {&s.client, &s.upstream}) {
    auto cookie = socket_cookie(side->fd.get());
    side->cookie = cookie ? *cookie : 0;
    if (side->tcp) side->baseline = tcp_bytes_written(side->fd.get());
  }
  if (!start_data_path(s) || !watch(s, s.client, 0)) return;
  spdlog::debug("route {}: session {} from {} ({} path)", spec_.route_id, s.id, s.peer,
                s.kernel ? "kernel" : "user-space");
  uint64_t id = s.id;
  if (!s.kernel) {
    // Data that arrived while we connected.
    user_copy(s, s.client, s.upstream);
    if (!sessions_.count(id)) return;
    user_copy(s, s.upstream, s.client);
    if (!sessions_.count(id)) return;
  }
  if (update_events(s)) check_half_close(s);
}

void StreamRoute::on_connect_error(Session& s, int err) {
  spdlog::warn("route {}: {}: connect to {}: {}", spec_.route_id, s.peer, spec_.to[s.target]->address.text,
               std::strerror(err));
  target_failed(s.target, std::strerror(err));
  loop_.remove(s.upstream.fd.get());
  s.upstream.registered = false;
  s.upstream.fd.reset();
  connect_upstream(s);  // the next target, if any is up
}

// The kernel path when the route asks for it and the sockets allow it,
// else the user path. False when it could not be set up (session closed).
bool StreamRoute::start_data_path(Session& s) {
  bool kernel = kernel_path_possible(s);
  if (spec_.kernel && !kernel) {
    ++counters_.user_fallbacks;
    spdlog::debug("route {}: session {}: a side is already half-closed: user-space path", spec_.route_id,
                  s.id);
  }
  if (kernel) {
    if (auto st = wire_kernel(s); !st) {
      spdlog::warn("route {}: {}: kernel path not set up ({}); closing the session", spec_.route_id, s.peer,
                   st.error().describe());
      ++counters_.sessions_failed;
      close_session(s.id, nullptr);
      return false;
    }
    return true;
  }
  return true;  // the user path takes its pipes when bytes come (take_pipe())
}

// What epoll should report for `side`. Marks `side`'s peer EOF when both
// ends are gone.
uint32_t StreamRoute::wanted_events(Session& s, Side& side) {
  Side& other = s.other(side);
  if (s.kernel) {
    // No EPOLLIN: a user-space read could race the verdict program for
    // the same bytes. EOF and errors are all we need.
    return side.eof ? 0u : static_cast<uint32_t>(EPOLLRDHUP);
  }
  uint32_t want = 0;
  bool room = s.copies_messages() ? other.messages_q.empty() : other.pipe_room();
  if (!side.eof && room) want |= EPOLLIN | EPOLLRDHUP;
  if (side.user_pending()) want |= EPOLLOUT;
  // A hung-up peer is no longer watched (below), yet may hold unread
  // bytes: this side's writability drives the reads from it until EOF.
  if (other.hup && !other.eof) {
    if (side.hup)
      other.eof = true;  // both ends gone: its bytes have nowhere to go
    else
      want |= EPOLLOUT;
  }
  return want;
}

// False when the loop refused a change and the session closed.
bool StreamRoute::update_events(Session& s) {
  for (Side* side : {&s.client, &s.upstream}) {
    uint32_t want = wanted_events(s, *side);
    if (side->hup) {
      // HUP is level-triggered and cannot be masked: stop watching.
      if (side->registered) loop_.remove(side->fd.get());
      side->registered = false;
      continue;
    }
    if (!side->registered || want == side->events) continue;
    if (auto st = loop_.modify(side->fd.get(), want); !st) {
      spdlog::warn("route {}: session {}: {}; closing it", spec_.route_id, s.id, st.error().describe());
      ++counters_.sessions_failed;
      close_session(s.id, nullptr);
      return false;
    }
    side->events = want;
  }
  return true;
}

void StreamRoute::on_side_event(Session& s, Side& side, uint32_t events) {
  uint64_t id = s.id;
  // (tcp_read_skb() hands a FIN to the verdict program as an empty skb;
  // redirected, the target's backlog would report EPIPE here: the program
  // drops empty skbs of RELAY_FLOW_STREAM flows.)
  if (events & EPOLLERR) {
    if (int err = socket_error(side.fd.get()); err != 0) return fail_session(id, side, err);
  }
  Side& other = s.other(side);
  if (s.kernel) {
    if (events & (EPOLLRDHUP | EPOLLHUP)) side.eof = true;
  } else {
    if (events & EPOLLOUT) {
      user_copy(s, other, side);
      if (!sessions_.count(id)) return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
      user_copy(s, side, other, true);
      if (!sessions_.count(id)) return;
    }
  }
  if (events & EPOLLHUP) {
    // Both directions of this socket are shut: its peer closed, or both
    // FINs have been exchanged. Nothing more can be written to it, but its
    // receive queue may still hold bytes: on the user path EOF is only
    // what a read returns (update_events keeps the reads going); on the
    // kernel path the verdict program takes them and the half-close rule
    // counts them.
    side.hup = true;
    if (s.kernel) side.eof = true;
    // Bytes still waiting for it cannot be delivered, and a hung-up socket
    // is no longer watched for EPOLLOUT: write now, so the error (EPIPE,
    // ECONNRESET) closes the session instead of leaving it waiting.
    if (!s.kernel && side.user_pending()) {
      user_copy(s, other, side);
      if (!sessions_.count(id)) return;
    }
  }
  if (update_events(s)) check_half_close(s);
}

// Before the sockets close: bytes already taken in are delivered, for up
// to kStopDrain. Kernel sessions: the sources leave the map (nothing new is
// steered) and the psock backlogs empty into their sockets; what is still
// unsteered in a receive queue is not read (the verdict program may have
// been running on it: reading it could leave a gap), so those bytes are
// cut off, not corrupted. User sessions: what each source holds is read
// once more and the pipes are written out. close() then sends each FIN
// after the bytes (tcp sends its queue first).
void StreamRoute::deliver_before_stop() {
  std::vector<uint64_t> ids;
  for (auto& [id, s] : sessions_) {
    if (s->kernel) stop_steering(*s);
    if (!s->connecting && !s->kernel) ids.push_back(id);
  }
  for (uint64_t id : ids) flush_before_stop(id);
  drain_before_stop(
      [this] {
        std::vector<std::pair<int, uint64_t>> waiting;
        for (auto& [id, s] : sessions_) {
          if (s->connecting) continue;
          for (Side* from : {&s->client, &s->upstream}) {
            Side& to = s->other(*from);
            if (to.shut_wr || to.hup) continue;
            // A psock backlog says nothing through an fd: -1, looked at again.
            if (s->kernel && s->attached && backlog(*from, to) > 0) waiting.emplace_back(-1, id);
            if (!s->kernel && to.user_pending()) waiting.emplace_back(to.fd.get(), id);
          }
        }
        return waiting;
      },
      [this](uint64_t id) { flush_before_stop(id); });
}

// User path, stopping: both directions copied as far as they go now.
void StreamRoute::flush_before_stop(uint64_t id) {
  for (bool toward_upstream : {true, false}) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    Session& s = *it->second;
    Side& from = toward_upstream ? s.client : s.upstream;
    Side& to = s.other(from);
    if (!to.shut_wr && !to.hup) user_copy(s, from, to);
  }
}

void StreamRoute::fail_session(uint64_t id, Side& failed, int err) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  Side& other = s.other(failed);
  ++counters_.sessions_failed;
  spdlog::debug("route {}: session {} from {}: {} failed: {}; closing the {}", spec_.route_id, id, s.peer,
                failed.name, std::strerror(err), other.name);
  if (other.tcp && (err == ECONNRESET || err == EPIPE)) {
    // Pass the reset on rather than a FIN the far side would take for a
    // complete stream: close() with a zero linger sends RST.
    linger lg{1, 0};
    if (setsockopt(other.fd.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) != 0)
      spdlog::debug("route {}: session {}: SO_LINGER: {}; the {} gets a FIN", spec_.route_id, id,
                    std::strerror(errno), other.name);
  }
  close_session(id, nullptr);
}

void StreamRoute::close_session(uint64_t id, const char* why) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (why) spdlog::debug("route {}: session {} closed: {}", spec_.route_id, id, why);
  if (s.kernel) unwire_kernel(s);
  for (Side* side : {&s.client, &s.upstream})
    if (side->registered) loop_.remove(side->fd.get());
  sessions_.erase(it);
  budget_.give_back();
  gate_.resume();  // a session and its descriptors are free again
}

uint64_t StreamRoute::last_activity_ns(const Session& s) const {
  uint64_t last = s.last_user_ns;
  if (s.kernel) {
    last = std::max(last, maps_->flow_last_ns(s.client.cookie));
    last = std::max(last, maps_->flow_last_ns(s.upstream.cookie));
  }
  return last;
}

void StreamRoute::expire_idle() {
  uint64_t now = monotonic_ns();
  uint64_t idle = static_cast<uint64_t>(std::chrono::nanoseconds(spec_.idle_timeout).count());
  uint64_t connect_limit = static_cast<uint64_t>(std::chrono::nanoseconds(spec_.connect_timeout).count());
  std::vector<uint64_t> expired, timed_out;
  for (const auto& [id, s] : sessions_) {
    if (s->connecting) {
      if (now - s->started_ns > connect_limit) timed_out.push_back(id);
    } else if (now - std::min(now, last_activity_ns(*s)) > idle) {
      expired.push_back(id);
    }
  }
  for (uint64_t id : timed_out) {
    ++counters_.connect_failed;
    size_t t = sessions_.at(id)->target;
    spdlog::warn("route {}: session {}: connect to {} timed out; closing the client (counted)",
                 spec_.route_id, id, spec_.to[t]->address.text);
    target_failed(t, "connect timed out");
    close_session(id, nullptr);
  }
  for (uint64_t id : expired) {
    ++counters_.sessions_expired;
    close_session(id, "idle");
  }
}

}  // namespace sockrelay
