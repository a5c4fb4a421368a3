// sockrelay_many_clients: the load of bench/many_clients.sh — many distinct
// clients, each short-lived, rather than one busy one.
//
//   udp-clients --to A:P --clients N [--offset K] [--rate R] [--window W]
//               [--timeout-ms MS] [--ports-per-source P] [--watch-pid PID]
//       N distinct UDP clients, one request each: client i (counting from
//       K) is bound to 127.1.x.y:PORT, a fixed address and port of its own
//       (ports 2000.., below the ephemeral range; P ports per source
//       address, then the next address), so no two clients of a run share
//       a 4-tuple and the ephemeral ports of the relay are not taken. Each
//       sends one 64-byte request and waits for the reply. --rate paces new
//       clients per second (0: as fast as --window clients in flight allow).
//   stream-echo --listen ADDR
//       echoes every byte of every connection back and half-closes after
//       the peer's EOF: one thread, epoll, any number of connections.
//   stream-clients --to ADDR --sessions M [--size B] [--timeout-s S]
//                  [--watch-pid PID]
//       opens M connections, waits until all are established (or failed),
//       then each sends B pseudo-random bytes (its own stream), half-closes
//       and reads the echo to EOF, compared byte for byte.
// --watch-pid samples that process's descriptors and RSS every 50 ms while
// the load runs (peak_fds, peak_rss_kib; fds_after at the end). ADDR is
// "A.B.C.D:PORT" (tcp) or a path (unix-stream). Each role prints one line of
// key=value pairs on stdout; diagnostics go to stderr.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <fstream>
#include <thread>
#include <unordered_map>

#include "load_common.h"

using namespace bench;

namespace {

// The process's own soft limit raised to its hard one: the tool holds a
// descriptor per client in flight (the relay under test does not get this).
void raise_file_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

// Peak descriptors and RSS of one process, sampled from /proc in a thread.
class ProcessWatch {
 public:
  explicit ProcessWatch(int pid) : pid_(pid) {
    if (pid_ > 0) thread_ = std::thread([this] { loop(); });
  }
  ~ProcessWatch() { stop(); }
  void stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }
  static long descriptors(int pid) {
    DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
    if (!dir) return -1;
    long n = 0;
    while (const dirent* e = readdir(dir)) n += e->d_name[0] != '.';
    closedir(dir);
    return n;
  }
  static long rss_kib(int pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string key;
    long value = 0;
    while (status >> key) {
      if (key == "VmRSS:" && status >> value) return value;
      status.ignore(1 << 10, '\n');
    }
    return -1;
  }
  // "peak_fds=N peak_rss_kib=N fds_after=N" (empty without a pid).
  std::string summary() {
    stop();
    if (pid_ <= 0) return "";
    sample();
    return " peak_fds=" + std::to_string(peak_fds_) + " peak_rss_kib=" + std::to_string(peak_rss_) +
           " fds_after=" + std::to_string(descriptors(pid_));
  }

