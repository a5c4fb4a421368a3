#include <spdlog/spdlog.h>

#include <cstdio>

#include "cli/commands.h"
#include "cli/logging.h"
#include "config/config.h"
#include "config/fd_budget.h"
#include "daemon/file_limit.h"
#include "daemon/relay.h"

namespace sockrelay::cli {

namespace {

constexpr const char* kRunHelp = R"(Usage: sockrelay run [--config FILE]

Run the relay in the foreground until SIGTERM or SIGINT.

Every endpoint named in the config is taken from systemd when the relay was
socket-activated and a socket with that FileDescriptorName= was passed;
the others are opened by the relay itself. Each route's data path is chosen
from the supported-configuration matrix ('sockrelay matrix') and the running
kernel: "kernel" moves every datagram with a sockmap redirect and wakes no
user-space thread; "userspace" (or a pairing the kernel cannot carry)
copies through the relay. 'sockrelay status' shows which and why.

At start the soft file descriptor limit (RLIMIT_NOFILE) is raised to the
hard one (a service's LimitNOFILE=), and a warning says when even that
cannot hold max-sessions ('sockrelay check' says it too). A session that
finds no descriptor is dropped and counted as fd-limit in 'sockrelay status'.

Options:
  --config FILE   the TOML config (default /etc/sockrelay/sockrelay.toml;
                  see config/README.md for every key)
  --help          this text

Needs root, or CAP_BPF + CAP_NET_ADMIN, for the kernel data path.
Exit status: 0 after a clean stop, 1 if the relay could not start.
)";

// Before anything is opened: the soft descriptor limit up to the hard one,
// logged once, and a warning when even that cannot hold max-sessions.
void own_file_budget(const Config& config) {
  auto limit = raise_file_limit();
  if (!limit) {
    spdlog::warn("file descriptor limit not raised: {} (allow setrlimit in the unit's SystemCallFilter=)",
                 limit.error().describe());
  } else if (limit->soft_before != limit->soft) {
    spdlog::info("file descriptor limit raised from {} to {} (the hard limit)", limit->soft_before,
                 limit->soft);
  } else {
    spdlog::info("file descriptor limit: {} (the hard limit)", limit->soft);
  }
  if (auto warning = fd_budget_warning(config, fd_need(config), hard_file_limit()))
    spdlog::warn("{}:{}:{}: {}", config.path, config.relay.max_sessions_pos.line,
                 config.relay.max_sessions_pos.column, *warning);
}

}  // namespace

int run_command(const Args& args) {
  std::string config_path = kDefaultConfig;
  OptionScanner scan(args);
  std::string arg;
  while (scan.next(&arg)) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kRunHelp, stdout);
      return kExitOk;
    }
    if (arg == "--config") {
      if (!scan.value(&config_path)) return usage_error("run", "--config needs a FILE");
      continue;
    }
    return usage_error("run", "unknown option '" + arg + "'");
  }

  ParseOutcome parsed = load_config(config_path);
  for (const auto& d : parsed.diagnostics) std::fprintf(stderr, "%s\n", d.format().c_str());
  if (parsed.has_errors()) {
    std::fprintf(stderr, "sockrelay run: %s has errors; nothing started ('sockrelay check --config %s')\n",
                 config_path.c_str(), config_path.c_str());
    return kExitFailure;
  }
  if (!setup_logging(parsed.config.relay.log_level)) {
    std::fprintf(stderr, "sockrelay run: bad log-level \"%s\"\n", parsed.config.relay.log_level.c_str());
    return kExitFailure;
  }
  own_file_budget(parsed.config);
  auto relay = Relay::start(std::move(parsed.config));
  if (!relay) {
    spdlog::error("cannot start: {}", relay.error().describe());
    return kExitFailure;
  }
  Status st = (*relay)->run();
  if (!st) {
    spdlog::error("event loop failed: {}", st.error().describe());
    return kExitFailure;
  }
  spdlog::info("stopped cleanly");
  return kExitOk;
}

}  // namespace sockrelay::cli
