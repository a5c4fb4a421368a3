// What this version can run: the rules a route must meet beyond being well
// written (config.cpp), each reported at the key to change. They read the
// whole config (a subscribe endpoint fed by two routes, say), so they run
// once the file has no other error; parse_config runs them, so `run`,
// `check` and a reload refuse the same configs with the same words.
//
// The data path itself (kernel or user space, and which pairings refuse
// the kernel path) is decided per route by plan_route (matrix/route_plan.h).
#pragma once

#include <vector>

#include "config/config.h"

namespace sockrelay {

// Every rule the routes of `config` break, as errors in route order.
// `config` must be free of other errors: every name resolves.
std::vector<Diagnostic> check_route_rules(const Config& config);

}  // namespace sockrelay
