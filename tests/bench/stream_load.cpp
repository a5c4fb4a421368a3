// sockrelay_stream_load: the load generator and servers of bench/stream_bench.sh.
//
// One binary, four roles, so that direct, relayed, socat and
// systemd-socket-proxyd runs use exactly the same programs at both ends:
//   sink      --listen ADDR [--idle-s S]        accept one connection, read it
//                                               to EOF, count the bytes
//   source    --to ADDR --duration S [--write-size N]
//                                               write N-byte buffers for S
//                                               seconds, then half-close and
//                                               wait for the peer's EOF
//   echo      --listen ADDR                     send every byte back (a
//                                               thread per connection)
//   pingpong  --to ADDR --count N [--warmup W] [--size N]
//                                               N round trips of one message
// ADDR is "A.B.C.D:PORT" (tcp, numeric IPv4: a loopback benchmark), a path
// (unix-stream; "@name" for the abstract namespace) or "vsock:CID:PORT"
// (CID a number or "any"; used inside the vm-tests guests only, over the
// vsock loopback transport). Each role ends by
// printing one line of key=value pairs on stdout, which the script parses;
// diagnostics go to stderr. Plain blocking sockets: the point is to put the
// same, simple load on every path, not to be fast.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "load_common.h"

using namespace bench;

namespace {

// A move-only owned fd: every fd closes, also the per-connection ones.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// A parsed ADDR: the sockaddr to bind or connect, and whether it is tcp.
struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
  bool tcp = false;

  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

Address parse_address(const std::string& text) {
  Address a;
  if (!text.empty() && (text[0] == '/' || text[0] == '@')) {
    auto* un = reinterpret_cast<sockaddr_un*>(&a.storage);
    un->sun_family = AF_UNIX;
    if (text.size() >= sizeof(un->sun_path)) die("unix path too long: " + text);
    std::memcpy(un->sun_path, text.data(), text.size());
    if (text[0] == '@') un->sun_path[0] = '\0';  // abstract: no file, no terminator
    a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + text.size() + (text[0] == '/'));
    return a;
  }
  if (text.rfind("vsock:", 0) == 0) {
    auto colon = text.rfind(':');
    std::string cid = text.substr(6, colon - 6);
    auto* vm = reinterpret_cast<sockaddr_vm*>(&a.storage);
    vm->svm_family = AF_VSOCK;
    vm->svm_cid =
        cid == "any" ? VMADDR_CID_ANY : static_cast<unsigned>(std::strtoul(cid.c_str(), nullptr, 10));
    vm->svm_port = static_cast<unsigned>(std::strtoul(text.c_str() + colon + 1, nullptr, 10));
    a.length = sizeof(sockaddr_vm);
    return a;
  }
  auto colon = text.rfind(':');
  if (colon == std::string::npos) die("address must be A.B.C.D:PORT, a unix path or vsock:CID:PORT: " + text);
  auto* in = reinterpret_cast<sockaddr_in*>(&a.storage);
  in->sin_family = AF_INET;
  if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &in->sin_addr) != 1) die("bad IPv4 address: " + text);
  long port = std::strtol(text.c_str() + colon + 1, nullptr, 10);
  if (port <= 0 || port > 65535) die("bad port: " + text);
  in->sin_port = htons(static_cast<uint16_t>(port));
  a.length = sizeof(sockaddr_in);
  a.tcp = true;
  return a;
}

Fd stream_socket(const Address& a) {
  Fd fd(socket(a.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) die_errno("socket");
  return fd;
}

// Small messages go out at once: a ping-pong must not wait for Nagle.
void set_nodelay(int fd, const Address& a) {
  int one = 1;
  if (a.tcp && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) die_errno("TCP_NODELAY");
}

void set_receive_timeout(int fd, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) die_errno("SO_RCVTIMEO");
}

// Socket buffers are left alone: setting SO_RCVBUF/SO_SNDBUF would switch
// off tcp's autotuning, which every real client of these paths gets.
Fd listen_on(const std::string& text) {
  Address a = parse_address(text);
  Fd fd = stream_socket(a);
  int one = 1;
  if (a.tcp) (void)setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (text[0] == '/') (void)unlink(text.c_str());
  if (bind(fd.get(), a.sa(), a.length) != 0) die_errno("bind " + text);
  if (listen(fd.get(), 64) != 0) die_errno("listen " + text);
  return fd;
}