 private:
  void sample() {
    peak_fds_ = std::max(peak_fds_, descriptors(pid_));
    peak_rss_ = std::max(peak_rss_, rss_kib(pid_));
  }
  // Every 500 ms: listing /proc/PID/fd of a relay holding thousands of
  // descriptors costs milliseconds of CPU on this machine's two cores, and
  // every 50 ms it showed in the relay's first-reply latency.
  void loop() {
    while (!done_) {
      sample();
      for (int i = 0; i < 10 && !done_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  int pid_;
  std::atomic<bool> done_{false};
  long peak_fds_ = 0, peak_rss_ = 0;
  std::thread thread_;
};

std::string percentiles_us(std::vector<double>& samples) {
  std::sort(samples.begin(), samples.end());
  char buf[160];
  std::snprintf(buf, sizeof(buf), "p50_us=%.1f p99_us=%.1f max_us=%.1f", percentile(samples, 50),
                percentile(samples, 99), samples.empty() ? 0.0 : samples.back());
  return buf;
}

// ---------------------------------------------------------------------------
// UDP: many clients, one request each.

struct UdpClient {
  int fd = -1;
  uint64_t sent_at = 0;
};

// Client `index`'s own address: 127.1.A.B:PORT.
sockaddr_in client_address(uint64_t index, uint64_t ports_per_source) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  uint64_t source = index / ports_per_source;
  sa.sin_addr.s_addr = htonl((127u << 24) | (1u << 16) | static_cast<uint32_t>((source / 250) << 8) |
                             static_cast<uint32_t>(source % 250 + 1));
  sa.sin_port = htons(static_cast<uint16_t>(2000 + index % ports_per_source));
  return sa;
}

// Opens client `index`, sends its request; -1 when a step failed (counted).
int start_udp_client(uint64_t index, uint64_t ports_per_source, const Address& to, int epoll_fd) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in self = client_address(index, ports_per_source);
  char request[64] = {};
  std::memcpy(request, &index, sizeof(index));
  epoll_event ev{EPOLLIN, {.fd = fd}};
  if (bind(fd, reinterpret_cast<sockaddr*>(&self), sizeof(self)) != 0 || connect(fd, to.sa(), to.len) != 0 ||
      send(fd, request, sizeof(request), 0) != sizeof(request) ||
      epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int run_udp_clients(const Options& o) {
  const Address to = parse_address(o.text("to"));
  const auto clients = static_cast<uint64_t>(o.number("clients", 1000));
  const auto offset = static_cast<uint64_t>(o.number("offset", 0));
  const double rate = o.number("rate", 0);
  const auto window = std::max<size_t>(1, static_cast<size_t>(o.number("window", 512)));
  const auto timeout_ns = static_cast<uint64_t>(o.number("timeout-ms", 1000) * 1e6);
  const auto ports =
      std::clamp<uint64_t>(static_cast<uint64_t>(o.number("ports-per-source", 30000)), 1, 30000);
  ProcessWatch watch(static_cast<int>(o.number("watch-pid", 0)));
  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) die_errno("epoll_create1");

  std::unordered_map<int, UdpClient> in_flight;
  std::deque<std::pair<uint64_t, int>> by_age;  // (sent_at, fd): the oldest first
  std::vector<double> latency_us;
  latency_us.reserve(clients);
  uint64_t next = 0, answered = 0, timeouts = 0, setup_errors = 0;
  const uint64_t start = now_ns();
  epoll_event events[256];
  while (!g_stop && (next < clients || !in_flight.empty())) {
    uint64_t t = now_ns();
    // New clients: what the pace allows, while the window has room.
    uint64_t due = rate > 0
                       ? std::min<uint64_t>(
                             clients, static_cast<uint64_t>(static_cast<double>(t - start) / 1e9 * rate) + 1)
                       : clients;
    while (next < due && in_flight.size() < window) {
      int fd = start_udp_client(offset + next++, ports, to, epoll_fd);
      if (fd < 0) {
        ++setup_errors;
        continue;
      }
      uint64_t sent_at = now_ns();
      in_flight[fd] = {fd, sent_at};
      by_age.emplace_back(sent_at, fd);
    }
    int n = epoll_wait(epoll_fd, events, 256, 1);
    t = now_ns();
    for (int i = 0; i < n; ++i) {
      auto it = in_flight.find(events[i].data.fd);
      if (it == in_flight.end()) continue;
      char reply[128];
      if (recv(it->first, reply, sizeof(reply), 0) > 0) {
        ++answered;
        latency_us.push_back(static_cast<double>(t - it->second.sent_at) / 1e3);
      } else {
        ++setup_errors;  // refused (ICMP): nothing answers on that path
      }
      close(it->first);
      in_flight.erase(it);
    }
    while (!by_age.empty() && (!in_flight.count(by_age.front().second) ||
                               in_flight[by_age.front().second].sent_at != by_age.front().first ||
                               t - by_age.front().first > timeout_ns)) {
      auto [sent_at, fd] = by_age.front();
      by_age.pop_front();
      auto it = in_flight.find(fd);
      if (it == in_flight.end() || it->second.sent_at != sent_at) continue;
      ++timeouts;
      close(fd);
      in_flight.erase(it);
    }
  }
  const double elapsed = static_cast<double>(now_ns() - start) / 1e9;
  std::printf(
      "udp-clients clients=%llu answered=%llu timeouts=%llu setup_errors=%llu elapsed_s=%.3f "
      "answered_per_s=%.0f %s cpu_s=%.3f%s\n",
      static_cast<unsigned long long>(clients), static_cast<unsigned long long>(answered),
      static_cast<unsigned long long>(timeouts), static_cast<unsigned long long>(setup_errors), elapsed,
      elapsed > 0 ? static_cast<double>(answered) / elapsed : 0.0, percentiles_us(latency_us).c_str(),
      cpu_seconds(), watch.summary().c_str());
  close(epoll_fd);
  return 0;
}

// ---------------------------------------------------------------------------
// Streams: an epoll echo server, and many concurrent sessions.

// Session `id`'s byte at `offset`: a cheap hash, so the body is never stored.
char body_byte(uint64_t id, uint64_t offset) {
  uint64_t x = (id + 1) * 0x9E3779B97F4A7C15ull ^ (offset / 8) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  return static_cast<char>(x >> (8 * (offset % 8)));
}

int listen_on(const Address& a) {
  int fd = socket(a.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  if (a.family() == AF_UNIX) unlink(reinterpret_cast<const sockaddr_un*>(&a.ss)->sun_path);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, a.sa(), a.len) != 0 || listen(fd, 4096) != 0) die_errno("listen");
  return fd;
}

struct EchoConnection {
  std::string pending;  // read, not yet written back
  bool peer_done = false;
};

// Writes what it can of the connection's pending bytes: 1 when all went,
// 0 when the socket is full (EPOLLOUT comes back), -1 on an error.
int echo_flush(int fd, EchoConnection& c) {
  while (!c.pending.empty()) {
    ssize_t n = send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    c.pending.erase(0, static_cast<size_t>(n));
  }
  return 1;
}

// One connection's event (edge-triggered: read until EAGAIN, a MiB at a
// time, each written back); true when the connection is finished: all
// echoed after the peer's EOF, or an error.
bool echo_event(int fd, EchoConnection& c) {
  char buf[16384];
  for (;;) {
    bool drained = false;
    while (!c.peer_done && c.pending.size() < (1 << 20)) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n == 0) c.peer_done = true;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) drained = true;
      if (n < 0 && errno != EAGAIN) return true;
      if (n <= 0) break;
      c.pending.append(buf, static_cast<size_t>(n));
    }
    int flushed = echo_flush(fd, c);
    if (flushed < 0) return true;
    if (flushed == 0) return false;
    if (c.peer_done) {
      shutdown(fd, SHUT_WR);
      return true;
    }
    if (drained) return false;
  }
}

