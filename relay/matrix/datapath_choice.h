// The data path of one pairing (one source, one target): the route's
// `datapath`, the matrix cell for the pairing, and whether the kernel path
// can be had at all on this host. plan_route (matrix/route_plan.h) decides a
// whole route from these; call it rather than these.
#pragma once

#include <string>

#include "matrix/matrix.h"

namespace sockrelay {

struct DatapathChoice {
  bool kernel = false;     // true: sockmap redirect; false: user space
  bool refused = false;    // the config asks for something that cannot run
  bool fell_back = false;  // datapath = "auto" chose user space
  std::string reason;      // for status, logs and `check`
};

// A pairing of a route to connect endpoints. `kernel_unavailable` is empty
// when BPF loaded (or would load), else why not.
DatapathChoice choose_datapath(Datapath requested, const MatrixCell& cell,
                               const std::string& kernel_unavailable);

// A route to a subscribe endpoint (sessions/subscriber_route.h). Round-robin
// rides the kernel where `cell` allows (egress into each subscriber's
// connection; for ingress `cell` is null: the socket a subscriber passes is
// checked when it joins); broadcast is copied in user space. Ingress has no
// user-space equivalent: without the kernel path it is refused.
DatapathChoice choose_subscriber_datapath(Datapath requested, Balance balance, const MatrixCell* cell,
                                          const std::string& kernel_unavailable);

}  // namespace sockrelay
