// What a probe measured for one cell (probe/probe.h takes the measurement),
// and whether it confirms the matrix. Plain data here so the matrix
// formatter can show measurements without depending on the probe.
#pragma once

#include <string>
#include <string_view>

#include "matrix/matrix.h"

namespace sockrelay {

struct ProbeResult {
  EndpointKind source;
  EndpointKind target;
  Mode mode;
  enum Outcome {
    Delivered,        // the payload arrived byte-exact where the mode puts it
    NotDelivered,     // nothing (or other bytes) arrived within the timeout
    CannotEnterMap,   // a socket of this cell was refused by the sockmap (EOPNOTSUPP)
    NotTestableHere,  // this machine lacks what the cell needs (vsock loopback)
    Error,            // the probe itself failed (socket, bind, map update, ...)
  } outcome;
  std::string detail;  // what was seen, for humans
};

// "delivered", "not-delivered", "cannot-enter-map", "not-testable-here", "error".
std::string_view outcome_name(ProbeResult::Outcome outcome);

// Whether a measurement confirms the matrix: a kernel path must deliver, an
// unsupported cell must not. A cell that could not be tested agrees with
// anything; a probe error agrees with nothing.
bool probe_agrees(const MatrixCell& cell, const ProbeResult& result);

}  // namespace sockrelay
