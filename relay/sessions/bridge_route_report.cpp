// What a datagram <-> stream bridge shows in `sockrelay status`, and its
// tick. It never enters the maps: it reports no kernel counts of its own.
#include "common/socket_drops.h"
#include "sessions/bridge_route.h"
#include "sessions/fd_limit.h"

namespace sockrelay {

void BridgeRoute::tick() { expire_idle(); }

RouteReport BridgeRoute::report() const {
  RouteReport r =
      begin_report(spec_.route_id, *spec_.from, describe_endpoint(*spec_.to), session_count(), nullptr);
  report_stream_counters(counters_, r);
  r.drops = {
      {"max-sessions", counters_.refused_max_sessions},
      {"connect-failed", counters_.connect_failed},
      {kFdLimitDrop, counters_.fd_limit},
      {"dropped-messages", counters_.dropped_messages},
      {kPolicyDrop, counters_.refused_policy},
  };
  // A datagram source's listener drops in the kernel what arrives while its
  // receive queue is full (the relay busy dropping for a stalled target, or
  // a burst): counted there since the socket was made, as for a datagram
  // route (DatagramRoute::listener_drops()).
  if (datagram_source()) r.drops.push_back({"listener-overflow", kernel_drops(listener_.get())});
  return r;
}

}  // namespace sockrelay
