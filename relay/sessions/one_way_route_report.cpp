// What a one-way route shows in `sockrelay status`.
#include "common/clock.h"
#include "sessions/one_way_route.h"

namespace sockrelay {

RouteReport OneWayRoute::report() const {
  // No sessions: no client has a flow of its own.
  RouteReport r = begin_report(spec_.route_id, *spec_.from,
                               describe_targets(spec_.to, spec_.balance) + ", one-way", 0, maps_);
  const OneWayCounters& c = counters_;
  r.user_packets = c.user_packets;
  r.user_bytes = c.user_bytes;
  r.drops = {
      // The verdict program counts a datagram with every target down here too.
      {"no-target", r.kernel.drop_no_target},
      {"send-error", c.drop_send_error},
      {"all-targets-down", c.drop_all_targets_down},
      {"target-full", c.drop_target_full},
      {kPolicyDrop, c.refused_policy + r.kernel.drop_policy},
  };
  r.detail_name = "one-way";
  r.detail = {
      {"targets-up", targets_up()},
      {"target-replies", c.target_replies},
  };
  if (spec_.to.size() > 1) {
    uint64_t now = monotonic_ns();
    for (size_t t = 0; t < targets_.size(); ++t) {
      TargetReport tr;
      tr.name = spec_.to[t]->name;
      tr.up = targets_[t].health.up();
      tr.failures = targets_[t].health.failures();
      tr.user_packets = targets_[t].user_packets;
      tr.user_bytes = targets_[t].user_bytes;
      tr.retry_in_ms = targets_[t].health.retry_in_ms(now);
      if (maps_) tr.kernel = maps_->target_counters(spec_.route_id, static_cast<uint32_t>(t));
      r.targets.push_back(tr);
    }
  }
  return r;
}

}  // namespace sockrelay
