// A new client's flow, set up in named steps: who the client is, whether it
// may in, its upstream sockets, its reply socket, its kernel wiring, and its
// first reads.
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>

#include "common/clock.h"
#include "common/hash.h"
#include "common/socket_cookie.h"
#include "endpoints/endpoint.h"
#include "endpoints/unix_diag.h"
#include "relay_shared.h"
#include "sessions/client_filter.h"
#include "sessions/datagram_batch.h"
#include "sessions/datagram_flow.h"
#include "sessions/datagram_route.h"
#include "sessions/peer_policy.h"

namespace sockrelay {

DatagramRoute::Flow* DatagramRoute::create_flow(const std::string& key, const sockaddr_storage& peer,
                                                socklen_t peer_len, uint64_t tagged_cookie,
                                                std::optional<uint32_t> owner_uid, const DatagramMeta* meta) {
  std::unique_ptr<Flow> flow = identify_client(key, peer, peer_len, tagged_cookie, owner_uid);
  if (meta && meta->local_len) {
    flow->local = meta->local;
    flow->local_len = meta->local_len;
  }
  if (!owner_allowed(*flow, tagged_cookie, owner_uid) || !source_allowed(*flow, peer) || !take_session(*flow))
    return nullptr;
  if (!open_upstreams(*flow)) return nullptr;  // counted, and the session given back
  if (defers_flow_socket(*flow)) {
    flow->flow_socket_deferred = true;
    std::string none;
    return add_flow(std::move(flow), none);
  }
  open_reply_socket(*flow);
  std::vector<Stranger> strangers;
  std::string setup_error = connect_reply_socket(*flow, strangers);
  if (flow->client_socket_is_udp) {
    // Its client's datagrams on the listener go first (datagram_hold.cpp).
    flow->leftovers_done = false;
    flow->connected_in_read = listener_reads_;
  }
  if (spec_.kernel && setup_error.empty()) try_kernel_path(*flow, strangers);
  narrow_receive_buffer(*flow);
  Flow* raw = add_flow(std::move(flow), setup_error);
  start_flow(key, setup_error);
  park_strangers(strangers);
  // Gone if its first reads failed it (counted there).
  auto it = flows_.find(key);
  return it != flows_.end() && it->second.get() == raw ? raw : nullptr;
}

// Who the client is: its address, if it has one to reply to, and for
// AF_UNIX the other half of its identity from sock_diag (its address from
// its cookie, or its cookie from its address) and its socket's owner, when
// the verdict program's tag did not say.
std::unique_ptr<DatagramRoute::Flow> DatagramRoute::identify_client(
    const std::string& key, const sockaddr_storage& peer, socklen_t peer_len, uint64_t tagged_cookie,
    std::optional<uint32_t>& owner_uid) const {
  auto flow = std::make_unique<Flow>();
  flow->key = key;
  flow->unix_cookie = tagged_cookie;
  if (has_reply_address(peer, peer_len)) {
    flow->peer = peer;
    flow->peer_len = peer_len;
  }
  if (unix_listener()) {
    auto info = tagged_cookie
                    ? find_unix_dgram_by_cookie(tagged_cookie)
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
  flow->client_hash = stable_hash(flow->replyable() ? address_bytes(flow->peer, flow->peer_len) : key);
  return flow;
}

// allow-uids on the kernel path: a datagram the verdict program tagged
// carries no credentials of its sender (the redirect re-sent it from kernel
// context), so the owner of the sender's socket decides, once per flow: from
// the tag (bpf_get_socket_uid), else from sock_diag. (Untagged datagrams
// were checked by their own credentials: sender_refused().)
bool DatagramRoute::owner_allowed(const Flow& flow, uint64_t tagged_cookie,
                                  std::optional<uint32_t> owner_uid) {
  if (!tagged_cookie || !unix_ids_policy()) return true;
  std::string why = owner_uid ? PeerPolicy::id_refusal(spec_.allow_uids, {}, *owner_uid, std::nullopt)
                              : "socket owner unknown (gone before sock_diag saw it)";
  if (why.empty()) return true;
  unix_steering_->refuse(tagged_cookie, monotonic_ns());
  count_refusal(flow.peer_text(), why);
  return false;
}

// allow-sources: a client outside them never gets a flow, so none of its
// datagrams reaches a target (the listener is not in the verdict program,
// and a flow socket only ever receives from its one client).
bool DatagramRoute::source_allowed(const Flow& flow, const sockaddr_storage& peer) {
  if (PeerPolicy::source_allowed(spec_.allow_sources, peer)) return true;
  count_refusal(flow.peer_text(), "not in allow-sources");
  return false;
}

bool DatagramRoute::take_session(const Flow& flow) {
  if (budget_.try_take()) return true;
  // One eviction makes room only when the budget is exactly full (a reload
  // that lowered max-sessions leaves it over until sessions end).
  if (budget_.used() == budget_.max() && evict_one(flow) && budget_.try_take()) return true;
  if (count_and_log_now(counters_.refused_max_sessions))
    spdlog::warn(
        "route {}: max-sessions ({}) reached and none of this route's {} flow(s) may be evicted (none "
        "silent for the last {} ms): dropping datagrams from new client {} (counted)",
        spec_.route_id, budget_.max(), table_.size(), table_.rules().protect_ns / 1'000'000,
        flow.peer_text());
  return false;
}

// One upstream socket per target that is up; a target that cannot be
// reached now leaves the rotation until its retry. None opened: the flow
// is not set up and its session goes back to the budget.
bool DatagramRoute::open_upstreams(Flow& flow) {
  flow.last_user_ns = monotonic_ns();
  flow.upstreams.resize(spec_.to.size());
  size_t opened = 0;
  std::string why;
  int out_of_fds = 0;  // EMFILE/ENFILE: the relay's limit, never the target's failure
  for (size_t t = 0; t < spec_.to.size(); ++t) {
    if (!targets_[t].health.up()) continue;
    if (auto st = open_upstream(flow, t); !st) {
      why = st.error().describe();
      if (out_of_descriptors(st.error().code))
        out_of_fds = st.error().code;
      else
        target_failed(t, why);
    } else {
      ++opened;
    }
  }
  if (opened > 0) return true;
  budget_.give_back();
  if (out_of_fds) {
    fd_limit_log_.hit(spec_.route_id, counters_.drop_fd_limit, "new client's upstream socket", out_of_fds);
    return false;
  }
  if (count_and_log_now(counters_.drop_setup_failed))
    spdlog::warn("route {}: new client {}: no target reachable{}{} (datagram dropped, counted)",
                 spec_.route_id, flow.peer_text(), why.empty() ? "" : ": ", why);
  return false;
}

// A UDP client's flow socket waits for its second datagram: a client that
// sends one request and goes (DNS-like) costs one upstream socket and no
// flow socket. A flow socket is bound to the listener's address and port,
// and the kernel walks every socket on that address and port to bind one
// (udp_lib_lport_inuse2(), with SO_REUSEADDR on both sides) and to find
// the listener for a new client's first datagram (udp4_lib_lookup2(), the
// connected flow sockets scored first): at 4,096 flows, ~330 µs of CPU
// per new client, 2,652 new clients/s (tests/bench/README.md, "Many
// clients"). Replies to a client without one leave from the listener.
// Broadcast keeps it from the first datagram (user space reads it to copy
// each datagram to every target).
bool DatagramRoute::defers_flow_socket(const Flow& flow) const {
  return flow.replyable() && !unix_listener() && !broadcast();
}

// The client sent again: its flow socket, connected, and on a kernel route
// the kernel path, as a new client's would be from its first datagram
// (create_flow()); what it sent before is forwarded first, in order, by
// the same hold. When the socket cannot be had, replies keep leaving from
// the listener. False when the flow ended here (its datagram is counted):
// it could not be watched, or its target refused while it settled.
bool DatagramRoute::open_flow_socket(Flow& flow) {
  flow.flow_socket_deferred = false;
  open_reply_socket(flow);
  if (!flow.client_socket_is_udp) return true;
  std::vector<Stranger> strangers;
  std::string setup_error = connect_reply_socket(flow, strangers);
  if (!setup_error.empty()) {
    spdlog::debug("route {}: client {}: {}; replies go through user space", spec_.route_id, flow.peer_text(),
                  setup_error);
    flow.client_socket = Fd();
    flow.client_socket_is_udp = false;
    flow.filtered = false;
    park_strangers(strangers);
    return true;
  }
  flow.leftovers_done = false;
  flow.connected_in_read = listener_reads_;
  if (spec_.kernel) try_kernel_path(flow, strangers);
  narrow_receive_buffer(flow);
  std::string key = flow.key;
  watch_flow_socket(flow, setup_error);
  // Unlike a new flow's (start_flow()), its sockets need no first read on
  // the user-space path: the upstream ones have been watched all along, and
  // the flow socket is now.
  if (!setup_error.empty()) {
    destroy_flow(key, setup_error);
    ++counters_.drop_setup_failed;
  } else if (flow.kernel) {
    settle(key);
    if (!flows_.count(key)) ++counters_.drop_target_unreachable;  // upstream_failed() ended it
  }
  park_strangers(strangers);
  return flows_.count(key) > 0;
}

// The flow socket's local address: the listener's, with the address the
// client's first datagram was sent to when the listener is a wildcard.
void DatagramRoute::set_flow_local_address(Flow& flow) const {
  SocketAddress listen = spec_.from->address;
  if (flow.local_len == 0) {
    flow.local = listen.storage;
    flow.local_len = listen.length;
  }
  inet_port(flow.local) = inet_port(listen.storage);
}

// The reply path: a socket connected to the client, which the kernel can
// send through. Without one, user space replies from the listener.
void DatagramRoute::open_reply_socket(Flow& flow) {
  if (flow.replyable() && !unix_listener()) {
    // Where the client sent to (a wildcard listener), else the listener's
    // own address.
    set_flow_local_address(flow);
    // Bound now, connected (connect_reply_socket()) before the verdict
    // program steers it.
    auto s = bind_udp_flow_socket(reinterpret_cast<const sockaddr*>(&flow.local), flow.local_len);
    if (s) {
      flow.client_socket = std::move(*s);
      flow.client_socket_is_udp = true;
    } else {
      spdlog::debug("route {}: {}; replies to {} go through user space", spec_.route_id, s.error().describe(),
                    flow.peer_text());
    }
  } else if (flow.replyable() && !flow.connected_to_listener) {
    // A client that connect()ed to our listener accepts datagrams from the
    // listener only, so a socket of ours connected to it could not reply.
    auto s = open_unix_flow_socket(reinterpret_cast<const sockaddr*>(&flow.peer), flow.peer_len);
    if (s) flow.client_socket = std::move(*s);
  }
  if (flow.client_socket) flow.client_socket_cookie = socket_cookie(flow.client_socket.get()).value();
}

// A UDP flow socket is connected to its client before the verdict program
// steers it. Until connect() it is one more unconnected socket on the
// listener's address, the newest, so it catches every client's datagrams
// (measured): those are read back into `strangers` right after connect()
// (bind and connect are back to back, so that window is as short as it
// gets), to be handled as if the listener had received them; the client's
// own wait for its leftovers on the listener. Steered while still
// unconnected, the program would send them up this client's flow (cc0d325
// did; and with a filter before connect(), measured in r8, they were
// dropped: 1-15 a run of FlowOrder with the CPUs busy, the listener's
// SK_LOOKUP program notwithstanding). A datagram the kernel matched to the
// socket before connect() can still be queued on it after connect()
// returned and after that read (measured: 5-7 of 4,000 clients in a
// burst, 2 ms after connect(); each went up the wrong client's flow, and
// its own client got another's reply or none). So before the read the
// socket gets a filter that admits its client only: a late stray is
// dropped and counted (`stray`, release_filters()), never sent up this
// flow. Returns why the flow cannot go on, empty when it can.
std::string DatagramRoute::connect_reply_socket(Flow& flow, std::vector<Stranger>& strangers) {
  if (!flow.client_socket_is_udp) return "";
  int fd = flow.client_socket.get();
  // Each datagram's receive time, to put strangers in their place.
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&flow.peer), flow.peer_len) != 0)
    return std::string("UDP flow socket: connect: ") + std::strerror(errno);
  // Only a socket the verdict program will steer needs it: user space,
  // reading one, tells a stranger by its address (on_client_socket_readable()),
  // and the socket's drops then are its full receive buffer (flow-overflow),
  // which the filter's window would count as strays.
  if (spec_.kernel && !broadcast()) {
    if (auto st = admit_only_client(fd, flow.peer); st)
      flow.filtered = true;
    else
      spdlog::debug("route {}: client {}: {}", spec_.route_id, flow.peer_text(), st.error().describe());
  }
  read_before_steering(flow, strangers);
  return "";
}

