#include "config/model.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace sockrelay {

bool SourceNetwork::contains(const sockaddr* sa) const {
  const unsigned char* bytes = nullptr;
  unsigned char mapped[4];
  if (sa->sa_family == AF_INET && family == AF_INET) {
    bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
  } else if (sa->sa_family == AF_INET6 && family == AF_INET6) {
    bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
  } else if (sa->sa_family == AF_INET6 && family == AF_INET) {
    // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
    const auto* a6 = &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    if (!IN6_IS_ADDR_V4MAPPED(a6)) return false;
    std::memcpy(mapped, reinterpret_cast<const unsigned char*>(a6) + 12, 4);
    bytes = mapped;
  } else {
    return false;
  }
  int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(bytes, address, static_cast<size_t>(full)) != 0) return false;
  if (rest == 0) return true;
  unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (bytes[full] & mask) == (address[full] & mask);
}

namespace {

template <typename Enum, std::size_t N>
std::optional<Enum> from_name(std::string_view name, const Enum (&all)[N],
                              std::string_view (*to_name)(Enum)) {
  for (Enum e : all) {
    if (to_name(e) == name) return e;
  }
  return std::nullopt;
}

constexpr Datapath kAllDatapaths[] = {Datapath::Auto, Datapath::Kernel, Datapath::Userspace};
constexpr Balance kAllBalances[] = {Balance::Single, Balance::RoundRobin, Balance::Hash, Balance::Broadcast};

}  // namespace

std::string_view kind_name(EndpointKind kind) {
  switch (kind) {
    case EndpointKind::Udp:
      return "udp";
    case EndpointKind::Tcp:
      return "tcp";
    case EndpointKind::UnixDgram:
      return "unix-dgram";
    case EndpointKind::UnixStream:
      return "unix-stream";
    case EndpointKind::UnixSeqpacket:
      return "unix-seqpacket";
    case EndpointKind::VsockStream:
      return "vsock-stream";
    case EndpointKind::VsockSeqpacket:
      return "vsock-seqpacket";
  }
  return "?";
}

std::optional<EndpointKind> kind_from_name(std::string_view name) {
  return from_name(name, kAllKinds, kind_name);
}

int kind_family(EndpointKind kind) {
  switch (kind) {
    case EndpointKind::Udp:
    case EndpointKind::Tcp:
      // The address itself may be AF_INET6: callers that open sockets use
      // SocketAddress::family().
      return AF_INET;
    case EndpointKind::UnixDgram:
    case EndpointKind::UnixStream:
    case EndpointKind::UnixSeqpacket:
      return AF_UNIX;
    case EndpointKind::VsockStream:
    case EndpointKind::VsockSeqpacket:
      return AF_VSOCK;
  }
  return AF_UNSPEC;
}

int kind_socktype(EndpointKind kind) {
  switch (kind) {
    case EndpointKind::Udp:
    case EndpointKind::UnixDgram:
      return SOCK_DGRAM;
    case EndpointKind::Tcp:
    case EndpointKind::UnixStream:
    case EndpointKind::VsockStream:
      return SOCK_STREAM;
    case EndpointKind::UnixSeqpacket:
    case EndpointKind::VsockSeqpacket:
      return SOCK_SEQPACKET;
  }
  return 0;
}

bool kind_is_stream(EndpointKind kind) { return kind_socktype(kind) == SOCK_STREAM; }

bool kind_is_datagram(EndpointKind kind) { return kind_socktype(kind) == SOCK_DGRAM; }

bool kind_is_vsock(EndpointKind kind) { return kind_family(kind) == AF_VSOCK; }

std::string_view mode_name(Mode mode) {
  switch (mode) {
    case Mode::Egress:
      return "egress";
    case Mode::Ingress:
      return "ingress";
  }
  return "?";
}

std::string_view datapath_name(Datapath datapath) {
  switch (datapath) {
    case Datapath::Auto:
      return "auto";
    case Datapath::Kernel:
      return "kernel";
    case Datapath::Userspace:
      return "userspace";
  }
  return "?";
}

std::string_view balance_name(Balance balance) {
  switch (balance) {
    case Balance::Single:
      return "single";
    case Balance::RoundRobin:
      return "round-robin";
    case Balance::Hash:
      return "hash";
    case Balance::Broadcast:
      return "broadcast";
  }
  return "?";
}

std::string_view role_name(Role role) {
  switch (role) {
    case Role::Listen:
      return "listen";
    case Role::Connect:
      return "connect";
    case Role::Subscribe:
      break;
  }
  return "subscribe";
}

std::optional<Mode> mode_from_name(std::string_view name) { return from_name(name, kAllModes, mode_name); }

std::optional<Datapath> datapath_from_name(std::string_view name) {
  return from_name(name, kAllDatapaths, datapath_name);
}

std::optional<Balance> balance_from_name(std::string_view name) {
  return from_name(name, kAllBalances, balance_name);
}

bool SocketAddress::operator==(const SocketAddress& other) const {
  if (family() != other.family() || length != other.length) return false;
  std::size_t n = std::min<std::size_t>(length, sizeof(storage));
  return std::memcmp(&storage, &other.storage, n) == 0;
}

const Endpoint* Config::find_endpoint(std::string_view name) const {
  for (const Endpoint& e : endpoints) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

std::string describe_endpoint(const Endpoint& endpoint) {
  return endpoint.name + " (" + std::string(kind_name(endpoint.kind)) + " " + endpoint.address.text + ")";
}

std::string describe_targets(const std::vector<const Endpoint*>& targets, Balance balance) {
  std::string text;
  for (const Endpoint* target : targets) text += (text.empty() ? "" : ", ") + describe_endpoint(*target);
  if (targets.size() > 1) text = "[" + text + "] balance " + std::string(balance_name(balance));
  return text;
}

}  // namespace sockrelay
