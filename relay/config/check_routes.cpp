// [[routes]] as written: which endpoints each route joins, its mode,
// datapath and balance, and who may use it. What this version can run is
// judged afterwards, on the whole config (route_rules.cpp).
#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on

#include <cstdint>
#include <map>
#include <set>

#include "config/checker.h"

namespace sockrelay::config_check {

namespace {

constexpr std::string_view kRouteKeys[] = {
    "from",       "to",         "mode",       "datapath", "balance",   "allow-sources",
    "allow-cids", "allow-uids", "allow-gids", "one-way",  "when-full", "target-buffer"};
constexpr std::string_view kModes[] = {"egress", "ingress"};
constexpr std::string_view kDatapaths[] = {"auto", "kernel", "userspace"};
constexpr std::string_view kMultiBalances[] = {"round-robin", "hash", "broadcast"};
constexpr std::string_view kWhenFull[] = {"reset", "wait"};

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

// A CID, user or group by name: "host", "local" for CIDs; user and group
// names are looked up now. An error says what was expected.
std::optional<uint32_t> id_by_name(const std::string& key, const std::string& text, std::string* expected) {
  if (key == "allow-cids") {
    *expected = " is not a CID: use a number, \"host\" (2) or \"local\" (1)";
    if (text == "host") return VMADDR_CID_HOST;
    if (text == "local") return VMADDR_CID_LOCAL;
  } else if (key == "allow-uids") {
    *expected = " is not a user on this system: use a uid or a user name";
    if (const passwd* pw = getpwnam(text.c_str())) return pw->pw_uid;
  } else {
    *expected = " is not a group on this system: use a gid or a group name";
    if (const group* gr = getgrnam(text.c_str())) return gr->gr_gid;
  }
  return std::nullopt;
}

// allow-cids / allow-uids / allow-gids: numbers, or names (id_by_name).
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
    std::string expected;
    if (auto id = id_by_name(key, *text, &expected)) {
      out.push_back(*id);
      continue;
    }
    c.error(pos_of(item), where + ": " + key + " entry " + quoted(*text) + expected);
  }
}

// One route's view of the endpoints: resolves names and marks them used.
class EndpointDirectory {
 public:
  explicit EndpointDirectory(std::vector<EndpointInfo>& endpoints) : endpoints_(endpoints) {
    for (const EndpointInfo& e : endpoints) defined_.push_back(e.endpoint.name);
  }
  EndpointInfo* find(std::string_view name) {
    for (EndpointInfo& e : endpoints_) {
      if (e.endpoint.name == name) return &e;
    }
    return nullptr;
  }
  // "did you mean" or the names there are.
  std::string hint(const std::string& name) const {
    if (auto s = suggest(name, defined_)) return ": did you mean " + quoted(*s) + "?";
    if (defined_.empty()) return "; define it as [endpoints." + name + "]";
    return "; defined endpoints: " + join(defined_);
  }

 private:
  std::vector<EndpointInfo>& endpoints_;
  std::vector<std::string> defined_;
};

// What one [[routes]] table is being read into, and what it is read from.
struct RouteReading {
  Checker& c;
  const toml::table& table;
  const std::string where;  // "route #N"
  Route route;
  bool unresolved = false;  // names an endpoint that does not exist
};

// `from` (role Listen) or `to` (role Connect): resolves each name and
// checks its role. False when something is wrong.
bool resolve_names(RouteReading& r, EndpointDirectory& directory, const char* key, Role role,
                   std::vector<std::string>& names) {
  const toml::node* n = r.table.get(key);
  if (n == nullptr) {
    r.c.error(r.route.pos, r.where + " has no \"" + key + "\": name the " + std::string(role_name(role)) +
                               " endpoint(s) it " + (role == Role::Listen ? "reads from" : "sends to"));
    return false;
  }
  auto refs = name_list(r.c, *n, r.where + ": " + key);
  if (!refs) return false;
  bool ok = true;
  std::set<std::string> seen;
  for (const NameRef& ref : *refs) {
    names.push_back(ref.name);
    if (!seen.insert(ref.name).second) {
      r.c.error(ref.pos, r.where + ": " + key + " lists " + quoted(ref.name) + " twice");
      ok = false;
      continue;
    }
    EndpointInfo* ep = directory.find(ref.name);
    if (ep == nullptr) {
      r.c.error(ref.pos, r.where + ": " + key + " names " + quoted(ref.name) +
                             " but no endpoint has that name" + directory.hint(ref.name));
      r.unresolved = true;
      ok = false;
      continue;
    }
    ep->used = true;
    // A route sends to connect endpoints, or to the consumers of a
    // subscribe endpoint.
    bool subscribers = role == Role::Connect && ep->endpoint.role == Role::Subscribe;
    if (ep->role_known && ep->endpoint.role != role && !subscribers) {
      r.c.error(ref.pos, r.where + ": " + key + " endpoint " + quoted(ref.name) + " is a " +
                             std::string(role_name(ep->endpoint.role)) + " endpoint, but a route's " + key +
                             " must be " + std::string(role_name(role)) + " endpoints" +
                             (role == Role::Connect ? " (or one subscribe endpoint)" : ""));
      ok = false;
    }
  }
  return ok;
}

