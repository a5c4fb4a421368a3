// The datagram route's life (start, tick, stop), its listener, and finding
// the flow each client datagram belongs to. A new client's flow is set up
// in datagram_flow_setup.cpp, datagrams are moved in
// datagram_forwarding.cpp, targets' health is kept in datagram_targets.cpp.
#include "sessions/datagram_route.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <optional>

#include "common/clock.h"
#include "common/socket_cookie.h"
#include "config/address.h"
#include "endpoints/unix_diag.h"
#include "sessions/datagram_batch.h"
#include "sessions/datagram_flow.h"
#include "sessions/peer_policy.h"

namespace sockrelay {

namespace {

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

// An established flow active within the last second (or idle-timeout, if
// shorter) is never evicted: see flow_table.h.
constexpr uint64_t kEvictionProtectNs = 1'000'000'000;

FlowTable::Rules table_rules(const DatagramRouteSpec& spec) {
  FlowTable::Rules rules;
  rules.established_ns = ms_to_ns(static_cast<uint64_t>(spec.idle_timeout.count()));
  // Never longer than idle-timeout (the config refuses it; a spec built
  // with a short idle_timeout only means it).
  rules.unreplied_ns =
      std::min(rules.established_ns, ms_to_ns(static_cast<uint64_t>(spec.unreplied_timeout.count())));
  rules.protect_ns = std::min(kEvictionProtectNs, rules.established_ns);
  return rules;
}

// Which targets' upstream sockets are made ahead (upstream_pool.h): the
// IP ones.
std::vector<bool> pooled_targets(const DatagramRouteSpec& spec) {
  std::vector<bool> pooled;
  for (const Endpoint* to : spec.to)
    pooled.push_back(to->address.family() == AF_INET || to->address.family() == AF_INET6);
  return pooled;
}

bool no_credentials(const ucred& cred) {
  static const uint32_t uid = overflow_id("/proc/sys/kernel/overflowuid");
  static const uint32_t gid = overflow_id("/proc/sys/kernel/overflowgid");
  return cred.pid == 0 && cred.uid == uid && cred.gid == gid;
}

}  // namespace

DatagramRoute::DatagramRoute(DatagramRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop,
                             SessionBudget& budget)
    : spec_(std::move(spec)),
      listener_(std::move(listener)),
      maps_(maps),
      loop_(loop),
      budget_(budget),
      table_(table_rules(spec_), [this](FlowTable::Node& node) { return probe(static_cast<Flow&>(node)); }),
      targets_(spec_.to.size()),
      ready_upstreams_(loop, pooled_targets(spec_)),
      buffer_(new char[kBatchBufferSize]),
      listener_buffer_(new char[kBatchBufferSize]) {}

DatagramRoute::~DatagramRoute() {
  loop_.forget_idle(this);
  stop();
}

bool DatagramRoute::unix_listener() const { return spec_.from->address.family() == AF_UNIX; }

Status DatagramRoute::start() {
  auto cookie = socket_cookie(listener_.get());
  if (!cookie) return cookie.error();
  listener_cookie_ = *cookie;
  listener_inode_ = socket_inode(listener_.get());
  if (unix_listener() && unix_ids_policy()) {
    // allow-gids never reaches here on the kernel path: the config's route
    // rules refuse it (config/route_rules.cpp), since a redirected datagram
    // carries no credentials and sock_diag knows an owner uid, no gid.
    // Every datagram read here carries its sender's credentials, which
    // allow-uids/allow-gids are checked against. Set before the first read:
    // a datagram queued before carries none and is refused.
    int one = 1;
    if (setsockopt(listener_.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0)
      return errno_error("listener " + spec_.from->name + ": SO_PASSCRED");
  }
  if (spec_.kernel && unix_listener())
    if (auto st = steer_unix_listener(); !st) return st.error().wrap("listener " + spec_.from->name);
  if (auto st = ask_local_address(); !st) return st.error().wrap("listener " + spec_.from->name);
  keep_listener_datagrams();
  // A UDP listener stays out of the map: each client gets a flow socket,
  // so the listener only ever sees first datagrams. A unix listener the
  // verdict program steers is not watched at all: the program hands every
  // datagram on (a new sender's through the new-client socket), and a read
  // here would race its read_skb for the queue (measured: a datagram of a
  // steered flow taken by user space and delivered out of order under a
  // flood); even an errors-only registration costs a wake-up call per
  // datagram (see poll_errors()).
  if (!unix_steering_)
    if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st)
      return st;
  started_ = true;
  return {};
}

// A wildcard UDP listener (0.0.0.0, [::]) is asked for each datagram's
// destination address, which the client's flow socket is bound to: the
// kernel's UDP lookup then finds it by its 4-tuple, and replies leave from
// the address the client sent to (bound to the wildcard, connect() would
// pick the route's source: 127.0.0.1 for a client of 127.0.0.7, which a
// connected client does not accept, and its datagrams would keep reaching
// the listener).
Status DatagramRoute::ask_local_address() {
  if (unix_listener() || !wildcard_inet(spec_.from->address.storage)) return {};
  int one = 1;
  int family = spec_.from->address.family();
  if (setsockopt(listener_.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) != 0)
    return errno_error("IP_PKTINFO");
  if (family == AF_INET6 &&
      setsockopt(listener_.get(), IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) != 0)
    return errno_error("IPV6_RECVPKTINFO");
  return {};
}

// A UDP listener gets every datagram to its address that no connected
// flow socket takes (MapWriter::keep_listener_datagrams()): a flow socket
// bound and not yet connected then catches no other client's datagrams but
// one whose lookup races its connect(). Without it (no BPF, or a kernel
// without SK_LOOKUP), it catches many. Either way they are read back after
// connect() and put in their place among their client's datagrams on the
// listener by receive time (park_strangers()).
void DatagramRoute::keep_listener_datagrams() {
  if (unix_listener()) return;
  // Each datagram's receive time, to put strangers in their place.
  int one = 1;
  setsockopt(listener_.get(), SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));
  if (!maps_) return;
  if (auto st = maps_->keep_listener_datagrams(listener_cookie_, listener_.get()); !st) {
    spdlog::info("route {}: {}: new clients' first datagrams may be reordered", spec_.route_id,
                 st.error().describe());
    return;
  }
  listener_kept_ = true;
}

