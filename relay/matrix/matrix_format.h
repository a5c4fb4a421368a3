// The matrix for humans (`sockrelay matrix`) and for tools (`--json`),
// optionally with what `--probe` measured beside what the matrix expects.
#pragma once

#include <string>
#include <vector>

#include "matrix/matrix.h"
#include "probe/probe.h"  // ProbeResult and probe_agrees() only: both inline, no link dependency

namespace sockrelay {

// One grid per mode, rows = source kind, columns = target kind, then a
// legend and numbered notes with each reason and fallback. With `probes`
// (one result per cell, any order; empty = not probed) each cell also shows
// the measurement, and cells where it disagrees are marked "!!" and listed.
std::string format_matrix_grid(const std::vector<ProbeResult>& probes = {});

// A JSON array with one object per cell:
//   {"source":"udp","target":"tcp","mode":"egress","support":"caveat",
//    "min-kernel":"5.13" (null if never),"reason":"...","fallback":"...",
//    "probe":{"outcome":"delivered","detail":"...","agrees":true}}
// "probe" only for cells that have a result in `probes`.
std::string format_matrix_json(const std::vector<ProbeResult>& probes = {});

}  // namespace sockrelay
