// The supported-configuration matrix: for every (source kind, target kind,
// mode) what the kernel data path can do, why, and what `datapath = "auto"`
// does instead. Pure data and pure functions: no syscalls.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "config/model.h"

namespace sockrelay {

enum class Support { Supported, Caveat, Unsupported };
std::string_view support_name(Support support);  // "supported", "caveat", "unsupported"

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
  std::string fallback;      // what datapath = "auto" does when the kernel path is not used
};

// Every cell: 7 kinds x 7 kinds x 2 modes, in kAllKinds order, egress first.
const std::vector<MatrixCell>& matrix_cells();
const MatrixCell& matrix_cell(EndpointKind source, EndpointKind target, Mode mode);

// Whether a kind can be put in a sockmap at all (unix-seqpacket cannot).
bool kind_enters_sockmap(EndpointKind kind);

// The first mainline kernel whose sockmap redirect works for this kind as
// source or target (0.0 if it cannot enter a sockmap). A cell needs the later
// of its two ends.
KernelVersion kind_min_kernel(EndpointKind kind);

// Facts true of every cell that goes through the kernel, stated once rather
// than repeated in each cell's reason (SCM_RIGHTS lost, kernel versions, ...).
const std::vector<std::string>& matrix_general_notes();

// A cell's reason split into its separate caveats (joined by "; " in
// MatrixCell::reason), for numbered notes.
std::vector<std::string> cell_reasons(const MatrixCell& cell);

}  // namespace sockrelay
