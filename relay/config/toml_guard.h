// A guard in front of toml++ 3.3.0 (Debian 12's libtomlplusplus3): its
// is_non_ascii_horizontal_whitespace() reaches __builtin_unreachable() for
// U+00A1..U+0499, U+2D0E..U+3107 (but U+3000) and U+FB36..U+FEFE, i.e.
// undefined behaviour on text as plain as "é" (found by
// tests/fuzz/config_fuzz.cpp; regression inputs tests/fuzz/corpus/config/crash-*).
// The parser asks that question of every character between tokens and in
// bare keys and values, and inside a multi-line basic string right after a
// backslash (and after the whitespace a line-ending backslash skips). TOML
// allows non-ASCII text only inside strings and comments, so such a
// character anywhere else is an error either way: this finds it first and
// names it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config/model.h"

namespace sockrelay {

struct TomlGuardFinding {
  SourcePos pos;
  std::string message;
};

// The first character of `text` that would make toml++ 3.3.0 misbehave, with
// its position (line and column counted in characters, from 1, as toml++).
std::optional<TomlGuardFinding> find_toml_hazard(std::string_view text);

}  // namespace sockrelay
