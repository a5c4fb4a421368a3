#include "sessions/stream_route.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "common/socket_cookie.h"
#include "config/address.h"
#include "endpoints/endpoint.h"
#include "relay_shared.h"

namespace sockrelay {

namespace {

constexpr auto kHalfCloseCheck = std::chrono::milliseconds(5);
// Stop (SIGTERM, or the route removed by a reload): how long bytes already
// taken in may still be delivered before the sockets close.
constexpr auto kStopDrain = std::chrono::seconds(2);
// User path: bytes in flight per direction. Not more: every byte in the pipe
// pins the page the sender's copy filled, and the sink's copy out is then
// colder. 1 MiB cost the two ends ~0.13 CPU-s/GiB more than 256 KiB on one
// tcp stream (perf, tests/bench/README.md); 64 KiB cost the relay 0.1 more
// in splice() calls.
constexpr size_t kPipeSize = 256 * 1024;
constexpr size_t kMessageBuffer = 256 * 1024;  // user path: largest seqpacket message kept whole
constexpr size_t kDrainChunk = 64 * 1024;

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

int ioctl_int(int fd, unsigned long request) {
  int value = 0;
  if (ioctl(fd, request, &value) != 0) return -1;
  return value;
}

// Bytes ever handed to a TCP socket's send path, plus `baseline` (the SYN
// that tcpi_bytes_acked counts). tcpi_bytes_acked is read first: an ACK
// arriving between the two reads moves bytes from outq to acked, so the sum
// can only come out low, never high.
uint64_t tcp_bytes_written(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return 0;
  int outq = ioctl_int(fd, SIOCOUTQ);
  return info.tcpi_bytes_acked + static_cast<uint64_t>(outq < 0 ? 0 : outq);
}

bool tcp_established(int fd) {
  constexpr uint8_t kEstablished = 1;  // TCP_ESTABLISHED in the kernel's tcp_states.h
  tcp_info info{};
  socklen_t len = sizeof(info);
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && info.tcpi_state == kEstablished;
}

uint64_t tcp_bytes_received(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return 0;
  return info.tcpi_bytes_received;
}

}  // namespace

struct StreamRoute::Side {
  const char* name = "";
  Fd fd;
  uint64_t cookie = 0;
  bool tcp = false;
  // Copied with recv()/send(), one message or chunk at a time, instead of
  // spliced: seqpacket (keeps message boundaries) and vsock (a round trip
  // through splice() into a vsock socket took ~13 ms in the guest, against
  // 1.5 ms for socat's copies: measured by vm-tests bench-vsock).
  bool messages = false;
  bool seqpacket = false;  // each recv() is one message: a short one says nothing about the queue

  // Kernel path bookkeeping, for teardown in reverse.
  bool target_added = false, flow_set = false, source_added = false;

  bool eof = false;       // no more bytes will be read from it
  bool hup = false;       // its peer is gone: nothing more can be written to it
  bool shut_wr = false;   // FIN propagated to it (or nothing left to propagate)
  uint64_t baseline = 0;  // tcp: tcp_bytes_written() before anything was written

  // User path: data read from the other side, not yet written here.
  std::vector<std::string> messages_q;  // seqpacket messages, one entry each
  Fd pipe_r, pipe_w;                    // byte streams: splice() through here
  size_t in_pipe = 0;
  size_t pipe_capacity = 0;  // bytes the pipe takes (F_GETPIPE_SZ)
  // The pipe has no free slot although in_pipe < pipe_capacity (a slot
  // holds one piece of an skb, not always a full page): reading waits until
  // a splice out frees some, instead of polling a readable source in vain.
  bool pipe_full = false;
  bool pipe_room() const { return in_pipe < pipe_capacity && !pipe_full; }

  bool warned_mismatch = false;  // kernel path: the byte counts disagreed (logged once)
  uint64_t user_in = 0;          // bytes user space read from it
  uint64_t user_out = 0;         // bytes user space wrote to it

  bool registered = false;
  uint32_t events = 0;
};

struct StreamRoute::Session {
  uint64_t id = 0;
  size_t target = 0;  // index into spec_.to
  uint32_t client_hash = 0;
  Side client, upstream;
  bool connecting = true;
  bool kernel = false;    // wired into the maps
  bool attached = false;  // sources added: the verdict program carries it
  uint64_t started_ns = 0;
  uint64_t last_user_ns = 0;
  std::string peer;

