// How large the verdict program's maps are made at load, from the config
// (`max-sessions`, the routes and their targets), and what that costs in
// kernel memory. Pure arithmetic: `check` prints it, the loader applies it
// (bpf_map__set_max_entries before load), a reload compares against it.
#pragma once

#include <cstdint>
#include <string>

#include "config/model.h"

namespace sockrelay {

struct MapSizes {
  uint32_t sockets = 0;      // relay_sources and relay_targets, each
  uint32_t flows = 0;        // relay_flows
  uint32_t route_slots = 0;  // relay_route_stats; relay_target_stats has route_slots * RELAY_MAX_TARGETS

  // The compile-time sizes in relay.bpf.c, for loads with no config (the probe).
  static MapSizes compiled_in();
};

// Route slots are provisioned to a power of two, at least this many, so a
// reload may add routes (they cost a few hundred bytes each), and every slot
// gets room for the fixed entries of a route source (its listener, ...);
// the entries sessions take are sized to `max-sessions` exactly.
inline constexpr uint32_t kMinRouteSlots = 16;

// Map entries one session of a route source takes at most on the kernel
// path, and the entries the route source holds whatever its sessions.
struct RouteMapUse {
  uint32_t sockets_per_session = 0;
  uint32_t flows_per_session = 0;
  uint32_t fixed_sockets = 0;
  uint32_t fixed_flows = 0;
  uint32_t refused_senders = 0;  // flow entries a unix-dgram source's allow-uids may give refused senders
};
RouteMapUse route_map_use(const Config& config, const Route& route, const Endpoint& from);

// max-sessions is one budget for the whole relay, so the route that takes
// the most entries per session bounds them all: max-sessions x that, plus
// the route slots' fixed entries.
MapSizes map_sizes_for(const Config& config);

// Kernel memory of maps of these sizes, in bytes: an ESTIMATE from the
// key/value sizes and the kernel's per-element overhead (hash buckets are
// allocated at load; sockhash and relay_flows elements as they are used).
struct MapMemory {
  uint64_t at_load = 0;
  uint64_t when_full = 0;
};
MapMemory estimate_map_memory(const MapSizes& sizes, uint32_t ncpus);

// Empty when maps of size `loaded` hold what `needed` asks; else which map
// is too small, by how much, and the fix (a restart sizes them again).
std::string maps_too_small(const MapSizes& loaded, const MapSizes& needed);

// "8200 sockets, 8200 flows, 16 route slots".
std::string describe_map_sizes(const MapSizes& sizes);

}  // namespace sockrelay
