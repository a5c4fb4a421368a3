#include <cstdio>

#include "cli/commands.h"
#include "config/config.h"
#include "control/control_server.h"

namespace sockrelay::cli {

namespace {

constexpr const char* kStatusHelp = R"(Usage: sockrelay status [--json] [--config FILE | --control PATH]

Ask a running relay for its routes, sessions and counters: per route the
data path (kernel or user space, and why), packets and bytes moved by the
kernel and by user space, and every drop by reason.

Options:
  --json          machine-readable output
  --config FILE   find the control socket from this config's [relay] control
                  (default /etc/sockrelay/sockrelay.toml)
  --control PATH  talk to this control socket directly
  --help          this text

Exit status: 0 when the relay answered, 1 when it could not be reached.
)";

}  // namespace

int status_command(const Args& args) {
  bool json = false;
  std::string config_path, control;
  OptionScanner scan(args);
  std::string arg;
  while (scan.next(&arg)) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kStatusHelp, stdout);
      return kExitOk;
    }
    if (arg == "--json") {
      json = true;
    } else if (arg == "--config") {
      if (!scan.value(&config_path)) return usage_error("status", "--config needs a FILE");
    } else if (arg == "--control") {
      if (!scan.value(&control)) return usage_error("status", "--control needs a PATH");
    } else {
      return usage_error("status", "unknown option '" + arg + "'");
    }
  }
  if (control.empty()) {
    ParseOutcome parsed = load_config(config_path.empty() ? kDefaultConfig : config_path);
    if (parsed.has_errors()) {
      // Without a readable config fall back to the default socket path.
      control = RelaySettings{}.control;
      if (!config_path.empty()) {
        for (const auto& d : parsed.diagnostics) std::fprintf(stderr, "%s\n", d.format().c_str());
        return kExitFailure;
      }
    } else {
      control = parsed.config.relay.control;
    }
  }
  auto reply = control_request(control, json ? "status json" : "status");
  if (!reply) {
    std::fprintf(stderr, "sockrelay status: %s\n", reply.error().describe().c_str());
    return kExitFailure;
  }
  std::fputs(reply->c_str(), stdout);
  return kExitOk;
}

}  // namespace sockrelay::cli
