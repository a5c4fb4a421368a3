#include <cstdio>

#include "cli/commands.h"

namespace sockrelay::cli {

bool OptionScanner::next(std::string* arg) {
  if (index_ >= args_.size()) return false;
  std::string a = args_[index_++];
  has_inline_ = false;
  if (a.rfind("--", 0) == 0) {
    auto eq = a.find('=');
    if (eq != std::string::npos) {
      inline_value_ = a.substr(eq + 1);
      has_inline_ = true;
      a = a.substr(0, eq);
    }
  }
  *arg = a;
  return true;
}

bool OptionScanner::value(std::string* out) {
  if (has_inline_) {
    *out = inline_value_;
    has_inline_ = false;
    return true;
  }
  if (index_ >= args_.size()) return false;
  *out = args_[index_++];
  return true;
}

bool OptionScanner::has_value() const {
  return has_inline_ || (index_ < args_.size() && args_[index_].rfind('-', 0) != 0);
}

int usage_error(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "sockrelay %s: %s\nTry 'sockrelay %s --help'.\n", command.c_str(), message.c_str(),
               command.c_str());
  return kExitUsage;
}

}  // namespace sockrelay::cli
