// Reading datagrams a batch at a time (recvmmsg), with each one's sender
// and, when the socket asks for them, its SCM_CREDENTIALS. One helper for
// every socket a datagram route reads: its listener, its new-client
// channel, its flow and upstream sockets.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "common/io_errors.h"

namespace sockrelay {

inline constexpr int kBatch = 32;
inline constexpr size_t kMaxDatagram = 65536;
// What a batch buffer holds: kBatch datagrams of the largest size.
inline constexpr size_t kBatchBufferSize = kBatch * kMaxDatagram;

// Reads up to a batch of datagrams into `buffer` (kBatchBufferSize bytes);
// calls `each(peer, len, data, size)`, or `each(peer, len, data, size,
// cred)` with the datagram's SCM_CREDENTIALS (null if none came: the socket
// has no SO_PASSCRED). Returns how many it read, 0 when none are queued, -1
// on a socket error (errno says which).
template <typename Each>
int read_batch(int fd, char* buffer, Each each) {
  constexpr bool kCreds =
      std::is_invocable_v<Each, const sockaddr_storage&, socklen_t, const char*, size_t, const ucred*>;
  mmsghdr msgs[kBatch];
  iovec iovs[kBatch];
  sockaddr_storage peers[kBatch];
  struct alignas(cmsghdr) Control {
    char bytes[CMSG_SPACE(sizeof(ucred))];
  };
  Control controls[kCreds ? kBatch : 1];
  std::memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < kBatch; ++i) {
    iovs[i] = {buffer + i * kMaxDatagram, kMaxDatagram};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &peers[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
    if constexpr (kCreds) {
      msgs[i].msg_hdr.msg_control = controls[i].bytes;
      msgs[i].msg_hdr.msg_controllen = sizeof(controls[i].bytes);
    }
  }
  int n = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n < 0) return would_block(errno) ? 0 : -1;
  for (int i = 0; i < n; ++i) {
    const char* data = static_cast<const char*>(iovs[i].iov_base);
    if constexpr (kCreds) {
      ucred cred{};
      bool have = false;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
          std::memcpy(&cred, CMSG_DATA(c), sizeof(cred));
          have = true;
        }
      each(peers[i], msgs[i].msg_hdr.msg_namelen, data, msgs[i].msg_len, have ? &cred : nullptr);
    } else {
      each(peers[i], msgs[i].msg_hdr.msg_namelen, data, msgs[i].msg_len);
    }
  }
  return n;
}

}  // namespace sockrelay
