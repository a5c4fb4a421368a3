// Reading datagrams a batch at a time (recvmmsg), with each one's sender
// and, when the socket asks for them, its SCM_CREDENTIALS, destination
// address and receive time. One helper for
// every socket a datagram route reads: its listener, its new-client
// channel, its flow and upstream sockets.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <type_traits>

#include "common/io_errors.h"

namespace sockrelay {

inline constexpr int kBatch = 32;
inline constexpr size_t kMaxDatagram = 65536;
// What a batch buffer holds: kBatch datagrams of the largest size.
inline constexpr size_t kBatchBufferSize = kBatch * kMaxDatagram;

// What a listener learns about a datagram besides its sender: its
// SCM_CREDENTIALS (AF_UNIX, with SO_PASSCRED) and the local address it was
// sent to (a wildcard UDP listener, with IP_PKTINFO / IPV6_RECVPKTINFO:
// `local_len` 0 when none came).
struct DatagramMeta {
  const ucred* cred = nullptr;
  sockaddr_storage local{};
  socklen_t local_len = 0;
  // When the kernel received it (SO_TIMESTAMPNS: a UDP listener and its
  // flow sockets, datagram_hold.cpp), in ns; 0 when none came.
  uint64_t stamp_ns = 0;
};

// The destination address of a datagram from its IP_PKTINFO or
// IPV6_PKTINFO, in the family of the socket that received it
// (`socket_family`: an IPv4 datagram on an IPv6 socket is v4-mapped).
inline void take_pktinfo(const cmsghdr* c, int socket_family, DatagramMeta& meta) {
  if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
    in_pktinfo info;
    std::memcpy(&info, CMSG_DATA(c), sizeof(info));
    if (socket_family == AF_INET6) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&meta.local);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_addr.s6_addr[10] = sin6->sin6_addr.s6_addr[11] = 0xff;
      std::memcpy(&sin6->sin6_addr.s6_addr[12], &info.ipi_addr, 4);
      meta.local_len = sizeof(sockaddr_in6);
    } else {
      auto* sin = reinterpret_cast<sockaddr_in*>(&meta.local);
      sin->sin_family = AF_INET;
      sin->sin_addr = info.ipi_addr;
      meta.local_len = sizeof(sockaddr_in);
    }
  } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
    in6_pktinfo info;
    std::memcpy(&info, CMSG_DATA(c), sizeof(info));
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&meta.local);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = info.ipi6_addr;
    meta.local_len = sizeof(sockaddr_in6);
  }
}

// Reads up to a batch of datagrams into `buffer` (kBatchBufferSize bytes);
// calls `each(peer, len, data, size)`, or `each(peer, len, data, size,
// meta)` with what DatagramMeta says (the credentials null if none came:
// the socket has no SO_PASSCRED). Returns how many it read, 0 when none are
// queued, -1 on a socket error (errno says which).
template <typename Each>
int read_batch(int fd, char* buffer, Each each) {
  constexpr bool kMeta =
      std::is_invocable_v<Each, const sockaddr_storage&, socklen_t, const char*, size_t, const DatagramMeta&>;
  mmsghdr msgs[kBatch];
  iovec iovs[kBatch];
  sockaddr_storage peers[kBatch];
  struct alignas(cmsghdr) Control {
    char bytes[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(timespec))];
  };
  Control controls[kMeta ? kBatch : 1];
  std::memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < kBatch; ++i) {
    iovs[i] = {buffer + i * kMaxDatagram, kMaxDatagram};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &peers[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
    if constexpr (kMeta) {
      msgs[i].msg_hdr.msg_control = controls[i].bytes;
      msgs[i].msg_hdr.msg_controllen = sizeof(controls[i].bytes);
    }
  }
  int n = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n < 0) return would_block(errno) ? 0 : -1;
  for (int i = 0; i < n; ++i) {
    const char* data = static_cast<const char*>(iovs[i].iov_base);
    if constexpr (kMeta) {
      DatagramMeta meta;
      ucred cred{};
      for (cmsghdr* c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
          std::memcpy(&cred, CMSG_DATA(c), sizeof(cred));
          meta.cred = &cred;
        }
        take_pktinfo(c, peers[i].ss_family, meta);
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
            c->cmsg_len >= CMSG_LEN(sizeof(timespec))) {
          timespec ts;
          std::memcpy(&ts, CMSG_DATA(c), sizeof(ts));
          meta.stamp_ns =
              static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
        }
      }
      each(peers[i], msgs[i].msg_hdr.msg_namelen, data, msgs[i].msg_len, meta);
    } else {
      each(peers[i], msgs[i].msg_hdr.msg_namelen, data, msgs[i].msg_len);
    }
  }
  return n;
}

}  // namespace sockrelay