  Side& other(Side& s) { return &s == &client ? upstream : client; }
  bool done() const { return client.shut_wr && upstream.shut_wr; }
};

StreamRoute::StreamRoute(StreamRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop,
                         SessionBudget& budget)
    : spec_(std::move(spec)),
      listener_(std::move(listener)),
      maps_(maps),
      loop_(loop),
      budget_(budget),
      health_(spec_.to.size()) {}

std::vector<TargetReport> StreamRoute::targets() const {
  std::vector<TargetReport> out;
  uint64_t now = now_ns();
  for (size_t t = 0; t < spec_.to.size(); ++t) {
    TargetReport r;
    r.name = spec_.to[t]->name;
    r.up = !health_[t].down;
    r.failures = health_[t].failures;
    r.sessions = health_[t].sessions;
    if (health_[t].down && health_[t].retry_at_ns > now)
      r.retry_in_ms = static_cast<int64_t>((health_[t].retry_at_ns - now) / 1'000'000);
    out.push_back(r);
  }
  return out;
}

StreamRoute::~StreamRoute() { stop(); }

Status StreamRoute::start() {
  timer_ = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_) return errno_error("timerfd_create");
  if (auto st = loop_.add(timer_.get(), EPOLLIN, [this](uint32_t) { on_timer(); }); !st) return st;
  if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st)
    return st;
  started_ = true;
  return {};
}

void StreamRoute::stop() {
  if (!started_) return;
  deliver_before_stop();
  while (!sessions_.empty()) close_session(sessions_.begin()->first, nullptr);
  loop_.remove(listener_.get());
  loop_.remove(timer_.get());
  started_ = false;
}

void StreamRoute::on_listener_readable() {
  // A bounded number per wake-up so one busy listener cannot starve others.
  for (int round = 0; round < 64; ++round) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    Fd client(accept4(listener_.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len,
                      SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!client) {
      if (!would_block(errno) && errno != ECONNABORTED)
        spdlog::warn("route {}: accept: {}", spec_.route_id, std::strerror(errno));
      return;
    }
    std::string peer_text = peer.ss_family == AF_UNIX
                                ? "unix client"
                                : format_address(reinterpret_cast<sockaddr*>(&peer), peer_len);
    if (std::string why = spec_.policy.refusal(client.get(), peer); !why.empty()) {
      if (counters_.refused_policy++ % 1000 == 0)
        spdlog::warn("route {}: refused {}: {} (counted)", spec_.route_id, peer_text, why);
      continue;
    }
    if (!budget_.try_take()) {
      // Closed at once: the client sees EOF (tcp: RST if it already sent).
      if (counters_.refused_max_sessions++ % 1000 == 0)
        spdlog::warn("route {}: max-sessions ({}) reached, refusing {} (counted)", spec_.route_id,
                     budget_.max(), peer_text);
      continue;
    }
    auto s = std::make_unique<Session>();
    s->id = next_id_++;
    s->peer = peer_text;
    s->client_hash = client_hash(client.get(), peer);
    s->started_ns = s->last_user_ns = now_ns();
    s->client.name = "client";
    s->upstream.name = "upstream";
    s->client.fd = std::move(client);
    s->client.tcp = spec_.from->kind == EndpointKind::Tcp;
    s->client.seqpacket = kind_socktype(spec_.from->kind) == SOCK_SEQPACKET;
    s->client.messages = s->client.seqpacket || kind_family(spec_.from->kind) == AF_VSOCK;
    Session* raw = s.get();
    sessions_[raw->id] = std::move(s);
    connect_upstream(*raw);
  }
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
  uint32_t h = 2166136261u;  // FNV-1a
  for (unsigned char c : identity) h = (h ^ c) * 16777619u;
  return h;
}

// The next target in the rotation that is up (or due for a retry), or -1.
int StreamRoute::pick_target(const Session& s) {
  const size_t n = spec_.to.size();
  size_t start = spec_.balance == Balance::Hash ? s.client_hash % n : next_target_++ % n;
  uint64_t now = now_ns();
  for (size_t k = 0; k < n; ++k) {
    size_t t = (start + k) % n;
    if (!health_[t].down || now >= health_[t].retry_at_ns) return static_cast<int>(t);
  }
  return -1;
}

