#include "config/address.h"

#include "common/quote.h"

// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
#include <sys/socket.h>
// clang-format on
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstring>
#include <optional>
#include <string>

namespace sockrelay {

namespace {

constexpr char kInetExpected[] = R"(expected IPv4 "A.B.C.D:PORT" or IPv6 "[ADDR]:PORT")";
constexpr char kUnixExpected[] = R"(expected an absolute path "/run/x.sock" or an abstract name "@name")";
constexpr char kVsockExpected[] =
    R"(expected "CID:PORT" with CID a number, "any" (listen only), "local" or "host", and PORT 1..4294967294)";

enum class Family { Inet, Unix, Vsock };

Family family_of(EndpointKind kind) {
  switch (kind_family(kind)) {
    case AF_UNIX:
      return Family::Unix;
    case AF_VSOCK:
      return Family::Vsock;
    default:
      return Family::Inet;
  }
}

Error bad(EndpointKind kind, std::string_view text, std::string_view why) {
  return plain_error("bad " + std::string(kind_name(kind)) + " address " + quoted(text) + ": " +
                     std::string(why));
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// Decimal without sign or spaces; nullopt on anything else or overflow past `max`.
std::optional<uint64_t> parse_decimal(std::string_view s, uint64_t max) {
  if (!all_digits(s)) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    v = v * 10 + static_cast<uint64_t>(c - '0');
    if (v > max) return std::nullopt;
  }
  return v;
}

Result<uint16_t> parse_inet_port(EndpointKind kind, std::string_view text, std::string_view port) {
  if (port.empty()) return bad(kind, text, "missing port after \":\"; " + std::string(kInetExpected));
  if (port == "0") {
    return bad(
        kind, text,
        "port 0 is not allowed (the kernel would pick a random port nobody knows); use a port from 1 to "
        "65535");
  }
  auto v = parse_decimal(port, 65535);
  if (!v) {
    if (all_digits(port)) return bad(kind, text, "port " + std::string(port) + " is out of range 1..65535");
    return bad(kind, text, "port " + quoted(port) + " is not a number; use a port from 1 to 65535");
  }
  if (*v == 0) return bad(kind, text, "port 0 is not allowed; use a port from 1 to 65535");
  return static_cast<uint16_t>(*v);
}

bool looks_like_hostname(std::string_view host) {
  for (char c : host) {
    if (std::isalpha(static_cast<unsigned char>(c))) return true;
  }
  return false;
}

Result<SocketAddress> parse_inet(EndpointKind kind, std::string_view text, bool for_listen) {
  SocketAddress out;
  out.text = std::string(text);
  if (text.empty()) return bad(kind, text, "empty address; " + std::string(kInetExpected));

  if (text.front() == '[') {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos)
      return bad(kind, text, "missing \"]\"; " + std::string(kInetExpected));
    std::string host(text.substr(1, close - 1));
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return bad(kind, text, "missing \":PORT\" after \"]\"; " + std::string(kInetExpected));
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    if (host.find('%') != std::string::npos) {
      return bad(kind, text,
                 "scoped IPv6 addresses (\"%IFACE\") are not supported; " + std::string(kInetExpected));
    }
    if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) != 1) {
      return bad(kind, text, quoted(host) + " is not a numeric IPv6 address; " + std::string(kInetExpected));
    }
    auto port = parse_inet_port(kind, text, rest.substr(1));
    if (!port) return port.error();
    if (!for_listen && IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr)) {
      return bad(kind, text,
                 "[::] is a wildcard, valid only for listen; connect to a specific address such as [::1]");
    }
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(*port);
    out.length = sizeof(sockaddr_in6);
    return out;
  }

  std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    if (looks_like_hostname(text)) {
      return bad(kind, text, "hostnames are not resolved; use a numeric address, e.g. \"127.0.0.1:53\"");
    }
    return bad(kind, text, "missing \":PORT\"; " + std::string(kInetExpected));
  }
  std::string host(text.substr(0, colon));
  if (host.find(':') != std::string::npos) {
    return bad(kind, text,
               "IPv6 addresses must be in brackets, e.g. \"[::1]:53\"; " + std::string(kInetExpected));
  }
  auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
  if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) != 1) {
    if (looks_like_hostname(host)) {
      return bad(kind, text,
                 quoted(host) +
                     " is a hostname and hostnames are not resolved; use a numeric address, e.g. " +
                     "\"127.0.0.1:" + std::string(text.substr(colon + 1)) + "\"");
    }
    return bad(kind, text, kInetExpected);
  }
  auto port = parse_inet_port(kind, text, text.substr(colon + 1));
  if (!port) return port.error();
  if (!for_listen && sin->sin_addr.s_addr == htonl(INADDR_ANY)) {
    return bad(
        kind, text,
        "0.0.0.0 is a wildcard, valid only for listen; connect to a specific address such as 127.0.0.1");
  }
  sin->sin_family = AF_INET;
  sin->sin_port = htons(*port);
  out.length = sizeof(sockaddr_in);
  return out;
}