// See unix_listener_steering.h. On failure nothing of it stays behind.
Status DatagramRoute::steer_unix_listener() {
  unix_steering_ =
      std::make_unique<UnixListenerSteering>(spec_.route_id, *maps_, loop_, listener_buffer_.get());
  auto on_new_sender = [this](uint64_t cookie, uint32_t uid, bool held, const char* data, size_t len) {
    if (held) return on_held_datagram(cookie, data, len);
    sockaddr_storage none{};
    handle_client_datagram(none, 0, cookie, uid, nullptr, data, len);
  };
  Status st = unix_steering_->start(
      listener_.get(), listener_cookie_, [this] { return on_listener_readable(); }, on_new_sender,
      [this] { advance_holds(); });
  if (!st) unix_steering_.reset();
  return st;
}

void DatagramRoute::stop() {
  // Also after a start() that failed half-way: the flows its first reads
  // set up hold map entries and sessions of the budget. Strangers still
  // parked go first, as every waiting datagram does (destroy_flow()).
  forward_parked(~0ull);
  while (!flows_.empty()) destroy_flow(std::string(flows_.begin()->first), "");
  filtered_.clear();
  unix_steering_.reset();  // its destructor removes what it wrote
  hold_channel_.reset();
  if (linger_timer_) loop_.remove(linger_timer_.get());
  linger_timer_ = Fd();
  lingering_.clear();
  awaiting_listener_.clear();
  loop_.forget_idle(this);
  refill_asked_ = false;
  for (size_t t = 0; t < spec_.to.size(); ++t) ready_upstreams_.clear(t);
  if (listener_kept_) maps_->release_listener(listener_cookie_);
  listener_kept_ = false;
  if (started_) loop_.remove(listener_.get());
  started_ = false;
}

void DatagramRoute::tick() {
  ++ticks_;
  release_filters();
  // What the hold waits for, in case no event brought it: a listener read
  // that comes back empty, a held datagram stuck on its way.
  if ((!awaiting_listener_.empty() || !parked_.empty()) && !unix_steering_) on_listener_readable();
  for (const auto& [cookie, key] : held_) touched_holds_.push_back(key);
  // Holds that ended two ticks ago or more: no datagram passed up before
  // their end is still on its way (on_held_datagram()).
  for (auto it = hold_ended_.begin(); it != hold_ended_.end();)
    it = it->second.second + 2 <= ticks_ ? hold_ended_.erase(it) : std::next(it);
  advance_holds();
  if (!lingering_.empty() && !linger_timer_) linger_check();
  poll_errors();
  expire_idle();
  retry_targets();
  ready_upstreams_.expire(monotonic_ns());
}