// The verdict program carries the flow from here on; or, when its map
// entries cannot be written, user space does, and none of them stays
// behind.
void DatagramRoute::try_kernel_path(Flow& flow, std::vector<Stranger>& strangers) {
  Status st = wire_kernel(flow, strangers);
  if (st) return;
  unwire_client(flow);
  for (Upstream& up : flow.upstreams)
    if (up.fd) unwire_upstream(up);
  spdlog::warn("route {}: client {}: kernel path not set up ({}); user space carries this flow",
               spec_.route_id, flow.peer_text(), st.error().describe());
}

Status DatagramRoute::wire_kernel(Flow& flow, std::vector<Stranger>& strangers) {
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
  // Order: the hold, flows and targets first, then sources (which starts
  // the verdict program on the socket).
  if (flow.client_key) {
    if (auto st = begin_hold(flow); !st) return st;
    if (auto st = write_forward_flow(flow); !st) return st;
  }
  if (flow.client_socket_is_source) {
    read_before_steering(flow, strangers);
    if (auto st = maps_->add_source(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
    note_lingering(flow);
  }
  flow.kernel = true;
  return {};
}

Status DatagramRoute::wire_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  // Asked here, not when opened: a client of one request never needs it.
  if (!up.cookie) up.cookie = socket_cookie(up.fd.get()).value();
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

// What wire_kernel() wrote for the client's side (removing an entry that
// is not there is harmless).
void DatagramRoute::unwire_client(Flow& flow) {
  forget_hold(flow);
  if (flow.client_socket_is_source) maps_->remove_source(flow.client_socket_cookie);
  if (flow.client_key) maps_->remove_flow(flow.client_key);
  if (flow.client_socket) maps_->remove_target(flow.client_socket_cookie);
  flow.client_socket_is_source = false;
  flow.client_key = 0;
}

void DatagramRoute::unwire_upstream(Upstream& up) {
  // Stop steering first, then forget the route, then the target.
  if (up.is_private) maps_->remove_private_source(up.cookie);
  if (up.is_source) maps_->remove_source(up.cookie);
  maps_->remove_flow(up.cookie);
  maps_->remove_target(up.cookie);
  up.is_private = up.is_source = false;
}

// The flow joins the route: its UDP flow socket watched unless the verdict
// program steers it, its address known as an alias of its cookie key.
// `setup_error` says why the flow cannot go on, if its socket cannot be
// watched (its client's datagrams would wait there unread).
DatagramRoute::Flow* DatagramRoute::add_flow(std::unique_ptr<Flow> flow, std::string& setup_error) {
  Flow* raw = flow.get();
  watch_flow_socket(*raw, setup_error);
  if (unix_listener() && raw->replyable() && raw->unix_cookie) {
    std::string alias = "addr:" + address_bytes(raw->peer, raw->peer_len);
    if (alias != raw->key) unix_address_alias_[alias] = raw->key;
  }
  flows_[raw->key] = std::move(flow);
  table_.insert(*raw, raw->last_user_ns);
  ++counters_.flows_created;
  // peer_text() formats an address: not for a line nobody reads.
  if (spdlog::should_log(spdlog::level::debug))
    spdlog::debug("route {}: new flow from {} ({} path)", spec_.route_id, raw->peer_text(),
                  raw->kernel ? "kernel" : "user-space");
  return raw;
}

// A new UDP flow socket: watched unless the verdict program steers it (its
// errors are then polled: poll_errors(); user space reads it only on the
// user-space path), its flow waiting for its leftovers on the listener,
// its filter's end set.
void DatagramRoute::watch_flow_socket(Flow& flow, std::string& setup_error) {
  if (flow.client_socket_is_udp) {
    flow.settled = flow.kernel && flow.client_socket_is_source;
    Flow* raw = &flow;
    auto on_client = [this, raw](uint32_t ev) { on_client_socket_readable(*raw, ev); };
    if (!flow.settled && setup_error.empty())
      if (auto st = loop_.add(flow.client_socket.get(), EPOLLIN, on_client); !st)
        setup_error = "UDP flow socket: " + st.error().describe();
  }
  if (!flow.leftovers_done) awaiting_listener_.push_back(flow.key);
  if (flow.filtered) {
    flow.filter_until_tick = ticks_ + 2;
    filtered_.push_back(flow.key);
  }
}

// The flow's first reads: a kernel flow settles (settle()); on the
// user-space path, what its sockets caught already is forwarded. A flow
// that could not be set up goes at once (its datagram is counted dropped).
void DatagramRoute::start_flow(const std::string& key, const std::string& setup_error) {
  if (!setup_error.empty()) {
    destroy_flow(key, setup_error);
    ++counters_.drop_setup_failed;
    return;
  }
  Flow* flow = flows_.at(key).get();
  if (flow->kernel) {
    settle(key);
    return;
  }
  for (size_t t = 0; flows_.count(key) && t < flow->upstreams.size(); ++t)
    if (flow->upstreams[t].fd) on_upstream_readable(*flow, t, EPOLLIN);
  if (flows_.count(key) && flow->client_socket_is_udp) on_client_socket_readable(*flow, EPOLLIN);
}

// A kernel flow, right after its sockets entered the map and before user
// space sends its first datagram: one read of each steered upstream socket,
// then errors only. Nothing but a stray datagram can be there yet (its
// ephemeral port is new to the target; a late reply to an earlier socket on
// the same port is the one case), and nothing can race the read, since the
// target has not heard from this socket. Reading on would race the verdict
// program's read_skb for the same queue and send datagrams out of order
// (measured on the subscriber route: 4 of 63k). The client's side needs no
// read: its flow socket was read just before it entered the map, and the
// hold keeps the rest in order (datagram_hold.cpp).
void DatagramRoute::settle(const std::string& key) {
  auto it = flows_.find(key);
  if (it == flows_.end()) return;
  Flow* flow = it->second.get();
  flow->settled = true;
  // The baseline of the kernel's drop count on the flow socket: a count
  // that grows later means the verdict program's redirects to the upstream
  // socket are failing (kernel_stopped_sending()).
  if (flow->client_socket_is_source) flow->drops_settled = kernel_drops(flow->client_socket.get());
  for (size_t t = 0; flows_.count(key) && t < flow->upstreams.size(); ++t)
    if (flow->upstreams[t].fd) settle_upstream(key, t);
}

// A new UDP flow socket's filter (admit_only_client()) stays for its
// flow's first two ticks, 50 ms or more, then goes: the datagrams it
// dropped are counted as `stray`, and the socket costs nothing more per
// datagram.
void DatagramRoute::release_filters() {
  size_t kept = 0;
  for (size_t i = 0; i < filtered_.size(); ++i) {
    auto it = flows_.find(filtered_[i]);
    if (it == flows_.end() || !it->second->filtered) continue;
    Flow& flow = *it->second;
    if (flow.filter_until_tick > ticks_) {
      if (kept++ != i) filtered_[kept - 1] = std::move(filtered_[i]);
      continue;
    }
    count_stray_drops(flow);
    int fd = flow.client_socket.get();
    int unused = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof(unused)) != 0)
      spdlog::debug("route {}: client {}: SO_DETACH_FILTER: {}", spec_.route_id, flow.peer_text(),
                    std::strerror(errno));
  }
  filtered_.resize(kept);
}

// What the filter dropped: every drop the socket counted (SO_MEMINFO) but
// the verdict program's own (target-full, counted by it, in the same
// count: a flood into a stalled target had 550 of them called strays),
// which while it is filtered are the strays (a steered socket's queue is
// taken by the verdict program as datagrams arrive). Later losses on the
// socket are counted from here (count_lost_at_close(),
// kernel_stopped_sending(): both take the program's drops off again).
void DatagramRoute::count_stray_drops(Flow& flow) {
  flow.filtered = false;
  uint32_t all = kernel_drops(flow.client_socket.get());
  uint32_t program = flow.kernel && flow.client_key ? maps_->flow_dropped(flow.client_key) : 0;
  uint32_t drops = all > program ? all - program : 0;
  flow.drops_settled = drops;
  if (drops == 0) return;
  counters_.drop_stray += drops;
  spdlog::debug("route {}: {} datagram(s) of other clients dropped on the new flow socket of {}",
                spec_.route_id, drops, flow.peer_text());
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

}  // namespace sockrelay
