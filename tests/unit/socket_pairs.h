// Sockets and loop-driving for the route unit tests: endpoints bound on
// loopback (port 0) or in a temp dir, the test's own ends of connections,
// and a fixture that runs the route's EventLoop until a condition holds.
// Everything here works without privilege.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "common/clock.h"
#include "common/fd.h"
#include "config/model.h"
#include "endpoints/endpoint.h"
#include "loop/event_loop.h"

namespace sockrelay::test_sockets {

// An endpoint and the socket bound (listening, for connection kinds) at
// its address. `endpoint` must outlive any route spec that points at it.
struct Bound {
  Endpoint endpoint;
  Fd fd;
};

inline SocketAddress loopback_address(uint16_t port) {
  SocketAddress address;
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  in.sin_port = htons(port);
  std::memcpy(&address.storage, &in, sizeof(in));
  address.length = sizeof(in);
  address.text = "127.0.0.1:" + std::to_string(port);
  return address;
}

inline SocketAddress unix_address(const std::string& path) {
  SocketAddress address;
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::strncpy(un.sun_path, path.c_str(), sizeof(un.sun_path) - 1);
  std::memcpy(&address.storage, &un, sizeof(un));
  address.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  address.text = path;
  return address;
}

inline uint16_t bound_port(int fd) {
  sockaddr_in in{};
  socklen_t len = sizeof(in);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&in), &len) != 0) return 0;
  return ntohs(in.sin_port);
}

// `kind` bound through the relay's own open_listener(): tcp and udp on
// 127.0.0.1 with a port the kernel picks, UNIX kinds at `path`.
inline Bound bind_endpoint(EndpointKind kind, const std::string& name, Role role,
                           const std::string& path = "") {
  Bound b;
  b.endpoint.name = name;
  b.endpoint.kind = kind;
  b.endpoint.role = role;
  bool inet = kind_family(kind) == AF_INET;
  b.endpoint.address = inet ? loopback_address(0) : unix_address(path);
  auto fd = open_listener(b.endpoint);
  EXPECT_TRUE(fd.ok()) << (fd.ok() ? "" : fd.error().describe());
  if (!fd.ok()) return b;
  b.fd = std::move(*fd);
  if (inet) b.endpoint.address = loopback_address(bound_port(b.fd.get()));
  return b;
}

// A tcp address where nothing listens: a bound socket that never calls
// listen() holds the port (nobody else gets it) and answers a SYN with RST.
inline Bound refusing_tcp_endpoint(const std::string& name) {
  Bound b;
  b.endpoint.name = name;
  b.endpoint.kind = EndpointKind::Tcp;
  b.endpoint.role = Role::Connect;
  b.fd = Fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  SocketAddress any = loopback_address(0);
  EXPECT_EQ(bind(b.fd.get(), any.sa(), any.length), 0) << std::strerror(errno);
  b.endpoint.address = loopback_address(bound_port(b.fd.get()));
  return b;
}

