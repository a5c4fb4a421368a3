// The one shape of every running route (datagram, stream, bridge,
// subscribers): the daemon holds a list of these and never asks which kind
// it holds.
#pragma once

#include <cstdint>
#include <string>

#include "bpf_loader/map_writer.h"
#include "common/result.h"
#include "config/model.h"
#include "report/route_report.h"

namespace sockrelay {

class LiveRoute {
 public:
  virtual ~LiveRoute() = default;

  // Listener watched, BPF state written: the route serves from here on.
  virtual Status start() = 0;
  // The relay's periodic tick: idle expiry, target retries, health checks.
  virtual void tick() = 0;
  // Map entries removed, what was taken in delivered (bounded by
  // kStopDrain), every session socket closed. Called once, before the
  // route is destroyed (shutdown, or a reload that removed it).
  virtual void stop() = 0;
  // Everything `status` shows about this route, its own counters under
  // their own names.
  virtual RouteReport report() const = 0;
};

// What every route's report starts with: its id, its source, its targets
// (`to`, as the kind words them), the sessions open now, and what the
// verdict program counted under its id (`maps` null: BPF unavailable,
// nothing). Defined in live_route.cpp.
RouteReport begin_report(uint32_t route_id, const Endpoint& from, std::string to, uint64_t sessions,
                         const MapWriter* maps);

}  // namespace sockrelay
