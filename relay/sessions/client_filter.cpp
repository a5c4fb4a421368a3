#include "sessions/client_filter.h"

#include <linux/filter.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <vector>

namespace sockrelay {

// The UDP header is at offset 0, the network header at SKF_NET_OFF. A
// v4-mapped peer on an IPv6 socket arrives in IPv4 packets.
Status admit_only_client(int fd, const sockaddr_storage& peer) {
  std::vector<sock_filter> code;
  auto load = [&](uint16_t size, uint32_t offset) {
    code.push_back(BPF_STMT(BPF_LD | size | BPF_ABS, offset));
  };
  // Jumps forward to the final "drop" when the value differs; patched below.
  std::vector<size_t> to_drop;
  auto expect = [&](uint32_t value) {
    to_drop.push_back(code.size());
    code.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, value, 0, 0));
  };
  auto word = [](const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | p[2] << 8 | p[3]; };
  if (peer.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(peer);
    load(BPF_H, 0);
    expect(ntohs(in.sin_port));
    load(BPF_W, static_cast<uint32_t>(SKF_NET_OFF) + 12);
    expect(ntohl(in.sin_addr.s_addr));
  } else if (peer.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(peer);
    const uint8_t* a = in6.sin6_addr.s6_addr;
    load(BPF_H, 0);
    expect(ntohs(in6.sin6_port));
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      load(BPF_W, static_cast<uint32_t>(SKF_NET_OFF) + 12);
      expect(word(a + 12));
    } else {
      for (uint32_t i = 0; i < 4; ++i) {
        load(BPF_W, static_cast<uint32_t>(SKF_NET_OFF) + 8 + 4 * i);
        expect(word(a + 4 * i));
      }
    }
  } else {
    return plain_error("no client filter for this address family");
  }
  code.push_back(BPF_STMT(BPF_RET | BPF_K, 0xffffffffu));  // admit
  size_t drop = code.size();
  code.push_back(BPF_STMT(BPF_RET | BPF_K, 0));
  for (size_t at : to_drop) code[at].jf = static_cast<uint8_t>(drop - at - 1);
  sock_fprog prog{static_cast<unsigned short>(code.size()), code.data()};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0)
    return errno_error("UDP flow socket: SO_ATTACH_FILTER");
  return {};
}

}  // namespace sockrelay