void StreamRoute::target_failed(size_t t, const std::string& why) {
  TargetHealth& h = health_[t];
  ++h.failures;
  uint64_t now = now_ns();
  // Back-off doubles from 500 ms to 30 s; a target that was up for longer
  // than that starts afresh.
  bool recent = h.down || now - h.failed_at_ns < 30'000'000'000ull;
  h.backoff_ms = recent ? std::min<uint64_t>(h.backoff_ms * 2, 30'000) : 500;
  h.down = true;
  h.failed_at_ns = now;
  h.retry_at_ns = now + h.backoff_ms * 1'000'000;
  if (spec_.to.size() > 1)
    spdlog::warn("route {}: target {} failed ({}); out of the rotation, retry in {} ms", spec_.route_id,
                 spec_.to[t]->name, why, h.backoff_ms);
}

// Starts the session's upstream connection, on the next target that is up;
// closes the client (counted) when there is none. False when it closed.
bool StreamRoute::connect_upstream(Session& s) {
  for (size_t tries = 0; tries < spec_.to.size(); ++tries) {
    int t = pick_target(s);
    if (t < 0) break;
    const Endpoint& target = *spec_.to[static_cast<size_t>(t)];
    auto upstream = open_stream_upstream(target);
    if (!upstream) {
      target_failed(static_cast<size_t>(t), upstream.error().describe());
      spdlog::warn("route {}: {}: {}", spec_.route_id, s.peer, upstream.error().describe());
      continue;
    }
    s.target = static_cast<size_t>(t);
    s.upstream.fd = std::move(*upstream);
    s.upstream.tcp = target.kind == EndpointKind::Tcp;
    s.upstream.seqpacket = kind_socktype(target.kind) == SOCK_SEQPACKET;
    s.upstream.messages = s.upstream.seqpacket || kind_family(target.kind) == AF_VSOCK;
    // Writable = connected (or failed: SO_ERROR tells).
    s.upstream.registered = true;
    s.upstream.events = EPOLLOUT;
    Session* raw = &s;
    (void)loop_.add(s.upstream.fd.get(), EPOLLOUT, [this, raw](uint32_t events) {
      if (raw->connecting)
        on_connected(*raw);
      else
        on_side_event(*raw, raw->upstream, events);
    });
    return true;
  }
  ++counters_.connect_failed;
  spdlog::warn("route {}: {}: no target can be reached; closing the client (counted)", spec_.route_id,
               s.peer);
  close_session(s.id, nullptr);
  return false;
}

void StreamRoute::on_connected(Session& s) {
  if (int err = socket_error(s.upstream.fd.get()); err != 0) {
    const Endpoint& target = *spec_.to[s.target];
    spdlog::warn("route {}: {}: connect to {}: {}", spec_.route_id, s.peer, target.address.text,
                 std::strerror(err));
    target_failed(s.target, std::strerror(err));
    loop_.remove(s.upstream.fd.get());
    s.upstream.registered = false;
    s.upstream.fd.reset();
    connect_upstream(s);  // the next target, if any is up
    return;
  }
  s.connecting = false;
  ++counters_.sessions_created;
  health_[s.target].down = false;  // it answered
  health_[s.target].backoff_ms = 500;
  ++health_[s.target].sessions;
  for (Side* side : {&s.client, &s.upstream}) {
    auto cookie = socket_cookie(side->fd.get());
    side->cookie = cookie ? *cookie : 0;
    if (side->tcp) side->baseline = tcp_bytes_written(side->fd.get());
  }
  // A sockmap takes established tcp sockets only: a client that sent its
  // bytes and FIN before the session was wired (or a server that already
  // closed) is carried by user space, from the first byte.
  bool kernel = spec_.kernel && tcp_established(s.client.fd.get()) && tcp_established(s.upstream.fd.get());
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
      return;
    }
  } else {
    for (Side* side : {&s.client, &s.upstream}) {
      if (s.client.messages || s.upstream.messages) continue;  // message copies: no pipe
      if (auto st = open_pipe(*side); !st) {
        spdlog::warn("route {}: {}: {}; closing the session", spec_.route_id, s.peer, st.error().describe());
        ++counters_.sessions_failed;
        close_session(s.id, nullptr);
        return;
      }
    }
  }
  Session* raw = &s;
  raw->client.registered = true;
  raw->client.events = 0;
  (void)loop_.add(raw->client.fd.get(), 0,
                  [this, raw](uint32_t events) { on_side_event(*raw, raw->client, events); });
  spdlog::debug("route {}: session {} from {} ({} path)", spec_.route_id, s.id, s.peer,
                kernel ? "kernel" : "user-space");
  uint64_t id = s.id;
  if (!kernel) {
    // Data that arrived while we connected.
    user_copy(s, s.client, s.upstream);
    if (!sessions_.count(id)) return;
    user_copy(s, s.upstream, s.client);
    if (!sessions_.count(id)) return;
  }
  update_events(s);
  check_half_close(s);
}

