// [endpoints.NAME]: each endpoint's kind, role and address, and listeners
// that would collide.
#include <sys/socket.h>

#include "config/address.h"
#include "config/checker.h"

namespace sockrelay::config_check {

namespace {

constexpr std::string_view kEndpointKeys[] = {"type", "listen", "connect", "subscribe"};
constexpr std::size_t kMaxNameLength = 255;  // systemd's FileDescriptorName= limit

bool valid_endpoint_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (char ch : name) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '.' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

struct Entry {
  std::string name;
  const toml::node* node;
  SourcePos pos;
};

// toml::table is ordered by key; the relay wants file order.
std::vector<Entry> in_file_order(const toml::table& table) {
  std::vector<Entry> entries;
  for (auto&& [key, value] : table) {
    SourcePos pos = pos_of(value);
    if (pos.line == 0) pos = pos_of(key);
    entries.push_back(Entry{std::string(key.str()), &value, pos});
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return before(a.pos, b.pos); });
  return entries;
}

std::optional<EndpointKind> check_kind(Checker& c, const toml::table& t, const Entry& entry,
                                       const std::string& where) {
  std::vector<std::string> kind_names;
  for (EndpointKind k : kAllKinds) kind_names.emplace_back(kind_name(k));
  const toml::node* n = t.get("type");
  if (n == nullptr) {
    c.error(entry.pos, where + " has no type; valid types: " + join(kind_names));
    return std::nullopt;
  }
  if (auto v = c.enum_value(*n, where + ": type", kind_names)) return kind_from_name(*v);
  return std::nullopt;
}

// Exactly one of listen, connect, subscribe says the role and the address;
// returns the address node (null if none).
const toml::node* check_role(Checker& c, const toml::table& t, const Entry& entry, const std::string& where,
                             EndpointInfo& info) {
  const std::pair<const char*, Role> role_keys[] = {
      {"listen", Role::Listen}, {"connect", Role::Connect}, {"subscribe", Role::Subscribe}};
  const toml::node* address = nullptr;
  for (const auto& [key, role] : role_keys) {
    const toml::node* n = t.get(key);
    if (n == nullptr) continue;
    if (address != nullptr) {
      const toml::node* later = before(pos_of(*address), pos_of(*n)) ? n : address;
      c.error(pos_of(*later), where + " has both " + std::string(role_name(info.endpoint.role)) + " and " +
                                  key + "; give exactly one of listen, connect, subscribe");
      continue;
    }
    address = n;
    info.endpoint.role = role;
    info.role_known = true;
  }
  if (address == nullptr)
    c.error(entry.pos, where + " has neither listen nor connect; give exactly one (or subscribe)");
  return address;
}

void check_address(Checker& c, const toml::node& address, std::optional<EndpointKind> kind,
                   const std::string& where, EndpointInfo& info) {
  Endpoint& ep = info.endpoint;
  info.address_pos = pos_of(address);
  if (ep.role == Role::Subscribe && kind && *kind != EndpointKind::UnixStream &&
      *kind != EndpointKind::UnixSeqpacket) {
    c.error(info.address_pos, where +
                                  ": subscribe takes a unix-stream or unix-seqpacket endpoint (consumers "
                                  "connect to it and receive the route's datagrams), not " +
                                  std::string(kind_name(*kind)));
  }
  const std::string key(role_name(ep.role));
  auto text = c.string_value(address, where + ": " + key);
  if (!text || !kind) return;
  auto parsed = parse_address(*kind, *text, ep.role != Role::Connect);
  if (!parsed) {
    c.error(info.address_pos, where + ": " + parsed.error().message);
    return;
  }
  ep.address = std::move(*parsed);
  info.address_ok = true;
}

EndpointInfo check_endpoint(Checker& c, const Entry& entry) {
  EndpointInfo info;
  info.endpoint.name = entry.name;
  info.endpoint.pos = entry.pos;
  const std::string where = "endpoint " + quoted(entry.name);
  if (!valid_endpoint_name(entry.name)) {
    c.error(entry.pos, where +
                           ": name must be 1 to 255 letters, digits, \"_\", \".\" or \"-\" (it is also "
                           "systemd's FileDescriptorName=)");
  }
  const toml::table* t = entry.node->as_table();
  if (t == nullptr) {
    c.error(entry.pos, where + " must be a table with type and listen or connect, got " +
                           std::string(type_name(entry.node->type())));
    return info;
  }
  c.check_keys(*t, kEndpointKeys, "in " + where);
  std::optional<EndpointKind> kind = check_kind(c, *t, entry, where);
  if (kind) info.endpoint.kind = *kind;
  if (const toml::node* address = check_role(c, *t, entry, where, info))
    check_address(c, *address, kind, where, info);
  return info;
}

// Two listeners on one address: the second bind() would fail. UDP and TCP
// have separate port spaces; UNIX kinds share the filesystem/abstract
// namespace and VSOCK stream and seqpacket share one port table.
void check_listen_conflicts(Checker& c, const std::vector<EndpointInfo>& endpoints) {
  auto conflict_class = [](EndpointKind k) {
    int family = kind_family(k);
    return family == AF_INET ? static_cast<int>(k) : -family;
  };
  for (std::size_t i = 0; i < endpoints.size(); ++i) {
    const EndpointInfo& b = endpoints[i];
    if (!b.address_ok || b.endpoint.role == Role::Connect) continue;
    for (std::size_t j = 0; j < i; ++j) {
      const EndpointInfo& a = endpoints[j];
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
}

}  // namespace

std::vector<EndpointInfo> check_endpoints(Checker& c, const toml::node& node) {
  std::vector<EndpointInfo> out;
  const toml::table* table = node.as_table();
  if (table == nullptr) {
    c.error(pos_of(node), "endpoints must be a table of [endpoints.NAME] tables, got " +
                              std::string(type_name(node.type())));
    return out;
  }
  for (const Entry& entry : in_file_order(*table)) out.push_back(check_endpoint(c, entry));
  check_listen_conflicts(c, out);
  return out;
}

std::span<const std::string_view> endpoint_keys() { return kEndpointKeys; }

}  // namespace sockrelay::config_check
