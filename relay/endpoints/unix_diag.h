// Finding a UNIX datagram socket the relay does not own, via sock_diag
// (NETLINK_SOCK_DIAG, UNIX_DIAG). AF_UNIX shows the verdict program the
// *sender*, so routing a UNIX client in the kernel needs that client's
// cookie, and replying to it needs its address: only sock_diag can map one
// to the other.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <optional>

#include "common/result.h"

namespace sockrelay {

struct UnixSocketInfo {
  uint64_t cookie = 0;           // as bpf_get_socket_cookie() sees it
  uint32_t inode = 0;            // the socket's inode
  uint32_t peer_inode = 0;       // inode of the socket it is connected to, 0 if none
  sockaddr_un address{};         // its bound address...
  socklen_t address_length = 0;  // ...or 0 when it never bound
  // UNIX_DIAG_UID: the socket's owner, i.e. the fsuid of the process that
  // created it, as seen from our user namespace. Not the uid of whoever
  // sends on it now (a socket outlives setuid() and travels in SCM_RIGHTS),
  // and there is no gid: sock_diag reports none.
  std::optional<uint32_t> uid;
};

// The datagram socket bound to `address` (a sockaddr_un), if any.
Result<std::optional<UnixSocketInfo>> find_unix_dgram_by_address(const sockaddr* address, socklen_t length);
// The datagram socket with this cookie, if any.
Result<std::optional<UnixSocketInfo>> find_unix_dgram_by_cookie(uint64_t cookie);

// The inode of one of our own sockets (to compare with peer_inode).
uint32_t socket_inode(int fd);

}  // namespace sockrelay
