#include "sessions/live_route.h"

#include <utility>

namespace sockrelay {

RouteReport begin_report(uint32_t route_id, const Endpoint& from, std::string to, uint64_t sessions,
                         const MapWriter* maps) {
  RouteReport r;
  r.id = route_id;
  r.from = describe_endpoint(from);
  r.to = std::move(to);
  r.sessions = sessions;
  if (maps) r.kernel = maps->route_counters(route_id);
  return r;
}

}  // namespace sockrelay
