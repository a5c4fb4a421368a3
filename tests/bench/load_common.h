// What the benchmarks' load tools (udp_load.cpp, stream_load.cpp,
// many_clients.cpp, ...) share: stopping on a signal, dying with a message,
// addresses, the clock, their own CPU time and percentiles. Plain libc only: the tools do not link the relay.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

// Set by SIGINT/SIGTERM (install on_signal): loops end and print what they have.
inline volatile std::sig_atomic_t g_stop = 0;
inline void on_signal(int) { g_stop = 1; }

// The tool's name in error messages; each tool sets it first thing in main().
inline const char* g_program = "sockrelay_load";

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", g_program, what.c_str());
  std::exit(2);
}

[[noreturn]] inline void die_errno(const std::string& what) { die(what + ": " + std::strerror(errno)); }

struct Address {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family() const { return ss.ss_family; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

// A.B.C.D:PORT (numeric IPv4: these are loopback benchmarks), or the path
// of a UNIX socket (it starts with '/').
inline Address parse_address(const std::string& text) {
  Address a;
  if (!text.empty() && text[0] == '/') {
    auto* sun = reinterpret_cast<sockaddr_un*>(&a.ss);
    sun->sun_family = AF_UNIX;
    if (text.size() >= sizeof(sun->sun_path)) die("UNIX socket path too long: " + text);
    std::memcpy(sun->sun_path, text.c_str(), text.size() + 1);
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + text.size() + 1);
    return a;
  }
  auto colon = text.rfind(':');
  auto* sin = reinterpret_cast<sockaddr_in*>(&a.ss);
  sin->sin_family = AF_INET;
  if (colon == std::string::npos || inet_pton(AF_INET, text.substr(0, colon).c_str(), &sin->sin_addr) != 1)
    die("address must be A.B.C.D:PORT or a path: " + text);
  long port = std::strtol(text.c_str() + colon + 1, nullptr, 10);
  if (port <= 0 || port > 65535) die("bad port: " + text);
  sin->sin_port = htons(static_cast<uint16_t>(port));
  a.len = sizeof(sockaddr_in);
  return a;
}

inline uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// This process's user + system CPU seconds so far (softirq work that ran in
// its context included): the scripts cannot read it from /proc once the
// process has exited, and add it up to what the benchmark itself cost.
inline double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(ru.ru_utime) + seconds(ru.ru_stime);
}

// The p-th percentile (0..100) of sorted samples, nearest rank.
inline double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto index = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(index, sorted.size() - 1)];
}

// `TOOL MODE --key value ...`: the options after the mode, by key.
struct Options {
  std::map<std::string, std::string> values;

  // An empty fallback makes the key required.
  std::string text(const std::string& key, const std::string& fallback = {}) const {
    auto it = values.find(key);
    if (it != values.end()) return it->second;
    if (fallback.empty()) die("missing --" + key);
    return fallback;
  }
  double number(const std::string& key, double fallback) const {
    auto it = values.find(key);
    if (it == values.end()) return fallback;
    char* end = nullptr;
    double v = std::strtod(it->second.c_str(), &end);
    if (end == it->second.c_str() || *end != '\0' || v < 0) die("--" + key + " wants a number >= 0");
    return v;
  }
};

inline Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.substr(0, 2) != "--" || i + 1 >= argc) die("expected --key value, got " + std::string(arg));
    o.values[std::string(arg.substr(2))] = argv[++i];
  }
  return o;
}

// First thing in main(): the name for messages, SIGINT/SIGTERM ending the
// loops (no SA_RESTART: blocking calls return EINTR), stdout line-buffered
// so the scripts see each result line at once.
inline void start_tool(const char* program) {
  g_program = program;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  setvbuf(stdout, nullptr, _IOLBF, 0);
}

// One process name per role ("load-sink", "load-send", ...), so that
// `perf report --comms` tells the roles apart.
inline void name_process(const std::string& role) {
  const std::string comm = "load-" + role;
  prctl(PR_SET_NAME, comm.c_str(), 0, 0, 0);
}

}  // namespace bench