Result<SocketAddress> parse_unix(EndpointKind kind, std::string_view text) {
  SocketAddress out;
  out.text = std::string(text);
  auto* sun = reinterpret_cast<sockaddr_un*>(&out.storage);
  constexpr std::size_t kPathMax = sizeof(sun->sun_path);
  if (text.empty()) return bad(kind, text, "empty address; " + std::string(kUnixExpected));
  if (text.find('\0') != std::string_view::npos) return bad(kind, text, "contains a NUL byte");
  sun->sun_family = AF_UNIX;

  if (text.front() == '@') {
    std::string_view name = text.substr(1);
    if (name.empty()) return bad(kind, text, "the abstract name after \"@\" is empty");
    // Abstract: sun_path[0] = 0 then the name, no terminator; the length is
    // part of the address.
    if (name.size() > kPathMax - 1) {
      return bad(kind, text,
                 "abstract name is " + std::to_string(name.size()) + " bytes, at most " +
                     std::to_string(kPathMax - 1) + " fit");
    }
    sun->sun_path[0] = '\0';
    std::memcpy(sun->sun_path + 1, name.data(), name.size());
    out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    return out;
  }

  if (text.front() != '/') {
    return bad(kind, text, "must be absolute or @abstract, e.g. \"/run/x.sock\" or \"@name\"");
  }
  if (text.size() >= kPathMax) {
    return bad(kind, text,
               "path is " + std::to_string(text.size()) + " bytes, at most " + std::to_string(kPathMax - 1) +
                   " fit in a UNIX socket address");
  }
  std::memcpy(sun->sun_path, text.data(), text.size());
  // Same length the kernel reports from getsockname(): path plus its NUL.
  out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + text.size() + 1);
  return out;
}

Result<SocketAddress> parse_vsock(EndpointKind kind, std::string_view text, bool for_listen) {
  SocketAddress out;
  out.text = std::string(text);
  if (text.empty()) return bad(kind, text, "empty address; " + std::string(kVsockExpected));
  std::size_t colon = text.find(':');
  if (colon == std::string_view::npos || text.find(':', colon + 1) != std::string_view::npos) {
    return bad(kind, text, kVsockExpected);
  }
  std::string_view cid_text = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);

  uint32_t cid = 0;
  if (cid_text == "any") {
    if (!for_listen) {
      return bad(kind, text,
                 "CID \"any\" is valid only for listen; connect to a CID: a number, \"local\" or \"host\"");
    }
    cid = VMADDR_CID_ANY;
  } else if (cid_text == "local") {
    cid = VMADDR_CID_LOCAL;
  } else if (cid_text == "host") {
    cid = VMADDR_CID_HOST;
  } else if (auto v = parse_decimal(cid_text, 0xffffffffULL); v && *v != VMADDR_CID_ANY) {
    cid = static_cast<uint32_t>(*v);
  } else {
    return bad(kind, text,
               "CID " + quoted(cid_text) +
                   " is not valid; use a number below 4294967295, \"any\" (listen only), " +
                   "\"local\" (1) or \"host\" (2)");
  }

  if (port_text == "any") {
    return bad(kind, text, "port \"any\" is not allowed; give a port number from 1 to 4294967294");
  }
  auto port = parse_decimal(port_text, 0xffffffffULL);
  if (!port || *port == 0 || *port == VMADDR_PORT_ANY) {
    if (port_text == "0") {
      return bad(
          kind, text,
          "port 0 is not allowed (the kernel would pick a random port nobody knows); use a port from 1 to "
          "4294967294");
    }
    return bad(kind, text, "port " + quoted(port_text) + " is not valid; use a port from 1 to 4294967294");
  }

  sockaddr_vm svm{};
  svm.svm_family = AF_VSOCK;
  svm.svm_cid = cid;
  svm.svm_port = static_cast<uint32_t>(*port);
  std::memcpy(&out.storage, &svm, sizeof(svm));
  out.length = sizeof(svm);
  return out;
}

}  // namespace

