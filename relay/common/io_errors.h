// errno values that mean "not now" on a non-blocking socket or pipe: the
// caller waits for the next readiness event instead of failing the session.
#pragma once

#include <cerrno>

namespace sockrelay {

inline bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

}  // namespace sockrelay
