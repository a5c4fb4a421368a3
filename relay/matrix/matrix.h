// The supported-configuration matrix: for every (source kind, target kind,
// mode) what the kernel data path can do, why, and what `datapath = "auto"`
// does instead. Pure data and pure functions: no syscalls.
#pragma once

#include <string>
#include <vector>

#include "config/model.h"

namespace sockrelay {

enum class Support { Supported, Caveat, Unsupported };
std::string_view support_name(Support support);  // "supported", "caveat", "unsupported"

struct KernelVersion {
  int major = 0;
  int minor = 0;
  bool operator<(const KernelVersion& o) const { return major != o.major ? major < o.major : minor < o.minor; }
};

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

}  // namespace sockrelay
