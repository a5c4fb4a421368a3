#include "sessions/datagram_route.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <deque>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/socket_cookie.h"
#include "config/address.h"
#include "endpoints/endpoint.h"
#include "endpoints/unix_diag.h"
#include "relay_shared.h"
#include "sessions/peer_policy.h"

namespace sockrelay {

namespace {

constexpr int kBatch = 32;
constexpr size_t kMaxPending = 1024;  // per upstream socket
constexpr size_t kMaxDatagram = 65536;
constexpr size_t kMaxRefusedSenders = 65536;  // remembered refusals; past it, start afresh
// Refused senders given a flow entry (relay_flows is shared with live
// flows and holds RELAY_MAX_SOCKETS); past it they are dropped in user space.
constexpr size_t kMaxRefusedInKernel = 4096;

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// A stable hash of the client's identity (FNV-1a), for balance = "hash":
// the same client lands on the same target across flows and restarts.
uint32_t identity_hash(const std::string& identity) {
  uint32_t h = 2166136261u;
  for (unsigned char c : identity) h = (h ^ c) * 16777619u;
  return h;
}

uint32_t balance_code(Balance balance) {
  switch (balance) {
    case Balance::RoundRobin:
      return RELAY_BALANCE_ROUND_ROBIN;
    case Balance::Hash:
      return RELAY_BALANCE_HASH;
    case Balance::Broadcast:
      return RELAY_BALANCE_BROADCAST;
    case Balance::Single:
      break;
  }
  return RELAY_BALANCE_SINGLE;
}

// A UNIX client that never bound has no address: nothing can reply to it.
bool has_reply_address(const sockaddr_storage& peer, socklen_t len) {
  return peer.ss_family != AF_UNIX || len > offsetof(sockaddr_un, sun_path);
}

// Reads up to a batch of datagrams; calls `each(peer, len, data, size)`,
// or `each(peer, len, data, size, cred)` with the datagram's
// SCM_CREDENTIALS (null if none came: the socket has no SO_PASSCRED).
// Returns how many it read, 0 when none are queued, -1 on a socket error.
template <typename Each>
int read_batch(int fd, char* buffer, Each each) {
  constexpr bool kCreds =
      std::is_invocable_v<Each, const sockaddr_storage&, socklen_t, const char*, size_t, const ucred*>;
  mmsghdr msgs[kBatch];
  iovec iovs[kBatch];
  sockaddr_storage peers[kBatch];
  struct alignas(cmsghdr) Control {
    char bytes[CMSG_SPACE(sizeof(ucred))];
  };
  Control controls[kCreds ? kBatch : 1];
  std::memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < kBatch; ++i) {
    iovs[i] = {buffer + i * kMaxDatagram, kMaxDatagram};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &peers[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
    if constexpr (kCreds) {
      msgs[i].msg_hdr.msg_control = controls[i].bytes;
      msgs[i].msg_hdr.msg_controllen = sizeof(controls[i].bytes);
    }
  }
  int n = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  for (int i = 0; i < n; ++i) {
    const char* data = static_cast<const char*>(iovs[i].iov_base);
    if constexpr (kCreds) {
      ucred cred{};
      bool have = false;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
          std::memcpy(&cred, CMSG_DATA(c), sizeof(cred));
          have = true;
        }
      each(peers[i], msgs[i].msg_hdr.msg_namelen, data, msgs[i].msg_len, have ? &cred : nullptr);
    } else {
      each(peers[i], msgs[i].msg_hdr.msg_namelen, data, msgs[i].msg_len);
    }
  }
  return n;
}

// The kernel's overflow ids (kernel.overflowuid/gid sysctls, 65534 unless
// changed): what SCM_CREDENTIALS reports, with pid 0, for a datagram sent
// before the receiver turned SO_PASSCRED on (measured: such a datagram
// carries no credentials, and the kernel fills these in).
uint32_t overflow_id(const char* path) {
  uint32_t id = 65534;
  if (FILE* f = std::fopen(path, "re")) {
    if (std::fscanf(f, "%u", &id) != 1) id = 65534;
    std::fclose(f);
  }
  return id;
}

// A datagram another client's flow socket caught (see create_flow()).
struct Stranger {
  sockaddr_storage peer;
  socklen_t peer_len;
  std::string data;
};

bool no_credentials(const ucred& cred) {
  static const uint32_t uid = overflow_id("/proc/sys/kernel/overflowuid");
  static const uint32_t gid = overflow_id("/proc/sys/kernel/overflowgid");
  return cred.pid == 0 && cred.uid == uid && cred.gid == gid;
}

}  // namespace

struct DatagramRoute::Upstream {
  Fd fd;  // connected to the target; closed while the target is down
  uint64_t cookie = 0;
  bool is_source = false;   // replies steered by the verdict program
  bool is_private = false;  // ...by its own instance (unix-dgram)
  // Datagrams user space could not send yet (the target's queue was full:
  // a UNIX receiver takes only net.unix.max_dgram_qlen). Sent on EPOLLOUT,
  // in order; bounded, and what does not fit is dropped and counted.
  std::deque<std::string> pending;
  bool watched = false;  // in the event loop (see watch_upstream())
};

struct DatagramRoute::Flow {
  std::string key;           // in flows_: see handle_client_datagram()
  sockaddr_storage peer{};   // where replies go...
  socklen_t peer_len = 0;    // ...0 when the client has no address
  uint64_t unix_cookie = 0;  // an AF_UNIX client's own socket (what the verdict sees)
  bool connected_to_listener = false;
  uint32_t client_hash = 0;

