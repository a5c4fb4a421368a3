// The relay owns its file budget: at start its soft RLIMIT_NOFILE is raised
// to the hard limit (a systemd service starts at soft 1024; the hard limit
// is the unit's LimitNOFILE=, 524288 by default on systemd >= 240). Done
// before anything is opened, so no descriptor the relay holds is above
// 1023 unless it can be.
#pragma once

#include <cstdint>

#include "common/result.h"

namespace sockrelay {

struct FileLimit {
  uint64_t soft_before = 0;
  uint64_t soft = 0;
  uint64_t hard = 0;
};

// Raises the soft limit to the hard one. The error (e.g. setrlimit denied
// by a seccomp filter) keeps the limits read before.
Result<FileLimit> raise_file_limit();
// The hard limit now (what `check` compares the need against).
uint64_t hard_file_limit();

}  // namespace sockrelay
