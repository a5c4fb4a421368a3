#include "endpoints/activation.h"

#include <fcntl.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>

namespace sockrelay {

ActivatedSockets ActivatedSockets::take_from_systemd() {
  ActivatedSockets result;
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    std::string name = names && names[i] ? names[i] : "unknown";
    result.fds_[name] = Fd(fd);
  }
  if (names) {
    for (int i = 0; i < n; ++i) free(names[i]);
    free(names);
  }
  return result;
}

Fd ActivatedSockets::take(const std::string& name) {
  auto it = fds_.find(name);
  if (it == fds_.end()) return Fd();
  Fd fd = std::move(it->second);
  fds_.erase(it);
  return fd;
}

std::vector<std::string> ActivatedSockets::unclaimed() const {
  std::vector<std::string> names;
  for (const auto& [name, fd] : fds_) names.push_back(name);
  return names;
}

}  // namespace sockrelay
