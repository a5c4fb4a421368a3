#include "config/config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/un.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "../../bpf/relay_shared.h"
#include "common/quote.h"
#include "config/address.h"

static_assert(sockrelay::kMaxRoutes == RELAY_MAX_ROUTES, "kMaxRoutes must match bpf/relay_shared.h");

namespace sockrelay {

namespace {

constexpr std::string_view kTopKeys[] = {"relay", "endpoints", "routes"};
constexpr std::string_view kRelayKeys[] = {"log-level", "idle-timeout", "max-sessions", "control"};
constexpr std::string_view kEndpointKeys[] = {"type", "listen", "connect", "subscribe"};
constexpr std::string_view kRouteKeys[] = {
    "from", "to", "mode", "datapath", "balance", "allow-sources", "allow-cids", "allow-uids", "allow-gids"};
constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
constexpr std::string_view kModes[] = {"egress", "ingress"};
constexpr std::string_view kDatapaths[] = {"auto", "kernel", "userspace"};
constexpr std::string_view kMultiBalances[] = {"round-robin", "hash", "broadcast"};
constexpr int64_t kMaxSessionsLimit = 1'000'000;
constexpr std::size_t kMaxNameLength = 255;  // systemd's FileDescriptorName= limit

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
// swaps of neighbours ("lsiten") each cost one.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

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

std::string_view type_name(toml::node_type t) {
  switch (t) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    default:
      return "nothing";
  }
}

SourcePos pos_of(const toml::source_region& r) {
  return SourcePos{static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
}
SourcePos pos_of(const toml::node& n) { return pos_of(n.source()); }
SourcePos pos_of(const toml::key& k) { return pos_of(k.source()); }

bool before(SourcePos a, SourcePos b) { return a.line != b.line ? a.line < b.line : a.column < b.column; }

// Collects diagnostics for one file.
class Checker {
 public:
  explicit Checker(std::string path) : path_(std::move(path)) {}

  void error(SourcePos pos, std::string message) { add(pos, Severity::Error, std::move(message)); }
  void warning(SourcePos pos, std::string message) { add(pos, Severity::Warning, std::move(message)); }

  std::vector<Diagnostic> take() {
    std::stable_sort(diagnostics_.begin(), diagnostics_.end(),
                     [](const Diagnostic& a, const Diagnostic& b) { return before(a.pos, b.pos); });
    return std::move(diagnostics_);
  }

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
  std::optional<std::string> string_value(const toml::node& node, const std::string& what) {
    if (auto s = node.as_string()) return s->get();
    error(pos_of(node), what + " must be a string, got " + std::string(type_name(node.type())));
    return std::nullopt;
  }

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
    diagnostics_.push_back(Diagnostic{path_, pos, severity, std::move(message)});
  }

  std::string path_;
  std::vector<Diagnostic> diagnostics_;
};

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

  if (const toml::node* n = table->get("idle-timeout")) {
    if (!n->is_string()) {
      c.error(pos_of(*n), "idle-timeout must be a string with a unit, e.g. \"120s\", got " +
                              std::string(type_name(n->type())));
    } else {
      const std::string& text = n->as_string()->get();
      auto d = parse_duration(text);
      if (!d) {
        c.error(pos_of(*n), "idle-timeout " + quoted(text) + ": " + d.error().message);
      } else if (d->count() <= 0) {
        c.error(pos_of(*n), "idle-timeout must be greater than 0, e.g. \"120s\"");
      } else {
        out.idle_timeout = *d;
      }
    }
  }

  if (const toml::node* n = table->get("max-sessions")) {
    if (auto i = n->as_integer()) {
      int64_t v = i->get();
      if (v < 1 || v > kMaxSessionsLimit) {
        c.error(pos_of(*n), "max-sessions must be between 1 and " + std::to_string(kMaxSessionsLimit) +
                                ", got " + std::to_string(v));
      } else {
        out.max_sessions = static_cast<uint32_t>(v);
      }
    } else {
      c.error(pos_of(*n), "max-sessions must be an integer, got " + std::string(type_name(n->type())));
    }
  }

  if (const toml::node* n = table->get("control")) {
    if (auto v = c.string_value(*n, "control")) {
      constexpr std::size_t kPathMax = sizeof(sockaddr_un::sun_path);
      if (v->empty() || v->front() != '/') {
        c.error(pos_of(*n), "control " + quoted(*v) +
                                " must be an absolute path for the control socket, e.g. "
                                "\"/run/sockrelay/control.sock\"");
      } else if (v->size() >= kPathMax) {
        c.error(pos_of(*n), "control path is " + std::to_string(v->size()) + " bytes, at most " +
                                std::to_string(kPathMax - 1) + " fit in a UNIX socket address");
      } else {
        out.control = *v;
      }
    }
  }
}

