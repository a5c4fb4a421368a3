// sockrelay_udp_load: the load generator and sinks of bench/udp_bench.sh and
// bench/fanout_bench.sh.
//
// One binary, four roles, so that direct, relayed and socat runs use exactly
// the same sender and receiver:
//   sink  --bind A:P[,A:P...] [--idle-ms MS] [--max-s S]
//                                                 count datagrams (recvmmsg),
//                                                 in total and per port
//   send  --to A:P --duration S [--size N] [--rate R] [--batch B] [--from A:P]
//                                                 blast datagrams (sendmmsg)
//   echo  --bind A:P                             send every datagram back
//   ping  --to A:P --count N [--warmup W] [--size N] [--timeout-ms MS] [--from A:P]
//                                                 ping-pong round trips
// --from binds the client to a fixed address (the bare path's front socket
// is connected to it before the first datagram); default: an ephemeral port.
// Each role ends by printing one line of key=value pairs on stdout, which the
// script parses; diagnostics go to stderr. Numeric IPv4 addresses (and a
// UNIX datagram path for send --to/--from) only: this
// is a loopback benchmark.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <ranges>
#include <string>
#include <string_view>
#include <vector>

#include "load_common.h"

using namespace bench;

namespace {

void sleep_until_ns(uint64_t deadline) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(deadline / 1000000000ull);
  ts.tv_nsec = static_cast<long>(deadline % 1000000000ull);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR && !g_stop) {
  }
}

// A move-only owned fd; the tool is small, but every fd still closes.
class Socket {
 public:
  explicit Socket(int family = AF_INET) : fd_(socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    if (fd_ < 0) die_errno("socket");
  }
  ~Socket() { close(fd_); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Root can go past net.core.{r,w}mem_max with the *FORCE options; otherwise
// take what the sysctl allows.
void set_buffer(int fd, int force_opt, int opt, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof(bytes)) != 0)
    (void)setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof(bytes));
}

void set_receive_timeout(int fd, int ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) die_errno("SO_RCVTIMEO");
}

void bind_to(int fd, const std::string& address) {
  int one = 1;
  (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  Address a = parse_address(address);
  if (bind(fd, a.sa(), a.len) != 0) die_errno("bind " + address);
}

// The client side of send and ping: bound to --from if given, connected to --to.
void bind_client(int fd, const std::string& from) {
  if (from.empty()) return;
  Address a = parse_address(from);
  if (bind(fd, a.sa(), a.len) != 0) die_errno("bind " + from);
}

void connect_to(int fd, const std::string& address) {
  Address a = parse_address(address);
  if (connect(fd, a.sa(), a.len) != 0) die_errno("connect " + address);
}

constexpr int kMaxBatch = 256;
constexpr size_t kMaxDatagram = 65536;

// Counts datagrams until it has seen some and then none for --idle-ms (the
// relay's queues have drained), until --max-s, or until SIGTERM/SIGINT.
// --bind takes one address or several, comma-separated: one socket each,
// all drained by this one thread (fanout_bench.sh's consumers), counted
// together and per port.
int run_sink(const Options& o) {
  std::vector<std::string> addresses;
  for (const std::string& list = o.text("bind"); const auto part : std::views::split(list, ','))
    addresses.emplace_back(part.begin(), part.end());
  std::vector<std::unique_ptr<Socket>> sockets;
  std::vector<pollfd> pfds;
  for (const std::string& address : addresses) {
    auto& s = *sockets.emplace_back(std::make_unique<Socket>());
    set_buffer(s.get(), SO_RCVBUFFORCE, SO_RCVBUF, 64 << 20);
    bind_to(s.get(), address);
    pfds.push_back({s.get(), POLLIN, 0});
  }
  const auto idle_ns = static_cast<uint64_t>(o.number("idle-ms", 500) * 1e6);
  const auto max_ns = static_cast<uint64_t>(o.number("max-s", 120) * 1e9);
  int rcvbuf = 0;
  socklen_t len = sizeof(rcvbuf);
  getsockopt(sockets.front()->get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len);

  // Payloads are not looked at: small buffers, truncation is fine (with
  // MSG_TRUNC the length reported is still the datagram's).
  static char buffer[kMaxBatch][2048];
  mmsghdr msgs[kMaxBatch];
  iovec iovs[kMaxBatch];
  std::memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < kMaxBatch; ++i) {
    iovs[i] = {buffer[i], sizeof(buffer[i])};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);

  std::vector<uint64_t> per_socket(sockets.size(), 0);
  uint64_t datagrams = 0, bytes = 0, calls = 0, first = 0, last = 0;
  const uint64_t start = now_ns();
  while (!g_stop) {
    // One batch from each socket in turn, so that a busy port cannot starve
    // the others; poll only once every queue is empty.
    bool got = false;
    for (size_t k = 0; k < sockets.size(); ++k) {
      int n = recvmmsg(sockets[k]->get(), msgs, kMaxBatch, MSG_DONTWAIT | MSG_TRUNC, nullptr);
      if (n > 0) {
        got = true;
        ++calls;
        datagrams += static_cast<uint64_t>(n);
        per_socket[k] += static_cast<uint64_t>(n);
        for (int i = 0; i < n; ++i) bytes += msgs[i].msg_len;
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        die_errno("recvmmsg");
      }
    }
    uint64_t t = now_ns();
    if (got) {
      if (!first) first = t;
      last = t;
      continue;
    }
    if (first && t - last > idle_ns) break;
    if (t - start > max_ns) break;
    if (poll(pfds.data(), pfds.size(), 50) < 0 && errno != EINTR) die_errno("poll");
  }
  const double window = first ? static_cast<double>(last - first) / 1e9 : 0.0;
  std::string per_port;
  for (size_t k = 0; k < sockets.size(); ++k)
    per_port += (k ? "," : "") + addresses[k].substr(addresses[k].rfind(':') + 1) + ":" +
                std::to_string(per_socket[k]);
  std::printf(
      "sink datagrams=%llu bytes=%llu recv_calls=%llu rx_window_s=%.3f rcvbuf=%d per_port=%s cpu_s=%.3f\n",
      static_cast<unsigned long long>(datagrams), static_cast<unsigned long long>(bytes),
      static_cast<unsigned long long>(calls), window, rcvbuf, per_port.c_str(), cpu_seconds());
  return 0;
}