bool DatagramRoute::on_listener_readable() {
  // A few batches per wake-up, then back to the loop so one busy route
  // cannot starve the others.
  // Reads go on while a flow set up by one waits for a read that comes
  // back empty (datagram_hold.cpp).
  for (int round = 0; round < 8; ++round) {
    uint64_t read = ++listener_reads_;
    int n = read_batch(listener_.get(), listener_buffer_.get(),
                       [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size,
                           const DatagramMeta& meta) {
                         handle_client_datagram(peer, len, 0, std::nullopt, &meta, d, size);
                       });
    listener_read_done(read, n < kBatch);
    if (n < kBatch && awaiting_listener_.empty() && parked_.empty()) return true;
  }
  return false;
}

void DatagramRoute::handle_client_datagram(const sockaddr_storage& peer, socklen_t peer_len,
                                           uint64_t tagged_cookie, std::optional<uint32_t> tagged_uid,
                                           const DatagramMeta* meta, const char* data, size_t len) {
  if (unix_listener() && unix_ids_policy() &&
      sender_refused(peer, peer_len, tagged_cookie, meta ? meta->cred : nullptr))
    return;
  std::string key = flow_key(peer, peer_len, tagged_cookie);
  if (!parked_.empty() && meta && meta->stamp_ns) forward_parked_before(key, meta->stamp_ns);
  Flow* flow = find_flow(key, tagged_cookie);
  if (!flow) {
    flow = create_flow(key, peer, peer_len, tagged_cookie, tagged_uid, meta);
  } else if (flow->flow_socket_deferred && !open_flow_socket(*flow)) {
    return;  // counted by open_flow_socket
  }
  if (!flow) return;  // counted by create_flow or open_flow_socket
  send_to_upstream(*flow, data, len);
}

bool DatagramRoute::sender_refused(const sockaddr_storage& peer, socklen_t peer_len, uint64_t tagged_cookie,
                                   const ucred* cred) {
  if (tagged_cookie) {
    // A sender already refused: no second sock_diag dump for it. (A new
    // one is checked by its socket's owner when its flow is set up:
    // owner_allowed().)
    if (!unix_steering_->refused_before(tagged_cookie, monotonic_ns())) return false;
    ++counters_.refused_policy;
    return true;
  }
  // Read by user space, so checked one by one: the credentials are the
  // sender's at send time, and every unnamed sender shares one flow key
  // (it has no address to tell it apart).
  std::string why = credential_refusal(cred);
  if (why.empty()) return false;
  std::string who = cred ? "pid " + std::to_string(cred->pid) : std::string("unknown");
  if (has_reply_address(peer, peer_len))
    who = format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len) + " (" + who + ")";
  count_refusal(who, why);
  return true;
}

std::string DatagramRoute::credential_refusal(const ucred* cred) const {
  if (!cred || no_credentials(*cred))
    return "no credentials (sent before the relay set SO_PASSCRED: give the .socket unit "
           "PassCredentials=yes)";
  return PeerPolicy::id_refusal(spec_.allow_uids, spec_.allow_gids, cred->uid, cred->gid);
}

void DatagramRoute::count_refusal(const std::string& who, const std::string& why) {
  if (count_and_log_now(counters_.refused_policy))
    spdlog::warn("route {}: client {}: {}: datagrams dropped (counted)", spec_.route_id, who, why);
}

// Flows by client: UDP by address; AF_UNIX by cookie when the verdict
// program tagged the datagram, else by address (aliased to the cookie key
// once the flow knows both).
std::string DatagramRoute::flow_key(const sockaddr_storage& peer, socklen_t peer_len,
                                    uint64_t tagged_cookie) const {
  if (!unix_listener()) return address_bytes(peer, peer_len);
  if (tagged_cookie) return "cookie:" + std::to_string(tagged_cookie);
  return "addr:" + address_bytes(peer, peer_len);
}

DatagramRoute::Flow* DatagramRoute::find_flow(const std::string& key, uint64_t tagged_cookie) {
  auto it = flows_.find(key);
  if (it == flows_.end() && !tagged_cookie && unix_listener()) {
    auto alias = unix_address_alias_.find(key);
    if (alias != unix_address_alias_.end()) it = flows_.find(alias->second);
  }
  return it != flows_.end() ? it->second.get() : nullptr;
}

