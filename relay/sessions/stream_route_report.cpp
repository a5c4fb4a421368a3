// What a stream route shows in `sockrelay status`, and its tick.
#include "sessions/stream_route.h"

namespace sockrelay {

void report_stream_counters(const StreamCounters& c, RouteReport& r) {
  r.sessions_created = c.sessions_created;
  r.sessions_expired = c.sessions_expired;
  r.sessions_failed = c.sessions_failed;
  r.user_packets = c.user_messages;
  r.user_bytes = c.user_bytes;
  r.detail_name = "stream";
  r.detail = {
      {"sessions-closed", c.sessions_closed},
      {"sessions-failed", c.sessions_failed},
      {"sessions-expired", c.sessions_expired},
      {"half-closes", c.half_closes},
      {"user-fallbacks", c.user_fallbacks},
      {"connect-failed", c.connect_failed},
      {"refused-max-sessions", c.refused_max_sessions},
      {"refused-policy", c.refused_policy},
      {"user-bytes", c.user_bytes},
      {"user-messages", c.user_messages},
      {"dropped-messages", c.dropped_messages},
  };
}

void StreamRoute::tick() {
  expire_idle();
  pipes_.trim();
}

RouteReport StreamRoute::report() const {
  RouteReport r = begin_report(spec_.route_id, *spec_.from, describe_targets(spec_.to, spec_.balance),
                               session_count(), maps_);
  report_stream_counters(counters_, r);
  r.drops = {
      {"no-target", r.kernel.drop_no_target},
      {"max-sessions", counters_.refused_max_sessions},
      {"connect-failed", counters_.connect_failed},
      {kFdLimitDrop, counters_.fd_limit},
      // One policy count, whether user space or the verdict program refused.
      {kPolicyDrop, counters_.refused_policy + r.kernel.drop_policy},
  };
  if (spec_.to.size() > 1) {
    // Each session's flow has one target, so the verdict program keeps no
    // per-target counts here: the targets show their sessions instead.
    r.targets = targets();
    for (auto& target : r.targets) target.has_sessions = true;
  }
  return r;
}

}  // namespace sockrelay