// Sends --size byte datagrams for --duration seconds, in sendmmsg batches,
// flat out or paced to --rate datagrams/s. "sent" counts what the kernel
// accepted; what the sink did not get of it is loss.
int run_send(const Options& o) {
  const Address to = parse_address(o.text("to"));
  Socket s(to.family());
  set_buffer(s.get(), SO_SNDBUFFORCE, SO_SNDBUF, 4 << 20);
  // So that --to may be a broadcast address (fanout_bench.sh's socat
  // baseline lets the kernel copy each datagram to every socat); no effect
  // on unicast.
  int one = 1;
  if (to.family() == AF_INET && setsockopt(s.get(), SOL_SOCKET, SO_BROADCAST, &one, sizeof(one)) != 0)
    die_errno("SO_BROADCAST");
  bind_client(s.get(), o.values.count("from") ? o.text("from") : std::string());
  connect_to(s.get(), o.text("to"));
  const auto size = static_cast<size_t>(o.number("size", 64));
  const double rate = o.number("rate", 0);
  const int batch = std::clamp(static_cast<int>(o.number("batch", 64)), 1, kMaxBatch);
  const auto duration_ns = static_cast<uint64_t>(o.number("duration", 5) * 1e9);
  if (size > kMaxDatagram - 1024) die("--size too large");

  // Every datagram carries its sequence number (when it fits), which costs
  // nothing and makes a capture readable.
  std::vector<std::vector<char>> payloads(static_cast<size_t>(batch),
                                          std::vector<char>(std::max<size_t>(size, 1)));
  mmsghdr msgs[kMaxBatch];
  iovec iovs[kMaxBatch];
  std::memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < batch; ++i) {
    iovs[i] = {payloads[static_cast<size_t>(i)].data(), size};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }

  uint64_t sent = 0, errors = 0, calls = 0;
  // --settle-ms: one datagram first, then a pause, so that the relay's
  // flow for this client is set up before the flood (a steady-state
  // measurement); that datagram is counted in "sent".
  if (const double settle_ms = o.number("settle-ms", 0); settle_ms > 0) {
    if (send(s.get(), payloads[0].data(), size, 0) == static_cast<ssize_t>(size)) ++sent;
    sleep_until_ns(now_ns() + static_cast<uint64_t>(settle_ms * 1e6));
  }
  const uint64_t start = now_ns();
  const uint64_t end = start + duration_ns;
  uint64_t t = start;
  while (!g_stop && t < end) {
    int want = batch;
    if (rate > 0) {
      // Pace by the clock: send what is due.
      const auto due = static_cast<uint64_t>(static_cast<double>(t - start) * rate / 1e9);
      if (due < sent + errors + static_cast<uint64_t>(batch)) {
        // Sleep until a whole batch is due: fewer, fuller system calls.
        sleep_until_ns(start +
                       static_cast<uint64_t>(static_cast<double>(sent + errors + batch) * 1e9 / rate));
        if (now_ns() >= end) break;
        t = now_ns();
        continue;
      }
      want = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(batch), due - sent - errors));
    }
    if (size >= sizeof(uint64_t))
      for (int i = 0; i < want; ++i) {
        uint64_t seq = sent + static_cast<uint64_t>(i);
        std::memcpy(payloads[static_cast<size_t>(i)].data(), &seq, sizeof(seq));
      }
    int n = sendmmsg(s.get(), msgs, static_cast<unsigned>(want), 0);
    ++calls;
    if (n > 0) {
      sent += static_cast<uint64_t>(n);
    } else if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED || errno == EINTR) {
      // A UNIX receiver's queue full (EAGAIN) is counted the same way.
      // ECONNREFUSED: an ICMP port unreachable from an earlier datagram
      // (nothing listening yet); the datagram itself was not lost by us.
      ++errors;
    } else {
      die_errno("sendmmsg");
    }
    t = now_ns();
  }
  const double elapsed = static_cast<double>(t - start) / 1e9;
  std::printf("send sent=%llu errors=%llu calls=%llu elapsed_s=%.3f size=%zu rate=%.0f cpu_s=%.3f\n",
              static_cast<unsigned long long>(sent), static_cast<unsigned long long>(errors),
              static_cast<unsigned long long>(calls), elapsed, size, rate, cpu_seconds());
  return 0;
}