bool valid_endpoint_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (char ch : name) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '.' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

// What the route checks need to know about an endpoint, even a broken one.
struct EndpointInfo {
  Endpoint endpoint;
  bool role_known = false;
  bool address_ok = false;
  SourcePos address_pos;
  bool used = false;
};

std::vector<EndpointInfo> check_endpoints(Checker& c, const toml::node& node) {
  std::vector<EndpointInfo> out;
  const toml::table* table = node.as_table();
  if (table == nullptr) {
    c.error(pos_of(node), "endpoints must be a table of [endpoints.NAME] tables, got " +
                              std::string(type_name(node.type())));
    return out;
  }

  struct Entry {
    std::string name;
    const toml::node* node;
    SourcePos pos;
  };
  std::vector<Entry> entries;
  for (auto&& [key, value] : *table) {
    SourcePos pos = pos_of(value);
    if (pos.line == 0) pos = pos_of(key);
    entries.push_back(Entry{std::string(key.str()), &value, pos});
  }
  // toml::table is ordered by key; the relay wants file order.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return before(a.pos, b.pos); });

  std::vector<std::string> kind_names;
  for (EndpointKind k : kAllKinds) kind_names.emplace_back(kind_name(k));

  for (const Entry& entry : entries) {
    EndpointInfo info;
    Endpoint& ep = info.endpoint;
    ep.name = entry.name;
    ep.pos = entry.pos;
    const std::string where = "endpoint " + quoted(entry.name);

    if (!valid_endpoint_name(entry.name)) {
      c.error(entry.pos,
              where +
                  ": name must be 1 to 255 letters, digits, \"_\", \".\" or \"-\" (it is also systemd's "
                  "FileDescriptorName=)");
    }
    const toml::table* t = entry.node->as_table();
    if (t == nullptr) {
      c.error(entry.pos, where + " must be a table with type and listen or connect, got " +
                             std::string(type_name(entry.node->type())));
      out.push_back(std::move(info));
      continue;
    }
    c.check_keys(*t, kEndpointKeys, "in " + where);

    std::optional<EndpointKind> kind;
    if (const toml::node* n = t->get("type")) {
      if (auto v = c.enum_value(*n, where + ": type", kind_names)) kind = kind_from_name(*v);
    } else {
      c.error(entry.pos, where + " has no type; valid types: " + join(kind_names));
    }
    if (kind) ep.kind = *kind;

    // Exactly one of listen, connect, subscribe says the role and the address.
    const std::pair<const char*, Role> role_keys[] = {
        {"listen", Role::Listen}, {"connect", Role::Connect}, {"subscribe", Role::Subscribe}};
    const toml::node* address = nullptr;
    for (const auto& [key, role] : role_keys) {
      const toml::node* n = t->get(key);
      if (n == nullptr) continue;
      if (address != nullptr) {
        const toml::node* later = before(pos_of(*address), pos_of(*n)) ? n : address;
        c.error(pos_of(*later), where + " has both " + std::string(role_name(ep.role)) + " and " + key +
                                    "; give exactly one of listen, connect, subscribe");
        continue;
      }
      address = n;
      ep.role = role;
      info.role_known = true;
    }
    if (address == nullptr)
      c.error(entry.pos, where + " has neither listen nor connect; give exactly one (or subscribe)");
    if (address != nullptr && ep.role == Role::Subscribe && kind && *kind != EndpointKind::UnixStream &&
        *kind != EndpointKind::UnixSeqpacket) {
      c.error(pos_of(*address), where +
                                    ": subscribe takes a unix-stream or unix-seqpacket endpoint (consumers "
                                    "connect to it and receive the route's datagrams), not " +
                                    std::string(kind_name(*kind)));
    }

    if (address != nullptr) {
      info.address_pos = pos_of(*address);
      const std::string key(role_name(ep.role));
      if (auto text = c.string_value(*address, where + ": " + key); text && kind) {
        auto parsed = parse_address(*kind, *text, ep.role != Role::Connect);
        if (parsed) {
          ep.address = std::move(*parsed);
          info.address_ok = true;
        } else {
          c.error(info.address_pos, where + ": " + parsed.error().message);
        }
      }
    }
    out.push_back(std::move(info));
  }

  // Two listeners on one address: the second bind() would fail. UDP and TCP
  // have separate port spaces; UNIX kinds share the filesystem/abstract
  // namespace and VSOCK stream and seqpacket share one port table.
  auto conflict_class = [](EndpointKind k) {
    int family = kind_family(k);
    return family == AF_INET ? static_cast<int>(k) : -family;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const EndpointInfo& b = out[i];
    if (!b.address_ok || b.endpoint.role == Role::Connect) continue;
    for (std::size_t j = 0; j < i; ++j) {
      const EndpointInfo& a = out[j];
      if (!a.address_ok || a.endpoint.role == Role::Connect) continue;
      if (conflict_class(a.endpoint.kind) != conflict_class(b.endpoint.kind)) continue;
      if (!(a.endpoint.address == b.endpoint.address)) continue;
      c.error(b.address_pos, "endpoints " + quoted(a.endpoint.name) + " (line " +
                                 std::to_string(a.address_pos.line) + ") and " + quoted(b.endpoint.name) +
                                 " both listen on " + quoted(b.endpoint.address.text) +
                                 "; each listen address may be used once");
      break;
    }
  }
  return out;
}

