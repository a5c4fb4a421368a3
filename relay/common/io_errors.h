// errno values that mean "not now" on a non-blocking socket or pipe: the
// caller waits for the next readiness event instead of failing the session.
#pragma once

#include <sys/socket.h>

#include <cerrno>

namespace sockrelay {

inline bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

// The error pending on a socket (SO_ERROR, which also clears it), 0 if none:
// how a non-blocking connect() tells, once writable, whether it failed.
inline int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

}  // namespace sockrelay
