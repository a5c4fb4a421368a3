// The whole document: TOML syntax, then each part (checker.h names where
// each is checked), then what this version can run (route_rules.h).
#include "config/config.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

#include "config/checker.h"
#include "config/route_rules.h"
#include "config/toml_guard.h"
#include "relay_shared.h"

static_assert(sockrelay::kMaxRoutes == RELAY_MAX_ROUTES, "kMaxRoutes must match bpf/relay_shared.h");
static_assert(sockrelay::kMaxTargets == RELAY_MAX_TARGETS, "kMaxTargets must match bpf/relay_shared.h");
static_assert(sockrelay::kDefaultTargetBuffer == RELAY_DEFAULT_TARGET_BUFFER,
              "kDefaultTargetBuffer must match bpf/relay_shared.h");

namespace sockrelay {

namespace {

using namespace config_check;

constexpr std::string_view kTopKeys[] = {"relay", "endpoints", "routes"};

// With no routes there is nothing to relay; with routes, an endpoint none
// of them uses is probably a mistake.
void check_usage(Checker& c, const toml::node* routes_node, const std::vector<EndpointInfo>& endpoints,
                 const Config& config, bool unresolved) {
  const bool no_routes =
      routes_node == nullptr || (routes_node->is_array() && routes_node->as_array()->empty());
  if (no_routes) {
    SourcePos pos = routes_node != nullptr ? pos_of(*routes_node) : SourcePos{1, 1};
    std::string msg = "nothing to relay: define at least one [[routes]]";
    if (endpoints.empty()) msg += " and the [endpoints.NAME] it joins";
    c.error(pos, std::move(msg));
    return;
  }
  // (With a misspelt name in a route, "unused" would only repeat that error.)
  if (config.routes.empty() || unresolved) return;
  for (const EndpointInfo& e : endpoints) {
    if (!e.used)
      c.warning(e.endpoint.pos, "endpoint " + quoted(e.endpoint.name) + " is not used by any route");
  }
}

Config check_document(Checker& c, const toml::table& root, const std::string& path) {
  Config config;
  config.path = path;
  c.check_keys(root, kTopKeys, "at top level");

  if (const toml::node* n = root.get("relay")) check_relay(c, *n, config.relay);

  std::vector<EndpointInfo> endpoints;
  if (const toml::node* n = root.get("endpoints")) endpoints = check_endpoints(c, *n);

  const toml::node* routes_node = root.get("routes");
  bool unresolved = false;
  if (routes_node != nullptr) config.routes = check_routes(c, *routes_node, endpoints, unresolved);
  check_usage(c, routes_node, endpoints, config, unresolved);

  for (EndpointInfo& e : endpoints) config.endpoints.push_back(std::move(e.endpoint));
  return config;
}

}  // namespace

std::string Diagnostic::format() const {
  std::string_view sev = severity == Severity::Error     ? "error"
                         : severity == Severity::Warning ? "warning"
                                                         : "note";
  return file + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) + ": " + std::string(sev) +
         ": " + message;
}

bool ParseOutcome::has_errors() const {
  return std::any_of(diagnostics.begin(), diagnostics.end(),
                     [](const Diagnostic& d) { return d.severity == Severity::Error; });
}

ParseOutcome parse_config(std::string_view text, const std::string& path) {
  ParseOutcome outcome;
  Checker checker(path);
  if (auto hazard = find_toml_hazard(text)) {  // before toml++ 3.3.0 trips on it (toml_guard.h)
    checker.error(hazard->pos, "syntax error: " + hazard->message);
    outcome.config.path = path;
    outcome.diagnostics = checker.take();
    return outcome;
  }
  try {
    toml::table root = toml::parse(text, std::string_view(path));
    outcome.config = check_document(checker, root, path);
  } catch (const toml::parse_error& e) {
    std::string message(e.description());
    constexpr std::string_view kPrefix = "Error while parsing ";
    if (message.rfind(kPrefix, 0) == 0) message = "syntax error in " + message.substr(kPrefix.size());
    checker.error(pos_of(e.source()), std::move(message));
    outcome.config.path = path;
  } catch (const std::exception& e) {
    // Nothing else should throw (bad_alloc aside): keep the no-exception
    // contract anyway.
    checker.error(SourcePos{0, 0}, std::string("cannot parse config: ") + e.what());
    outcome.config.path = path;
  }
  if (!checker.has_errors()) {
    for (Diagnostic& d : check_route_rules(outcome.config)) checker.add(std::move(d));
  }
  outcome.diagnostics = checker.take();
  return outcome;
}

ParseOutcome load_config(const std::string& path) {
  auto unreadable = [&](int code) {
    ParseOutcome outcome;
    outcome.config.path = path;
    outcome.diagnostics.push_back(Diagnostic{
        path, SourcePos{0, 0}, Severity::Error,
        std::string("cannot read config: ") + std::strerror(code) + "; create it or pass --config FILE"});
    return outcome;
  };
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) return unreadable(errno);
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  int code = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (code != 0) return unreadable(code);
  return parse_config(text, path);
}

std::vector<ConfigTableKeys> config_keys() {
  return {
      {"", kTopKeys}, {"relay", relay_keys()}, {"endpoints.NAME", endpoint_keys()}, {"routes", route_keys()}};
}

}  // namespace sockrelay
