#include "sessions/subscriber_route.h"

#include <linux/sock_diag.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "common/io_errors.h"
#include "common/socket_cookie.h"
#include "matrix/matrix.h"
#include "relay_shared.h"
#include "sessions/send_queue.h"
#include "sessions/stop_drain.h"

namespace sockrelay {

namespace {

constexpr int kBatch = 32;
constexpr size_t kMaxDatagram = 65536;
// Bytes user space holds for one subscriber whose socket is full; beyond
// this its copies are dropped and counted.
constexpr size_t kMaxQueuedBytes = 1 << 20;

// The endpoint kind of a socket a subscriber passed, if it is one of ours.
std::optional<EndpointKind> kind_of_socket(int fd) {
  int domain = 0, type = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return std::nullopt;
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return std::nullopt;
  for (EndpointKind kind : kAllKinds) {
    int family = kind_family(kind);
    bool family_ok = domain == family || (family == AF_INET && domain == AF_INET6);
    if (family_ok && type == kind_socktype(kind)) return kind;
  }
  return std::nullopt;
}

bool is_connected(int fd) {
  sockaddr_storage peer{};
  socklen_t len = sizeof(peer);
  return getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0;
}

// How full a socket's buffer is, as 0..1 of its limit: the send side for a
// connection we write into (AF_UNIX charges unread bytes to the sender),
// the receive side for a socket we redirect into with BPF_F_INGRESS.
double fill_ratio(int fd, bool receive_side) {
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(mem);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0) return 0;
  uint32_t used = receive_side ? mem[SK_MEMINFO_RMEM_ALLOC] : mem[SK_MEMINFO_WMEM_ALLOC];
  uint32_t limit = receive_side ? mem[SK_MEMINFO_RCVBUF] : mem[SK_MEMINFO_SNDBUF];
  return limit ? static_cast<double>(used) / limit : 0;
}

}  // namespace

struct SubscriberRoute::Subscriber {
  uint64_t id = 0;
  Fd connection;  // the membership; egress: also where datagrams go
  Fd passed;      // ingress: the subscriber's own socket
  uint64_t target_cookie = 0;
  int slot = -1;  // kernel path: index among the route's targets
  std::string who;
  bool seqpacket = false;
  bool receiving = false;
  bool stalled = false;
  std::chrono::steady_clock::time_point joined;
  // User space: datagrams its socket did not take yet, in order.
  SendQueue queued;
  bool watching_output = false;
  uint64_t user_packets = 0, user_bytes = 0, dropped = 0, stalls = 0;

  int target_fd() const { return passed ? passed.get() : connection.get(); }
};

SubscriberRoute::SubscriberRoute(SubscriberRouteSpec spec, Fd source, Fd subscribe_listener, MapWriter* maps,
                                 EventLoop& loop, SessionBudget& budget)
    : spec_(std::move(spec)),
      source_(std::move(source)),
      subscribe_(std::move(subscribe_listener)),
      maps_(maps),
      loop_(loop),
      budget_(budget),
      slots_(RELAY_MAX_TARGETS, 0),
      join_gate_(loop),
      buffer_(kBatch * kMaxDatagram) {}

SubscriberRoute::~SubscriberRoute() { stop(); }

