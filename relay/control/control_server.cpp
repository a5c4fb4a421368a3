#include "control/control_server.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

namespace sockrelay {

namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return plain_error("control socket path \"" + path + "\" is empty or longer than " +
                       std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

Result<ControlServer> ControlServer::open(const std::string& path) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return Error{ec.value(), "control socket: create directory for " + path};
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error("control socket: socket()");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    // Replace a leftover socket only if nobody answers on it.
    if (errno != EADDRINUSE) return errno_error("control socket: bind " + path);
    Fd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) == 0)
      return Error{EADDRINUSE,
                   "control socket " + path + " is in use: is another sockrelay running with it?"};
    unlink(path.c_str());
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0)
      return errno_error("control socket: bind " + path);
  }
  chmod(path.c_str(), 0660);
  if (listen(fd.get(), 16) != 0) return errno_error("control socket: listen");
  return ControlServer(std::move(fd), path);
}

ControlServer::~ControlServer() {
  if (fd_) unlink(path_.c_str());
}

Status ControlServer::attach(EventLoop& loop, Handler handler) {
  return loop.add(fd_.get(), EPOLLIN, [this, handler](uint32_t) { serve_one(handler); });
}

void ControlServer::serve_one(const Handler& handler) {
  Fd conn(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return;
  // One short request line; a client that sends nothing within a second is
  // dropped so it cannot stall the relay's loop.
  pollfd p{conn.get(), POLLIN, 0};
  if (poll(&p, 1, 1000) != 1) return;
  char buf[256];
  ssize_t n = recv(conn.get(), buf, sizeof(buf) - 1, 0);
  if (n <= 0) return;
  std::string request(buf, static_cast<size_t>(n));
  while (!request.empty() && (request.back() == '\n' || request.back() == '\r')) request.pop_back();
  std::string reply = handler(request);
  size_t off = 0;
  while (off < reply.size()) {
    ssize_t w = send(conn.get(), reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      break;
    }
    off += static_cast<size_t>(w);
  }
}

Result<std::string> control_request(const std::string& path, const std::string& request) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error("socket()");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0)
    return errno_error(
        "connect to the control socket " + path +
        " (is `sockrelay run` running? pass --config FILE or --control PATH to pick its socket)");
  std::string line = request + "\n";
  if (send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) < 0) return errno_error("send request");
  std::string reply;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error("read reply");
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  return reply;
}

}  // namespace sockrelay
