#include "daemon/file_limit.h"

#include <sys/resource.h>

namespace sockrelay {

Result<FileLimit> raise_file_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return errno_error("getrlimit(RLIMIT_NOFILE)");
  FileLimit out{lim.rlim_cur, lim.rlim_cur, lim.rlim_max};
  if (lim.rlim_cur == lim.rlim_max) return out;
  rlimit raised{lim.rlim_max, lim.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &raised) != 0)
    return errno_error("setrlimit(RLIMIT_NOFILE, " + std::to_string(lim.rlim_max) + ")");
  out.soft = lim.rlim_max;
  return out;
}

uint64_t hard_file_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  return lim.rlim_max;
}

}  // namespace sockrelay
