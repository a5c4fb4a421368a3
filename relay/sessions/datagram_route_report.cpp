// What a datagram route shows in `sockrelay status`.
#include "sessions/datagram_flow.h"
#include "sessions/datagram_route.h"
#include "sessions/fd_limit.h"

namespace sockrelay {

// What the kernel dropped at the listener's queue (its receive buffer full
// under a burst of new clients; sk_drops, read with SO_MEMINFO): counted by
// the kernel since the socket was made, so a socket systemd passed also
// shows what it dropped before the relay ran.
uint64_t DatagramRoute::listener_drops() const { return kernel_drops(listener_.get()); }

uint64_t DatagramRoute::flow_overflow_drops() const {
  uint64_t n = counters_.drop_flow_overflow;
  for (const auto& [key, flow] : flows_) n += flow->user_read_overflow();
  return n;
}

RouteReport DatagramRoute::report() const {
  RouteReport r = begin_report(spec_.route_id, *spec_.from, describe_targets(spec_.to, spec_.balance),
                               flow_count(), maps_);
  const DatagramCounters& c = counters_;
  r.sessions_created = c.flows_created;
  r.sessions_expired = c.flows_expired;
  r.sessions_failed = c.flows_failed;
  r.evicts = true;
  r.sessions_evicted = c.flows_evicted;
  r.user_packets = c.user_packets;
  r.user_bytes = c.user_bytes;
  r.drops = {
      {"no-target", r.kernel.drop_no_target},
      {"max-sessions", c.refused_max_sessions},
      {"setup-failed", c.drop_setup_failed},
      {kFdLimitDrop, c.drop_fd_limit},
      {"send-error", c.drop_send_error},
      {"no-reply-path", c.drop_no_reply_path},
      {"all-targets-down", c.drop_all_targets_down},
      // User space found the target's socket full, or the verdict program
      // its kernel backlog at target-buffer.
      {"target-full", c.drop_target_full + r.kernel.drop_target_full},
      {"target-unreachable", c.drop_target_unreachable},
      // Another client's datagram on a new flow socket, or an answer to a
      // socket made ahead before any flow took it (upstream_pool.h).
      {"stray", c.drop_stray + ready_upstreams_.strays()},
      {"listener-overflow", listener_drops()},
      {"flow-overflow", flow_overflow_drops()},
      // One policy count, whether user space or the verdict program refused.
      {kPolicyDrop, c.refused_policy + r.kernel.drop_policy},
  };
  // The flow table (flow_table.h): the expired flows that never saw a
  // reply. (Open flows are not split by state here: the table learns that
  // a kernel flow was answered only when it next reads its entries.)
  r.detail_name = "flows";
  r.detail = {{"expired-unreplied", c.expired_unreplied}};
  if (spec_.to.size() > 1) {
    r.targets = targets();
    // The verdict program counts per target only for balanced routes.
    for (uint32_t t = 0; maps_ && t < r.targets.size(); ++t)
      r.targets[t].kernel = maps_->target_counters(spec_.route_id, t);
  }
  return r;
}

}  // namespace sockrelay
