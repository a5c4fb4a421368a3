#include "endpoints/unix_diag.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/stat.h>

#include <cstddef>
#include <cstring>
#include <functional>
#include <string_view>

#include "common/fd.h"

namespace sockrelay {

namespace {

// The bytes of sun_path that name the socket: up to the NUL for a path,
// all of it for an abstract name (which starts with NUL).
std::string_view name_bytes(const char* path, size_t len) {
  if (len > 0 && path[0] != '\0') return std::string_view(path, strnlen(path, len));
  return std::string_view(path, len);
}

using Match = std::function<bool(const UnixSocketInfo&)>;

// Dumps every UNIX datagram socket in this network namespace and returns
// the first for which `match` is true.
Result<std::optional<UnixSocketInfo>> find_unix_dgram(const Match& match) {
  Fd nl(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return errno_error("sock_diag: socket(NETLINK_SOCK_DIAG)");
  struct {
    nlmsghdr nlh;
    unix_diag_req req;
  } request = {};
  request.nlh.nlmsg_len = sizeof(request);
  request.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.req.sdiag_family = AF_UNIX;
  request.req.udiag_states = ~0u;
  request.req.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_UID;
  if (send(nl.get(), &request, sizeof(request), 0) < 0) return errno_error("sock_diag: send dump request");

  std::optional<UnixSocketInfo> found;
  alignas(nlmsghdr) char buf[32768];
  for (;;) {
    ssize_t n = recv(nl.get(), buf, sizeof(buf), 0);
    if (n < 0) return errno_error("sock_diag: recv");
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return found;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        return Error{-err->error, "sock_diag: UNIX_DIAG dump"};
      }
      auto* msg = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
      if (msg->udiag_type != SOCK_DGRAM || found) continue;
      UnixSocketInfo info;
      info.inode = msg->udiag_ino;
      info.cookie =
          static_cast<uint64_t>(msg->udiag_cookie[0]) | (static_cast<uint64_t>(msg->udiag_cookie[1]) << 32);
      int attr_len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(*msg)));
      for (auto* a = reinterpret_cast<rtattr*>(msg + 1); RTA_OK(a, attr_len); a = RTA_NEXT(a, attr_len)) {
        if (a->rta_type == UNIX_DIAG_NAME) {
          size_t name_len = std::min<size_t>(RTA_PAYLOAD(a), sizeof(info.address.sun_path));
          info.address.sun_family = AF_UNIX;
          std::memcpy(info.address.sun_path, RTA_DATA(a), name_len);
          info.address_length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_len);
        } else if (a->rta_type == UNIX_DIAG_PEER) {
          std::memcpy(&info.peer_inode, RTA_DATA(a), sizeof(uint32_t));
        } else if (a->rta_type == UNIX_DIAG_UID && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
          uint32_t uid;
          std::memcpy(&uid, RTA_DATA(a), sizeof(uid));
          info.uid = uid;
        }
      }
      if (match(info)) found = info;
    }
  }
}

}  // namespace

uint32_t socket_inode(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? static_cast<uint32_t>(st.st_ino) : 0;
}

Result<std::optional<UnixSocketInfo>> find_unix_dgram_by_address(const sockaddr* address, socklen_t length) {
  constexpr size_t base = offsetof(sockaddr_un, sun_path);
  if (address->sa_family != AF_UNIX || length <= base) return std::optional<UnixSocketInfo>();
  std::string_view wanted =
      name_bytes(reinterpret_cast<const sockaddr_un*>(address)->sun_path, length - base);
  return find_unix_dgram([&](const UnixSocketInfo& info) {
    return info.address_length > base &&
           name_bytes(info.address.sun_path, info.address_length - base) == wanted;
  });
}

Result<std::optional<UnixSocketInfo>> find_unix_dgram_by_cookie(uint64_t cookie) {
  return find_unix_dgram([cookie](const UnixSocketInfo& info) { return info.cookie == cookie; });
}

}  // namespace sockrelay
