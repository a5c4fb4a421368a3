// Sockets handed over by systemd (socket activation), by FileDescriptorName=.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/fd.h"

namespace sockrelay {

// The FileDescriptorName= of the control socket (units/sockrelay-control.socket),
// taken when no endpoint of the config has this name.
inline constexpr const char* kControlSocketName = "control";

class ActivatedSockets {
 public:
  // Takes the fds from sd_listen_fds_with_names() and unsets the
  // LISTEN_* variables so children do not inherit them.
  static ActivatedSockets take_from_systemd();

  // The fd named `name`, owned by the caller from now on (systemd keeps
  // its own copy, which is why map entries are deleted explicitly).
  Fd take(const std::string& name);
  // Names passed by systemd that no endpoint asked for.
  std::vector<std::string> unclaimed() const;
  bool empty() const { return fds_.empty(); }

 private:
  std::map<std::string, Fd> fds_;
};

}  // namespace sockrelay