Status SubscriberRoute::start() {
  auto cookie = socket_cookie(source_.get());
  if (!cookie) return cookie.error();
  source_cookie_ = *cookie;
  // Datagrams queued before we steer the source (systemd may have started
  // us for them) are read below, by user space.
  if (auto st = loop_.add(source_.get(), EPOLLIN, [this](uint32_t) { on_source_readable(); }); !st) return st;
  if (auto st = join_gate_.start(subscribe_.get(), [this](uint32_t) { on_join(); }); !st) return st;
  started_ = true;
  if (!spec_.kernel) return {};

  // The flow first, so the program never sees the source without one;
  // with no subscriber yet it drops and counts.
  rewrite_flow();
  if (spec_.from->address.family() == AF_UNIX) {
    // The program sees a unix-dgram sender, not our socket: an instance
    // of its own looks every skb up under the source's key.
    MapWriter::PrivateProgram program;
    program.fixed_source = source_cookie_;
    if (auto st = maps_->add_private_source(source_cookie_, source_.get(), program); !st) return st;
    source_private_ = true;
  } else {
    if (auto st = maps_->add_source(source_cookie_, source_.get()); !st) return st;
  }
  source_in_map_ = true;
  // From now on the verdict program takes every datagram; user space
  // reading the source too would race it for the receive queue (measured:
  // a few datagrams a run went the user path). What was queued before the
  // program was attached is read here; later ones reach the verdict.
  on_source_readable();
  loop_.remove(source_.get());

  stall_timer_ = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!stall_timer_) return errno_error("timerfd_create");
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(kStallCheck).count();
  itimerspec every{{0, ns}, {0, ns}};
  if (timerfd_settime(stall_timer_.get(), 0, &every, nullptr) != 0) return errno_error("timerfd_settime");
  return loop_.add(stall_timer_.get(), EPOLLIN, [this](uint32_t) {
    // Reading only rearms the fd: the count does not matter, and a failed
    // read (EAGAIN: nothing expired after all) changes nothing.
    uint64_t expirations;
    [[maybe_unused]] ssize_t got = read(stall_timer_.get(), &expirations, sizeof(expirations));
    check_stalls();
  });
}

void SubscriberRoute::stop() {
  if (!started_) return;
  if (source_in_map_) {
    if (source_private_)
      maps_->remove_private_source(source_cookie_);
    else
      maps_->remove_source(source_cookie_);
    maps_->remove_flow(source_cookie_);
    source_in_map_ = false;
  }
  // What was queued for subscribers goes out first (user space).
  drain_before_stop(
      [this] {
        std::vector<std::pair<int, uint64_t>> waiting;
        for (const auto& [id, sub] : subscribers_)
          if (!sub->queued.empty()) waiting.emplace_back(sub->connection.get(), id);
        return waiting;
      },
      [this](uint64_t id) {
        auto it = subscribers_.find(id);
        if (it != subscribers_.end() && !flush(*it->second)) leave(id, "its connection failed");
      });
  while (!subscribers_.empty()) leave(subscribers_.begin()->first, "the route stopped");
  loop_.remove(source_.get());
  join_gate_.stop();
  if (stall_timer_) loop_.remove(stall_timer_.get());
  stall_timer_.reset();
  started_ = false;
}

void SubscriberRoute::tick() {
  auto now = std::chrono::steady_clock::now();
  std::vector<uint64_t> late;
  for (const auto& [id, sub] : subscribers_)
    if (!sub->receiving && now - sub->joined > kPassTimeout) late.push_back(id);
  for (uint64_t id : late) {
    ++counters_.refused_socket;
    leave(id, "passed no socket within " + std::to_string(kPassTimeout.count()) +
                  " s (mode = \"ingress\": send one over SCM_RIGHTS right after connecting)");
  }
}

