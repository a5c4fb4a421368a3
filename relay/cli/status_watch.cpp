// `sockrelay status --watch`: reads the relay's Prometheus exposition every
// interval and prints each route's rates since the reading before. On a
// terminal the screen is redrawn in place (like top); otherwise each reading
// is a block of plain lines under a UTC timestamp, for logs and pipes.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "control/control_server.h"
#include "control/metrics.h"

namespace sockrelay::cli {

namespace {

volatile std::sig_atomic_t g_watch_stop = 0;
volatile std::sig_atomic_t g_in_request = 0;
// Between readings the loop sees the flag; during one, the request may wait
// on a relay that does not answer (control_request has no deadline, and
// retries on EINTR): end at once. Every block printed is flushed already.
void on_stop_signal(int) {
  if (g_in_request) _exit(kExitOk);
  g_watch_stop = 1;
}

// SIGINT/SIGTERM end the watch between readings; no SA_RESTART, so the
// sleep returns at once.
void stop_on_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void sleep_seconds(double seconds) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(seconds);
  ts.tv_nsec = static_cast<long>((seconds - static_cast<double>(ts.tv_sec)) * 1e9);
  nanosleep(&ts, nullptr);  // a signal cuts it short: the loop then stops
}

std::string utc_now() {
  char buf[32];
  time_t now = time(nullptr);
  tm utc{};
  gmtime_r(&now, &utc);
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

double sample_value(const std::vector<MetricSample>& samples, const char* name) {
  for (const auto& s : samples) {
    if (s.name == name) return s.value;
  }
  return 0;
}

// "2026-12-04T01:02:03Z  pid 4711, up 120 s, sessions 3/4096, descriptors 21/1024"
std::string header(const std::vector<MetricSample>& now) {
  std::string pid;
  for (const auto& s : now) {
    if (s.name == "sockrelay_info") pid = s.label("pid");
  }
  auto whole = [&](const char* name) {
    return std::to_string(static_cast<uint64_t>(sample_value(now, name)));
  };
  return utc_now() + "  sockrelay pid " + pid + ", up " + whole("sockrelay_uptime_seconds") +
         " s, sessions " + whole("sockrelay_sessions") + "/" + whole("sockrelay_sessions_max") +
         ", descriptors " + whole("sockrelay_open_fds") + "/" + whole("sockrelay_max_fds") + "\n";
}

}  // namespace

// One reading's block of lines: the header, each route's rates.
std::string rates_block(const std::vector<MetricSample>& before, const std::vector<MetricSample>& now,
                        double seconds, double interval, bool tty) {
  std::string block = header(now) + format_route_rates(route_rates(before, now, seconds));
  if (!tty) return block + "\n";
  char footer[64];
  std::snprintf(footer, sizeof(footer), "\nevery %g s; Ctrl-C to quit\n", interval);
  return "\033[H\033[2J" + block + footer;  // home, clear: redrawn in place
}

int watch_status(const std::string& control, double interval, long count) {
  stop_on_signals();
  const bool tty = isatty(STDOUT_FILENO) == 1;
  std::vector<MetricSample> before;
  auto before_at = std::chrono::steady_clock::now();
  bool baseline = true;  // the first reading only starts the clock: a rate needs two
  for (long shown = 0; !g_watch_stop;) {
    g_in_request = 1;
    auto reply = control_request(control, "status prometheus");
    g_in_request = 0;
    auto now_at = std::chrono::steady_clock::now();
    if (!reply) {
      if (g_watch_stop) break;
      std::fprintf(stderr, "sockrelay status --watch: %s\n", reply.error().describe().c_str());
      return kExitFailure;
    }
    std::vector<MetricSample> now = parse_prometheus(*reply);
    if (!baseline) {
      double seconds = std::chrono::duration<double>(now_at - before_at).count();
      std::fputs(rates_block(before, now, seconds, interval, tty).c_str(), stdout);
      std::fflush(stdout);
      ++shown;
    }
    baseline = false;
    before = std::move(now);
    before_at = now_at;
    if (count != 0 && shown >= count) break;
    sleep_seconds(interval);
  }
  return kExitOk;
}

}  // namespace sockrelay::cli
