// The targets of a datagram route: which are in the rotation (one
// TargetHealth each, the back-off rule every route shares), the forward
// flow entries that list the live ones for the verdict program, and the
// retry that brings a failed target back; the upstream sockets to them,
// some made ahead (upstream_pool.h).
#include <spdlog/spdlog.h>

#include <optional>

#include "common/clock.h"
#include "endpoints/endpoint.h"
#include "relay_shared.h"
#include "sessions/datagram_batch.h"
#include "sessions/datagram_flow.h"
#include "sessions/datagram_route.h"

namespace sockrelay {

namespace {

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

}  // namespace

bool DatagramRoute::target_usable(const Flow& flow, size_t target) const {
  return flow.upstreams[target].fd.valid() && targets_[target].health.up();
}

void DatagramRoute::upstream_failed(Flow& flow, size_t target, const std::string& why) {
  if (spec_.to.size() == 1) {
    // One target: the flow cannot go on; the client's next datagram opens
    // a new one (the flow socket closed, it reaches the listener again).
    flow.target_refused = true;
    destroy_flow(flow.key, why);
    return;
  }
  // Several: this target leaves the rotation of every flow until a retry
  // finds it answering; the flow carries on with the others.
  close_upstream(flow, target);
  if (flow.kernel && flow.client_key) update_forward_flow(flow);
  target_failed(target, why);
}

// What a closing flow lost on its way to a target that refused, counted
// (target-unreachable). A target that is gone answers with ICMP port
// unreachable, which sets the error of the connected upstream socket; on
// the kernel path the next send the kernel makes through that socket fails
// with it, and the kernel then stops sending through the socket: every
// datagram the verdict program redirects to it afterwards is dropped and
// counted on the socket it came from, the flow socket (its SO_MEMINFO
// drops), until user space sees the error (up to a tick later) and closes
// the flow. Those drops are read here, once the flow socket has left the
// map. And what reached the flow socket since then, or, on the user-space
// path, before user space read it, goes with the socket: read and counted.
// (The datagrams that reached the dead port itself the kernel counts,
// Udp NoPorts in /proc/net/snmp.) ARCHITECTURE.md, "Kernel facts".
void DatagramRoute::count_lost_at_close(Flow& flow, uint32_t program_dropped) {
  if (!flow.client_socket_is_udp) return;
  int fd = flow.client_socket.get();
  if (flow.kernel && flow.client_socket_is_source) {
    // The kernel's count includes what the verdict program dropped and
    // counted itself, and what was dropped before the flow settled.
    const uint32_t drops = flow.drops_since_baseline();
    if (drops > program_dropped) counters_.drop_target_unreachable += drops - program_dropped;
  }
  if (!flow.target_refused) {
    // Not lost: they go on, from user space (the upstream sockets close
    // with the flow, and what waits in their psock backlogs with them).
    if (flow.may_linger) read_lingering(flow, false);
    return;
  }
  for (int round = 0; round < 64; ++round) {
    int n = read_batch(fd, buffer_.get(), [](const sockaddr_storage&, socklen_t, const char*, size_t) {});
    if (n > 0) counters_.drop_target_unreachable += static_cast<uint64_t>(n);
    if (n < kBatch) break;
  }
}

void DatagramRoute::target_failed(size_t target, const std::string& why) {
  TargetHealth& health = targets_[target].health;
  if (!health.failed(monotonic_ns())) return;  // already out: counted
  spdlog::warn("route {}: target {} failed ({}); out of the rotation, retry in {} ms", spec_.route_id,
               spec_.to[target]->name, why, health.backoff_ms());
  ready_upstreams_.clear(target);
  rewrite_forward_flows();
}

void DatagramRoute::ask_refill() {
  if (refill_asked_) return;
  refill_asked_ = true;
  loop_.when_idle(this, [this] {
    refill_asked_ = false;
    refill_ready_upstreams();
  });
}

// Failures are left to the next new client, which then opens its own
// socket and meets the error where it is counted (open_upstreams()).
void DatagramRoute::refill_ready_upstreams() {
  for (size_t t = 0; t < spec_.to.size(); ++t) {
    if (!ready_upstreams_.short_of(t) || !targets_[t].health.up()) continue;
    Status st = ready_upstreams_.refill(
        t, [&] { return open_datagram_upstream(*spec_.to[t]); }, monotonic_ns());
    if (!st)
      spdlog::debug("route {}: target {}: no socket made ahead: {}", spec_.route_id, spec_.to[t]->name,
                    st.error().describe());
  }
}

void DatagramRoute::retry_targets() {
  uint64_t now = monotonic_ns();
  for (size_t t = 0; t < targets_.size(); ++t) {
    TargetHealth& health = targets_[t].health;
    if (!health.retry_due(now)) continue;
    // Back in the rotation while every flow gets its upstream socket for it
    // back, so the flow entries written meanwhile list it. For UDP that is
    // only a chance: a refusal on the next datagram takes it out again,
    // with a longer back-off.
    health.recovered();
    Status st = reopen_target(t);
    if (!health.up()) continue;  // a read while settling failed it again: target_failed() said so
    if (!st && !out_of_descriptors(st.error().code)) {
      target_failed(t, st.error().describe());
      continue;
    }
    // Out of descriptors is the relay's limit, not the target's: it stays
    // in the rotation (flows that got no socket for it skip it).
    if (!st)
      spdlog::warn("route {}: target {}: {}", spec_.route_id, spec_.to[t]->name, st.error().describe());
    spdlog::info("route {}: target {} is back in the rotation", spec_.route_id, spec_.to[t]->name);
    rewrite_forward_flows();
  }
}

// Every flow's upstream socket for `target`, back; with no flow, a socket
// opened and closed again, to see whether the target can be reached.
Status DatagramRoute::reopen_target(size_t target) {
  std::vector<std::string> keys;  // by key: settling a socket may end its flow
  for (auto& [key, flow] : flows_)
    if (!flow->upstreams[target].fd) keys.push_back(key);
  for (const auto& key : keys) {
    if (!flows_.count(key)) continue;
    if (auto st = reopen_upstream(key, target); !st) return st;
    if (!targets_[target].health.up()) return {};
  }
  if (flows_.empty())
    if (auto probe = open_datagram_upstream(*spec_.to[target]); !probe) return probe.error();
  return {};
}

// An upstream socket to `target` for a flow, watched: one made ahead if
// there is one (upstream_pool.h), else opened now.
Status DatagramRoute::open_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  Flow* raw = &flow;
  auto on_readable = [this, raw, target](uint32_t events) { on_upstream_readable(*raw, target, events); };
  if (ready_upstreams_.pooled(target)) ask_refill();
  if (std::optional<Fd> ready = ready_upstreams_.take(target, on_readable)) {
    up.fd = std::move(*ready);  // watched already
  } else {
    auto fd = open_datagram_upstream(*spec_.to[target]);
    if (!fd) return fd.error();
    up.fd = std::move(*fd);
    if (auto st = loop_.add(up.fd.get(), EPOLLIN, on_readable); !st) {
      up = Upstream{};  // unwatched, its replies would never be read
      return st;
    }
  }
  up.watched = true;
  return {};
}