Fd connect_to(const std::string& text) {
  Address a = parse_address(text);
  Fd fd = stream_socket(a);
  if (connect(fd.get(), a.sa(), a.length) != 0) die_errno("connect " + text);
  return fd;
}

// accept() that gives up on SIGTERM/SIGINT (no SA_RESTART: it returns EINTR).
Fd accept_one(int listener) {
  for (;;) {
    Fd conn(accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.get() >= 0) return conn;
    if (errno != EINTR || g_stop) die_errno("accept");
  }
}

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR && !g_stop) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Accepts one connection and reads it to EOF. The throughput is measured
// here, from the first byte to the last: what arrived, not what was written.
// Gives up (complete=0) after --idle-s without a byte or EOF: a stalled path
// (the window still ends at the last byte that came).
int run_sink(const Options& o) {
  Fd listener = listen_on(o.text("listen"));
  std::printf("ready\n");
  Fd conn = accept_one(listener.get());
  set_receive_timeout(conn.get(), o.number("idle-s", 10));
  std::vector<char> buffer(256 << 10);
  uint64_t bytes = 0, reads = 0, first = 0, last = 0;
  bool complete = false;
  while (!g_stop) {
    ssize_t n = read(conn.get(), buffer.data(), buffer.size());
    if (n > 0) {
      last = now_ns();
      if (!first) first = last;
      bytes += static_cast<uint64_t>(n);
      ++reads;
      continue;
    }
    if (n == 0) {
      complete = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      std::fprintf(stderr, "sockrelay_stream_load: sink: no byte and no EOF for --idle-s, giving up\n");
    else
      std::fprintf(stderr, "sockrelay_stream_load: sink read: %s\n", std::strerror(errno));
    break;
  }
  const double window = static_cast<double>(last - first) / 1e9;
  std::printf("sink bytes=%llu reads=%llu window_s=%.3f complete=%d cpu_s=%.3f\n",
              static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(reads), window,
              complete ? 1 : 0, cpu_seconds());
  return 0;
}

// Writes --write-size buffers for --duration seconds, half-closes, then
// waits for the peer's EOF: the sink closes once it has read everything, so
// the run ends when the last byte has arrived, not when it left.
int run_source(const Options& o) {
  Fd s = connect_to(o.text("to"));
  const auto write_size = static_cast<size_t>(o.number("write-size", 65536));
  const auto duration_ns = static_cast<uint64_t>(o.number("duration", 5) * 1e9);
  if (write_size == 0) die("--write-size must be > 0");
  std::vector<char> buffer(write_size);
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<char>(i * 131);

  uint64_t bytes = 0, writes = 0;
  bool ok = true;
  const uint64_t start = now_ns();
  while (!g_stop && now_ns() - start < duration_ns) {
    if (!write_all(s.get(), buffer.data(), buffer.size())) {
      std::fprintf(stderr, "sockrelay_stream_load: source write: %s\n", std::strerror(errno));
      ok = false;
      break;
    }
    bytes += buffer.size();
    ++writes;
  }
  const uint64_t written = now_ns();
  bool eof = false;
  if (ok && shutdown(s.get(), SHUT_WR) == 0) {
    set_receive_timeout(s.get(), o.number("drain-s", 30));
    for (;;) {
      ssize_t n = read(s.get(), buffer.data(), buffer.size());
      if (n > 0) continue;  // nothing should come back; discard it anyway
      if (n < 0 && errno == EINTR && !g_stop) continue;
      eof = n == 0;
      break;
    }
  }
  const uint64_t end = now_ns();
  std::printf("source bytes=%llu writes=%llu write_s=%.3f elapsed_s=%.3f eof=%d cpu_s=%.3f\n",
              static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(writes),
              static_cast<double>(written - start) / 1e9, static_cast<double>(end - start) / 1e9, eof ? 1 : 0,
              cpu_seconds());
  return 0;
}

void echo_connection(Fd conn) {
  std::vector<char> buffer(64 << 10);
  for (;;) {
    ssize_t n = read(conn.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || !write_all(conn.get(), buffer.data(), static_cast<size_t>(n))) return;
  }
}

// Sends every byte back on the connection it came from, a thread per
// connection, until SIGTERM/SIGINT.
int run_echo(const Options& o) {
  const std::string text = o.text("listen");
  const Address a = parse_address(text);
  Fd listener = listen_on(text);
  std::printf("ready\n");
  uint64_t connections = 0;
  while (!g_stop) {
    Fd conn(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.get() < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      die_errno("accept");
    }
    set_nodelay(conn.get(), a);
    ++connections;
    std::thread(echo_connection, std::move(conn)).detach();
  }
  std::printf("echo connections=%llu\n", static_cast<unsigned long long>(connections));
  return 0;
}

// One --size message out, wait until all of it is back, --count times (after
// --warmup rounds that are not measured: the first ones pay for the path's
// connection set-up). A round with no reply in --timeout-s is fatal: on a
// stream nothing is "lost", the path has stalled.
int run_pingpong(const Options& o) {
  const std::string text = o.text("to");
  Fd s = connect_to(text);
  set_nodelay(s.get(), parse_address(text));
  const auto count = static_cast<size_t>(o.number("count", 20000));
  const auto warmup = static_cast<size_t>(o.number("warmup", 1000));
  const auto size = std::max<size_t>(static_cast<size_t>(o.number("size", 64)), 1);
  set_receive_timeout(s.get(), o.number("timeout-s", 2));
  std::vector<char> out(size, 'p'), in(size);
  std::vector<double> rtt_us;
  rtt_us.reserve(count);
  for (size_t round = 0; round < warmup + count && !g_stop; ++round) {
    const uint64_t t0 = now_ns();
    if (!write_all(s.get(), out.data(), size)) die_errno("pingpong write");
    for (size_t got = 0; got < size;) {
      ssize_t n = read(s.get(), in.data() + got, size - got);
      if (n < 0 && errno == EINTR && !g_stop) continue;
      if (n < 0) die_errno("pingpong read (round " + std::to_string(round) + ")");
      if (n == 0) die("pingpong: the path closed the connection (round " + std::to_string(round) + ")");
      got += static_cast<size_t>(n);
    }
    if (round >= warmup) rtt_us.push_back(static_cast<double>(now_ns() - t0) / 1e3);
  }
  std::sort(rtt_us.begin(), rtt_us.end());
  double mean = 0;
  for (double v : rtt_us) mean += v;
  if (!rtt_us.empty()) mean /= static_cast<double>(rtt_us.size());
  std::printf("pingpong rounds=%zu p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f\n",
              rtt_us.size(), percentile(rtt_us, 50), percentile(rtt_us, 90), percentile(rtt_us, 99),
              rtt_us.empty() ? 0.0 : rtt_us.back(), mean);
  return 0;
}

void usage() {
  std::fprintf(stderr,
               "usage: sockrelay_stream_load sink --listen ADDR [--idle-s S]\n"
               "       sockrelay_stream_load source --to ADDR [--duration S] [--write-size N] [--drain-s S]\n"
               "       sockrelay_stream_load echo --listen ADDR\n"
               "       sockrelay_stream_load pingpong --to ADDR [--count N] [--warmup W] [--size N] "
               "[--timeout-s S]\n"
               "ADDR: A.B.C.D:PORT (tcp), /path or @name (unix-stream), vsock:CID:PORT (in a guest)\n");
}

}  // namespace

int main(int argc, char** argv) {
  start_tool("sockrelay_stream_load");
  if (argc < 2) {
    usage();
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);  // a peer that went away is an EPIPE to report

  const std::string role = argv[1];
  if (role == "--help" || role == "-h") {
    usage();
    return 0;
  }
  const Options o = parse_options(argc, argv);
  name_process(role);
  if (role == "sink") return run_sink(o);
  if (role == "source") return run_source(o);
  if (role == "echo") return run_echo(o);
  if (role == "pingpong") return run_pingpong(o);
  usage();
  return 2;
}
