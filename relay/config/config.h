// Reading and validating a TOML config (schema in config/README.md).
// Every problem is a Diagnostic printed as "FILE:LINE:COL: severity: message".
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "config/model.h"

namespace sockrelay {

enum class Severity { Error, Warning, Note };

struct Diagnostic {
  std::string file;
  SourcePos pos;
  Severity severity = Severity::Error;
  std::string message;

  std::string format() const;  // "FILE:LINE:COL: error: message"
};

struct ParseOutcome {
  Config config;                        // valid only when !has_errors()
  std::vector<Diagnostic> diagnostics;  // in file order
  bool has_errors() const;
};

// Parse `text` as if read from `path`. Collects every problem it can find in
// one pass (syntax errors stop it; semantic errors do not).
ParseOutcome parse_config(std::string_view text, const std::string& path);

// Read `path` and parse it; an unreadable file is one diagnostic at 0:0.
ParseOutcome load_config(const std::string& path);

// "500ms", "120s", "2m", "1h": an integer and a unit, nothing else. Zero is
// accepted here; the config requires idle-timeout > 0.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

// The keys of each table as the checker accepts them ("" is the top level,
// then "relay", "endpoints.NAME", "routes"): sockrelay.toml(5) documents
// every one (tests/unit/man_pages_test.cpp).
struct ConfigTableKeys {
  std::string_view table;
  std::span<const std::string_view> keys;
};
std::vector<ConfigTableKeys> config_keys();

}  // namespace sockrelay
