// Finding a UNIX socket the relay does not own, by its bound address, via
// sock_diag (NETLINK_SOCK_DIAG, UNIX_DIAG). AF_UNIX shows the verdict
// program the *sender* socket, so routing a UNIX client's datagrams in the
// kernel needs that client's cookie, which only sock_diag can tell us.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>

#include "common/result.h"

namespace sockrelay {

struct UnixSocketInfo {
  uint64_t cookie = 0;    // as bpf_get_socket_cookie() sees it
  uint32_t inode = 0;     // the socket's inode
  uint32_t peer_inode = 0;  // inode of the socket it is connected to, 0 if none
};

// The datagram socket bound to `address` (a sockaddr_un), if any.
Result<std::optional<UnixSocketInfo>> find_unix_dgram_socket(const sockaddr* address, socklen_t length);

// The inode of one of our own sockets (to compare with peer_inode).
uint32_t socket_inode(int fd);

}  // namespace sockrelay
