// What a datagram <-> stream bridge shows in `sockrelay status`, and its
// tick. It never enters the maps: it reports no kernel counts of its own.
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
  return r;
}

}  // namespace sockrelay