  std::vector<Upstream> upstreams;  // by target index
  uint64_t next_target = 0;         // user space's round-robin position

  Fd client_socket;  // connected to the client (the reply path); may stay closed
  uint64_t client_socket_cookie = 0;
  bool client_socket_is_udp = false;     // UDP flow socket: the client's datagrams arrive on it
  bool client_socket_is_source = false;  // ...and the verdict program steers them

  // What the verdict program sees for this client's datagrams: the UDP flow
  // socket's cookie, or the UNIX client's own cookie. 0 = user space.
  uint64_t client_key = 0;
  bool kernel = false;
  bool settled = false;  // see settle()
  uint64_t last_user_ns = 0;

  bool replyable() const { return peer_len > 0; }
  std::string peer_text() const {
    if (!replyable())
      return unix_cookie ? "unnamed unix socket (cookie " + std::to_string(unix_cookie) + ")" : "unnamed";
    return format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
  }
};

DatagramRoute::DatagramRoute(DatagramRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop,
                             SessionBudget& budget)
    : spec_(std::move(spec)),
      listener_(std::move(listener)),
      maps_(maps),
      loop_(loop),
      budget_(budget),
      targets_(spec_.to.size()),
      buffer_(new char[kBatch * kMaxDatagram]),
      listener_buffer_(new char[kBatch * kMaxDatagram]) {}

DatagramRoute::~DatagramRoute() { stop(); }

bool DatagramRoute::unix_listener() const { return spec_.from->address.family() == AF_UNIX; }

Status DatagramRoute::start() {
  auto cookie = socket_cookie(listener_.get());
  if (!cookie) return cookie.error();
  listener_cookie_ = *cookie;
  listener_inode_ = socket_inode(listener_.get());
  if (unix_listener() && unix_ids_policy()) {
    // The verdict program's redirect re-sends a new sender's datagram from
    // kernel context: what arrives on the new-client socket carries no
    // credentials of the sender, and sock_diag knows the socket's owner
    // uid but no gid. check refuses this too; this is the backstop.
    if (spec_.kernel && !spec_.allow_gids.empty())
      return plain_error("listener " + spec_.from->name +
                         ": allow-gids on a unix-dgram source needs datapath = \"userspace\" (the kernel "
                         "path cannot learn a sender's gid)");
    // Every datagram read here carries its sender's credentials, which
    // allow-uids/allow-gids are checked against. Set before the first read:
    // a datagram queued before carries none and is refused.
    int one = 1;
    if (setsockopt(listener_.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0)
      return errno_error("listener " + spec_.from->name + ": SO_PASSCRED");
  }
  if (spec_.kernel && unix_listener())
    if (auto st = steer_unix_listener(); !st) return st.error().wrap("listener " + spec_.from->name);
  // A UDP listener stays out of the map: each client gets a flow socket,
  // so the listener only ever sees first datagrams. A unix listener the
  // verdict program steers is not watched at all: the program hands every
  // datagram on (a new sender's through the new-client socket), and a read
  // here would race its read_skb for the queue (measured: a datagram of a
  // steered flow taken by user space and delivered out of order under a
  // flood); even an errors-only registration costs a wake-up call per
  // datagram (see poll_errors()).
  if (!in_map_)
    if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st)
      return st;
  started_ = true;
  return {};
}

Status DatagramRoute::steer_unix_listener() {
  // Datagrams already queued (systemd may have started us for them) are
  // read with their senders before the verdict program takes over
  // (bounded: senders that never pause must not keep it from starting).
  for (int round = 0; round < 64 && !on_listener_readable(); ++round) {
  }
  // AF_UNIX routes by sender, so known clients are steered on the listener
  // itself; unknown ones are tagged with their cookie and redirected to a
  // socket pair of ours, arriving here whole and with their sender.
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0)
    return errno_error("socketpair for new clients");
  new_client_tx_ = Fd(pair[0]);
  new_client_rx_ = Fd(pair[1]);
  auto tx_cookie = socket_cookie(new_client_tx_.get());
  if (!tx_cookie) return tx_cookie.error();
  new_client_tx_cookie_ = *tx_cookie;
  if (auto st = maps_->add_target(new_client_tx_cookie_, new_client_tx_.get()); !st) return st;
  if (auto st = loop_.add(new_client_rx_.get(), EPOLLIN, [this](uint32_t) { on_new_client_readable(); }); !st)
    return st;
  MapWriter::PrivateProgram program;
  program.new_client_target = new_client_tx_cookie_;
  if (auto st = maps_->add_private_source(listener_cookie_, listener_.get(), program); !st) return st;
  in_map_ = true;
  // What arrived since the read above would wait for later datagrams to
  // push it through the program (one queued skb per arriving one): read
  // it once more, now that the program takes the rest (the queue only
  // shrinks now).
  while (!on_listener_readable()) {
  }
  return {};
}

void DatagramRoute::forget_refused(uint64_t cookie) {
  auto it = refused_senders_.find(cookie);
  if (it == refused_senders_.end()) return;
  if (it->second.in_map) {
    maps_->remove_flow(cookie);
    --refused_in_map_;
  }
  refused_senders_.erase(it);
}

void DatagramRoute::stop() {
  if (!started_) return;
  while (!flows_.empty()) destroy_flow(std::string(flows_.begin()->first), "");
  while (!refused_senders_.empty()) forget_refused(refused_senders_.begin()->first);
  loop_.remove(listener_.get());
  if (in_map_) {
    maps_->remove_private_source(listener_cookie_);
    maps_->remove_target(new_client_tx_cookie_);
    loop_.remove(new_client_rx_.get());
  }
  in_map_ = false;
  started_ = false;
}

