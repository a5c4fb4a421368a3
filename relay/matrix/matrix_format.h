// The matrix for humans (`sockrelay matrix`) and for tools (`--json`),
// optionally with what `--probe` measured beside what the matrix expects.
#pragma once

#include <string>
#include <vector>

#include "matrix/matrix.h"
#include "matrix/probe_result.h"

namespace sockrelay {

// One grid per mode, rows = source kind, columns = target kind, then a
// legend and numbered notes with each reason and fallback, and what this
// version does where it stays off a kernel path. With `probes` (one result
// per cell, any order; empty = not probed) each cell also shows the
// measurement, and cells where it disagrees are marked "!!" and listed.
std::string format_matrix_grid(const std::vector<ProbeResult>& probes = {});

// A JSON array with one object per cell:
//   {"source":"udp","target":"tcp","mode":"egress","support":"caveat",
//    "min-kernel":"5.13" (null if never),"reason":"...","fallback":"...",
//    "relay":"userspace","relay-reason":"...",
//    "probe":{"outcome":"delivered","detail":"...","agrees":true}}
// "relay" is what this version takes (relay_path_name()); "probe" only for
// cells that have a result in `probes`.
std::string format_matrix_json(const std::vector<ProbeResult>& probes = {});

}  // namespace sockrelay