// The pipe that carries bytes toward `to` on the user path.
Status StreamRoute::open_pipe(Side& to) {
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return errno_error("pipe2");
  to.pipe_r = Fd(p[0]);
  to.pipe_w = Fd(p[1]);
  fcntl(to.pipe_w.get(), F_SETPIPE_SZ, static_cast<int>(kPipeSize));  // best effort
  int capacity = fcntl(to.pipe_w.get(), F_GETPIPE_SZ);
  if (capacity <= 0) return errno_error("F_GETPIPE_SZ");
  to.pipe_capacity = static_cast<size_t>(capacity);
  return {};
}

Status StreamRoute::wire_kernel(Session& s) {
  const uint32_t route = spec_.route_id;
  if (!s.client.tcp || !s.upstream.tcp)
    return plain_error("the stream kernel path carries tcp <-> tcp only (choose_datapath)");
  s.kernel = true;
  // The verdict program looks a flow up by the receiving socket's cookie
  // (tcp), steers its bytes to the partner with an egress redirect.
  if (auto st = maps_->set_flow(s.client.cookie, FlowEntry{s.upstream.cookie, route, RELAY_FLOW_STREAM}); !st)
    return st;
  s.client.flow_set = true;
  if (auto st = maps_->set_flow(s.upstream.cookie, FlowEntry{s.client.cookie, route, RELAY_FLOW_STREAM}); !st)
    return st;
  s.upstream.flow_set = true;
  for (Side* side : {&s.client, &s.upstream}) {
    if (auto st = maps_->add_target(side->cookie, side->fd.get()); !st) return st;
    side->target_added = true;
  }
  for (Side* side : {&s.client, &s.upstream}) {
    if (auto st = maps_->add_source(side->cookie, side->fd.get()); !st) return st;
    side->source_added = true;
  }
  s.attached = true;
  // Bytes that arrived before a socket entered the map wait in its receive
  // queue until the next segment wakes the verdict program, which for a
  // client waiting for an answer is never. Setting SO_RCVLOWAT runs
  // tcp_data_ready() under the socket lock: the verdict program takes the
  // whole queue, oldest first, so nothing is stranded and no user-space
  // read can race it (measured: StreamKernelFacts.RcvlowatHandsQueuedBytesToTheVerdict).
  for (Side* side : {&s.client, &s.upstream}) {
    int one = 1;
    if (setsockopt(side->fd.get(), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) != 0)
      return errno_error(std::string("SO_RCVLOWAT on the ") + side->name + " socket");
  }
  spdlog::debug("route {}: session {}: in the maps", spec_.route_id, s.id);
  return {};
}

void StreamRoute::update_events(Session& s) {
  for (Side* side : {&s.client, &s.upstream}) {
    Side& other = s.other(*side);
    uint32_t want = 0;
    if (!s.kernel) {
      bool room = side->messages || other.messages ? other.messages_q.empty() : other.pipe_room();
      if (!side->eof && room) want |= EPOLLIN | EPOLLRDHUP;
    } else if (!side->eof) {
      // No EPOLLIN: a user-space read could race the verdict program for
      // the same bytes. EOF and errors are all we need.
      want |= EPOLLRDHUP;
    }
    if (!s.kernel) {
      if (side->in_pipe > 0 || !side->messages_q.empty()) want |= EPOLLOUT;
      // A hung-up peer is no longer watched (below), yet may hold unread
      // bytes: this side's writability drives the reads from it until EOF.
      if (other.hup && !other.eof) {
        if (side->hup)
          other.eof = true;  // both ends gone: its bytes have nowhere to go
        else
          want |= EPOLLOUT;
      }
    }
    if (side->hup) {
      // HUP is level-triggered and cannot be masked: stop watching.
      if (side->registered) loop_.remove(side->fd.get());
      side->registered = false;
      continue;
    }
    if (side->registered && want != side->events) {
      (void)loop_.modify(side->fd.get(), want);
      side->events = want;
    }
  }
}