int run_stream_echo(const Options& o) {
  int listener = listen_on(parse_address(o.text("listen")));
  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{EPOLLIN, {.fd = listener}};
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &ev);
  std::unordered_map<int, EchoConnection> connections;
  uint64_t accepted = 0;
  std::printf("ready\n");
  epoll_event events[256];
  while (!g_stop) {
    int n = epoll_wait(epoll_fd, events, 256, 100);
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == listener) {
        int conn;
        while ((conn = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
          ++accepted;
          epoll_event cev{EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, {.fd = conn}};
          epoll_ctl(epoll_fd, EPOLL_CTL_ADD, conn, &cev);
          connections[conn];
        }
        continue;
      }
      auto it = connections.find(fd);
      if (it != connections.end() && echo_event(fd, it->second)) {
        close(fd);
        connections.erase(it);
      }
    }
  }
  std::printf("stream-echo accepted=%llu open=%zu\n", static_cast<unsigned long long>(accepted),
              connections.size());
  return 0;
}

struct Session {
  uint64_t id = 0;
  int fd = -1;
  bool connected = false, sent_eof = false;
  uint64_t sent = 0, received = 0;
  bool mismatch = false;
};

// Writes what it can of the session's body, then half-closes.
void session_send(Session& s, uint64_t size) {
  char buf[16384];
  while (s.sent < size) {
    size_t chunk = std::min<uint64_t>(sizeof(buf), size - s.sent);
    for (size_t i = 0; i < chunk; ++i) buf[i] = body_byte(s.id, s.sent + i);
    ssize_t n = send(s.fd, buf, chunk, MSG_NOSIGNAL);
    if (n <= 0) return;
    s.sent += static_cast<uint64_t>(n);
  }
  if (!s.sent_eof) shutdown(s.fd, SHUT_WR);
  s.sent_eof = true;
}

// Reads the echo; 1 at EOF, -1 on an error, 0 for more later.
int session_receive(Session& s) {
  char buf[16384];
  for (;;) {
    ssize_t n = recv(s.fd, buf, sizeof(buf), 0);
    if (n == 0) return 1;
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    for (ssize_t i = 0; i < n; ++i)
      s.mismatch |= buf[i] != body_byte(s.id, s.received + static_cast<uint64_t>(i));
    s.received += static_cast<uint64_t>(n);
  }
}

struct StreamTotals {
  uint64_t connected = 0, exact = 0, short_or_wrong = 0, failed = 0;
};

