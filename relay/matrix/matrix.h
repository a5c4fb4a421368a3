// The supported-configuration matrix: for every (source kind, target kind,
// mode) what the kernel data path can do and why, what this version of the
// relay does with it, and what `datapath = "auto"` takes instead. Pure data
// and pure functions: no syscalls. plan_route (matrix/route_plan.h) decides
// every route from these cells, and `sockrelay matrix` prints them, so the
// two cannot disagree.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "config/model.h"

namespace sockrelay {

// What the kernel can do (what `matrix --probe` measures).
enum class Support { Supported, Caveat, Unsupported };
std::string_view support_name(Support support);  // "supported", "caveat", "unsupported"

// What this version of the relay takes for a route over a cell. Egress
// cells answer for routes to connect endpoints; ingress cells for routes to
// subscribers, the only routes that use ingress (routes to a subscribe
// endpoint in egress follow the kernel's support: matrix_general_notes()).
enum class RelayPath {
  Kernel,         // datapath "auto" and "kernel" both take the sockmap redirect
  KernelIfAsked,  // "kernel" takes it; "auto" stays in user space
  UserSpace,      // user space whatever is asked: "kernel" is refused
  Refused,        // this version runs no route over the cell
};
// "kernel", "kernel-if-asked", "userspace", "refused".
std::string_view relay_path_name(RelayPath path);

struct KernelVersion {
  int major = 0;
  int minor = 0;
  bool operator<(const KernelVersion& o) const {
    return major != o.major ? major < o.major : minor < o.minor;
  }
  bool operator==(const KernelVersion& o) const = default;
  bool known() const { return major != 0 || minor != 0; }
};
// "5.13"; "" for 0.0 (no working kernel path).
std::string kernel_version_name(KernelVersion version);

struct MatrixCell {
  EndpointKind source;
  EndpointKind target;
  Mode mode;
  Support support;
  KernelVersion min_kernel;  // the first mainline kernel with a working kernel path (0.0 if never)
  std::string reason;        // why unsupported / what the caveat is; empty when plainly supported
  // What datapath = "auto" takes where this version does not take the
  // kernel path (empty where it does: RelayPath::Kernel).
  std::string fallback;
  RelayPath relay = RelayPath::Kernel;
  // Why this version stays off a kernel path the kernel offers (empty when
  // it takes it, or when the kernel cannot: `reason` says why).
  std::string relay_reason;
};

// Every cell: 7 kinds x 7 kinds x 2 modes, in kAllKinds order, egress first.
const std::vector<MatrixCell>& matrix_cells();
const MatrixCell& matrix_cell(EndpointKind source, EndpointKind target, Mode mode);
// The position of a cell in matrix_cells().
std::size_t matrix_cell_index(EndpointKind source, EndpointKind target, Mode mode);

// Whether a kind can be put in a sockmap at all (unix-seqpacket cannot).
bool kind_enters_sockmap(EndpointKind kind);

// The first mainline kernel whose sockmap redirect works for this kind as
// source or target (0.0 if it cannot enter a sockmap). A cell needs the later
// of its two ends.
KernelVersion kind_min_kernel(EndpointKind kind);

// Facts true of every cell that goes through the kernel, and of routes to
// subscribers, stated once rather than repeated in each cell's reason
// (SCM_RIGHTS lost, kernel versions, ...).
const std::vector<std::string>& matrix_general_notes();

// A cell's reason split into its separate caveats (joined by "; " in
// MatrixCell::reason), for numbered notes.
std::vector<std::string> cell_reasons(const MatrixCell& cell);

// "udp -> tcp (egress)".
std::string cell_label(const MatrixCell& cell);

}  // namespace sockrelay