void DatagramRoute::on_new_client_readable() {
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(new_client_rx_.get(), listener_buffer_.get(),
                       [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
                         relay_new_client_tag tag;
                         if (size < sizeof(tag)) return;  // cannot happen: the verdict program always tags
                         std::memcpy(&tag, d, sizeof(tag));
                         // No SO_PASSCRED here: credentials arriving on this socket would be
                         // the kernel worker's that re-sent the datagram (measured: pid of a
                         // kworker, uid 0, gid 0, whoever the sender), never the sender's.
                         sockaddr_storage none{};
                         handle_client_datagram(none, 0, tag.sender_cookie, tag.sender_uid, nullptr,
                                                d + sizeof(tag), size - sizeof(tag));
                       });
    if (n < kBatch) break;
  }
}

bool DatagramRoute::on_listener_readable() {
  // A few batches per wake-up, then back to the loop so one busy route
  // cannot starve the others.
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(
        listener_.get(), listener_buffer_.get(),
        [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size, const ucred* cred) {
          handle_client_datagram(peer, len, 0, std::nullopt, cred, d, size);
        });
    if (n < kBatch) return true;
  }
  return false;
}

std::string DatagramRoute::credential_refusal(const ucred* cred) const {
  if (!cred || no_credentials(*cred))
    return "no credentials (sent before the relay set SO_PASSCRED: give the .socket unit "
           "PassCredentials=yes)";
  return PeerPolicy::id_refusal(spec_.allow_uids, spec_.allow_gids, cred->uid, cred->gid);
}

void DatagramRoute::count_refusal(const std::string& who, const std::string& why) {
  if (counters_.refused_policy++ % 1000 == 0)
    spdlog::warn("route {}: client {}: {}: datagrams dropped (counted)", spec_.route_id, who, why);
}

void DatagramRoute::handle_client_datagram(const sockaddr_storage& peer, socklen_t peer_len,
                                           uint64_t tagged_cookie, std::optional<uint32_t> tagged_uid,
                                           const ucred* cred, const char* data, size_t len) {
  if (unix_listener() && unix_ids_policy()) {
    if (tagged_cookie) {
      // A sender already refused: no second sock_diag dump for it.
      auto refused = refused_senders_.find(tagged_cookie);
      if (refused != refused_senders_.end()) {
        refused->second.last_ns = now_ns();
        ++counters_.refused_policy;
        return;
      }
    } else if (std::string why = credential_refusal(cred); !why.empty()) {
      // Read by user space, so checked one by one: the credentials are the
      // sender's at send time, and every unnamed sender shares one flow
      // key (it has no address to tell it apart).
      std::string who = cred ? "pid " + std::to_string(cred->pid) : std::string("unknown");
      if (has_reply_address(peer, peer_len))
        who = format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len) + " (" + who + ")";
      count_refusal(who, why);
      return;
    }
  }
  // Flows by client: UDP by address; AF_UNIX by cookie when the verdict
  // program tagged the datagram, else by address (aliased to the cookie key
  // once the flow knows both).
  std::string key;
  if (!unix_listener())
    key.assign(reinterpret_cast<const char*>(&peer), peer_len);
  else if (tagged_cookie)
    key = "cookie:" + std::to_string(tagged_cookie);
  else
    key = "addr:" + std::string(reinterpret_cast<const char*>(&peer), peer_len);
  auto it = flows_.find(key);
  if (it == flows_.end() && !tagged_cookie && unix_listener()) {
    auto alias = unix_address_alias_.find(key);
    if (alias != unix_address_alias_.end()) it = flows_.find(alias->second);
  }
  Flow* flow =
      it != flows_.end() ? it->second.get() : create_flow(key, peer, peer_len, tagged_cookie, tagged_uid);
  if (!flow) return;  // counted by create_flow
  send_to_upstream(*flow, data, len);
}