// Phase 1: every session connects (non-blocking), until all are
// established or failed, or the deadline.
void connect_all(std::vector<Session>& sessions, const Address& to, int epoll_fd, uint64_t deadline,
                 StreamTotals& totals) {
  size_t waiting = 0;
  bool backlog_stuck = false;
  for (auto& s : sessions) {
    s.fd = socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc;
    // A unix listener's full backlog drains as it accepts; one nobody
    // accepts from stays full: after 5 s without room, the rest of the
    // sessions fail at once instead of each waiting.
    const uint64_t give_up = std::min<uint64_t>(deadline, now_ns() + 5000000000ull);
    while ((rc = connect(s.fd, to.sa(), to.len)) != 0 && errno == EAGAIN && !backlog_stuck) {
      backlog_stuck = now_ns() >= give_up;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (s.fd < 0 || (rc != 0 && errno != EINPROGRESS)) {
      ++totals.failed;
      if (s.fd >= 0) close(s.fd);
      s.fd = -1;
      continue;
    }
    epoll_event ev{EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET,
                   {.u64 = static_cast<uint64_t>(&s - sessions.data())}};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s.fd, &ev);
    ++waiting;
  }
  epoll_event events[256];
  while (waiting > 0 && now_ns() < deadline && !g_stop) {
    int n = epoll_wait(epoll_fd, events, 256, 10);
    for (int i = 0; i < n; ++i) {
      Session& s = sessions[events[i].data.u64];
      if (s.connected || s.fd < 0) continue;
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      --waiting;
      if (err == 0 && (events[i].events & EPOLLOUT)) {
        s.connected = true;
        ++totals.connected;
      } else {
        ++totals.failed;
        close(s.fd);
        s.fd = -1;
      }
    }
  }
}

int run_stream_clients(const Options& o) {
  const Address to = parse_address(o.text("to"));
  const auto count = static_cast<size_t>(o.number("sessions", 1000));
  const auto size = static_cast<uint64_t>(o.number("size", 16384));
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(o.number("timeout-s", 60) * 1e9);
  ProcessWatch watch(static_cast<int>(o.number("watch-pid", 0)));
  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  std::vector<Session> sessions(count);
  for (size_t i = 0; i < count; ++i) sessions[i].id = i;
  StreamTotals totals;
  const uint64_t start = now_ns();
  connect_all(sessions, to, epoll_fd, deadline, totals);
  const double connect_s = static_cast<double>(now_ns() - start) / 1e9;
  // Phase 2: every connected session sends its body, half-closes, reads
  // the echo to EOF.
  size_t open = 0;
  for (auto& s : sessions) {
    if (!s.connected) continue;
    session_send(s, size);
    ++open;
  }
  epoll_event events[256];
  while (open > 0 && now_ns() < deadline && !g_stop) {
    int n = epoll_wait(epoll_fd, events, 256, 10);
    for (int i = 0; i < n; ++i) {
      Session& s = sessions[events[i].data.u64];
      if (s.fd < 0) continue;
      session_send(s, size);
      int r = session_receive(s);
      if (r == 0) continue;
      (r > 0 && !s.mismatch && s.received == size ? totals.exact : totals.short_or_wrong)++;
      close(s.fd);
      s.fd = -1;
      --open;
    }
  }
  for (auto& s : sessions) {
    if (s.fd >= 0) close(s.fd);  // unfinished at the deadline: counted short
  }
  totals.short_or_wrong += open;
  const double elapsed = static_cast<double>(now_ns() - start) / 1e9;
  std::printf(
      "stream-clients sessions=%zu connected=%llu exact=%llu short_or_wrong=%llu connect_failed=%llu "
      "connect_s=%.3f elapsed_s=%.3f sessions_per_s=%.0f cpu_s=%.3f%s\n",
      count, static_cast<unsigned long long>(totals.connected), static_cast<unsigned long long>(totals.exact),
      static_cast<unsigned long long>(totals.short_or_wrong), static_cast<unsigned long long>(totals.failed),
      connect_s, elapsed, elapsed > 0 ? static_cast<double>(totals.exact) / elapsed : 0.0, cpu_seconds(),
      watch.summary().c_str());
  close(epoll_fd);
  return 0;
}

void usage() {
  std::fprintf(stderr,
               "usage: sockrelay_many_clients udp-clients --to A:P --clients N [--offset K] [--rate R]\n"
               "                              [--window W] [--timeout-ms MS] [--ports-per-source P]\n"
               "                              [--watch-pid PID]\n"
               "       sockrelay_many_clients stream-echo --listen ADDR\n"
               "       sockrelay_many_clients stream-clients --to ADDR --sessions M [--size B]\n"
               "                              [--timeout-s S] [--watch-pid PID]\n");
}

}  // namespace

int main(int argc, char** argv) {
  start_tool("sockrelay_many_clients");
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string role = argv[1];
  const Options o = parse_options(argc, argv);
  name_process(role);
  raise_file_limit();
  if (role == "udp-clients") return run_udp_clients(o);
  if (role == "stream-echo") return run_stream_echo(o);
  if (role == "stream-clients") return run_stream_clients(o);
  usage();
  return 2;
}