void StreamRoute::on_side_event(Session& s, Side& side, uint32_t events) {
  uint64_t id = s.id;
  if (events & EPOLLERR) {
    // (tcp_read_skb() hands a FIN to the verdict program as an empty skb;
    // redirected, the target's backlog would report EPIPE here: the
    // program drops empty skbs of RELAY_FLOW_STREAM flows.)
    if (int err = socket_error(side.fd.get()); err != 0) {
      fail_session(id, side, err);
      return;
    }
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
    if (!s.kernel && (side.in_pipe > 0 || !side.messages_q.empty())) {
      user_copy(s, other, side);
      if (!sessions_.count(id)) return;
    }
  }
  if (sessions_.count(id)) {
    update_events(s);
    check_half_close(s);
  }
}

// User path: moves what `from` has toward `to`, with splice() for byte
// streams and one message at a time when either end keeps boundaries.
void StreamRoute::user_copy(Session& s, Side& from, Side& to, bool from_readable) {
  uint64_t id = s.id;
  bool messages = from.messages || to.messages;
  bool from_empty = false;  // `from` said EAGAIN (or a short stream read): nothing more to read now
  bool to_full = false;     // `to` took less than offered: its send buffer is full for now
  bool read_any = false;
  for (int round = 0; round < 16; ++round) {
    bool progress = false;
    // Out: what is buffered toward `to`.
    if (messages) {
      while (!to.messages_q.empty()) {
        const std::string& m = to.messages_q.front();
        Sent sent = send_message(s, to, m.data(), m.size());
        if (sent.closed) return;
        if (sent.blocked) break;
        if (sent.dropped) {  // its peer left: nothing to deliver to
          to.messages_q.clear();
          break;
        }
        // A stream target may take part of a chunk; a seqpacket one all of it.
        if (sent.bytes < m.size()) {
          if (sent.bytes > 0) to.messages_q.front().erase(0, sent.bytes);
          break;
        }
        to.messages_q.erase(to.messages_q.begin());
        progress = true;
      }
    } else if (to.in_pipe > 0 && !to_full) {
      // splice() into a socket stops only when its send buffer is full: a
      // short one needs no second call to learn that, EPOLLOUT tells when
      // there is room again.
      size_t offered = to.in_pipe;
      ssize_t n =
          splice(to.pipe_r.get(), nullptr, to.fd.get(), nullptr, offered, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n < 0) {
        if (!would_block(errno)) {
          fail_session(id, to, errno);
          return;
        }
        to_full = true;
      } else {
        to.in_pipe -= static_cast<size_t>(n);
        to.user_out += static_cast<uint64_t>(n);
        counters_.user_bytes += static_cast<uint64_t>(n);
        if (static_cast<size_t>(n) < offered) to_full = true;
        if (n > 0) {
          to.pipe_full = false;
          progress = true;
        }
      }
    }
    // In: while what is buffered toward `to` fits its pipe (messages: once
    // the queue is empty). The pipe bounds user-space buffering per
    // direction: a stopped reader fills it, then we stop reading and TCP
    // flow control (or the unix socket's buffer) reaches the sender. Reading
    // on while the pipe is being written out, instead of waiting for it to
    // empty, keeps the sender's socket from filling up and its writer from
    // sleeping and waking once per pipe-full.
    bool may_read = messages ? to.messages_q.empty() : to.pipe_room();
    if (may_read && !from.eof && !from_empty) {
      if (messages) {
        // One buffer for the whole route, allocated once and never cleared:
        // a fresh zero-filled 256 KiB string per recv() was 3 memsets per
        // message and direction, which under TCG (rep stosb, byte by byte)
        // cost ~6 ms per 64-byte round trip (perf in the vm-tests guest).
        if (!recv_buffer_) recv_buffer_ = std::make_unique_for_overwrite<char[]>(kMessageBuffer);
        char* buf = recv_buffer_.get();
        ssize_t n = recv(from.fd.get(), buf, kMessageBuffer, MSG_DONTWAIT);
        if (n < 0) {
          if (!would_block(errno)) {
            fail_session(id, from, errno);
            return;
          }
          from_empty = true;
        } else if (n == 0) {
          // 0 is EOF for a stream, and either EOF or an empty message for
          // seqpacket: RDHUP tells them apart.
          pollfd p{from.fd.get(), POLLRDHUP, 0};
          if (!from.seqpacket || (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP)))) {
            from.eof = true;
          } else if (to.messages) {
            to.messages_q.emplace_back();
            progress = true;
          }
        } else {
          // Straight on from the buffer (nothing is queued toward `to`
          // here): only what `to` does not take now is copied into the queue.
          size_t len = static_cast<size_t>(n);
          Sent sent = send_message(s, to, buf, len);
          if (sent.closed) return;
          if (!sent.dropped && sent.bytes < len)
            to.messages_q.emplace_back(buf + sent.bytes, len - sent.bytes);
          progress = true;
          // A byte stream that filled less than the buffer had nothing more
          // queued: another recv() now would only say EAGAIN, and epoll
          // (level-triggered) reports whatever arrives next.
          if (!from.seqpacket && len < kMessageBuffer) from_empty = true;
        }
      } else {
        size_t room = to.pipe_capacity - to.in_pipe;
        ssize_t n =
            splice(from.fd.get(), nullptr, to.pipe_w.get(), nullptr, room, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n < 0) {
          if (!would_block(errno)) {
            fail_session(id, from, errno);
            return;
          }
          // epoll said `from` has bytes (or EOF), yet not one came: the
          // pipe has no free slot left. Wait for a splice out, not EPOLLIN.
          if (from_readable && !read_any && to.in_pipe > 0) to.pipe_full = true;
          from_empty = true;
        } else if (n == 0) {
          from.eof = true;
        } else {
          to.in_pipe += static_cast<size_t>(n);
          from.user_in += static_cast<uint64_t>(n);
          progress = true;
          read_any = true;
          // Fewer bytes than asked: the receive queue is empty (or the pipe
          // ran out of slots). Another splice() now would say EAGAIN; epoll
          // (level-triggered) reports what arrives next.
          if (static_cast<size_t>(n) < room) from_empty = true;
        }
      }
    }
    if (progress) s.last_user_ns = now_ns();
    if (!progress) break;
  }
}