DatagramRoute::Flow* DatagramRoute::create_flow(const std::string& key, const sockaddr_storage& peer,
                                                socklen_t peer_len, uint64_t unix_cookie,
                                                std::optional<uint32_t> owner_uid) {
  auto flow = std::make_unique<Flow>();
  flow->key = key;
  flow->unix_cookie = unix_cookie;
  if (has_reply_address(peer, peer_len)) {
    flow->peer = peer;
    flow->peer_len = peer_len;
  }
  if (unix_listener()) {
    // Learn the other half of the client's identity: its address from its
    // cookie, or its cookie from its address.
    auto info = unix_cookie ? find_unix_dgram_by_cookie(unix_cookie)
                            : find_unix_dgram_by_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
    if (!info) {
      spdlog::debug("route {}: {}", spec_.route_id, info.error().describe());
    } else if (info->has_value()) {
      const UnixSocketInfo& u = **info;
      flow->unix_cookie = u.cookie;
      if (!owner_uid) owner_uid = u.uid;  // the verdict program's tag, read at send time, wins
      flow->connected_to_listener = u.peer_inode == listener_inode_;
      if (u.address_length > offsetof(sockaddr_un, sun_path)) {
        std::memcpy(&flow->peer, &u.address, u.address_length);
        flow->peer_len = u.address_length;
      }
    }
  }
  // allow-uids on the kernel path: a datagram the verdict program tagged
  // carries no credentials of its sender (the redirect re-sent it from
  // kernel context), so the owner of the sender's socket decides, once per
  // flow: from the tag (bpf_get_socket_uid), else from sock_diag. (Untagged
  // datagrams were checked by their own credentials.)
  if (unix_cookie && unix_ids_policy()) {
    std::string why = owner_uid ? PeerPolicy::id_refusal(spec_.allow_uids, {}, *owner_uid, std::nullopt)
                                : "socket owner unknown (gone before sock_diag saw it)";
    if (!why.empty()) {
      if (refused_senders_.size() >= kMaxRefusedSenders)
        while (!refused_senders_.empty()) forget_refused(refused_senders_.begin()->first);
      RefusedSender& r = refused_senders_[unix_cookie];
      r.last_ns = now_ns();
      if (refused_in_map_ < kMaxRefusedInKernel) {
        FlowEntry entry;
        entry.route_id = spec_.route_id;
        entry.flags = RELAY_FLOW_REFUSED;
        r.in_map = maps_->set_flow(unix_cookie, entry).ok();
        refused_in_map_ += r.in_map;
      }
      count_refusal(flow->peer_text(), why);
      return nullptr;
    }
  }
  flow->client_hash = identity_hash(
      flow->replyable() ? std::string(reinterpret_cast<const char*>(&flow->peer), flow->peer_len) : key);
  // allow-sources: a client outside them never gets a flow, so none of its
  // datagrams reaches a target (the listener is not in the verdict
  // program, and a flow socket only ever receives from its one client).
  if (!spec_.allow_sources.empty() && !unix_listener()) {
    bool allowed = false;
    for (const auto& net : spec_.allow_sources)
      allowed = allowed || net.contains(reinterpret_cast<const sockaddr*>(&peer));
    if (!allowed) {
      if (counters_.refused_policy++ % 1000 == 0)
        spdlog::warn("route {}: client {} is not in allow-sources: datagrams dropped (counted)",
                     spec_.route_id, flow->peer_text());
      return nullptr;
    }
  }
  if (!budget_.try_take()) {
    if (counters_.refused_max_sessions++ % 1000 == 0)
      spdlog::warn("route {}: max-sessions ({}) reached, dropping datagrams from new client {} (counted)",
                   spec_.route_id, budget_.max(), flow->peer_text());
    return nullptr;
  }
  flow->last_user_ns = now_ns();

  // One upstream socket per target that is up; a target that cannot be
  // reached now leaves the rotation until its retry.
  flow->upstreams.resize(spec_.to.size());
  size_t opened = 0;
  std::string why;
  for (size_t t = 0; t < spec_.to.size(); ++t) {
    if (targets_[t].down) continue;
    if (auto st = open_upstream(*flow, t); !st) {
      why = st.error().describe();
      target_failed(t, why);
    } else {
      ++opened;
    }
  }
  if (opened == 0) {
    budget_.give_back();
    if (counters_.drop_setup_failed++ % 1000 == 0)
      spdlog::warn("route {}: new client {}: no target reachable{}{} (datagram dropped, counted)",
                   spec_.route_id, flow->peer_text(), why.empty() ? "" : ": ", why);
    return nullptr;
  }

  // The reply path: a socket connected to the client, which the kernel can
  // send through. Without one, user space replies from the listener.
  if (flow->replyable() && !unix_listener()) {
    // Bound now, connected below before the verdict program steers it.
    auto local = spec_.from->address;
    auto s = bind_udp_flow_socket(local.sa(), local.length);
    if (s) {
      flow->client_socket = std::move(*s);
      flow->client_socket_is_udp = true;
    } else {
      spdlog::debug("route {}: {}; replies to {} go through user space", spec_.route_id, s.error().describe(),
                    flow->peer_text());
    }
  } else if (flow->replyable() && !flow->connected_to_listener) {
    // A client that connect()ed to our listener accepts datagrams from the
    // listener only, so a socket of ours connected to it could not reply.
    auto s = open_unix_flow_socket(reinterpret_cast<const sockaddr*>(&flow->peer), flow->peer_len);
    if (s) flow->client_socket = std::move(*s);
  }
  if (flow->client_socket) flow->client_socket_cookie = socket_cookie(flow->client_socket.get()).value();

  // A UDP flow socket is connected to its client before the verdict program
  // steers it. Until connect() it is one more unconnected socket on the
  // listener's address, the newest, so it catches every client's datagrams
  // (measured): those are read back here and handled below as if the
  // listener had received them. Steered while still unconnected, the
  // program would send them up this client's flow (cc0d325 did).
  std::vector<Stranger> strangers;
  std::string connect_error;
  if (flow->client_socket_is_udp) {
    read_batch(flow->client_socket.get(), buffer_.get(),
               [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size) {
                 strangers.push_back({peer, len, std::string(d, size)});
               });
    if (connect(flow->client_socket.get(), reinterpret_cast<const sockaddr*>(&flow->peer), flow->peer_len) !=
        0)
      connect_error = std::string("UDP flow socket: connect: ") + std::strerror(errno);
  }
  if (spec_.kernel && connect_error.empty()) {
    if (auto st = wire_kernel(*flow); !st)
      spdlog::warn("route {}: client {}: kernel path not set up ({}); user space carries this flow",
                   spec_.route_id, flow->peer_text(), st.error().describe());
  }

  Flow* raw = flow.get();
  if (raw->client_socket_is_udp) {
    // A flow socket the verdict program steers is not watched: its errors
    // are polled (poll_errors()). User space reads it only on the
    // user-space path.
    raw->settled = raw->kernel && raw->client_socket_is_source;
    auto on_client = [this, raw](uint32_t ev) { on_client_socket_readable(*raw, ev); };
    if (!raw->settled) (void)loop_.add(raw->client_socket.get(), EPOLLIN, on_client);
  }
  if (unix_listener() && raw->replyable() && raw->unix_cookie) {
    std::string alias = "addr:" + std::string(reinterpret_cast<const char*>(&raw->peer), raw->peer_len);
    if (alias != key) unix_address_alias_[alias] = key;
  }
  flows_[key] = std::move(flow);
  ++counters_.flows_created;
  spdlog::debug("route {}: new flow from {} ({} path)", spec_.route_id, raw->peer_text(),
                raw->kernel ? "kernel" : "user-space");
  if (!connect_error.empty()) {
    destroy_flow(key, connect_error);
    ++counters_.drop_setup_failed;
  } else if (raw->kernel) {
    settle(key);
  } else {
    for (size_t t = 0; t < raw->upstreams.size() && flows_.count(key); ++t)
      if (raw->upstreams[t].fd) on_upstream_readable(*raw, t, EPOLLIN);
    if (flows_.count(key) && raw->client_socket_is_udp) on_client_socket_readable(*raw, EPOLLIN);
  }
  for (const Stranger& d : strangers)
    handle_client_datagram(d.peer, d.peer_len, 0, std::nullopt, nullptr, d.data.data(), d.data.size());
  auto it = flows_.find(key);
  return it != flows_.end() && it->second.get() == raw ? raw : nullptr;
}

