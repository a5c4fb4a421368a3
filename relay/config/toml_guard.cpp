#include "config/toml_guard.h"

#include <cstdint>
#include <cstdio>

namespace sockrelay {

namespace {

// The code points on which toml++ 3.3.0's is_non_ascii_horizontal_whitespace()
// hits its unreachable default: the 0x3FA-wide blocks 0, 11 and 63 above
// U+00A0 that it neither excludes by its mask nor handles by its switch.
bool hazardous(char32_t c) {
  if (c < 0xA0 || c > 0xFEFF || c == 0xA0 || c == 0x3000 || c == 0xFEFF) return false;
  uint64_t block = (static_cast<uint64_t>(c) - 0xA0) / 0x3FA;
  return block == 0 || block == 11 || block == 63;
}

// Walks the text one character (UTF-8 code point) at a time, keeping the
// line and column as toml++ counts them.
class Reader {
 public:
  explicit Reader(std::string_view text) : text_(text) {}
  bool done() const { return at_ >= text_.size(); }
  bool starts(std::string_view s) const { return text_.substr(at_, s.size()) == s; }
  SourcePos pos() const { return {line_, column_}; }
  // The character at the cursor; malformed UTF-8 reads as one byte (toml++
  // rejects it itself).
  char32_t peek(size_t* length = nullptr) const {
    auto b = static_cast<unsigned char>(text_[at_]);
    size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
    char32_t c = n == 1 ? b : b & (0x7F >> n);
    if (at_ + n > text_.size()) n = 1, c = b;
    for (size_t i = 1; i < n; ++i) c = (c << 6) | (static_cast<unsigned char>(text_[at_ + i]) & 0x3F);
    if (length) *length = n;
    return c;
  }
  char32_t next() {
    size_t n = 1;
    char32_t c = peek(&n);
    at_ += n;
    if (c == '\n') {
      ++line_;
      column_ = 1;
    } else {
      ++column_;
    }
    return c;
  }
  void skip(size_t count) {
    for (size_t i = 0; i < count && !done(); ++i) next();
  }

 private:
  std::string_view text_;
  size_t at_ = 0;
  int line_ = 1, column_ = 1;
};

std::string named(char32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "U+%04X", static_cast<unsigned>(c));
  return buf;
}

std::optional<TomlGuardFinding> hazard_at(Reader& r, const char* where) {
  if (r.done() || !hazardous(r.peek())) return std::nullopt;
  return TomlGuardFinding{r.pos(), "character " + named(r.peek()) + " " + where};
}

bool is_space(char32_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// From after the opening quote(s) to after the closing ones. The first
// hazardous character inside lands in `first_hazard` (a key is read by a
// parser that asks about each character; a value is not).
std::optional<TomlGuardFinding> skip_string(Reader& r, std::string_view quote, bool basic, bool multi_line,
                                            std::optional<TomlGuardFinding>& first_hazard) {
  while (!r.done()) {
    if (r.starts(quote)) {
      r.skip(quote.size());
      return std::nullopt;
    }
    if (!multi_line && r.peek() == '\n') return std::nullopt;  // toml++ reports the unclosed string
    if (!first_hazard)
      first_hazard = hazard_at(r, "is not allowed in a quoted key (only in values and comments)");
    char32_t c = r.next();
    if (!basic || c != '\\' || r.done()) continue;
    if (multi_line) {
      // toml++ asks whether the character after the backslash is whitespace,
      // and after a line-ending backslash whether each next one is.
      if (auto h = hazard_at(r, "cannot follow a backslash in a multi-line string")) return h;
      if (is_space(r.peek())) {
        while (!r.done() && is_space(r.peek())) r.next();
        if (auto h = hazard_at(r, "cannot follow a line-ending backslash")) return h;
      }
      continue;
    }
    r.next();  // the escaped character
  }
  return std::nullopt;
}

// After a string: is it a key? Followed by "=" or "." (a dotted key), or
// by "]" on a table header line.
bool string_was_key(Reader r, bool header_line) {
  while (!r.done() && (r.peek() == ' ' || r.peek() == '\t')) r.next();
  if (r.done()) return false;
  char32_t c = r.peek();
  return c == '=' || c == '.' || (c == ']' && header_line);
}

}  // namespace

std::optional<TomlGuardFinding> find_toml_hazard(std::string_view text) {
  Reader r(text);
  bool line_start = true, header_line = false;  // header: the line's first character is "["
  char32_t before = '\n';                       // the last character that was no blank
  while (!r.done()) {
    char32_t c = r.peek();
    if (c == '\n') line_start = true, header_line = false;
    if (line_start && !is_space(c)) line_start = false, header_line = c == '[';
    if (c == '=') header_line = false;
    // A quote starts a string only where a key or a value may start; after
    // other text (`49"...`) toml++ reads on as part of a bare value.
    bool may_start =
        before == '\n' || before == '=' || before == '[' || before == '{' || before == ',' || before == '.';
    if (c != ' ' && c != '\t') before = c;
    if (c == '#') {
      while (!r.done() && r.peek() != '\n') r.next();
      continue;
    }
    if ((c == '"' || c == '\'') && may_start) {
      bool multi_line = r.starts(c == '"' ? "\"\"\"" : "'''");
      std::string_view quote = c == '"' ? (multi_line ? "\"\"\"" : "\"") : (multi_line ? "'''" : "'");
      r.skip(quote.size());
      std::optional<TomlGuardFinding> in_string;
      if (auto h = skip_string(r, quote, c == '"', multi_line, in_string)) return h;
      if (in_string && !multi_line && string_was_key(r, header_line)) return in_string;
      continue;
    }
    if (auto h = hazard_at(r, "is only allowed inside a string or a comment")) return h;
    r.next();
  }
  return std::nullopt;
}

}  // namespace sockrelay