void SubscriberRoute::on_join() {
  for (;;) {
    Fd conn(accept4(subscribe_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!conn) {
      if (out_of_descriptors(errno)) {
        // Level-triggered: paused, the joins wait in the backlog.
        fd_limit_log_.hit(spec_.route_id, counters_.fd_limit, "accept a subscriber", errno);
        join_gate_.pause();
        return;
      }
      if (!would_block(errno))
        spdlog::warn("route {}: accept on {}: {}", spec_.route_id, spec_.to->name, std::strerror(errno));
      return;
    }
    auto sub = std::make_unique<Subscriber>();
    sub->id = next_id_++;
    sub->connection = std::move(conn);
    sub->seqpacket = spec_.to->kind == EndpointKind::UnixSeqpacket;
    sub->joined = std::chrono::steady_clock::now();
    ucred cred{};
    socklen_t len = sizeof(cred);
    sub->who = getsockopt(sub->connection.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0
                   ? "pid " + std::to_string(cred.pid) + ", uid " + std::to_string(cred.uid)
                   : "unknown peer";
    if (spec_.kernel && std::find(slots_.begin(), slots_.end(), 0) == slots_.end()) {
      ++counters_.refused_full;
      spdlog::warn("route {}: {} refused: {} subscribers already (the kernel path's limit)", spec_.route_id,
                   describe(*sub), RELAY_MAX_TARGETS);
      continue;
    }
    if (!budget_.try_take()) {
      ++counters_.refused_max_sessions;
      spdlog::warn("route {}: {} refused: max-sessions reached", spec_.route_id, describe(*sub));
      continue;
    }
    uint64_t id = sub->id;
    int fd = sub->connection.get();
    subscribers_.emplace(id, std::move(sub));
    ++counters_.joined;
    if (auto st = loop_.add(fd, EPOLLIN | EPOLLRDHUP, [this, id](uint32_t ev) { on_connection(id, ev); });
        !st) {
      leave(id, st.error().describe());
      continue;
    }
    Subscriber& s = *subscribers_.at(id);
    if (spec_.mode == Mode::Ingress) {
      spdlog::info("route {}: {} connected; waiting for its socket", spec_.route_id, describe(s));
      continue;
    }
    if (auto st = activate(s); !st) leave(id, st.error().describe());
  }
}

Status SubscriberRoute::activate(Subscriber& sub) {
  if (spec_.kernel) {
    auto cookie = socket_cookie(sub.target_fd());
    if (!cookie) return cookie.error();
    if (auto st = maps_->add_target(*cookie, sub.target_fd()); !st)
      return st.error().wrap("its socket cannot enter the sockmap");
    sub.target_cookie = *cookie;
    sub.slot = static_cast<int>(std::find(slots_.begin(), slots_.end(), 0) - slots_.begin());
    slots_[sub.slot] = sub.id;
    // The slot's counters were a previous subscriber's.
    maps_->reset_target_counters(spec_.route_id, static_cast<uint32_t>(sub.slot));
  }
  sub.receiving = true;
  rewrite_flow();
  spdlog::info("route {}: {} joined ({} now)", spec_.route_id, describe(sub), subscribers_.size());
  return {};
}

void SubscriberRoute::leave(uint64_t id, const std::string& why) {
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return;
  Subscriber& sub = *it->second;
  // Out of the rotation before its socket leaves the map.
  bool was_receiving = sub.receiving;
  sub.receiving = false;
  if (spec_.kernel && was_receiving) {
    // Once stop() has taken the source's flow out, rewriting it would put
    // it back in the map for good (tests/unit/subscriber_route_test.cpp).
    if (source_in_map_) rewrite_flow();
    maps_->remove_target(sub.target_cookie);
  }
  if (sub.slot >= 0) slots_[sub.slot] = 0;
  sub.dropped += sub.queued.entries();  // never delivered
  counters_.drop_subscriber_full += sub.queued.entries();
  loop_.remove(sub.connection.get());
  budget_.give_back();
  join_gate_.resume();
  ++counters_.left;
  spdlog::info("route {}: {} left: {}", spec_.route_id, describe(sub), why);
  subscribers_.erase(it);
}

void SubscriberRoute::on_connection(uint64_t id, uint32_t events) {
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return;
  Subscriber& sub = *it->second;
  if ((events & EPOLLOUT) && !flush(sub)) return leave(id, "its connection failed");
  if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
  // What a subscriber sends is not relayed: a socket over SCM_RIGHTS
  // (ingress) is taken, bytes are read and dropped, EOF means it left.
  for (;;) {
    char data[4096];
    iovec iov{data, sizeof(data)};
    alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = recvmsg(sub.connection.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return leave(id, std::string("its connection failed: ") + std::strerror(errno));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        Fd owned(fd);  // closed unless taken
        if (spec_.mode == Mode::Ingress && !sub.passed) take_passed_socket(sub, owned.release());
      }
    }
    if (spec_.mode == Mode::Ingress && sub.passed && !sub.receiving) {
      if (auto st = activate(sub); !st) {
        ++counters_.refused_socket;
        return leave(id, "the socket it passed: " + st.error().describe());
      }
    }
    if (n == 0) return leave(id, "it closed its connection");
  }
}

void SubscriberRoute::take_passed_socket(Subscriber& sub, int fd) {
  Fd passed(fd);
  auto kind = kind_of_socket(passed.get());
  std::string why;
  if (!kind)
    why = "not a socket kind the relay knows";
  else if (matrix_cell(spec_.from->kind, *kind, Mode::Ingress).support == Support::Unsupported)
    why = std::string(kind_name(*kind)) + ": " + matrix_cell(spec_.from->kind, *kind, Mode::Ingress).reason;
  else if (!is_connected(passed.get()))
    // The kernel redirects only into connected sockets (ESTABLISHED).
    why = std::string(kind_name(*kind)) +
          " socket that is not connected: the kernel redirects only into connected sockets (connect() a "
          "udp socket, or pass one end of a socketpair())";
  if (!why.empty()) {
    ++counters_.refused_socket;
    spdlog::warn("route {}: {}: the socket it passed is refused: {}", spec_.route_id, describe(sub), why);
    return;  // it may pass another one before kPassTimeout
  }
  sub.passed = std::move(passed);
}

void SubscriberRoute::on_source_readable() {
  // A few batches per wake-up, then back to the loop.
  for (int round = 0; round < 8; ++round) {
    mmsghdr msgs[kBatch];
    iovec iovs[kBatch];
    std::memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < kBatch; ++i) {
      iovs[i] = {buffer_.data() + i * kMaxDatagram, kMaxDatagram};
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(source_.get(), msgs, kBatch, MSG_DONTWAIT, nullptr);
    if (n <= 0) return;
    for (int i = 0; i < n; ++i) deliver(static_cast<const char*>(iovs[i].iov_base), msgs[i].msg_len);
    if (n < kBatch) return;
  }
}

void SubscriberRoute::deliver(const char* data, size_t len) {
  if (spec_.mode == Mode::Ingress) {
    // Only the verdict program can put a datagram into a subscriber's own
    // socket; user space sees one only before the source is steered,
    // before anyone could have joined.
    ++counters_.drop_no_subscriber;
    return;
  }
  std::vector<Subscriber*> receiving;
  for (auto& [id, sub] : subscribers_)
    if (sub->receiving) receiving.push_back(sub.get());
  if (receiving.empty()) {
    ++counters_.drop_no_subscriber;
    return;
  }
  std::vector<Subscriber*> chosen;
  if (spec_.balance == Balance::Broadcast) {
    chosen = receiving;
  } else {
    // Round-robin, passing over subscribers with a backlog while another
    // one can take the datagram at once.
    Subscriber* pick = nullptr;
    for (size_t i = 0; i < receiving.size() && pick == nullptr; ++i) {
      Subscriber* s = receiving[(round_robin_ + i) % receiving.size()];
      if (s->queued.empty()) pick = s;
    }
    if (pick == nullptr) pick = receiving[round_robin_ % receiving.size()];
    ++round_robin_;
    chosen.push_back(pick);
  }
  std::vector<uint64_t> failed;
  for (Subscriber* s : chosen)
    if (!send_to(*s, data, len)) failed.push_back(s->id);
  for (uint64_t id : failed) leave(id, "its connection failed");
}

bool SubscriberRoute::send_to(Subscriber& sub, const char* data, size_t len) {
  size_t written = 0;
  if (sub.queued.empty()) {
    ssize_t n = send(sub.connection.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && !would_block(errno)) return false;
    written = n < 0 ? 0 : static_cast<size_t>(n);
    if (written == len) {
      ++sub.user_packets;
      sub.user_bytes += len;
      ++counters_.user_packets;
      counters_.user_bytes += len;
      return true;
    }
  }
  // A stream that took part of the datagram must get the rest, or the
  // bytes after it would be misread; a whole datagram may be dropped.
  if (written == 0 && sub.queued.bytes() + len > kMaxQueuedBytes) {
    ++sub.dropped;
    ++counters_.drop_subscriber_full;
    return true;
  }
  sub.queued.push(data + written, len - written);
  ++sub.user_packets;
  sub.user_bytes += len;
  ++counters_.user_packets;
  counters_.user_bytes += len;
  return watch_output(sub, true);
}

bool SubscriberRoute::flush(Subscriber& sub) {
  if (sub.queued.write_to(sub.connection.get()).error != 0) return false;
  return !sub.queued.empty() || watch_output(sub, false);
}

// False when the loop refused the change: the subscriber must leave (its
// queue would never be written out).
bool SubscriberRoute::watch_output(Subscriber& sub, bool on) {
  if (sub.watching_output == on) return true;
  if (auto st = loop_.modify(sub.connection.get(), EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u)); !st) {
    spdlog::warn("route {}: {}: {}", spec_.route_id, describe(sub), st.error().describe());
    return false;
  }
  sub.watching_output = on;
  return true;
}

