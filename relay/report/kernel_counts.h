// What the verdict program counts, as the BPF loader reads it back: per
// route (and per target of a route) and relay-wide. Plain data, so the
// status renderers and the routes read it without the loader's headers.
#pragma once

#include <cstdint>

namespace sockrelay {

// Packets the verdict program carried for a route or one of its targets.
struct KernelCounts {
  uint64_t packets = 0;
  uint64_t bytes = 0;
  uint64_t drop_no_target = 0;
  uint64_t drop_policy = 0;       // senders the policy refused, dropped in the kernel
  uint64_t drop_target_full = 0;  // the target's kernel backlog was at the route's target-buffer
};

// Drops the verdict program counts before it knows the route.
struct GlobalCounters {
  uint64_t unknown_source = 0;
  uint64_t bad_route = 0;
  uint64_t tag_failed = 0;
  uint64_t new_client_lost = 0;
  uint64_t all_targets_down = 0;
};

}  // namespace sockrelay