void DatagramRoute::destroy_flow(const std::string& key, const std::string& failure) {
  auto it = flows_.find(key);
  if (it == flows_.end()) return;
  Flow& flow = *it->second;
  if (!failure.empty()) {
    ++counters_.flows_failed;
    spdlog::debug("route {}: flow from {} closed: {}", spec_.route_id, flow.peer_text(), failure);
  }
  // What waited for the flow's earlier datagrams goes now, or never.
  flush_waiting(flow);
  uint32_t program_dropped = 0;  // already counted by the verdict program (target-full, no-target)
  if (flow.kernel) {
    forget_hold(flow);
    if (flow.client_socket_is_source) maps_->remove_source(flow.client_socket_cookie);
    if (flow.client_key) {
      program_dropped = maps_->flow_dropped(flow.client_key);
      maps_->remove_flow(flow.client_key);
    }
    if (flow.client_socket) maps_->remove_target(flow.client_socket_cookie);
  }
  if (flow.filtered) count_stray_drops(flow);
  counters_.drop_flow_overflow += flow.user_read_overflow();
  // After the flow socket left the map: nothing is redirected from it any more.
  count_lost_at_close(flow, program_dropped);
  for (size_t t = 0; t < flow.upstreams.size(); ++t) close_upstream(flow, t);
  if (flow.client_socket_is_udp) loop_.remove(flow.client_socket.get());  // a no-op if not watched
  if (flow.replyable()) unix_address_alias_.erase("addr:" + address_bytes(flow.peer, flow.peer_len));
  table_.erase(flow);
  flows_.erase(it);
  budget_.give_back();
}

FlowTable::Seen DatagramRoute::probe(const Flow& flow) const {
  FlowTable::Seen seen{flow.last_user_ns, flow.replied_in_user_space, flow.conversation()};
  if (!flow.kernel) return seen;
  // A reply flow (upstream socket -> client socket) is stamped only when a
  // target sent something back through the verdict program.
  for (const auto& up : flow.upstreams)
    if (up.fd)
      if (uint64_t last = maps_->flow_last_ns(up.cookie)) {
        seen.replied = true;
        seen.last_ns = std::max(seen.last_ns, last);
      }
  if (flow.client_key) seen.last_ns = std::max(seen.last_ns, maps_->flow_last_ns(flow.client_key));
  return seen;
}

void DatagramRoute::expire_idle() {
  uint64_t now = monotonic_ns();
  size_t before = flows_.size();
  table_.expire(now, [this](FlowTable::Node& node) {
    Flow& flow = static_cast<Flow&>(node);
    ++counters_.flows_expired;
    if (!flow.replied()) ++counters_.expired_unreplied;
    destroy_flow(std::string(flow.key), "");
  });
  uint64_t idle = ms_to_ns(static_cast<uint64_t>(spec_.idle_timeout.count()));
  if (unix_steering_) unix_steering_->forget_idle(now, idle);
  if (flows_.size() < before)
    spdlog::debug("route {}: {} silent flow(s) expired, {} left", spec_.route_id, before - flows_.size(),
                  flows_.size());
}

// The table's choice (flow_table.h): an unreplied flow, oldest first, else
// the least recently active established one not active within the
// protection window; none: the newcomer is refused.
bool DatagramRoute::evict_one(const Flow& newcomer) {
  FlowTable::Node* node = table_.victim(monotonic_ns());
  if (!node) return false;
  Flow& victim = static_cast<Flow&>(*node);
  // The first and every 1000th at info, each at debug (a flood must not
  // flood the log).
  auto level = count_and_log_now(counters_.flows_evicted) ? spdlog::level::info : spdlog::level::debug;
  if (spdlog::should_log(level))  // peer_text() formats two addresses
    spdlog::log(level,
                "route {}: max-sessions ({}) reached: flow from {} ({}) evicted for new client {} (counted)",
                spec_.route_id, budget_.max(), victim.peer_text(),
                victim.established() ? "established"
                : victim.replied()   ? "answered"
                                     : "unreplied",
                newcomer.peer_text());
  destroy_flow(std::string(victim.key), "");
  return true;
}

}  // namespace sockrelay
