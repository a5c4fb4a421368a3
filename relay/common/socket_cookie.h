// SO_COOKIE: the id bpf_get_socket_cookie() reports for a socket.
#pragma once

#include <sys/socket.h>

#include <cstdint>

#include "common/result.h"

namespace sockrelay {

inline Result<uint64_t> socket_cookie(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) return errno_error("getsockopt(SO_COOKIE)");
  return cookie;
}

}  // namespace sockrelay
