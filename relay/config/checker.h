// What the config checks share (internal to the config library): the
// collector of diagnostics, positions of TOML nodes, and "did you mean"
// suggestions. The checks themselves are split by what they read:
// check_relay.cpp ([relay]), check_endpoints.cpp ([endpoints.NAME]),
// check_routes.cpp ([[routes]] as written) and route_rules.cpp (what this
// version can run, once the whole file is understood).
#pragma once

#include <toml++/toml.h>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/quote.h"
#include "config/config.h"

namespace sockrelay::config_check {

// "a, b, c".
template <typename Range>
std::string join(const Range& items, std::string_view sep = ", ") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += std::string_view(item);
  }
  return out;
}

// Optimal string alignment distance: insertions, deletions, substitutions and
// swaps of neighbours ("lsiten") each cost one. Exact up to 8; above that
// (and for texts over 1024 characters) only "more than 8".
std::size_t edit_distance(std::string_view a, std::string_view b);

// The closest candidate within edit distance 2, if any; a candidate that is
// a prefix of the word ("warning" -> "warn") counts as distance 2.
template <typename Range>
std::optional<std::string> suggest(std::string_view word, const Range& candidates) {
  std::optional<std::string> best;
  std::size_t best_distance = 3;
  for (const auto& c : candidates) {
    std::string_view cand(c);
    std::size_t dist = edit_distance(word, cand);
    if (dist > 2 && cand.size() >= 3 && word.size() > cand.size() && word.substr(0, cand.size()) == cand)
      dist = 2;
    if (dist < best_distance) {
      best_distance = dist;
      best = std::string(c);
    }
  }
  return best;
}

// "table", "string", ... for "must be a string, got integer".
std::string_view type_name(toml::node_type t);

SourcePos pos_of(const toml::source_region& r);
inline SourcePos pos_of(const toml::node& n) { return pos_of(n.source()); }
inline SourcePos pos_of(const toml::key& k) { return pos_of(k.source()); }

// File order.
inline bool before(SourcePos a, SourcePos b) {
  return a.line != b.line ? a.line < b.line : a.column < b.column;
}

// Collects diagnostics for one file.
class Checker {
 public:
  explicit Checker(std::string path) : path_(std::move(path)) {}

  void error(SourcePos pos, std::string message) { add(pos, Severity::Error, std::move(message)); }
  void warning(SourcePos pos, std::string message) { add(pos, Severity::Warning, std::move(message)); }
  void add(Diagnostic diagnostic) { diagnostics_.push_back(std::move(diagnostic)); }
  bool has_errors() const;

  // Every diagnostic so far, in file order.
  std::vector<Diagnostic> take();

  // Unknown keys in `table`; `where` names the table in the message.
  template <typename Range>
  void check_keys(const toml::table& table, const Range& valid, const std::string& where) {
    for (auto&& [key, value] : table) {
      std::string_view k = key.str();
      if (std::find(std::begin(valid), std::end(valid), k) != std::end(valid)) continue;
      std::string msg = "unknown key " + quoted(k) + " " + where;
      if (auto s = suggest(k, valid)) {
        msg += ": did you mean " + quoted(*s) + "?";
      } else {
        msg += "; valid keys: " + join(valid);
      }
      error(pos_of(key), std::move(msg));
    }
  }

  // The node as a string, or an error naming `what` and the type it got.
  std::optional<std::string> string_value(const toml::node& node, const std::string& what);

  // One of `valid`, or an error listing them.
  template <typename Range>
  std::optional<std::string> enum_value(const toml::node& node, const std::string& what, const Range& valid) {
    auto s = string_value(node, what);
    if (!s) return std::nullopt;
    if (std::find(std::begin(valid), std::end(valid), *s) != std::end(valid)) return s;
    std::string msg = what + " " + quoted(*s) + " is not valid";
    if (auto close = suggest(*s, valid)) {
      msg += ": did you mean " + quoted(*close) + "? valid values: " + join(valid);
    } else {
      msg += "; valid values: " + join(valid);
    }
    error(pos_of(node), std::move(msg));
    return std::nullopt;
  }

 private:
  void add(SourcePos pos, Severity severity, std::string message) {
    add(Diagnostic{path_, pos, severity, std::move(message)});
  }

  std::string path_;
  std::vector<Diagnostic> diagnostics_;
};

// What the route checks need to know about an endpoint, even a broken one.
struct EndpointInfo {
  Endpoint endpoint;
  bool role_known = false;
  bool address_ok = false;
  SourcePos address_pos;
  bool used = false;
};

// Each reads one part of the document into `out` and reports what is wrong
// with it; none stops at the first problem.
void check_relay(Checker& c, const toml::node& node, RelaySettings& out);
std::vector<EndpointInfo> check_endpoints(Checker& c, const toml::node& node);
// Marks the endpoints the routes use; `unresolved` is set when a route
// names an endpoint that does not exist.
std::vector<Route> check_routes(Checker& c, const toml::node& node, std::vector<EndpointInfo>& endpoints,
                                bool& unresolved);

// The keys each part accepts: sockrelay.toml(5) documents every one
// (tests/unit/man_pages_test.cpp).
std::span<const std::string_view> relay_keys();
std::span<const std::string_view> endpoint_keys();
std::span<const std::string_view> route_keys();

}  // namespace sockrelay::config_check
