#pragma once

#include <string>

namespace sockrelay::cli {

// stderr logging at `level` (spdlog names). Under systemd (JOURNAL_STREAM
// set) lines carry a "<N>" syslog priority prefix instead of a timestamp,
// so the journal files each at its real priority. False on a bad level.
bool setup_logging(const std::string& level);

}  // namespace sockrelay::cli