// A listen endpoint feeds one route.
void check_single_reader(RouteReading& r, std::map<std::string, std::size_t>& source_of, std::size_t number) {
  for (const std::string& name : r.route.from) {
    auto [it, inserted] = source_of.emplace(name, number);
    if (!inserted) {
      r.c.error(r.route.keys.from, r.where + ": endpoint " + quoted(name) +
                                       " is already the source of route #" + std::to_string(it->second) +
                                       "; a listen endpoint feeds one route");
    }
  }
}

// Subscribers: consumers that come and go; each gets every datagram
// unless balance says otherwise. Several targets default to round-robin.
void check_balance(RouteReading& r, EndpointDirectory& directory, bool to_ok) {
  bool to_subscribers = false;
  for (const std::string& name : r.route.to) {
    const EndpointInfo* ep = directory.find(name);
    if (ep == nullptr || ep->endpoint.role != Role::Subscribe) continue;
    to_subscribers = true;
    if (r.route.to.size() != 1)
      r.c.error(r.route.keys.to, r.where + ": to lists the subscribe endpoint " + quoted(name) +
                                     " with other targets; a route to subscribers has that one target");
  }
  const bool several = r.route.to.size() > 1 || to_subscribers;
  r.route.balance = to_subscribers ? Balance::Broadcast : several ? Balance::RoundRobin : Balance::Single;
  const toml::node* n = r.table.get("balance");
  if (n == nullptr) return;
  if (!to_ok || several) {
    if (auto v = r.c.enum_value(*n, r.where + ": balance", kMultiBalances))
      r.route.balance = *balance_from_name(*v);
  } else if (auto v = r.c.string_value(*n, r.where + ": balance")) {
    r.c.warning(pos_of(*n), r.where + ": balance " + quoted(*v) +
                                " has no effect with a single target; remove it or list several endpoints in "
                                "\"to\"");
  }
}

void check_modes(RouteReading& r) {
  if (const toml::node* n = r.table.get("mode")) {
    if (auto v = r.c.enum_value(*n, r.where + ": mode", kModes)) r.route.mode = *mode_from_name(*v);
  }
  if (const toml::node* n = r.table.get("datapath")) {
    if (auto v = r.c.enum_value(*n, r.where + ": datapath", kDatapaths))
      r.route.datapath = *datapath_from_name(*v);
  }
  if (const toml::node* n = r.table.get("when-full")) {
    if (auto v = r.c.enum_value(*n, r.where + ": when-full", kWhenFull))
      r.route.when_full = *v == "wait" ? WhenFull::Wait : WhenFull::Reset;
  }
}

// `one-way`: a boolean; what it may be combined with is judged in
// route_rules.cpp.
void check_one_way(RouteReading& r) {
  const toml::node* n = r.table.get("one-way");
  if (n == nullptr) return;
  if (auto b = n->as_boolean()) {
    r.route.one_way = b->get();
    return;
  }
  r.c.error(pos_of(*n),
            r.where + ": one-way must be true or false, got " + std::string(type_name(n->type())));
}

void check_access(RouteReading& r) {
  if (const toml::node* n = r.table.get("allow-sources")) check_allow_sources(r.c, *n, r.where, r.route);
  if (const toml::node* n = r.table.get("allow-cids"))
    check_allow_ids(r.c, *n, r.where, "allow-cids", r.route.allow_cids);
  if (const toml::node* n = r.table.get("allow-uids"))
    check_allow_ids(r.c, *n, r.where, "allow-uids", r.route.allow_uids);
  if (const toml::node* n = r.table.get("allow-gids"))
    check_allow_ids(r.c, *n, r.where, "allow-gids", r.route.allow_gids);
}