// Sends every datagram back to where it came from, until SIGTERM/SIGINT.
int run_echo(const Options& o) {
  Socket s;
  set_buffer(s.get(), SO_RCVBUFFORCE, SO_RCVBUF, 4 << 20);
  bind_to(s.get(), o.text("bind"));
  set_receive_timeout(s.get(), 100);
  std::vector<char> buffer(kMaxDatagram);
  uint64_t echoed = 0;
  std::printf("ready\n");
  std::fflush(stdout);
  while (!g_stop) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    ssize_t n =
        recvfrom(s.get(), buffer.data(), buffer.size(), 0, reinterpret_cast<sockaddr*>(&peer), &peer_len);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      die_errno("recvfrom");
    }
    if (sendto(s.get(), buffer.data(), static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&peer),
               peer_len) >= 0)
      ++echoed;
  }
  std::printf("echo echoed=%llu\n", static_cast<unsigned long long>(echoed));
  return 0;
}

// One datagram out, wait for it back, --count times (after --warmup rounds
// that are not measured: the first datagrams set up the relay's flow).
int run_ping(const Options& o) {
  Socket s;
  bind_client(s.get(), o.values.count("from") ? o.text("from") : std::string());
  connect_to(s.get(), o.text("to"));
  const auto count = static_cast<size_t>(o.number("count", 20000));
  const auto warmup = static_cast<size_t>(o.number("warmup", 500));
  const auto size = std::max<size_t>(static_cast<size_t>(o.number("size", 64)), sizeof(uint64_t));
  set_receive_timeout(s.get(), static_cast<int>(o.number("timeout-ms", 200)));
  std::vector<char> out(size), in(kMaxDatagram);
  std::vector<double> rtt_us;
  rtt_us.reserve(count);
  uint64_t lost = 0, stale = 0;
  for (uint64_t seq = 0; seq < warmup + count && !g_stop; ++seq) {
    std::memcpy(out.data(), &seq, sizeof(seq));
    const uint64_t t0 = now_ns();
    if (send(s.get(), out.data(), size, 0) < 0) {
      if (errno == ECONNREFUSED) {  // echo not reachable yet (warm-up)
        ++lost;
        continue;
      }
      die_errno("send");
    }
    for (;;) {
      ssize_t n = recv(s.get(), in.data(), in.size(), 0);
      if (n < 0) {
        if (errno == EINTR && !g_stop) continue;
        ++lost;  // timed out (or refused): counted, the next round goes on
        break;
      }
      uint64_t got = 0;
      if (static_cast<size_t>(n) >= sizeof(got)) std::memcpy(&got, in.data(), sizeof(got));
      if (got != seq) {  // a late reply to a round already counted lost
        ++stale;
        continue;
      }
      if (seq >= warmup) rtt_us.push_back(static_cast<double>(now_ns() - t0) / 1e3);
      break;
    }
  }
  std::sort(rtt_us.begin(), rtt_us.end());
  double mean = 0;
  for (double v : rtt_us) mean += v;
  if (!rtt_us.empty()) mean /= static_cast<double>(rtt_us.size());
  std::printf(
      "ping rounds=%zu lost=%llu stale=%llu p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f\n",
      rtt_us.size(), static_cast<unsigned long long>(lost), static_cast<unsigned long long>(stale),
      percentile(rtt_us, 50), percentile(rtt_us, 90), percentile(rtt_us, 99),
      rtt_us.empty() ? 0.0 : rtt_us.back(), mean);
  return 0;
}

void usage() {
  std::fprintf(
      stderr,
      "usage: sockrelay_udp_load sink --bind A:P[,A:P...] [--idle-ms MS] [--max-s S]\n"
      "       sockrelay_udp_load send --to A:P|/unix/path [--duration S] [--size N] [--rate R] [--batch B]\n"
      "                               [--from A:P|/unix/path] [--settle-ms MS]\n"
      "       sockrelay_udp_load echo --bind A:P\n"
      "       sockrelay_udp_load ping --to A:P [--count N] [--warmup W] [--size N] [--timeout-ms MS]\n"
      "                               [--from A:P]\n");
}

}  // namespace

int main(int argc, char** argv) {
  start_tool("sockrelay_udp_load");
  if (argc < 2) {
    usage();
    return 2;
  }

  const std::string role = argv[1];
  if (role == "--help" || role == "-h") {
    usage();
    return 0;
  }
  const Options o = parse_options(argc, argv);
  name_process(role);
  if (role == "sink") return run_sink(o);
  if (role == "send") return run_send(o);
  if (role == "echo") return run_echo(o);
  if (role == "ping") return run_ping(o);
  usage();
  return 2;
}