Result<SocketAddress> parse_address(EndpointKind kind, std::string_view text, bool for_listen) {
  switch (family_of(kind)) {
    case Family::Inet:
      return parse_inet(kind, text, for_listen);
    case Family::Unix:
      return parse_unix(kind, text);
    case Family::Vsock:
      return parse_vsock(kind, text, for_listen);
  }
  return plain_error("unknown endpoint kind");
}

std::string format_address(const sockaddr* sa, socklen_t len) {
  if (sa == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) return "(unnamed)";
  char buf[INET6_ADDRSTRLEN] = {};
  switch (sa->sa_family) {
    case AF_INET: {
      if (len < static_cast<socklen_t>(sizeof(sockaddr_in))) break;
      sockaddr_in sin;
      std::memcpy(&sin, sa, sizeof(sin));
      inet_ntop(AF_INET, &sin.sin_addr, buf, sizeof(buf));
      return std::string(buf) + ":" + std::to_string(ntohs(sin.sin_port));
    }
    case AF_INET6: {
      if (len < static_cast<socklen_t>(sizeof(sockaddr_in6))) break;
      sockaddr_in6 sin6;
      std::memcpy(&sin6, sa, sizeof(sin6));
      inet_ntop(AF_INET6, &sin6.sin6_addr, buf, sizeof(buf));
      std::string host = buf;
      if (sin6.sin6_scope_id != 0) host += "%" + std::to_string(sin6.sin6_scope_id);
      return "[" + host + "]:" + std::to_string(ntohs(sin6.sin6_port));
    }
    case AF_UNIX: {
      const std::size_t base = offsetof(sockaddr_un, sun_path);
      std::size_t n = static_cast<std::size_t>(len) > base ? static_cast<std::size_t>(len) - base : 0;
      n = std::min(n, sizeof(sockaddr_un::sun_path));
      if (n == 0) return "(unnamed)";
      const char* path = reinterpret_cast<const sockaddr_un*>(sa)->sun_path;
      if (path[0] == '\0') {
        // Abstract: every byte counts, including NULs; show those as "@" like ss(8).
        std::string out = "@";
        for (std::size_t i = 1; i < n; ++i) out += path[i] == '\0' ? '@' : path[i];
        return out;
      }
      return std::string(path, strnlen(path, n));
    }
    case AF_VSOCK: {
      if (len < static_cast<socklen_t>(sizeof(sockaddr_vm))) break;
      sockaddr_vm svm;
      std::memcpy(&svm, sa, sizeof(svm));
      std::string cid = svm.svm_cid == VMADDR_CID_ANY ? "any" : std::to_string(svm.svm_cid);
      std::string port = svm.svm_port == VMADDR_PORT_ANY ? "any" : std::to_string(svm.svm_port);
      return cid + ":" + port;
    }
    default:
      return "(family " + std::to_string(sa->sa_family) + ")";
  }
  return "(truncated address, family " + std::to_string(sa->sa_family) + ")";
}

}  // namespace sockrelay
