// What the kernel dropped on a socket, for the routes that report it.
#pragma once

#include <linux/sock_diag.h>
#include <sys/socket.h>

#include <cstdint>

namespace sockrelay {

// What the kernel dropped on a socket since it was made (sk_drops, from
// SO_MEMINFO): its receive queue full, a socket filter's verdict, or, for a
// socket the verdict program steers, a redirect to a partner socket that no
// longer sends (see DatagramRoute::count_lost_at_close()).
inline uint32_t kernel_drops(int fd) {
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(mem);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0 || len <= SK_MEMINFO_DROPS * sizeof(uint32_t))
    return 0;
  return mem[SK_MEMINFO_DROPS];
}

}  // namespace sockrelay
