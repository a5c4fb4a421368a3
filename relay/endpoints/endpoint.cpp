#include "endpoints/endpoint.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

#include "config/address.h"

namespace sockrelay {

namespace {

int socket_family(const Endpoint& e) { return e.address.family(); }

Result<Fd> new_socket(int family, int type) {
  Fd fd(socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error("socket()");
  return fd;
}

Status set_int_option(int fd, int level, int name, int value, const char* what) {
  if (setsockopt(fd, level, name, &value, sizeof(value)) != 0)
    return errno_error(std::string("setsockopt(") + what + ")");
  return {};
}

// A UNIX path that exists but where nobody accepts/receives is left over
// from a previous run: remove it. One that answers belongs to someone.
bool stale_unix_path(const SocketAddress& addr, int type) {
  auto* un = reinterpret_cast<const sockaddr_un*>(&addr.storage);
  if (un->sun_path[0] == '\0') return false;  // abstract names vanish with their socket
  struct stat st;
  if (stat(un->sun_path, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  Fd probe(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!probe) return false;
  return connect(probe.get(), addr.sa(), addr.length) != 0 && errno == ECONNREFUSED;
}

}  // namespace

Result<Fd> open_listener(const Endpoint& endpoint) {
  int type = kind_socktype(endpoint.kind);
  std::string what = "listen on " + endpoint.address.text + " for endpoint " + endpoint.name;
  auto fd = new_socket(socket_family(endpoint), type);
  if (!fd) return fd.error().wrap(what);
  if (endpoint.address.family() != AF_UNIX) {
    if (auto st = set_int_option(fd->get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"); !st)
      return st.error().wrap(what);
  }
  if (bind(fd->get(), endpoint.address.sa(), endpoint.address.length) != 0) {
    int code = errno;
    if (code == EADDRINUSE && endpoint.address.family() == AF_UNIX &&
        stale_unix_path(endpoint.address, type)) {
      unlink(reinterpret_cast<const sockaddr_un*>(&endpoint.address.storage)->sun_path);
      if (bind(fd->get(), endpoint.address.sa(), endpoint.address.length) == 0) code = 0;
    }
    if (code != 0) {
      std::string hint = code == EADDRINUSE ? " (another process has it; stop it or change `listen`)"
                         : code == EACCES   ? " (needs privilege for ports < 1024, or a writable directory)"
                         : code == ENOENT   ? " (the directory does not exist)"
                                            : "";
      return Error{code, what + ": bind" + hint};
    }
  }
  if (type == SOCK_DGRAM) {
    // A new client's datagrams queue here while its flow is set up: room
    // for a burst (SO_RCVBUFFORCE passes net.core.rmem_max when we may).
    int bytes = 4 << 20;
    if (setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) != 0)
      setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
  }
  if (type != SOCK_DGRAM && listen(fd->get(), SOMAXCONN) != 0) return errno_error(what + ": listen");
  return fd;
}

Result<Fd> open_datagram_upstream(const Endpoint& endpoint) {
  std::string what = "connect to " + endpoint.address.text + " for endpoint " + endpoint.name;
  auto fd = new_socket(socket_family(endpoint), kind_socktype(endpoint.kind));
  if (!fd) return fd.error().wrap(what);
  if (endpoint.address.family() == AF_UNIX) {
    // Autobind: without an address of its own the server could not reply.
    sa_family_t family = AF_UNIX;
    if (bind(fd->get(), reinterpret_cast<const sockaddr*>(&family), sizeof(family)) != 0)
      return errno_error(what + ": autobind");
  }
  if (connect(fd->get(), endpoint.address.sa(), endpoint.address.length) != 0) {
    int code = errno;
    std::string hint = code == ENOENT         ? " (no socket at that path: is the service running?)"
                       : code == ECONNREFUSED ? " (nobody is bound there)"
                                              : "";
    return Error{code, what + hint};
  }
  return fd;
}

Result<Fd> open_stream_upstream(const Endpoint& endpoint) {
  std::string what = "connect to " + endpoint.address.text + " for endpoint " + endpoint.name;
  auto fd = new_socket(socket_family(endpoint), kind_socktype(endpoint.kind));
  if (!fd) return fd.error().wrap(what);
  if (connect(fd->get(), endpoint.address.sa(), endpoint.address.length) != 0 && errno != EINPROGRESS) {
    int code = errno;
    std::string hint = code == ENOENT         ? " (no socket at that path: is the service running?)"
                       : code == ECONNREFUSED ? " (nobody listens there)"
                       : code == EAGAIN       ? " (the listener's backlog is full)"
                                              : "";
    return Error{code, what + hint};
  }
  return fd;
}

Result<Fd> bind_udp_flow_socket(const sockaddr* local, socklen_t local_len) {
  auto fd = new_socket(local->sa_family, SOCK_DGRAM);
  if (!fd) return fd.error().wrap("UDP flow socket");
  if (auto st = set_int_option(fd->get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"); !st)
    return st.error().wrap("UDP flow socket");
  // Its client's datagrams queue here from connect() until user space has
  // read them and steered the socket: room for a burst, as on the listener
  // (the route narrows it once the flow is set up).
  int bytes = kFlowSetupReceiveBuffer;
  if (setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) != 0)
    setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
  if (bind(fd->get(), local, local_len) != 0)
    return errno_error("UDP flow socket: bind " + format_address(local, local_len) +
                       " (the listener needs SO_REUSEADDR; systemd sets it)");
  return fd;
}

Result<Fd> open_unix_flow_socket(const sockaddr* peer, socklen_t peer_len) {
  auto fd = new_socket(AF_UNIX, SOCK_DGRAM);
  if (!fd) return fd.error().wrap("UNIX flow socket");
  if (connect(fd->get(), peer, peer_len) != 0)
    return errno_error("UNIX flow socket: connect " + format_address(peer, peer_len));
  return fd;
}

Status check_socket_kind(int fd, const Endpoint& endpoint) {
  int domain = 0, type = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return errno_error("getsockopt(SO_DOMAIN)");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return errno_error("getsockopt(SO_TYPE)");
  if (domain != endpoint.address.family() || type != kind_socktype(endpoint.kind))
    return plain_error("the socket systemd passed as \"" + endpoint.name + "\" is not a " +
                       std::string(kind_name(endpoint.kind)) + " socket for " + endpoint.address.text +
                       "; fix the .socket unit's Listen*= or the endpoint's type");
  return {};
}

}  // namespace sockrelay