void SubscriberRoute::check_stalls() {
  bool changed = false;
  for (auto& [id, sub] : subscribers_) {
    if (!sub->receiving) continue;
    double fill = fill_ratio(sub->target_fd(), spec_.mode == Mode::Ingress);
    if (!sub->stalled && fill >= 0.5) {
      sub->stalled = true;
      ++sub->stalls;
      ++counters_.stalls;
      changed = true;
      spdlog::debug("route {}: {} is not reading: out of the rotation", spec_.route_id, describe(*sub));
    } else if (sub->stalled && fill <= 0.25) {
      sub->stalled = false;
      changed = true;
    }
  }
  if (changed) rewrite_flow();
}

void SubscriberRoute::rewrite_flow() {
  if (!spec_.kernel) return;
  FlowEntry entry;
  entry.route_id = spec_.route_id;
  entry.flags = spec_.mode == Mode::Ingress ? RELAY_FLOW_INGRESS : 0;
  entry.balance = RELAY_BALANCE_ROUND_ROBIN;
  for (const auto& [id, sub] : subscribers_) {
    if (!sub->receiving || sub->stalled) continue;
    entry.targets[entry.n_targets] = sub->target_cookie;
    entry.target_index[entry.n_targets] = static_cast<uint8_t>(sub->slot);
    ++entry.n_targets;
  }
  entry.target_cookie = entry.targets[0];
  if (auto st = maps_->set_flow(source_cookie_, entry); !st)
    spdlog::error("route {}: cannot update the subscribers' flow: {}", spec_.route_id, st.error().describe());
}

std::vector<SubscriberReport> SubscriberRoute::subscribers() const {
  std::vector<SubscriberReport> out;
  for (const auto& [id, sub] : subscribers_) {
    SubscriberReport r;
    r.name = describe(*sub);
    r.receiving = sub->receiving;
    r.stalled = sub->stalled;
    r.slot = sub->slot;
    r.user_packets = sub->user_packets;
    r.user_bytes = sub->user_bytes;
    r.dropped = sub->dropped;
    r.stalls = sub->stalls;
    out.push_back(std::move(r));
  }
  return out;
}

std::string SubscriberRoute::describe(const Subscriber& sub) const {
  return "subscriber #" + std::to_string(sub.id) + " (" + sub.who + ")";
}

}  // namespace sockrelay