Status DatagramRoute::open_upstream(Flow& flow, size_t target) {
  auto fd = open_datagram_upstream(*spec_.to[target]);
  if (!fd) return fd.error();
  Upstream& up = flow.upstreams[target];
  up.fd = std::move(*fd);
  up.cookie = socket_cookie(up.fd.get()).value();
  Flow* raw = &flow;
  auto on_readable = [this, raw, target](uint32_t events) { on_upstream_readable(*raw, target, events); };
  if (auto st = loop_.add(up.fd.get(), EPOLLIN, on_readable); !st) return st;
  up.watched = true;
  return {};
}

Status DatagramRoute::wire_kernel(Flow& flow) {
  // Where the client's datagrams show up in the verdict program. A UDP
  // flow socket of a broadcast route stays out of it: user space reads it
  // and copies each datagram to every target.
  flow.client_socket_is_source = flow.client_socket_is_udp && !broadcast();
  if (flow.client_socket_is_source)
    flow.client_key = flow.client_socket_cookie;
  else if (!flow.client_socket_is_udp)
    flow.client_key = flow.unix_cookie;  // 0 if unknown: user space forwards
  for (size_t t = 0; t < flow.upstreams.size(); ++t)
    if (flow.upstreams[t].fd)
      if (auto st = wire_upstream(flow, t); !st) return st;
  if (flow.client_socket)
    if (auto st = maps_->add_target(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
  // Order: flows and targets first, then sources (which starts the verdict
  // program on the socket).
  if (flow.client_key)
    if (auto st = write_forward_flow(flow); !st) return st;
  if (flow.client_socket_is_source)
    if (auto st = maps_->add_source(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
  flow.kernel = true;
  return {};
}

Status DatagramRoute::wire_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  // Replies go through the kernel when we hold a socket connected to the
  // client; otherwise the upstream socket stays out of the verdict program
  // and user space reads its replies with their boundaries intact.
  if (flow.client_socket)
    if (auto st = maps_->set_flow(up.cookie,
                                  FlowEntry{flow.client_socket_cookie, spec_.route_id, RELAY_FLOW_NO_BYTES});
        !st)
      return st;
  if (auto st = maps_->add_target(up.cookie, up.fd.get()); !st) return st;
  if (!flow.client_socket) return {};
  if (spec_.to[target]->address.family() == AF_UNIX) {
    // AF_UNIX shows the verdict program the sender: the one upstream
    // server, shared by every flow. This socket needs its own instance.
    MapWriter::PrivateProgram program;
    program.fixed_source = up.cookie;
    if (auto st = maps_->add_private_source(up.cookie, up.fd.get(), program); !st) return st;
    up.is_private = true;
  } else {
    if (auto st = maps_->add_source(up.cookie, up.fd.get()); !st) return st;
    up.is_source = true;
  }
  return {};
}

// The kernel still runs a socket's data-ready wake-up after the verdict
// program redirected its skb: once a flow has settled, a socket the verdict
// program steers is not read, or the relay would wake for every datagram it
// never reads (measured: 11-20 % of a core at 100 k datagrams/s).
uint32_t DatagramRoute::upstream_events(const Flow& flow, const Upstream& up) {
  return flow.settled && (up.is_source || up.is_private) ? 0u : static_cast<uint32_t>(EPOLLIN);
}

// A steered upstream socket that needs no event is left out of epoll
// altogether and its errors are polled (poll_errors()): even an errors-only
// registration puts the relay on the socket's wait queue, and the kernel
// then calls into epoll for every datagram the socket receives or sends
// (sock_def_readable/sock_def_write_space; measured ~3 % of a flat-out
// run's samples). With several targets it stays registered: a failed target
// leaves the rotation at once.
void DatagramRoute::watch_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  if (!up.fd) return;
  uint32_t events = upstream_events(flow, up) | (up.pending.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
  if (events == 0 && spec_.to.size() == 1) {
    if (up.watched) loop_.remove(up.fd.get());
    up.watched = false;
  } else if (up.watched) {
    (void)loop_.modify(up.fd.get(), events);
  } else {
    Flow* raw = &flow;
    auto on_readable = [this, raw, target](uint32_t ev) { on_upstream_readable(*raw, target, ev); };
    up.watched = loop_.add(up.fd.get(), events, on_readable).ok();
  }
}

// Errors of the steered sockets epoll does not watch, once per tick: a
// client gone (ICMP port unreachable on its flow socket) ends its flow, a
// target refusing ends the flow or takes the target out of the rotation,
// as a watched socket's EPOLLERR would, up to a tick later.
void DatagramRoute::poll_errors() {
  std::vector<std::pair<std::string, int>> client_errors;
  std::vector<std::tuple<std::string, size_t, int>> upstream_errors;
  for (auto& [key, flow] : flows_) {
    if (!flow->settled) continue;
    auto error_of = [](int fd) {
      int err = 0;
      socklen_t len = sizeof(err);
      return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 ? err : errno;
    };
    if (flow->kernel && flow->client_socket_is_source)
      if (int err = error_of(flow->client_socket.get())) client_errors.emplace_back(key, err);
    for (size_t t = 0; t < flow->upstreams.size(); ++t)
      if (flow->upstreams[t].fd && !flow->upstreams[t].watched)
        if (int err = error_of(flow->upstreams[t].fd.get())) upstream_errors.emplace_back(key, t, err);
  }
  for (const auto& [key, err] : client_errors)
    destroy_flow(key, std::string("client socket error: ") + std::strerror(err));
  for (const auto& [key, t, err] : upstream_errors) {
    auto it = flows_.find(key);
    if (it != flows_.end() && it->second->upstreams[t].fd)
      upstream_failed(*it->second, t, std::strerror(err));
  }
}

// A kernel flow, right after its sockets entered the map and before user
// space sends its first datagram: one read of each steered upstream socket,
// then errors only. Nothing but a stray datagram can be there yet (its
// ephemeral port is new to the target; a late reply to an earlier socket on
// the same port is the one case), and nothing can race the read, since the
// target has not heard from this socket. Reading on would race the verdict
// program's read_skb for the same queue and send datagrams out of order
// (measured on the subscriber route: 4 of 63k); a flow used to be read for
// its first 500 ms.
void DatagramRoute::settle(const std::string& key) {
  auto it = flows_.find(key);
  if (it == flows_.end()) return;
  Flow* flow = it->second.get();
  flow->settled = true;
  if (flow->client_socket_is_source) {
    // What reached the UDP flow socket between connect() and its insertion
    // would lag behind for the whole flow (the program takes one queued skb
    // per arriving one) and its last datagrams would never leave: read to
    // the end once. A client flooding right now can see its first few
    // datagrams reordered against the program's; one that slipped in from
    // another client before connect() goes where the listener would send it.
    for (int round = 0; round < 64 && flows_.count(key); ++round) {
      std::vector<Stranger> others;
      int n = read_batch(flow->client_socket.get(), buffer_.get(),
                         [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size) {
                           if (len == flow->peer_len && std::memcmp(&peer, &flow->peer, len) == 0)
                             send_to_upstream(*flow, d, size);
                           else
                             others.push_back({peer, len, std::string(d, size)});
                         });
      for (const Stranger& d : others)
        handle_client_datagram(d.peer, d.peer_len, 0, std::nullopt, nullptr, d.data.data(), d.data.size());
      if (n < kBatch) break;
    }
  }
  for (size_t t = 0; t < flow->upstreams.size() && flows_.count(key); ++t)
    if (flow->upstreams[t].fd) settle_upstream(key, t);
}

// One upstream socket of a kernel flow, once it is in the map and before
// anything was sent through it: a stray datagram read, then errors only if
// the verdict program steers it (and EPOLLOUT while user space has
// datagrams waiting for it). A read may end the flow.
void DatagramRoute::settle_upstream(const std::string& key, size_t target) {
  auto it = flows_.find(key);
  if (it == flows_.end() || !it->second->upstreams[target].fd) return;
  on_upstream_readable(*it->second, target, EPOLLIN);
  it = flows_.find(key);
  if (it == flows_.end()) return;
  Flow& flow = *it->second;
  Upstream& up = flow.upstreams[target];
  if (!up.fd || !(up.is_source || up.is_private)) return;
  watch_upstream(flow, target);
}

Status DatagramRoute::write_forward_flow(Flow& flow) {
  FlowEntry entry;
  entry.route_id = spec_.route_id;
  entry.flags = RELAY_FLOW_NO_BYTES;
  if (spec_.to.size() == 1 && !broadcast()) {
    entry.target_cookie = flow.upstreams[0].cookie;
  } else {
    entry.balance = balance_code(spec_.balance == Balance::Single ? Balance::RoundRobin : spec_.balance);
    entry.client_hash = flow.client_hash;
    // Only the targets that are up: the program picks among these.
    for (size_t t = 0; t < flow.upstreams.size(); ++t) {
      if (!flow.upstreams[t].fd || targets_[t].down) continue;
      entry.targets[entry.n_targets] = flow.upstreams[t].cookie;
      entry.target_index[entry.n_targets] = static_cast<uint8_t>(t);
      ++entry.n_targets;
    }
  }
  return maps_->set_flow(flow.client_key, entry);
}

// A target went down or came back: every kernel flow of the route gets its
// list of live targets rewritten.
void DatagramRoute::rewrite_forward_flows() {
  if (!spec_.kernel) return;
  for (auto& [key, flow] : flows_)
    if (flow->kernel && flow->client_key)
      if (auto st = write_forward_flow(*flow); !st)
        spdlog::warn("route {}: {}", spec_.route_id, st.error().describe());
}

void DatagramRoute::close_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  if (!up.fd) return;
  if (flow.kernel) {
    // Stop steering first, then forget the route, then the target.
    if (up.is_private) maps_->remove_private_source(up.cookie);
    if (up.is_source) maps_->remove_source(up.cookie);
    maps_->remove_flow(up.cookie);
    maps_->remove_target(up.cookie);
  }
  counters_.drop_target_full += up.pending.size();  // never sent: the flow or target went away
  if (up.watched) loop_.remove(up.fd.get());
  up = Upstream{};
}

void DatagramRoute::send_to_upstream(Flow& flow, const char* data, size_t len) {
  flow.last_user_ns = now_ns();
  size_t n = flow.upstreams.size();
  auto usable = [&](size_t t) { return flow.upstreams[t].fd.valid() && !targets_[t].down; };
  auto send_one = [&](size_t t) {
    Upstream& up = flow.upstreams[t];
    if (up.pending.empty()) {
      if (send(up.fd.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) {
        count_sent(t, len);
        return;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        ++counters_.drop_send_error;
        return;
      }
    }
    if (up.pending.size() >= kMaxPending) {
      ++counters_.drop_target_full;
      return;
    }
    up.pending.emplace_back(data, len);
    if (up.pending.size() == 1) watch_upstream(flow, t);  // EPOLLOUT
  };
  if (broadcast()) {
    bool any = false;
    for (size_t t = 0; t < n; ++t)
      if (usable(t)) {
        send_one(t);
        any = true;
      }
    if (!any) ++counters_.drop_all_targets_down;
    return;
  }
  // The same choice the verdict program makes (relay.bpf.c), among the same
  // live targets, so a flow's first datagram goes where its next ones will.
  std::vector<size_t> live;
  for (size_t t = 0; t < n; ++t)
    if (usable(t)) live.push_back(t);
  if (!live.empty()) {
    uint64_t pick = spec_.balance == Balance::Hash ? flow.client_hash : flow.next_target++;
    send_one(live[pick % live.size()]);
    return;
  }
  ++counters_.drop_all_targets_down;
}

void DatagramRoute::send_to_client(Flow& flow, const char* data, size_t len) {
  flow.last_user_ns = now_ns();
  ssize_t sent;
  if (flow.client_socket)
    sent = send(flow.client_socket.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  else if (flow.replyable())
    sent = sendto(listener_.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL,
                  reinterpret_cast<const sockaddr*>(&flow.peer), flow.peer_len);
  else {
    ++counters_.drop_no_reply_path;
    return;
  }
  if (sent < 0) {
    ++counters_.drop_send_error;
    return;
  }
  ++counters_.user_packets;
  counters_.user_bytes += len;
}

void DatagramRoute::count_sent(size_t target, size_t len) {
  ++counters_.user_packets;
  counters_.user_bytes += len;
  ++targets_[target].user_packets;
  targets_[target].user_bytes += len;
}

void DatagramRoute::flush_pending(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  while (!up.pending.empty()) {
    const std::string& d = up.pending.front();
    if (send(up.fd.get(), d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // wait for the next EPOLLOUT
      ++counters_.drop_send_error;
    } else {
      count_sent(target, d.size());
    }
    up.pending.pop_front();
  }
  watch_upstream(flow, target);
}

void DatagramRoute::on_upstream_readable(Flow& flow, size_t target, uint32_t events) {
  std::string key = flow.key;
  int fd = flow.upstreams[target].fd.get();
  if (events & EPOLLOUT) flush_pending(flow, target);
  int n = read_batch(fd, buffer_.get(), [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
    send_to_client(flow, d, size);
  });
  if (n >= 0 && !(events & EPOLLERR)) return;
  // recvmmsg() reports (and clears) a pending error; else ask SO_ERROR.
  int err = n < 0 ? errno : 0;
  socklen_t len = sizeof(err);
  if (err == 0) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  upstream_failed(flow, target, err ? std::strerror(err) : "socket error");
}

void DatagramRoute::upstream_failed(Flow& flow, size_t target, const std::string& why) {
  std::string key = flow.key;
  if (spec_.to.size() == 1) {
    // One target: the flow cannot go on; the client's next datagram opens
    // a new one.
    destroy_flow(key, why);
    return;
  }
  // Several: this target leaves the rotation of every flow until a retry
  // finds it answering; the flow carries on with the others.
  close_upstream(flow, target);
  if (flow.kernel && flow.client_key) (void)write_forward_flow(flow);
  target_failed(target, why);
}

void DatagramRoute::on_client_socket_readable(Flow& flow, uint32_t events) {
  std::string key = flow.key;
  int n = read_batch(flow.client_socket.get(), buffer_.get(),
                     [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
                       send_to_upstream(flow, d, size);
                     });
  if (n < 0 || (events & EPOLLERR)) destroy_flow(key, "client socket error");
}

void DatagramRoute::target_failed(size_t target, const std::string& why) {
  TargetState& ts = targets_[target];
  auto now = std::chrono::steady_clock::now();
  ++ts.failures;
  if (ts.down) return;
  // A target that stayed up for a while starts its back-off afresh.
  if (now - ts.last_failure > kMaxBackoff) ts.backoff = kFirstBackoff;
  ts.last_failure = now;
  ts.down = true;
  ts.retry_at = now + ts.backoff;
  spdlog::warn("route {}: target {} failed ({}); out of the rotation, retry in {} ms", spec_.route_id,
               spec_.to[target]->name, why, ts.backoff.count());
  ts.backoff = std::min(ts.backoff * 2, kMaxBackoff);
  rewrite_forward_flows();
}

void DatagramRoute::retry_targets() {
  auto now = std::chrono::steady_clock::now();
  for (size_t t = 0; t < targets_.size(); ++t) {
    TargetState& ts = targets_[t];
    if (!ts.down || now < ts.retry_at) continue;
    // Back when a socket connects to it again (for UDP that is only a
    // chance: a refusal on the next datagram takes it out again, with a
    // longer back-off). Every flow gets its upstream socket for it back.
    ts.down = false;
    bool ok = true;
    std::string why;
    std::vector<std::string> keys;  // by key: settling a socket may end its flow
    for (auto& [key, flow] : flows_)
      if (!flow->upstreams[t].fd) keys.push_back(key);
    for (const auto& key : keys) {
      auto it = flows_.find(key);
      if (it == flows_.end()) continue;
      Flow* flow = it->second.get();
      Status st = open_upstream(*flow, t);
      if (st && flow->kernel) st = wire_upstream(*flow, t);
      if (st && flow->kernel) {
        // Read before the program may send through it (see settle()).
        settle_upstream(key, t);
        it = flows_.find(key);
        if (it == flows_.end() || !it->second->upstreams[t].fd || targets_[t].down) continue;
        if (flow->client_key) st = write_forward_flow(*flow);
      }
      if (!st) {
        close_upstream(*flow, t);
        ok = false;
        why = st.error().describe();
        break;
      }
    }
    if (ok && ts.down) continue;  // a read while settling failed it again: target_failed() said so
    if (ok && flows_.empty()) {
      auto probe = open_datagram_upstream(*spec_.to[t]);
      if (!probe) {
        ok = false;
        why = probe.error().describe();
      }
    }
    if (!ok) {
      ts.down = false;  // target_failed() sets it again with the next back-off
      target_failed(t, why);
      continue;
    }
    spdlog::info("route {}: target {} is back in the rotation", spec_.route_id, spec_.to[t]->name);
    rewrite_forward_flows();
  }
}

void DatagramRoute::destroy_flow(const std::string& key, const std::string& failure) {
  auto it = flows_.find(key);
  if (it == flows_.end()) return;
  Flow& flow = *it->second;
  if (!failure.empty()) {
    ++counters_.flows_failed;
    spdlog::debug("route {}: flow from {} closed: {}", spec_.route_id, flow.peer_text(), failure);
  }
  if (flow.kernel) {
    if (flow.client_socket_is_source) maps_->remove_source(flow.client_socket_cookie);
    if (flow.client_key) maps_->remove_flow(flow.client_key);
    if (flow.client_socket) maps_->remove_target(flow.client_socket_cookie);
  }
  for (size_t t = 0; t < flow.upstreams.size(); ++t) close_upstream(flow, t);
  if (flow.client_socket_is_udp) loop_.remove(flow.client_socket.get());  // a no-op if not watched
  if (flow.replyable())
    unix_address_alias_.erase("addr:" +
                              std::string(reinterpret_cast<const char*>(&flow.peer), flow.peer_len));
  flows_.erase(it);
  budget_.give_back();
}

uint64_t DatagramRoute::last_activity_ns(const Flow& flow) const {
  uint64_t last = flow.last_user_ns;
  if (flow.kernel) {
    for (const auto& up : flow.upstreams)
      if (up.fd) last = std::max(last, maps_->flow_last_ns(up.cookie));
    if (flow.client_key) last = std::max(last, maps_->flow_last_ns(flow.client_key));
  }
  return last;
}

void DatagramRoute::tick() {
  poll_errors();
  expire_idle();
  retry_targets();
}

void DatagramRoute::expire_idle() {
  uint64_t now = now_ns();
  uint64_t idle = static_cast<uint64_t>(std::chrono::nanoseconds(spec_.idle_timeout).count());
  std::vector<std::string> expired;
  for (const auto& [key, flow] : flows_)
    if (now - std::min(now, last_activity_ns(*flow)) > idle) expired.push_back(key);
  for (const auto& key : expired) {
    destroy_flow(key, "");
    ++counters_.flows_expired;
  }
  std::vector<uint64_t> forgotten;
  for (const auto& [cookie, r] : refused_senders_) {
    uint64_t last = r.in_map ? std::max(r.last_ns, maps_->flow_last_ns(cookie)) : r.last_ns;
    if (now - std::min(now, last) > idle) forgotten.push_back(cookie);
  }
  for (uint64_t cookie : forgotten) forget_refused(cookie);
  if (!expired.empty())
    spdlog::debug("route {}: {} idle flow(s) expired, {} left", spec_.route_id, expired.size(),
                  flows_.size());
}

std::vector<TargetReport> DatagramRoute::targets() const {
  std::vector<TargetReport> out;
  auto now = std::chrono::steady_clock::now();
  for (size_t t = 0; t < targets_.size(); ++t) {
    const TargetState& ts = targets_[t];
    TargetReport r;
    r.name = spec_.to[t]->name;
    r.up = !ts.down;
    r.failures = ts.failures;
    r.user_packets = ts.user_packets;
    r.user_bytes = ts.user_bytes;
    if (ts.down)
      r.retry_in_ms = std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(ts.retry_at - now).count());
    out.push_back(r);
  }
  return out;
}

}  // namespace sockrelay
