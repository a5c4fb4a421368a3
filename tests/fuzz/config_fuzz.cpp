// Fuzz target: the config parser and checker (config/config.cpp
// parse_config: TOML syntax, every section's checks, the route rules) on
// arbitrary text. It must never crash, and every problem must come back as
// a diagnostic with a position, never as an exception.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  sockrelay::ParseOutcome outcome = sockrelay::parse_config(text, "fuzz.toml");
  for (const auto& d : outcome.diagnostics) {
    // Every diagnostic renders as one "FILE:LINE:COL: severity: message" line.
    std::string line = d.format();
    if (line.rfind("fuzz.toml:", 0) != 0 || d.message.empty()) std::abort();
  }
  if (!outcome.has_errors()) {
    // A config that passed names only endpoints it has.
    for (const auto& route : outcome.config.routes)
      if (route.from.empty() || route.to.empty()) std::abort();
  }
  return 0;
}
