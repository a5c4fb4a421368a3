// What a route to subscribers shows in `sockrelay status`.
#include "sessions/subscriber_route.h"

namespace sockrelay {

RouteReport SubscriberRoute::report() const {
  RouteReport r = begin_report(spec_.route_id, *spec_.from,
                               describe_endpoint(*spec_.to) + " subscribers, balance " +
                                   std::string(balance_name(spec_.balance)) + ", mode " +
                                   std::string(mode_name(spec_.mode)),
                               subscriber_count(), maps_);
  const SubscriberCounters& c = counters_;
  r.sessions_created = c.joined;
  r.user_packets = c.user_packets;
  r.user_bytes = c.user_bytes;
  r.drops = {
      {"no-target", r.kernel.drop_no_target},
      {"max-sessions", c.refused_max_sessions},
      {"no-subscriber", c.drop_no_subscriber},
      {"queue-full", c.drop_subscriber_full},
      {kFdLimitDrop, c.fd_limit},
      // The verdict program: a subscriber's kernel backlog at target-buffer.
      {"target-full", r.kernel.drop_target_full},
      // allow-sources is enforced in the kernel only (the listener's filter).
      {kPolicyDrop, r.kernel.drop_policy},
  };
  r.detail_name = "subscribers";
  r.detail = {
      {"joined", c.joined},
      {"left", c.left},
      {"refused-max-sessions", c.refused_max_sessions},
      {"refused-full", c.refused_full},
      {"refused-socket", c.refused_socket},
      {"drop-no-subscriber", c.drop_no_subscriber},
      {"drop-queue-full", c.drop_subscriber_full},
      {"stalls", c.stalls},
  };
  r.has_subscribers = true;
  r.subscribers = subscribers();
  // Kernel path: each subscriber's slot is a target index of the route.
  for (auto& sub : r.subscribers)
    if (maps_ && sub.slot >= 0)
      sub.kernel = maps_->target_counters(spec_.route_id, static_cast<uint32_t>(sub.slot));
  return r;
}

}  // namespace sockrelay