// User path, message copies: hands `size` bytes to `to`. A seqpacket
// target takes a message whole or not at all, a stream target may take part.
StreamRoute::Sent StreamRoute::send_message(Session& s, Side& to, const char* data, size_t size) {
  ssize_t n = send(to.fd.get(), data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0) {
    if (would_block(errno)) return {.blocked = true};
    if (errno == EPIPE && to.hup) return {.dropped = true};
    fail_session(s.id, to, errno);
    return {.closed = true};
  }
  counters_.user_bytes += static_cast<uint64_t>(n);
  if (static_cast<size_t>(n) == size) ++counters_.user_messages;
  return {.bytes = static_cast<size_t>(n)};
}

// Kernel path (tcp <-> tcp): whether every byte `from` received has been
// redirected and has left `to`'s psock backlog into `to`'s send path, by
// the rule in stream_route.h. Both counts are exact.
bool StreamRoute::direction_flushed(Session& s, Side& from, Side& to) {
  uint64_t redirected = maps_->flow_bytes(from.cookie);
  // tcpi_bytes_received counts the FIN as one byte (measured), and `from`
  // has seen the FIN when this is asked.
  if (to.in_pipe > 0) return false;
  uint64_t received = tcp_bytes_received(from.fd.get());
  if (received == 0 || received - 1 != redirected + from.user_in) {
    if (received != 0 && received - 1 < redirected + from.user_in && !to.warned_mismatch) {
      to.warned_mismatch = true;
      spdlog::warn("route {}: session {}: {} received {} bytes but {} were forwarded", spec_.route_id, s.id,
                   from.name, received - 1, redirected + from.user_in);
    }
    return false;
  }
  return tcp_bytes_written(to.fd.get()) - to.baseline >= redirected + to.user_out;
}

void StreamRoute::check_half_close(Session& s) {
  if (s.connecting) return;
  bool waiting = false;
  for (Side* from : {&s.client, &s.upstream}) {
    Side& to = s.other(*from);
    if (to.shut_wr || !from->eof) continue;
    if (to.hup) {
      to.shut_wr = true;  // its peer is gone: there is no one to tell
      continue;
    }
    bool flushed =
        s.kernel ? s.attached && direction_flushed(s, *from, to) : (to.in_pipe == 0 && to.messages_q.empty());
    if (!flushed) {
      waiting = true;
      continue;
    }
    if (shutdown(to.fd.get(), SHUT_WR) != 0 && errno != ENOTCONN)
      spdlog::debug("route {}: session {}: shutdown {}: {}", spec_.route_id, s.id, to.name,
                    std::strerror(errno));
    to.shut_wr = true;
    ++counters_.half_closes;
    spdlog::debug("route {}: session {}: EOF from {} propagated to {}", spec_.route_id, s.id, from->name,
                  to.name);
  }
  if (s.done()) {
    ++counters_.sessions_closed;
    close_session(s.id, nullptr);
    return;
  }
  if (waiting && s.kernel) arm_timer(true);
}

