// The subcommands of `sockrelay`. Each parses its own options, prints its
// own --help and returns the process exit status.
#pragma once

#include <string>
#include <vector>

namespace sockrelay::cli {

using Args = std::vector<std::string>;  // the arguments after the subcommand

int run_command(const Args& args);
int check_command(const Args& args);
int matrix_command(const Args& args);
int status_command(const Args& args);

inline constexpr const char* kDefaultConfig = "/etc/sockrelay/sockrelay.toml";

// Exit statuses shared by the subcommands.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the command ran and the answer is "no"
inline constexpr int kExitUsage = 2;    // bad command line

// Small option scanner: flags and "--name VALUE" / "--name=VALUE".
class OptionScanner {
 public:
  explicit OptionScanner(const Args& args) : args_(args) {}
  // Next argument; false at the end.
  bool next(std::string* arg);
  // The value of the option just read (inline "=VALUE" or the next argument).
  bool value(std::string* out);
  // Whether an optional value follows the option just read: an inline
  // "=VALUE", or a next argument that is not an option ("--watch 2").
  bool has_value() const;

 private:
  const Args& args_;
  size_t index_ = 0;
  std::string inline_value_;
  bool has_inline_ = false;
};

// `status --watch`: per-route rates from the relay at `control`, every
// `interval` seconds, `count` times (0: until SIGINT/SIGTERM, exit 0).
int watch_status(const std::string& control, double interval, long count);

int usage_error(const std::string& command, const std::string& message);

}  // namespace sockrelay::cli
