// What the kernel dropped on a socket, for the routes that report it.
#pragma once

#include <linux/sock_diag.h>
#include <sys/socket.h>

#include <cstdint>

namespace sockrelay {

// One SK_MEMINFO_* value of a socket, 0 if it cannot be read.
inline uint32_t socket_meminfo(int fd, int which) {
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(mem);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0 ||
      len <= static_cast<socklen_t>(which * sizeof(uint32_t)))
    return 0;
  return mem[which];
}

// What the kernel dropped on a socket since it was made (sk_drops, from
// SO_MEMINFO): its receive queue full, a socket filter's verdict, or, for a
// socket the verdict program steers, a redirect to a partner socket that no
// longer sends (see DatagramRoute::count_lost_at_close()).
inline uint32_t kernel_drops(int fd) { return socket_meminfo(fd, SK_MEMINFO_DROPS); }

// Whether datagrams wait in a socket's receive queue: the memory charged
// to it (SK_MEMINFO_RMEM_ALLOC). Not FIONREAD: on a socket in a sockmap it
// asks the psock's own queue only (udp_bpf_ioctl(), 6.18), and says 0
// while datagrams the verdict program has not taken wait in the socket's.
inline bool datagrams_queued(int fd) { return socket_meminfo(fd, SK_MEMINFO_RMEM_ALLOC) > 0; }

}  // namespace sockrelay