struct NameRef {
  std::string name;
  SourcePos pos;
};

// `from`/`to`: a string or a non-empty array of strings.
std::optional<std::vector<NameRef>> name_list(Checker& c, const toml::node& node, const std::string& what) {
  std::vector<NameRef> out;
  if (auto s = node.as_string()) {
    out.push_back(NameRef{s->get(), pos_of(node)});
    return out;
  }
  const toml::array* arr = node.as_array();
  if (arr == nullptr) {
    c.error(pos_of(node), what + " must be an endpoint name or an array of names, got " +
                              std::string(type_name(node.type())));
    return std::nullopt;
  }
  if (arr->empty()) {
    c.error(pos_of(node), what + " is empty; name at least one endpoint");
    return std::nullopt;
  }
  bool ok = true;
  for (const toml::node& element : *arr) {
    if (auto s = element.as_string()) {
      out.push_back(NameRef{s->get(), pos_of(element)});
    } else {
      c.error(pos_of(element),
              what + " must list endpoint names (strings), got " + std::string(type_name(element.type())));
      ok = false;
    }
  }
  if (!ok) return std::nullopt;
  return out;
}

// `unresolved` is set when a route names an endpoint that does not exist.
// "10.0.0.0/8", "::1/128", or a bare address (a /32 or /128).
std::optional<SourceNetwork> parse_network(const std::string& text) {
  SourceNetwork net;
  net.text = text;
  std::string addr = text;
  int max_prefix = 0;
  auto slash = text.find('/');
  if (slash != std::string::npos) addr = text.substr(0, slash);
  if (inet_pton(AF_INET, addr.c_str(), net.address) == 1) {
    net.family = AF_INET;
    max_prefix = 32;
  } else if (inet_pton(AF_INET6, addr.c_str(), net.address) == 1) {
    net.family = AF_INET6;
    max_prefix = 128;
  } else {
    return std::nullopt;
  }
  net.prefix = max_prefix;
  if (slash != std::string::npos) {
    std::string bits = text.substr(slash + 1);
    if (bits.empty() || bits.size() > 3 || bits.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    net.prefix = std::stoi(bits);
    if (net.prefix > max_prefix) return std::nullopt;
  }
  return net;
}

void check_allow_sources(Checker& c, const toml::node& node, const std::string& where, Route& route) {
  const toml::array* arr = node.as_array();
  if (arr == nullptr) {
    c.error(pos_of(node), where +
                              ": allow-sources must be an array of networks, e.g. [\"10.0.0.0/8\", "
                              "\"::1/128\"], got " +
                              std::string(type_name(node.type())));
    return;
  }
  for (const toml::node& item : *arr) {
    auto text = c.string_value(item, where + ": allow-sources entry");
    if (!text) continue;
    auto net = parse_network(*text);
    if (!net) {
      c.error(pos_of(item), where + ": allow-sources entry " + quoted(*text) +
                                " is not a network: expected \"A.B.C.D/N\" (N 0-32) or \"IPV6/N\" (N 0-128)");
      continue;
    }
    route.allow_sources.push_back(*net);
  }
}

// allow-cids / allow-uids / allow-gids: numbers, or names ("host", "local"
// for CIDs; user and group names, looked up now, for the others).
void check_allow_ids(Checker& c, const toml::node& node, const std::string& where, const std::string& key,
                     std::vector<uint32_t>& out) {
  const toml::array* arr = node.as_array();
  const char* example = key == "allow-cids"   ? "[3, \"host\"]"
                        : key == "allow-uids" ? "[0, \"www-data\"]"
                                              : "[0, \"adm\"]";
  if (arr == nullptr) {
    c.error(pos_of(node), where + ": " + key + " must be an array, e.g. " + example + ", got " +
                              std::string(type_name(node.type())));
    return;
  }
  for (const toml::node& item : *arr) {
    if (auto n = item.value<int64_t>(); n && item.is_integer()) {
      if (*n < 0 || *n > UINT32_MAX) {
        c.error(pos_of(item),
                where + ": " + key + " entry " + std::to_string(*n) + " is out of range (0-4294967295)");
        continue;
      }
      out.push_back(static_cast<uint32_t>(*n));
      continue;
    }
    auto text = c.string_value(item, where + ": " + key + " entry");
    if (!text) continue;
    std::optional<uint32_t> id;
    if (key == "allow-cids") {
      if (*text == "host") id = VMADDR_CID_HOST;
      if (*text == "local") id = VMADDR_CID_LOCAL;
    } else if (key == "allow-uids") {
      if (const passwd* pw = getpwnam(text->c_str())) id = pw->pw_uid;
    } else if (const group* gr = getgrnam(text->c_str())) {
      id = gr->gr_gid;
    }
    if (!id) {
      c.error(pos_of(item),
              where + ": " + key + " entry " + quoted(*text) +
                  (key == "allow-cids"   ? " is not a CID: use a number, \"host\" (2) or \"local\" (1)"
                   : key == "allow-uids" ? " is not a user on this system: use a uid or a user name"
                                         : " is not a group on this system: use a gid or a group name"));
      continue;
    }
    out.push_back(*id);
  }
}

std::vector<Route> check_routes(Checker& c, const toml::node& node, std::vector<EndpointInfo>& endpoints,
                                bool& unresolved) {
  std::vector<Route> out;
  const toml::array* arr = node.as_array();
  if (arr == nullptr) {
    c.error(pos_of(node), "routes must be an array of tables: write each one as [[routes]], got " +
                              std::string(type_name(node.type())));
    return out;
  }

  std::vector<std::string> defined;
  for (const EndpointInfo& e : endpoints) defined.push_back(e.endpoint.name);
  auto find = [&](std::string_view name) -> EndpointInfo* {
    for (EndpointInfo& e : endpoints) {
      if (e.endpoint.name == name) return &e;
    }
    return nullptr;
  };
  std::map<std::string, std::size_t> source_of;  // endpoint name -> route number that reads it

  std::size_t number = 0;
  for (const toml::node& element : *arr) {
    ++number;
    const std::string where = "route #" + std::to_string(number);
    const toml::table* t = element.as_table();
    if (t == nullptr) {
      c.error(pos_of(element), where + " must be a table: write it as [[routes]], got " +
                                   std::string(type_name(element.type())));
      continue;
    }
    Route route;
    route.pos = pos_of(element);
    if (number == kMaxRoutes + 1) {
      c.error(route.pos, "too many routes: " + std::to_string(arr->size()) + ", at most " +
                             std::to_string(kMaxRoutes) + " (RELAY_MAX_ROUTES)");
    }
    c.check_keys(*t, kRouteKeys, "in " + where);

    // Resolve from/to and check each name's role.
    auto resolve = [&](const char* key, Role role, std::vector<std::string>& names) -> bool {
      const toml::node* n = t->get(key);
      if (n == nullptr) {
        c.error(route.pos, where + " has no \"" + key + "\": name the " + std::string(role_name(role)) +
                               " endpoint(s) it " + (role == Role::Listen ? "reads from" : "sends to"));
        return false;
      }
      auto refs = name_list(c, *n, where + ": " + key);
      if (!refs) return false;
      bool ok = true;
      std::set<std::string> seen;
      for (const NameRef& ref : *refs) {
        names.push_back(ref.name);
        if (!seen.insert(ref.name).second) {
          c.error(ref.pos, where + ": " + key + " lists " + quoted(ref.name) + " twice");
          ok = false;
          continue;
        }
        EndpointInfo* ep = find(ref.name);
        if (ep == nullptr) {
          std::string msg =
              where + ": " + key + " names " + quoted(ref.name) + " but no endpoint has that name";
          if (auto s = suggest(ref.name, defined)) {
            msg += ": did you mean " + quoted(*s) + "?";
          } else if (defined.empty()) {
            msg += "; define it as [endpoints." + ref.name + "]";
          } else {
            msg += "; defined endpoints: " + join(defined);
          }
          c.error(ref.pos, std::move(msg));
          unresolved = true;
          ok = false;
          continue;
        }
        ep->used = true;
        // A route sends to connect endpoints, or to the consumers of a
        // subscribe endpoint.
        bool subscribers = role == Role::Connect && ep->endpoint.role == Role::Subscribe;
        if (ep->role_known && ep->endpoint.role != role && !subscribers) {
          c.error(ref.pos, where + ": " + key + " endpoint " + quoted(ref.name) + " is a " +
                               std::string(role_name(ep->endpoint.role)) + " endpoint, but a route's " + key +
                               " must be " + std::string(role_name(role)) + " endpoints" +
                               (role == Role::Connect ? " (or one subscribe endpoint)" : ""));
          ok = false;
        }
      }
      return ok;
    };
    bool from_ok = resolve("from", Role::Listen, route.from);
    bool to_ok = resolve("to", Role::Connect, route.to);

    if (from_ok) {
      const toml::node* n = t->get("from");
      for (const std::string& name : route.from) {
        auto [it, inserted] = source_of.emplace(name, number);
        if (!inserted) {
          c.error(pos_of(*n), where + ": endpoint " + quoted(name) + " is already the source of route #" +
                                  std::to_string(it->second) + "; a listen endpoint feeds one route");
        }
      }
    }

    if (const toml::node* n = t->get("mode")) {
      if (auto v = c.enum_value(*n, where + ": mode", kModes)) route.mode = *mode_from_name(*v);
    }
    if (const toml::node* n = t->get("datapath")) {
      if (auto v = c.enum_value(*n, where + ": datapath", kDatapaths))
        route.datapath = *datapath_from_name(*v);
    }

    // Subscribers: consumers that come and go; each gets every datagram
    // unless balance says otherwise.
    bool to_subscribers = false;
    for (const std::string& name : route.to) {
      const EndpointInfo* ep = find(name);
      if (ep == nullptr || ep->endpoint.role != Role::Subscribe) continue;
      to_subscribers = true;
      if (route.to.size() != 1)
        c.error(pos_of(*t->get("to")), where + ": to lists the subscribe endpoint " + quoted(name) +
                                           " with other targets; a route to subscribers has that one target");
    }
    const bool several = route.to.size() > 1 || to_subscribers;
    route.balance = to_subscribers ? Balance::Broadcast : several ? Balance::RoundRobin : Balance::Single;
    if (const toml::node* n = t->get("balance")) {
      if (!to_ok || several) {
        if (auto v = c.enum_value(*n, where + ": balance", kMultiBalances))
          route.balance = *balance_from_name(*v);
      } else if (auto v = c.string_value(*n, where + ": balance")) {
        c.warning(pos_of(*n),
                  where + ": balance " + quoted(*v) +
                      " has no effect with a single target; remove it or list several endpoints in "
                      "\"to\"");
      }
    }
    if (const toml::node* n = t->get("allow-sources")) check_allow_sources(c, *n, where, route);
    if (const toml::node* n = t->get("allow-cids"))
      check_allow_ids(c, *n, where, "allow-cids", route.allow_cids);
    if (const toml::node* n = t->get("allow-uids"))
      check_allow_ids(c, *n, where, "allow-uids", route.allow_uids);
    if (const toml::node* n = t->get("allow-gids"))
      check_allow_ids(c, *n, where, "allow-gids", route.allow_gids);
    out.push_back(std::move(route));
  }
  return out;
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

  const bool no_routes =
      routes_node == nullptr || (routes_node->is_array() && routes_node->as_array()->empty());
  if (no_routes) {
    SourcePos pos = routes_node != nullptr ? pos_of(*routes_node) : SourcePos{1, 1};
    std::string msg = "nothing to relay: define at least one [[routes]]";
    if (endpoints.empty()) msg += " and the [endpoints.NAME] it joins";
    c.error(pos, std::move(msg));
  } else if (!config.routes.empty() && !unresolved) {
    // (With a misspelt name in a route, "unused" would only repeat that error.)
    for (const EndpointInfo& e : endpoints) {
      if (!e.used) {
        c.warning(e.endpoint.pos, "endpoint " + quoted(e.endpoint.name) + " is not used by any route");
      }
    }
  }

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

ParseOutcome parse_config(std::string_view text, const std::string& path) {
  ParseOutcome outcome;
  Checker checker(path);
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

}  // namespace sockrelay