inline void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// A client connection to `endpoint`, non-blocking once connected. On
// loopback and AF_UNIX, connect() completes as soon as the listener's
// backlog takes it: nobody has to accept first.
inline Fd connect_client(const Endpoint& endpoint) {
  Fd fd(socket(endpoint.address.family(), kind_socktype(endpoint.kind) | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(connect(fd.get(), endpoint.address.sa(), endpoint.address.length), 0)
      << "connect to " << endpoint.address.text << ": " << std::strerror(errno);
  set_nonblocking(fd.get());
  return fd;
}

// A datagram socket for a client, bound (udp: 127.0.0.1, a port the kernel
// picks) so that replies can come back to it.
inline Fd udp_client() {
  Fd fd(socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  SocketAddress any = loopback_address(0);
  EXPECT_EQ(bind(fd.get(), any.sa(), any.length), 0);
  return fd;
}

// Bytes that tell their position apart (a repeating pattern would hide a
// reordered or duplicated run): a fixed-seed pseudo-random sequence.
inline std::string pattern(size_t size, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>(gen());
  return out;
}

// The test's end of one connection: what it still has to write, what it
// read so far, and whether it has seen EOF (or an error: `error` != 0).
struct Peer {
  Fd fd;
  std::string to_send;
  size_t sent = 0;
  std::string received;
  bool eof = false;
  int error = 0;

  // Writes what the socket takes now; reads what it holds now.
  void step() {
    while (sent < to_send.size()) {
      ssize_t n = send(fd.get(), to_send.data() + sent, to_send.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    read_available();
  }
  void read_available() {
    char buf[64 * 1024];
    while (!eof && error == 0) {
      ssize_t n = recv(fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        received.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        eof = true;
      } else {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) error = errno;
        return;
      }
    }
  }
  bool all_sent() const { return sent == to_send.size(); }
  // The connection ended: EOF or a reset.
  bool ended() const { return eof || error != 0; }
};

// A temp dir for UNIX socket paths and the event loop the route runs on.
class RouteFixture : public ::testing::Test {
 protected:
  // How long a condition may take to come true before the test fails:
  // generous, for a loaded machine; a passing test returns as soon as it holds.
  static constexpr std::chrono::milliseconds kPatience{10'000};

  void SetUp() override {
    ASSERT_TRUE(loop_.ok());
    char tmpl[] = "/tmp/sockrelay-unit-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // Runs the loop (and `done`, which may move the test's own bytes) until
  // `done` returns true or `patience` has passed. False on timeout.
  template <typename Pred>
  bool pump(Pred done, std::chrono::milliseconds patience = kPatience) {
    const uint64_t deadline = monotonic_ns() + ms_to_ns(static_cast<uint64_t>(patience.count()));
    while (!done()) {
      if (monotonic_ns() >= deadline) return false;
      if (!loop_->run_once(std::chrono::milliseconds(5)).ok()) return false;
    }
    return true;
  }

  // Runs the loop for `span`, for a test that checks something did NOT
  // happen in that time (the assertion is on the state afterwards).
  void pump_for(std::chrono::milliseconds span) {
    const uint64_t deadline = monotonic_ns() + ms_to_ns(static_cast<uint64_t>(span.count()));
    while (monotonic_ns() < deadline)
      if (!loop_->run_once(std::chrono::milliseconds(5)).ok()) return;
  }

  // The next connection on a listener the test owns (an upstream server),
  // accepted while the loop runs (the route connects from inside it).
  Peer accept_peer(const Fd& listener) {
    Peer peer;
    pump([&] {
      peer.fd = Fd(accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      return peer.fd.valid();
    });
    EXPECT_TRUE(peer.fd.valid()) << "the route never connected upstream";
    return peer;
  }

  // Reads what `peer` receives until it holds exactly `expected` (or more,
  // or its connection ends: false then, and on timeout).
  bool read_until(Peer& peer, const std::string& expected) {
    pump([&] {
      peer.read_available();
      return peer.received.size() >= expected.size() || peer.ended();
    });
    return peer.received == expected;
  }

  // Reads what `peer` receives until its connection ends. False on timeout.
  bool read_until_ended(Peer& peer) {
    return pump([&] {
      peer.read_available();
      return peer.ended();
    });
  }

  // Calls the route's idle expiry until it has no session left; when that
  // happened (monotonic_ns()), 0 on timeout. A route with connections
  // counts them in session_count().
  template <typename Route>
  uint64_t expire_until_empty(Route& route) {
    uint64_t emptied_at = 0;
    pump([&] {
      route.expire_idle();
      if (route.session_count() != 0) return false;
      emptied_at = monotonic_ns();
      return true;
    });
    return emptied_at;
  }

  // Accepts (and closes) a connection waiting on a listener the test owns:
  // false when none was there.
  static bool took_a_connection(const Fd& listener) {
    Fd conn(accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    return conn.valid();
  }

  std::string dir_;
  Result<EventLoop> loop_ = EventLoop::create();
};

}  // namespace sockrelay::test_sockets
