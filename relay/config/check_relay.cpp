// [relay]: the settings of the relay as a whole.
#include <sys/un.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "config/checker.h"

namespace sockrelay {

namespace config_check {

namespace {

constexpr std::string_view kRelayKeys[] = {"log-level", "idle-timeout", "unreplied-timeout", "max-sessions",
                                           "control"};
constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
constexpr int64_t kMaxSessionsLimit = 1'000'000;

// idle-timeout, unreplied-timeout: a duration > 0 (`example` in messages).
std::optional<std::chrono::milliseconds> check_timeout(Checker& c, const toml::node& n,
                                                       const std::string& key, const std::string& example) {
  if (!n.is_string()) {
    c.error(pos_of(n), key + " must be a string with a unit, e.g. \"" + example + "\", got " +
                           std::string(type_name(n.type())));
    return std::nullopt;
  }
  const std::string& text = n.as_string()->get();
  auto d = parse_duration(text);
  if (!d) {
    c.error(pos_of(n), key + " " + quoted(text) + ": " + d.error().message);
  } else if (d->count() <= 0) {
    c.error(pos_of(n), key + " must be greater than 0, e.g. \"" + example + "\"");
  } else {
    return *d;
  }
  return std::nullopt;
}

std::string duration_text(std::chrono::milliseconds d) {
  return d.count() % 1000 == 0 ? std::to_string(d.count() / 1000) + "s" : std::to_string(d.count()) + "ms";
}

// A flow that saw no reply may not outlive one that did.
void check_unreplied_timeout(Checker& c, const toml::node& n, RelaySettings& out) {
  auto d = check_timeout(c, n, "unreplied-timeout", "30s");
  if (!d) return;
  if (*d > out.idle_timeout) {
    c.error(pos_of(n), "unreplied-timeout " + quoted(n.as_string()->get()) +
                           " is longer than idle-timeout (" + duration_text(out.idle_timeout) +
                           "): a flow without a reply would outlive an established one; make it at most "
                           "idle-timeout");
    return;
  }
  out.unreplied_timeout = *d;
}

void check_max_sessions(Checker& c, const toml::node& n, RelaySettings& out) {
  auto i = n.as_integer();
  if (i == nullptr) {
    c.error(pos_of(n), "max-sessions must be an integer, got " + std::string(type_name(n.type())));
    return;
  }
  int64_t v = i->get();
  if (v < 1 || v > kMaxSessionsLimit) {
    c.error(pos_of(n), "max-sessions must be between 1 and " + std::to_string(kMaxSessionsLimit) + ", got " +
                           std::to_string(v));
    return;
  }
  out.max_sessions = static_cast<uint32_t>(v);
  out.max_sessions_pos = pos_of(n);
}

void check_control(Checker& c, const toml::node& n, RelaySettings& out) {
  auto v = c.string_value(n, "control");
  if (!v) return;
  constexpr std::size_t kPathMax = sizeof(sockaddr_un::sun_path);
  if (v->empty() || v->front() != '/') {
    c.error(pos_of(n), "control " + quoted(*v) +
                           " must be an absolute path for the control socket, e.g. "
                           "\"/run/sockrelay/control.sock\"");
  } else if (v->size() >= kPathMax) {
    c.error(pos_of(n), "control path is " + std::to_string(v->size()) + " bytes, at most " +
                           std::to_string(kPathMax - 1) + " fit in a UNIX socket address");
  } else {
    out.control = *v;
  }
}

}  // namespace

void check_relay(Checker& c, const toml::node& node, RelaySettings& out) {
  const toml::table* table = node.as_table();
  if (table == nullptr) {
    c.error(pos_of(node), "relay must be a table ([relay]), got " + std::string(type_name(node.type())));
    return;
  }
  c.check_keys(*table, kRelayKeys, "in [relay]");
  if (const toml::node* n = table->get("log-level")) {
    if (auto v = c.enum_value(*n, "log-level", kLogLevels)) out.log_level = *v;
  }
  if (const toml::node* n = table->get("idle-timeout"))
    if (auto d = check_timeout(c, *n, "idle-timeout", "120s")) out.idle_timeout = *d;
  if (const toml::node* n = table->get("unreplied-timeout")) check_unreplied_timeout(c, *n, out);
  if (const toml::node* n = table->get("max-sessions")) check_max_sessions(c, *n, out);
  if (const toml::node* n = table->get("control")) check_control(c, *n, out);
}

std::span<const std::string_view> relay_keys() { return kRelayKeys; }

}  // namespace config_check

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  static const Error kBad = plain_error(
      "not a duration: use an integer and a unit ms, s, m or h, e.g. \"500ms\", \"120s\", \"2m\"");
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return kBad;
  std::string_view unit = text.substr(digits);
  int64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else {
    return kBad;
  }
  const int64_t max = std::numeric_limits<int64_t>::max() / scale;
  int64_t value = 0;
  for (char ch : text.substr(0, digits)) {
    if (value > (max - (ch - '0')) / 10) return plain_error("duration is too large");
    value = value * 10 + (ch - '0');
  }
  return std::chrono::milliseconds(value * scale);
}

}  // namespace sockrelay
