// What one running route says about itself for `sockrelay status`: the
// fields every route has, plus the counters only its kind keeps, each under
// its own name. The status renderers print these without knowing which
// kind of route wrote them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "report/kernel_counts.h"

namespace sockrelay {

// A counter under the name `status` prints for it (kebab-case, stable:
// scripts and the JSON output read it).
struct NamedCount {
  std::string name;
  uint64_t value = 0;
};

// The drop every route reports under this name: senders its policy
// refused, wherever they were dropped (user space, the verdict program, or
// the listener's allow-sources socket filter, which the daemon owns).
inline constexpr const char* kPolicyDrop = "policy";

// One target of a route with several.
struct TargetReport {
  std::string name;
  bool up = true;
  uint64_t failures = 0;      // times it failed (refused, socket error, connect failed)
  uint64_t user_packets = 0;  // datagrams user space sent to it
  uint64_t user_bytes = 0;
  int64_t retry_in_ms = 0;  // when down: until the next retry
  bool has_sessions = false;
  uint64_t sessions = 0;  // connection routes: connections made to it
  KernelCounts kernel;
};

// One subscriber of a route to a subscribe endpoint.
struct SubscriberReport {
  std::string name;  // "subscriber #3 (pid 4711, uid 1000)"
  bool receiving = false;
  bool stalled = false;
  int slot = -1;  // kernel path: its index in the route's per-target counters
  uint64_t user_packets = 0;
  uint64_t user_bytes = 0;
  uint64_t dropped = 0;
  uint64_t stalls = 0;
  KernelCounts kernel;
};

struct RouteReport {
  uint32_t id = 0;
  std::string from;  // "dns-in (udp 127.0.0.1:5300)"
  std::string to;
  // "kernel" or "userspace", and why: the decision the route was built
  // from, which the daemon keeps and fills in (routes leave them empty).
  std::string datapath;
  std::string datapath_reason;
  uint64_t sessions = 0;  // open now
  uint64_t sessions_created = 0;
  uint64_t sessions_expired = 0;
  uint64_t sessions_failed = 0;
  // Routes that evict at max-sessions (datagram flows): how many.
  bool evicts = false;
  uint64_t sessions_evicted = 0;
  uint64_t user_packets = 0;  // what user space carried
  uint64_t user_bytes = 0;
  KernelCounts kernel;
  // Every reason this route drops or refuses, in the order `status` prints
  // them; each route names its own.
  std::vector<NamedCount> drops;
  // Counters only this kind keeps, printed as a section of their own
  // ("stream", "subscribers"); empty name: none.
  std::string detail_name;
  std::vector<NamedCount> detail;
  std::vector<TargetReport> targets;  // routes with several targets only
  // Routes that take subscribers list them (even none: "list":[] tells a
  // reader the route has a subscriber list, empty now).
  bool has_subscribers = false;
  std::vector<SubscriberReport> subscribers;
};

}  // namespace sockrelay
