#include "control/control_server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/fd.h"
#include "common/io_errors.h"

namespace sockrelay {

namespace {

// Connections taken per wake-up of the listener: a burst is served in slices
// so datagrams and streams get their turn in between (epoll is
// level-triggered and reports the rest on the next round).
constexpr int kAcceptsPerWakeup = 32;

// How long the listener rests when the process is out of descriptors: accept
// would fail again at once and the loop would spin on it.
constexpr uint64_t kOutOfDescriptorsPauseNs = ms_to_ns(100);

// How long `sockrelay status` waits for the relay's reply.
constexpr time_t kRequestTimeoutSeconds = 10;

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return plain_error("control socket path \"" + path + "\" is empty or longer than " +
                       std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Binds `fd` to `addr`, replacing a leftover socket file only if nobody
// answers on it (a relay that crashed leaves one; a running one must keep it).
Status bind_replacing_stale(int fd, const sockaddr_un& addr, const std::string& path) {
  const auto* sa = reinterpret_cast<const sockaddr*>(&addr);
  if (bind(fd, sa, sizeof(addr)) == 0) return {};
  if (errno != EADDRINUSE) return errno_error("control socket: bind " + path);
  Fd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (connect(probe.get(), sa, sizeof(addr)) == 0)
    return Error{EADDRINUSE, "control socket " + path + " is in use: is another sockrelay running with it?"};
  unlink(path.c_str());
  if (bind(fd, sa, sizeof(addr)) != 0) return errno_error("control socket: bind " + path);
  return {};
}

// A last line to a client that is being closed. It never waits: a client
// that does not read simply misses it, and the close tells it the rest.
void send_parting_line(int fd, const std::string& line) {
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
    spdlog::debug("control socket: parting line not sent: {}", std::strerror(errno));
}

uint64_t to_ns(std::chrono::milliseconds ms) { return ms_to_ns(static_cast<uint64_t>(ms.count())); }

bool is_power_of_two(uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

// One client: read a request line, then write the reply, then close.
struct ControlClient {
  Fd fd;
  std::string request;       // bytes read so far, up to the newline
  std::string reply;         // the whole reply, kept until written
  size_t written = 0;        // of `reply`
  uint64_t deadline_ns = 0;  // monotonic; the timer closes the client then
  bool replying = false;
  bool waiting_to_write = false;  // registered for EPOLLOUT
};

}  // namespace

struct ControlServer::State {
  Fd listener;
  Fd timer;  // a timerfd set to the earliest client deadline
  std::string path;
  bool from_systemd = false;  // then the socket file is systemd's: never unlinked
  ControlLimits limits;
  EventLoop* loop = nullptr;
  Handler handler;
  std::unordered_map<int, ControlClient> clients;  // by fd
  size_t pending_reply_bytes = 0;                  // sum of the clients' `reply` sizes
  uint64_t timer_set_ns = 0;                       // when the timer fires; 0: not set
  uint64_t listener_paused_until_ns = 0;           // 0: the listener is watched
  ControlCounters counters;

  ~State();
  Status attach(EventLoop& loop, Handler handler);
  void on_listener();
  void accept_client(Fd conn);
  void pause_listener();
  void on_client(int fd);
  void read_request(int fd, ControlClient& c);
  void answer(int fd, ControlClient& c);
  void start_reply(int fd, ControlClient& c, std::string reply, uint64_t now);
  void write_reply(int fd, ControlClient& c);
  void close_client(int fd);
  void on_timer();
  void expire(int fd, ControlClient& c);
  void set_timer(uint64_t at_ns);
};

ControlServer::State::~State() {
  if (loop) {
    for (const auto& [fd, client] : clients) loop->remove(fd);
    loop->remove(listener.get());
    loop->remove(timer.get());
  }
  if (listener && !from_systemd) unlink(path.c_str());
}

Status ControlServer::State::attach(EventLoop& event_loop, Handler request_handler) {
  loop = &event_loop;
  handler = std::move(request_handler);
  if (auto st = loop->add(timer.get(), EPOLLIN, [this](uint32_t) { on_timer(); }); !st) return st;
  return loop->add(listener.get(), EPOLLIN, [this](uint32_t) { on_listener(); });
}

void ControlServer::State::on_listener() {
  for (int i = 0; i < kAcceptsPerWakeup; ++i) {
    Fd conn(accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (conn) {
      accept_client(std::move(conn));
      continue;
    }
    if (errno == EMFILE || errno == ENFILE) {
      pause_listener();
    } else if (!would_block(errno) && errno != ECONNABORTED) {
      spdlog::warn("control socket {}: accept: {}", path, std::strerror(errno));
    }
    return;
  }
}

void ControlServer::State::accept_client(Fd conn) {
  if (clients.size() >= limits.max_clients) {
    ++counters.refused_too_many;
    send_parting_line(conn.get(), "error: too many control clients at once (" +
                                      std::to_string(limits.max_clients) + "); try again\n");
    // Logged at 1, 2, 4, 8, ... refusals: a flood cannot flood the log too.
    if (is_power_of_two(counters.refused_too_many))
      spdlog::warn("control socket {}: {} client(s) refused so far: more than {} at once", path,
                   counters.refused_too_many, limits.max_clients);
    return;
  }
  int fd = conn.get();
  if (auto st = loop->add(fd, EPOLLIN, [this, fd](uint32_t) { on_client(fd); }); !st) {
    spdlog::warn("control socket {}: {}", path, st.error().describe());
    return;
  }
  ++counters.accepted;
  ControlClient client;
  client.fd = std::move(conn);
  client.deadline_ns = monotonic_ns() + to_ns(limits.request_time);
  set_timer(client.deadline_ns);
  clients.emplace(fd, std::move(client));
}

void ControlServer::State::pause_listener() {
  spdlog::warn("control socket {}: accept: {}; not accepting for {} ms", path, std::strerror(errno),
               kOutOfDescriptorsPauseNs / ms_to_ns(1));
  if (auto st = loop->modify(listener.get(), 0); !st) {
    spdlog::warn("control socket {}: {}", path, st.error().describe());
    return;
  }
  listener_paused_until_ns = monotonic_ns() + kOutOfDescriptorsPauseNs;
  set_timer(listener_paused_until_ns);
}

void ControlServer::State::on_client(int fd) {
  auto it = clients.find(fd);
  if (it == clients.end()) return;
  if (it->second.replying)
    write_reply(fd, it->second);
  else
    read_request(fd, it->second);
}

// Reads what has arrived; answers once the line (or the client's end of
// input) is complete. A partial line waits for the next EPOLLIN.
void ControlServer::State::read_request(int fd, ControlClient& c) {
  char buf[512];
  for (;;) {
    // One byte more than allowed, to tell a line of exactly the limit from a longer one.
    size_t room = limits.max_request_bytes + 1 - c.request.size();
    ssize_t n = recv(c.fd.get(), buf, std::min(room, sizeof(buf)), 0);
    if (n < 0 && would_block(errno)) return;
    if (n < 0 || (n == 0 && c.request.empty())) {
      ++counters.closed_before_reply;
      close_client(fd);
      return;
    }
    if (n == 0) return answer(fd, c);  // no newline, but the client has said all it will
    auto framing =
        frame_request(c.request, std::string_view(buf, static_cast<size_t>(n)), limits.max_request_bytes);
    if (framing == RequestFraming::Line) return answer(fd, c);
    if (framing == RequestFraming::TooLong) {
      ++counters.refused_too_long;
      c.request.clear();
      return start_reply(
          fd, c,
          "error: request too long (the limit is " + std::to_string(limits.max_request_bytes) + " bytes)\n",
          monotonic_ns());
    }
  }
}

void ControlServer::State::answer(int fd, ControlClient& c) {
  std::string line = std::move(c.request);
  ControlRequest request = parse_control_request(line);
  if (request == ControlRequest::Unknown) {
    ++counters.refused_unknown;
    return start_reply(fd, c, unknown_request_reply(line), monotonic_ns());
  }
  start_reply(fd, c, handler(request), monotonic_ns());
}

void ControlServer::State::start_reply(int fd, ControlClient& c, std::string reply, uint64_t now) {
  if (pending_reply_bytes + reply.size() > limits.max_pending_reply_bytes) {
    ++counters.refused_busy;
    reply = "error: busy: " + std::to_string(pending_reply_bytes) +
            " reply bytes wait for slow readers; try again\n";
  }
  c.reply = std::move(reply);
  c.replying = true;
  pending_reply_bytes += c.reply.size();
  // The reader gets its own time: a request sent at the last moment still
  // has the whole of it to read a large reply.
  c.deadline_ns = now + to_ns(limits.reply_time);
  write_reply(fd, c);
}

// Writes what the socket takes now; the rest waits for EPOLLOUT.
void ControlServer::State::write_reply(int fd, ControlClient& c) {
  while (c.written < c.reply.size()) {
    ssize_t n =
        send(c.fd.get(), c.reply.data() + c.written, c.reply.size() - c.written, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && would_block(errno)) {
      if (c.waiting_to_write) return;
      // From now on only EPOLLOUT: more input from this client is not read.
      auto st = loop->modify(fd, EPOLLOUT);
      if (st) {
        c.waiting_to_write = true;
        return;
      }
      spdlog::warn("control socket {}: {}", path, st.error().describe());
    }
    if (n <= 0) {
      ++counters.closed_before_reply;
      close_client(fd);
      return;
    }
    c.written += static_cast<size_t>(n);
  }
  ++counters.answered;
  close_client(fd);
}

void ControlServer::State::close_client(int fd) {
  auto it = clients.find(fd);
  if (it == clients.end()) return;
  pending_reply_bytes -= it->second.reply.size();
  loop->remove(fd);
  clients.erase(it);  // closes the socket
}

void ControlServer::State::on_timer() {
  uint64_t expirations = 0;
  if (read(timer.get(), &expirations, sizeof(expirations)) < 0 && !would_block(errno))
    spdlog::warn("control socket {}: read timerfd: {}", path, std::strerror(errno));
  timer_set_ns = 0;
  uint64_t now = monotonic_ns();
  uint64_t next = 0;
  std::vector<int> expired;
  for (const auto& [fd, c] : clients) {
    if (c.deadline_ns <= now)
      expired.push_back(fd);
    else
      next = next == 0 ? c.deadline_ns : std::min(next, c.deadline_ns);
  }
  for (int fd : expired) expire(fd, clients.at(fd));
  if (listener_paused_until_ns != 0) {
    if (listener_paused_until_ns <= now) {
      listener_paused_until_ns = 0;
      if (auto st = loop->modify(listener.get(), EPOLLIN); !st)
        spdlog::warn("control socket {}: {}", path, st.error().describe());
    } else {
      next = next == 0 ? listener_paused_until_ns : std::min(next, listener_paused_until_ns);
    }
  }
  if (next != 0) set_timer(next);
}

void ControlServer::State::expire(int fd, ControlClient& c) {
  ++counters.timed_out;
  if (c.replying) {
    spdlog::debug("control socket {}: client read {} of {} reply bytes in {} ms; closed", path, c.written,
                  c.reply.size(), limits.reply_time.count());
  } else {
    spdlog::debug("control socket {}: no request line within {} ms; closed", path,
                  limits.request_time.count());
    send_parting_line(c.fd.get(),
                      "error: no request within " + std::to_string(limits.request_time.count()) + " ms\n");
  }
  close_client(fd);
}

// Moves the timer earlier when `at_ns` comes first. A later deadline leaves
// it: when it fires early, on_timer finds nothing due and sets it again.
void ControlServer::State::set_timer(uint64_t at_ns) {
  if (timer_set_ns != 0 && timer_set_ns <= at_ns) return;
  itimerspec spec{};
  spec.it_value.tv_sec = static_cast<time_t>(at_ns / 1'000'000'000u);
  spec.it_value.tv_nsec = static_cast<long>(at_ns % 1'000'000'000u);
  if (timerfd_settime(timer.get(), TFD_TIMER_ABSTIME, &spec, nullptr) != 0) {
    spdlog::warn("control socket {}: timerfd_settime: {}", path, std::strerror(errno));
    return;
  }
  timer_set_ns = at_ns;
}

Result<ControlServer> ControlServer::open(const std::string& path, ControlLimits limits) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return Error{ec.value(), "control socket: create directory for " + path};
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error("control socket: socket()");
  if (auto st = bind_replacing_stale(fd.get(), *addr, path); !st) return st.error();
  auto state = std::make_unique<State>();
  state->listener = std::move(fd);  // from here on the State removes the file if we fail
  state->path = path;
  state->limits = limits;
  if (chmod(path.c_str(), 0660) != 0) return errno_error("control socket: chmod " + path);
  if (listen(state->listener.get(), limits.backlog) != 0) return errno_error("control socket: listen");
  state->timer = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!state->timer) return errno_error("control socket: timerfd_create");
  return ControlServer(std::move(state));
}

namespace {

// What a socket systemd passed as the control socket must be: a listening
// UNIX stream socket bound to the config's path.
Status check_adopted(int fd, const std::string& path) {
  int type = 0, listening = 0;
  socklen_t len = sizeof(type);
  getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(listening);
  getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  sockaddr_un bound{};
  len = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0)
    return errno_error("control socket: getsockname");
  const char* fix = "; the .socket unit needs ListenStream=";
  if (bound.sun_family != AF_UNIX || type != SOCK_STREAM || !listening)
    return plain_error("systemd passed a socket named \"control\" that is no listening UNIX stream socket" +
                       std::string(fix) + path + " (units/sockrelay-control.socket)");
  size_t path_len = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
  std::string bound_path(bound.sun_path, strnlen(bound.sun_path, path_len));
  if (bound_path != path)
    return plain_error("systemd passed a control socket bound to \"" + bound_path +
                       "\", but [relay] control is \"" + path + "\"" + fix + path + ", or set control = \"" +
                       bound_path + "\"");
  return {};
}

}  // namespace

Result<ControlServer> ControlServer::adopt(Fd listener, const std::string& path, ControlLimits limits) {
  if (auto st = check_adopted(listener.get(), path); !st) return st.error();
  int flags = fcntl(listener.get(), F_GETFL);
  if (flags < 0 || fcntl(listener.get(), F_SETFL, flags | O_NONBLOCK) != 0)
    return errno_error("control socket: fcntl O_NONBLOCK");
  auto state = std::make_unique<State>();
  state->listener = std::move(listener);
  state->path = path;
  state->from_systemd = true;
  state->limits = limits;
  state->timer = Fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!state->timer) return errno_error("control socket: timerfd_create");
  return ControlServer(std::move(state));
}

ControlServer::ControlServer(std::unique_ptr<State> state) : state_(std::move(state)) {}
ControlServer::ControlServer(ControlServer&&) noexcept = default;
ControlServer& ControlServer::operator=(ControlServer&&) noexcept = default;
ControlServer::~ControlServer() = default;

Status ControlServer::attach(EventLoop& loop, Handler handler) {
  return state_->attach(loop, std::move(handler));
}

const std::string& ControlServer::path() const { return state_->path; }
bool ControlServer::from_systemd() const { return state_->from_systemd; }
const ControlCounters& ControlServer::counters() const { return state_->counters; }
size_t ControlServer::clients() const { return state_->clients.size(); }

Result<std::string> control_request(const std::string& path, const std::string& request) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error("socket()");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0)
    return errno_error(
        "connect to the control socket " + path +
        " (is `sockrelay run` running? pass --config FILE or --control PATH to pick its socket)");
  // A relay that is stuck (or stopped under a debugger) is reported, not waited for.
  timeval limit{kRequestTimeoutSeconds, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  std::string line = request + "\n";
  if (send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) < 0) return errno_error("send request");
  std::string reply;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && would_block(errno))
      return plain_error("no reply from the control socket " + path + " within " +
                         std::to_string(kRequestTimeoutSeconds) + " s: is the relay stuck?");
    if (n < 0) return errno_error("read reply");
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  return reply;
}

}  // namespace sockrelay