Status DatagramRoute::reopen_upstream(const std::string& key, size_t target) {
  Flow& flow = *flows_.at(key);
  Status st = open_upstream(flow, target);
  if (st && flow.kernel) st = wire_upstream(flow, target);
  if (st && flow.kernel) {
    // Read before the program may send through it (see settle()).
    settle_upstream(key, target);
    auto it = flows_.find(key);
    if (it == flows_.end() || !it->second->upstreams[target].fd || !targets_[target].health.up()) return {};
    if (flow.client_key) st = write_forward_flow(flow);
  }
  if (!st) close_upstream(flow, target);
  return st;
}

void DatagramRoute::close_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  if (!up.fd) return;
  if (flow.kernel) unwire_upstream(up);
  counters_.drop_target_full += up.pending.size();  // never sent: the flow or target went away
  // Closed when the loop is idle: a full table closes a flow for each new
  // client, before the new client's datagram goes out.
  if (up.watched) loop_.close_later(std::move(up.fd));
  up = Upstream{};
}

Status DatagramRoute::write_forward_flow(Flow& flow) {
  return maps_->set_flow(flow.client_key, forward_entry(flow));
}

// Where the verdict program sends the flow's datagrams: its one target, or
// the targets that are up to pick among.
FlowEntry DatagramRoute::forward_entry(const Flow& flow) const {
  FlowEntry entry;
  entry.route_id = spec_.route_id;
  entry.flags = RELAY_FLOW_NO_BYTES | (flow.held ? RELAY_FLOW_HOLD : 0u);
  if (spec_.to.size() == 1 && !broadcast()) {
    entry.target_cookie = flow.upstreams[0].cookie;
  } else {
    entry.balance = balance_code(spec_.balance == Balance::Single ? Balance::RoundRobin : spec_.balance);
    entry.client_hash = flow.client_hash;
    // Only the targets that are up: the program picks among these.
    for (size_t t = 0; t < flow.upstreams.size(); ++t) {
      if (!target_usable(flow, t)) continue;
      entry.targets[entry.n_targets] = flow.upstreams[t].cookie;
      entry.target_index[entry.n_targets] = static_cast<uint8_t>(t);
      ++entry.n_targets;
    }
  }
  return entry;
}

// A flow entry that cannot be rewritten keeps its old list of targets
// until the next rewrite: what the program sends to a target whose socket
// has left the map is dropped and counted (drop-no-target).
void DatagramRoute::update_forward_flow(Flow& flow) {
  if (auto st = write_forward_flow(flow); !st)
    spdlog::warn("route {}: {}", spec_.route_id, st.error().describe());
}

// A target went down or came back: every kernel flow of the route gets its
// list of live targets rewritten.
void DatagramRoute::rewrite_forward_flows() {
  if (!spec_.kernel) return;
  for (auto& [key, flow] : flows_)
    if (flow->kernel && flow->client_key) update_forward_flow(*flow);
}

std::vector<TargetReport> DatagramRoute::targets() const {
  std::vector<TargetReport> out;
  uint64_t now = monotonic_ns();
  for (size_t t = 0; t < targets_.size(); ++t) {
    const TargetState& ts = targets_[t];
    TargetReport r;
    r.name = spec_.to[t]->name;
    r.up = ts.health.up();
    r.failures = ts.health.failures();
    r.user_packets = ts.user_packets;
    r.user_bytes = ts.user_bytes;
    r.retry_in_ms = ts.health.retry_in_ms(now);
    out.push_back(r);
  }
  return out;
}

}  // namespace sockrelay
