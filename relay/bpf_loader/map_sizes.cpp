#include "bpf_loader/map_sizes.h"

#include <algorithm>

#include "relay_shared.h"

namespace sockrelay {

namespace {

// The kernel's own sizes (6.x, x86-64), for the estimate: a hash bucket
// (a list head and a spinlock), a sockhash element (rcu head, socket
// pointer, list node, 8-byte key: kmalloc-64), a relay_flows element
// (htab_elem header, key, value: kmalloc-192 when allocated on use).
constexpr uint64_t kBucketBytes = 16;
constexpr uint64_t kSockhashElemBytes = 64;
constexpr uint64_t kFlowElemBytes = 192;
// A u64 -> u64 hash element (relay_target_backlog): htab_elem + key + value.
constexpr uint64_t kBacklogElemBytes = 64;
// Refused unix-dgram senders UnixListenerSteering gives a flow entry
// (kMaxRefusedInKernel in sessions/unix_listener_steering.cpp).
constexpr uint32_t kRefusedSendersInKernel = 4096;
// The most a route source holds whatever its sessions: its listener, a
// unix listener's new-client socket, a one-way route's targets.
constexpr uint64_t kMaxFixedSocketsPerSource = 2 + RELAY_MAX_TARGETS;

uint64_t round_up_pow2(uint64_t n) {
  uint64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

uint32_t clamp_u32(uint64_t n) { return static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX)); }

}  // namespace

MapSizes MapSizes::compiled_in() { return MapSizes{RELAY_MAX_SOCKETS, RELAY_MAX_SOCKETS, RELAY_MAX_ROUTES}; }

RouteMapUse route_map_use(const Config& config, const Route& route, const Endpoint& from) {
  const uint32_t targets = static_cast<uint32_t>(route.to.size());
  const Endpoint& first_to = *config.find_endpoint(route.to.front());
  RouteMapUse use;
  // The listener (and a unix listener's new-client socket).
  use.fixed_sockets = 2;
  if (route.one_way) {
    // One flow for every client: the listener's, and a socket per target.
    use.fixed_sockets += targets;
    use.fixed_flows = 1;
  } else if (first_to.role == Role::Subscribe) {
    // A subscriber's socket is a target; the source's flow entry is fixed.
    use.sockets_per_session = 1;
    use.fixed_flows = 1;
  } else if (kind_is_datagram(from.kind) != kind_is_datagram(first_to.kind)) {
    // A bridge runs in user space: no map entry.
  } else if (kind_is_datagram(from.kind)) {
    // The client's flow socket, and an upstream socket per target; a flow
    // entry for each.
    use.sockets_per_session = 1 + targets;
    use.flows_per_session = 1 + targets;
    if (from.kind == EndpointKind::UnixDgram && !route.allow_uids.empty())
      use.refused_senders = kRefusedSendersInKernel;
  } else {
    // A connection and its upstream connection.
    use.sockets_per_session = 2;
    use.flows_per_session = 2;
  }
  return use;
}

MapSizes map_sizes_for(const Config& config) {
  uint64_t per_session_sockets = 0, per_session_flows = 0, fixed_sockets = 0, fixed_flows = 0, refused = 0;
  for (const Route& route : config.routes)
    for (const std::string& name : route.from) {
      RouteMapUse use = route_map_use(config, route, *config.find_endpoint(name));
      per_session_sockets = std::max<uint64_t>(per_session_sockets, use.sockets_per_session);
      per_session_flows = std::max<uint64_t>(per_session_flows, use.flows_per_session);
      fixed_sockets += use.fixed_sockets;
      fixed_flows += use.fixed_flows;
      refused += use.refused_senders;
    }
  MapSizes sizes;
  sizes.route_slots = clamp_u32(std::min<uint64_t>(
      RELAY_MAX_ROUTES, std::max<uint64_t>(kMinRouteSlots, round_up_pow2(config.routes.size()))));
  // Every route slot's fixed entries, as if each held the largest route
  // source (listener, new-client socket, a one-way route's 8 targets), so a
  // reload may add routes without outgrowing the maps.
  fixed_sockets = std::max<uint64_t>(fixed_sockets, uint64_t{sizes.route_slots} * kMaxFixedSocketsPerSource);
  fixed_flows = std::max<uint64_t>(fixed_flows, sizes.route_slots);
  const uint64_t sessions = config.relay.max_sessions;
  sizes.sockets = clamp_u32(sessions * per_session_sockets + fixed_sockets);
  sizes.flows = clamp_u32(sessions * per_session_flows + fixed_flows + refused);
  return sizes;
}

MapMemory estimate_map_memory(const MapSizes& sizes, uint32_t ncpus) {
  const uint64_t socket_buckets = round_up_pow2(sizes.sockets) * kBucketBytes;
  const uint64_t flow_buckets = round_up_pow2(sizes.flows) * kBucketBytes;
  const uint64_t per_cpu = uint64_t{sizes.route_slots} * ncpus *
                           (sizeof(relay_route_stats) + RELAY_MAX_TARGETS * sizeof(relay_target_stats));
  MapMemory m;
  // relay_sources, relay_targets and relay_target_backlog (target_bound.h)
  // each hash sockets; relay_flows, relay_hold and relay_passed flows (the
  // hold's elements live only while a flow is set up: not counted).
  m.at_load = 3 * socket_buckets + 3 * flow_buckets + per_cpu;
  m.when_full = m.at_load + 2 * uint64_t{sizes.sockets} * kSockhashElemBytes +
                uint64_t{sizes.sockets} * kBacklogElemBytes + uint64_t{sizes.flows} * kFlowElemBytes;
  return m;
}

std::string maps_too_small(const MapSizes& loaded, const MapSizes& needed) {
  std::string why;
  auto check = [&](const char* what, uint32_t have, uint32_t want) {
    if (want <= have) return;
    why += std::string(why.empty() ? "" : "; ") + "it needs " + std::to_string(want) + " " + what +
           ", the maps loaded at start hold " + std::to_string(have);
  };
  check("socket entries", loaded.sockets, needed.sockets);
  check("flow entries", loaded.flows, needed.flows);
  check("route slots", loaded.route_slots, needed.route_slots);
  if (why.empty()) return why;
  return why +
         " (BPF maps are sized from max-sessions and the routes when the relay starts, and a loaded map "
         "cannot grow): restart the relay to apply this config (systemctl restart sockrelay)";
}

std::string describe_map_sizes(const MapSizes& sizes) {
  return std::to_string(sizes.sockets) + " sockets, " + std::to_string(sizes.flows) + " flows, " +
         std::to_string(sizes.route_slots) + " route slots";
}

}  // namespace sockrelay