void StreamRoute::arm_timer(bool on) {
  if (on == timer_armed_) return;
  itimerspec spec{};
  if (on) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(kHalfCloseCheck).count();
    spec.it_interval.tv_nsec = ns;
    spec.it_value.tv_nsec = ns;
  }
  timerfd_settime(timer_.get(), 0, &spec, nullptr);
  timer_armed_ = on;
}

void StreamRoute::on_timer() {
  uint64_t expirations;
  while (read(timer_.get(), &expirations, sizeof(expirations)) > 0) {
  }
  bool any = false;
  std::vector<uint64_t> ids;
  for (auto& [id, s] : sessions_)
    if (s->kernel && ((s->client.eof && !s->upstream.shut_wr) || (s->upstream.eof && !s->client.shut_wr)))
      ids.push_back(id);
  for (uint64_t id : ids) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) continue;
    Session& s = *it->second;
    check_half_close(s);
    auto again = sessions_.find(id);
    if (again != sessions_.end() && !again->second->done()) any = true;
  }
  arm_timer(any);
}

// Bytes in the psock backlog from `from` toward `to` (kernel path).
uint64_t StreamRoute::backlog(const Side& from, const Side& to) const {
  uint64_t redirected = maps_->flow_bytes(from.cookie);
  uint64_t written = tcp_bytes_written(to.fd.get()) - to.baseline - to.user_out;
  return redirected > written ? redirected - written : 0;
}

// Before the sockets close: bytes already taken in are delivered, for up
// to kStopDrain. Kernel sessions: the sources leave the map (nothing new is
// steered) and the psock backlogs empty into their sockets; what is still
// unsteered in a receive queue is not read (the verdict program may have
// been running on it: reading it could leave a gap), so those bytes are
// cut off, not corrupted. User sessions: the pipes are written out.
// close() then sends each FIN after the bytes (tcp sends its queue first).
void StreamRoute::deliver_before_stop() {
  const auto deadline = std::chrono::steady_clock::now() + kStopDrain;
  for (auto& [id, s] : sessions_)
    for (Side* side : {&s->client, &s->upstream})
      if (side->source_added) {
        maps_->remove_source(side->cookie);
        side->source_added = false;
      }
  while (std::chrono::steady_clock::now() < deadline) {
    bool busy = false;
    std::vector<uint64_t> ids;
    for (auto& [id, s] : sessions_) ids.push_back(id);
    for (uint64_t id : ids) {
      auto it = sessions_.find(id);
      if (it == sessions_.end() || it->second->connecting) continue;
      Session& s = *it->second;
      for (Side* from : {&s.client, &s.upstream}) {
        Side& to = s.other(*from);
        if (to.shut_wr || to.hup) continue;
        if (s.kernel) {
          if (s.attached && backlog(*from, to) > 0) busy = true;
          continue;
        }
        user_copy(s, *from, to);
        if (!sessions_.count(id)) break;
        if (to.in_pipe > 0 || !to.messages_q.empty()) busy = true;
      }
    }
    if (!busy) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
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
    setsockopt(other.fd.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  close_session(id, nullptr);
}

void StreamRoute::close_session(uint64_t id, const char* why) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (why) spdlog::debug("route {}: session {} closed: {}", spec_.route_id, id, why);
  if (s.kernel) {
    // Stop steering first, then forget the flows, then the targets.
    for (Side* side : {&s.client, &s.upstream})
      if (side->source_added) maps_->remove_source(side->cookie);
    for (Side* side : {&s.client, &s.upstream})
      if (side->flow_set) maps_->remove_flow(side->cookie);
    for (Side* side : {&s.client, &s.upstream})
      if (side->target_added) maps_->remove_target(side->cookie);
  }
  for (Side* side : {&s.client, &s.upstream})
    if (side->registered) loop_.remove(side->fd.get());
  sessions_.erase(it);
  budget_.give_back();
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
  uint64_t now = now_ns();
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
