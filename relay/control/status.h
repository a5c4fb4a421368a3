// What `sockrelay status` shows: a snapshot the daemon fills in, and its
// text and JSON renderings.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bpf_loader/bpf_relay.h"
#include "sessions/datagram_route.h"
#include "sessions/stream_route.h"
#include "sessions/subscriber_route.h"

namespace sockrelay {

// One target of a route with several.
struct TargetStatus {
  TargetReport report;   // health and user-space counters
  RouteCounters kernel;  // what the verdict program sent to it
};

// One subscriber of a route to a subscribe endpoint.
struct SubscriberStatus {
  SubscriberReport report;
  RouteCounters kernel;  // what the verdict program sent to it (round-robin on the kernel path)
};

struct RouteStatus {
  uint32_t id = 0;
  std::string from;  // "dns-in (udp 127.0.0.1:5300)"
  std::string to;
  std::string datapath;         // "kernel" or "userspace"
  std::string datapath_reason;  // why this path
  size_t sessions = 0;
  RouteCounters kernel;
  DatagramCounters user;  // stream routes fill in the fields both kinds share
  bool is_stream = false;
  StreamCounters stream;
  std::vector<TargetStatus> targets;  // routes with several targets only
  bool is_subscribers = false;
  SubscriberCounters subscribers;
  std::vector<SubscriberStatus> subscriber_list;
};

struct StatusSnapshot {
  std::string version;
  int pid = 0;
  uint64_t uptime_seconds = 0;
  uint32_t sessions = 0;
  uint32_t max_sessions = 0;
  bool bpf_loaded = false;
  std::string capabilities;  // the effective set, e.g. "cap_net_admin,cap_bpf"
  uint64_t reloads = 0;
  uint64_t reloads_refused = 0;
  GlobalCounters global;
  std::vector<RouteStatus> routes;
};

std::string format_status_text(const StatusSnapshot& status);
std::string format_status_json(const StatusSnapshot& status);

}  // namespace sockrelay
