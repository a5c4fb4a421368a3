// What `sockrelay status` shows: a snapshot the daemon fills in (relay-wide
// fields plus each route's own RouteReport), and its text and JSON
// renderings. The renderers never know which kind of route they print.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "control/control_server.h"
#include "report/kernel_counts.h"
#include "report/route_report.h"

namespace sockrelay {

struct StatusSnapshot {
  std::string version;
  int pid = 0;
  uint64_t uptime_seconds = 0;
  uint32_t sessions = 0;
  uint32_t max_sessions = 0;
  bool bpf_loaded = false;
  std::string capabilities;  // the effective set, e.g. "cap_net_admin,cap_bpf"
  // Why the verdict program does not bound the kernel backlog toward each
  // target (route key target-buffer); empty: it does.
  std::string target_bound_unavailable;
  uint64_t reloads = 0;
  uint64_t reloads_refused = 0;
  uint64_t open_fds = 0;  // descriptors the process holds now
  uint64_t max_fds = 0;   // its soft RLIMIT_NOFILE
  GlobalCounters global;
  std::vector<RouteReport> routes;
  struct Control {
    std::string path;
    bool from_systemd = false;
    size_t clients = 0;  // connected now
    ControlCounters counters;
  } control;
};

std::string format_status_text(const StatusSnapshot& status);
std::string format_status_json(const StatusSnapshot& status);

}  // namespace sockrelay
