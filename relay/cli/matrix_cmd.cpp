#include <cstdio>

#include "cli/commands.h"
#include "matrix/matrix_format.h"
#include "probe/probe.h"

namespace sockrelay::cli {

namespace {

constexpr const char* kMatrixHelp = R"(Usage: sockrelay matrix [--probe] [--json]

Print the supported-configuration matrix: for every source kind, target kind
and redirect mode (egress: send out of the target socket; ingress: deliver
into the target socket's own receive queue), whether the kernel data path
can carry it, the minimum kernel, the caveats, and what datapath = "auto"
does instead.

Options:
  --probe   test every cell on this kernel by sending a payload through a
            real sockmap redirect, and show the measurement beside the
            expectation ("!!" marks a disagreement). Needs root, or
            CAP_BPF + CAP_NET_ADMIN. VSOCK cells are tested only where a
            vsock loopback transport exists (see vm-tests/).
  --json    machine-readable output (one object per cell)
  --help    this text

Exit status: 0; with --probe, 1 if any measurement disagrees with the matrix
or the probe could not run.
)";

}  // namespace

int matrix_command(const Args& args) {
  bool probe = false, json = false;
  OptionScanner scan(args);
  std::string arg;
  while (scan.next(&arg)) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kMatrixHelp, stdout);
      return kExitOk;
    }
    if (arg == "--probe")
      probe = true;
    else if (arg == "--json")
      json = true;
    else
      return usage_error("matrix", "unknown option '" + arg + "'");
  }
  std::vector<ProbeResult> results;
  if (probe) {
    auto prober = Prober::create();
    if (!prober) {
      std::fprintf(stderr, "sockrelay matrix --probe: %s\n", prober.error().describe().c_str());
      return kExitFailure;
    }
    results = prober->probe_matrix();
  }
  std::fputs((json ? format_matrix_json(results) : format_matrix_grid(results)).c_str(), stdout);
  for (const auto& r : results)
    if (!probe_agrees(matrix_cell(r.source, r.target, r.mode), r)) return kExitFailure;
  return kExitOk;
}

}  // namespace sockrelay::cli
