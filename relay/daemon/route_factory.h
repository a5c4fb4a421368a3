// Building a running route from the config: which kind of route a source
// gets, its data path, its listener, its allow-sources filter, its spec.
// The one place that knows the route kinds by name; the daemon holds the
// result as a RouteSlot and never asks which kind it holds.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "bpf_loader/map_writer.h"
#include "bpf_loader/source_filter.h"
#include "common/fd.h"
#include "common/result.h"
#include "config/model.h"
#include "loop/event_loop.h"
#include "matrix/route_plan.h"
#include "sessions/live_route.h"
#include "sessions/session_budget.h"

namespace sockrelay {

// One listening endpoint of one route, running.
struct RouteSlot {
  std::string identity;  // equal identities survive a reload untouched
  uint32_t route_id = 0;
  std::shared_ptr<const Config> config;  // owns the Endpoints the route points into
  DatapathChoice choice;                 // the path status shows, and why
  std::unique_ptr<LiveRoute> route;
  // allow-sources on a udp listener, in the kernel. Declared last so it is
  // detached before the route closes the listener.
  std::unique_ptr<SourceFilter> source_filter;
};

// What building a route takes from the running relay.
struct RouteServices {
  MapWriter* maps;                        // null: BPF is unavailable
  const std::string& kernel_unavailable;  // why it is null
  EventLoop& loop;
  SessionBudget& budget;
  // The socket systemd passed under the endpoint's name (checked), else a
  // new listener; `from_systemd` (may be null) says which.
  std::function<Result<Fd>(const Endpoint&, bool* from_systemd)> take_listener;
};

// What makes a route the same route across a reload: every field that
// shapes its sockets and its data path, endpoints included.
std::string route_identity(const Config& config, const Route& route);

// Opens the source route.from[from_index] under `route_id`: planned
// (matrix/route_plan.h; refused: an error), listener taken, allow-sources filter attached, the
// route built for its kind and started; logs the route's line.
Result<RouteSlot> open_route_source(const std::shared_ptr<const Config>& config, const Route& route,
                                    size_t from_index, uint32_t route_id, const RouteServices& services);

}  // namespace sockrelay