// "4MiB", "512KiB", "1GiB" (also k/M/G, powers of 1024) or a number of bytes.
std::optional<uint64_t> parse_size(std::string_view text) {
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    value = value * 10 + static_cast<uint64_t>(text[i] - '0');
    if (value > (uint64_t{1} << 40)) return std::nullopt;
  }
  if (i == 0) return std::nullopt;
  const std::string_view unit = text.substr(i);
  if (unit.empty() || unit == "B") return value;
  if (unit == "KiB" || unit == "k" || unit == "K") return value << 10;
  if (unit == "MiB" || unit == "M") return value << 20;
  if (unit == "GiB" || unit == "G") return value << 30;
  return std::nullopt;
}

// target-buffer: kernel memory toward one target (bpf/target_bound.h).
void check_target_buffer(RouteReading& r) {
  const toml::node* n = r.table.get("target-buffer");
  if (n == nullptr) return;
  r.route.target_buffer_pos = pos_of(*n);
  std::optional<uint64_t> bytes;
  if (auto i = n->value<int64_t>(); i && n->is_integer()) {
    if (*i >= 0) bytes = static_cast<uint64_t>(*i);
  } else if (auto text = n->value<std::string>()) {
    bytes = parse_size(*text);
  }
  const std::string range = "between 64KiB and 1GiB, e.g. \"4MiB\" (the default)";
  if (!bytes) {
    r.c.error(pos_of(*n), r.where +
                              ": target-buffer must be a size such as \"4MiB\", \"512KiB\" or a number of "
                              "bytes, " +
                              range);
    return;
  }
  if (*bytes < kMinTargetBuffer || *bytes > kMaxTargetBuffer) {
    r.c.error(pos_of(*n),
              r.where + ": target-buffer " + std::to_string(*bytes) + " bytes is out of range: " + range);
    return;
  }
  r.route.target_buffer = static_cast<uint32_t>(*bytes);
}

// Where each key's value was written; the route table for the keys it lacks.
RouteKeyPositions key_positions(const toml::table& t, SourcePos table) {
  auto at = [&](const char* key) {
    const toml::node* n = t.get(key);
    return n != nullptr ? pos_of(*n) : table;
  };
  return RouteKeyPositions{at("from"),       at("to"),         at("mode"),
                           at("datapath"),   at("balance"),    at("allow-sources"),
                           at("allow-cids"), at("allow-uids"), at("allow-gids"),
                           at("one-way"),    at("when-full")};
}

}  // namespace

std::vector<Route> check_routes(Checker& c, const toml::node& node, std::vector<EndpointInfo>& endpoints,
                                bool& unresolved) {
  std::vector<Route> out;
  const toml::array* arr = node.as_array();
  if (arr == nullptr) {
    c.error(pos_of(node), "routes must be an array of tables: write each one as [[routes]], got " +
                              std::string(type_name(node.type())));
    return out;
  }
  EndpointDirectory directory(endpoints);
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
    RouteReading r{c, *t, where, {}};
    r.route.pos = pos_of(element);
    r.route.keys = key_positions(*t, r.route.pos);
    if (number == kMaxRoutes + 1) {
      c.error(r.route.pos, "too many routes: " + std::to_string(arr->size()) + ", at most " +
                               std::to_string(kMaxRoutes) + " (RELAY_MAX_ROUTES)");
    }
    c.check_keys(*t, kRouteKeys, "in " + where);
    const bool from_ok = resolve_names(r, directory, "from", Role::Listen, r.route.from);
    const bool to_ok = resolve_names(r, directory, "to", Role::Connect, r.route.to);
    if (from_ok) check_single_reader(r, source_of, number);
    check_modes(r);
    check_balance(r, directory, to_ok);
    check_access(r);
    check_one_way(r);
    check_target_buffer(r);
    unresolved = unresolved || r.unresolved;
    out.push_back(std::move(r.route));
  }
  return out;
}

std::span<const std::string_view> route_keys() { return kRouteKeys; }

}  // namespace sockrelay::config_check
