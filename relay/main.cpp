// sockrelay: parse the subcommand and hand over to it. Nothing else lives here.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/commands.h"

namespace {

constexpr const char* kHelp = R"(Usage: sockrelay COMMAND [OPTIONS]

A socket relay that moves datagrams and streams between UDP, TCP, UNIX and
VSOCK sockets inside the kernel (a sockmap redirect per session), with a
user-space data path for what the kernel cannot carry.

Commands:
  run      run the relay (socket-activated by systemd, or standalone)
  check    validate a config: syntax, semantics, every pairing against the
           supported-configuration matrix and this kernel
  matrix   print the supported-configuration matrix; --probe tests it here
  status   routes, sessions and counters of the running relay; --watch for
           live rates, --format prometheus for Prometheus metrics

Options:
  --version   print the version
  --help      this text; 'sockrelay COMMAND --help' for a command's options

Examples:
  sockrelay check --config config/sockrelay.toml
  sockrelay run --config config/sockrelay.toml
  sockrelay status --config config/sockrelay.toml
  sockrelay status --watch 1
  sockrelay matrix --probe
)";

}  // namespace

int main(int argc, char** argv) {
  using namespace sockrelay::cli;
  if (argc < 2) {
    std::fputs(kHelp, stderr);
    return kExitUsage;
  }
  std::string command = argv[1];
  Args rest(argv + 2, argv + argc);
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kHelp, stdout);
    return kExitOk;
  }
  if (command == "--version") {
    std::printf("sockrelay %s\n", SOCKRELAY_VERSION);
    return kExitOk;
  }
  if (command == "run") return run_command(rest);
  if (command == "check") return check_command(rest);
  if (command == "matrix") return matrix_command(rest);
  if (command == "status") return status_command(rest);
  std::fprintf(stderr, "sockrelay: unknown command '%s'\n\n%s", command.c_str(), kHelp);
  return kExitUsage;
}
