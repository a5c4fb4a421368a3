// Loads relay.bpf.c, attaches its verdict program to the sources map and
// implements MapWriter on the real maps. The only code that includes the
// skeleton; libbpf's negative errno values become Errors here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpf_loader/listener_lookup.h"
#include "bpf_loader/map_sizes.h"
#include "bpf_loader/map_writer.h"
#include "common/result.h"
#include "common/socket_cookie.h"
#include "report/kernel_counts.h"

struct relay;  // the generated skeleton

namespace sockrelay {

// The name integration tests and the probe know the route counters by.
using RouteCounters = KernelCounts;

struct SkeletonDeleter {
  void operator()(struct relay* skel) const;
};
using RelaySkeleton = std::unique_ptr<struct relay, SkeletonDeleter>;

class BpfRelay final : public MapWriter {
 public:
  // Loads and attaches, with the maps made `sizes` large (map_sizes.h).
  // Fails with a message naming the missing privilege or kernel feature.
  // The verdict program with the target-buffer bound needs kernel 6.2+ and
  // CAP_PERFMON; without them the program without the bound is loaded and
  // target_bound_unavailable() says why.
  static Result<std::unique_ptr<BpfRelay>> load(const MapSizes& sizes = MapSizes::compiled_in());

  // Empty when the verdict program bounds every target's kernel backlog
  // (route key target-buffer); else why it does not.
  const std::string& target_bound_unavailable() const { return bound_unavailable_; }
  // A route's bound on the bytes (truesize) the kernel holds toward one
  // of its targets.
  void set_target_buffer(uint32_t route_id, uint32_t bytes);
  ~BpfRelay() override;

  Status add_target(uint64_t cookie, int fd) override;
  void remove_target(uint64_t cookie) override;
  Status add_source(uint64_t cookie, int fd) override;
  void remove_source(uint64_t cookie) override;
  Status add_private_source(uint64_t id, int fd, const PrivateProgram& program) override;
  void remove_private_source(uint64_t id) override;
  Status set_flow(uint64_t key, const FlowEntry& entry) override;
  void remove_flow(uint64_t key) override;
  uint64_t flow_last_ns(uint64_t key) override;
  uint64_t flow_bytes(uint64_t key) override;
  uint32_t flow_dropped(uint64_t key) override;
  Status hold_flow(uint64_t key, uint64_t channel) override;
  Status set_forwarded(uint64_t key, uint64_t channel, uint64_t forwarded) override;
  uint64_t held_passed(uint64_t key) override;
  void release_hold(uint64_t key) override;
  Status keep_listener_datagrams(uint64_t cookie, int fd) override;
  void release_listener(uint64_t cookie) override;

  KernelCounts route_counters(uint32_t route_id) const override;
  // Zeroes a route id's counters (route and per-target) before it is reused.
  void reset_route_counters(uint32_t route_id);
  void reset_target_counters(uint32_t route_id, uint32_t target_index) override;
  // Packets and bytes sent to `to[target_index]` of a balanced route.
  KernelCounts target_counters(uint32_t route_id, uint32_t target_index) const override;
  GlobalCounters global_counters() const;
  // What the maps were sized for at load; a loaded map cannot grow.
  const MapSizes& sizes() const { return sizes_; }

 private:
  BpfRelay(RelaySkeleton skel, const MapSizes& sizes, std::string bound_unavailable);

  RelaySkeleton skel_;
  std::string bound_unavailable_;  // empty: skel_ is the bounded variant
  // Private program instances by key; each owns its program and its map.
  std::unordered_map<uint64_t, RelaySkeleton> private_;
  // SK_LOOKUP instances by listener cookie.
  std::unordered_map<uint64_t, std::unique_ptr<ListenerLookup>> listeners_;
  int ncpus_;
  MapSizes sizes_;
};

}  // namespace sockrelay
