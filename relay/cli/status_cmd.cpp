#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "cli/commands.h"
#include "common/fd.h"
#include "common/result.h"
#include "config/config.h"
#include "control/control_server.h"

namespace sockrelay::cli {

namespace {

constexpr const char* kStatusHelp = R"(Usage: sockrelay status [--format text|json|prometheus] [--output FILE]
                        [--config FILE | --control PATH]
       sockrelay status --watch [INTERVAL] [--count N] [--config FILE | --control PATH]

Ask a running relay for its routes, sessions and counters: per route the
data path (kernel or user space, and why), packets and bytes moved by the
kernel and by user space, and every drop by reason.

Options:
  --format FORMAT  text (default); json (machine-readable); prometheus: every
                   counter in the Prometheus text format 0.0.4, for
                   node-exporter's textfile collector (see
                   sockrelay-metrics.timer) or promtool
  --json           the same as --format json
  --output FILE    write the answer to FILE (mode 0644) instead of stdout,
                   atomically: a reader sees the old file or the new one,
                   never half of one (what node-exporter's textfile
                   collector needs)
  --watch [INTERVAL]
                   a live view, like top: per route packets/s, bytes/s, new
                   sessions/s and drops/s by reason, every INTERVAL seconds
                   (default 2, at least 0.1); redrawn in place on a terminal,
                   one timestamped block per interval otherwise. Ctrl-C ends
                   it (exit status 0)
  --count N        with --watch: stop after N refreshes
  --config FILE    find the control socket from this config's [relay] control
                   (default /etc/sockrelay/sockrelay.toml)
  --control PATH   talk to this control socket directly
  --help           this text

Examples:
  sockrelay status --watch 1
  sockrelay status --format prometheus --output /var/lib/prometheus/node-exporter/sockrelay.prom

Exit status: 0 when the relay answered (with --watch: until Ctrl-C or
--count), 1 when it could not be reached, 2 for a bad command line.
)";

struct StatusOptions {
  std::string format = "text";
  std::string config_path, control, output;
  bool watch = false;
  double interval = 2;
  long count = 0;  // 0: until Ctrl-C
};

bool parse_number(const std::string& text, double* out) {
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return !text.empty() && end != text.c_str() && (*end == '\0' || std::string(end) == "s");
}

bool fail(std::string* error, std::string message) {
  *error = std::move(message);
  return false;
}

// Reads one option into `o`; false with the usage error's message in `error`.
bool parse_option(OptionScanner& scan, const std::string& arg, StatusOptions* o, std::string* error) {
  std::string value;
  if (arg == "--json") {
    o->format = "json";
  } else if (arg == "--format") {
    if (!scan.value(&o->format)) return fail(error, "--format needs text, json or prometheus");
    if (o->format != "text" && o->format != "json" && o->format != "prometheus")
      return fail(error, "--format: unknown format '" + o->format + "' (text, json or prometheus)");
  } else if (arg == "--watch") {
    o->watch = true;
    if (scan.has_value() && scan.value(&value) && (!parse_number(value, &o->interval) || o->interval < 0.1))
      return fail(error, "--watch: INTERVAL is seconds, at least 0.1, not '" + value + "'");
  } else if (arg == "--count") {
    double n = 0;
    if (!scan.value(&value) || !parse_number(value, &n) || n < 1 || n != static_cast<long>(n))
      return fail(error, "--count needs a whole number of refreshes, at least 1");
    o->count = static_cast<long>(n);
  } else if (arg == "--output") {
    if (!scan.value(&o->output) || o->output.empty()) return fail(error, "--output needs a FILE");
  } else if (arg == "--config") {
    if (!scan.value(&o->config_path)) return fail(error, "--config needs a FILE");
  } else if (arg == "--control") {
    if (!scan.value(&o->control)) return fail(error, "--control needs a PATH");
  } else {
    return fail(error, "unknown option '" + arg + "'");
  }
  return true;
}

// The control socket: --control, or the config's [relay] control. Empty
// after printing the config's errors.
std::string control_path(const StatusOptions& o) {
  if (!o.control.empty()) return o.control;
  ParseOutcome parsed = load_config(o.config_path.empty() ? kDefaultConfig : o.config_path);
  if (!parsed.has_errors()) return parsed.config.relay.control;
  // Without a readable default config fall back to the default socket path.
  if (o.config_path.empty()) return RelaySettings{}.control;
  for (const auto& d : parsed.diagnostics) std::fprintf(stderr, "%s\n", d.format().c_str());
  return {};
}

// FILE written whole or not at all: a temporary file next to it, renamed
// over it once complete.
Status write_atomically(const std::string& path, const std::string& text) {
  std::string temp = path + ".XXXXXX";
  Fd fd(mkostemp(temp.data(), O_CLOEXEC));
  if (!fd) return errno_error("cannot create a temporary file next to " + path);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    done += static_cast<size_t>(n);
  }
  bool ok = done == text.size() && fchmod(fd.get(), 0644) == 0 && fsync(fd.get()) == 0;
  if (ok && rename(temp.c_str(), path.c_str()) == 0) return {};
  Error error = errno_error("cannot write " + path);
  unlink(temp.c_str());
  return error;
}

}  // namespace

int status_command(const Args& args) {
  StatusOptions options;
  OptionScanner scan(args);
  std::string arg, error;
  while (scan.next(&arg)) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kStatusHelp, stdout);
      return kExitOk;
    }
    if (!parse_option(scan, arg, &options, &error)) return usage_error("status", error);
  }
  if (options.watch && options.format != "text")
    return usage_error("status", "--watch shows rates as text; it does not take --format or --json");
  if (options.count > 0 && !options.watch) return usage_error("status", "--count goes with --watch");
  if (options.watch && !options.output.empty())
    return usage_error("status", "--watch prints to the terminal; it does not take --output");
  std::string control = control_path(options);
  if (control.empty()) return kExitFailure;
  if (options.watch) return watch_status(control, options.interval, options.count);
  auto reply = control_request(control, options.format == "text" ? "status" : "status " + options.format);
  if (!reply) {
    std::fprintf(stderr, "sockrelay status: %s\n", reply.error().describe().c_str());
    return kExitFailure;
  }
  if (options.output.empty()) {
    std::fputs(reply->c_str(), stdout);
    return kExitOk;
  }
  if (auto written = write_atomically(options.output, *reply); !written) {
    std::fprintf(stderr, "sockrelay status: %s\n", written.error().describe().c_str());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace sockrelay::cli
