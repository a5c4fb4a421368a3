#include "sessions/peer_policy.h"

#include <sys/socket.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sockrelay {

namespace {

bool listed(const std::vector<uint32_t>& ids, uint32_t id) {
  return ids.empty() || std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

PeerPolicy PeerPolicy::of(const Route& route) {
  return PeerPolicy{route.allow_sources, route.allow_cids, route.allow_uids, route.allow_gids};
}

bool PeerPolicy::source_allowed(const std::vector<SourceNetwork>& allow_sources,
                                const sockaddr_storage& peer) {
  if (allow_sources.empty() || (peer.ss_family != AF_INET && peer.ss_family != AF_INET6)) return true;
  const auto* sa = reinterpret_cast<const sockaddr*>(&peer);
  return std::any_of(allow_sources.begin(), allow_sources.end(),
                     [&](const SourceNetwork& net) { return net.contains(sa); });
}

std::string PeerPolicy::refusal(int fd, const sockaddr_storage& peer) const {
  if (!source_allowed(allow_sources, peer)) return "not in allow-sources";
  if (peer.ss_family == AF_VSOCK) {
    uint32_t cid = reinterpret_cast<const sockaddr_vm*>(&peer)->svm_cid;
    if (!listed(allow_cids, cid)) return "CID " + std::to_string(cid) + " is not in allow-cids";
  }
  if (fd >= 0 && peer.ss_family == AF_UNIX && (!allow_uids.empty() || !allow_gids.empty())) {
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
      return std::string("SO_PEERCRED: ") + std::strerror(errno);
    return id_refusal(allow_uids, allow_gids, cred.uid, cred.gid);
  }
  return "";
}

std::string PeerPolicy::id_refusal(const std::vector<uint32_t>& allow_uids,
                                   const std::vector<uint32_t>& allow_gids, uint32_t uid,
                                   std::optional<uint32_t> gid) {
  if (!listed(allow_uids, uid)) return "uid " + std::to_string(uid) + " is not in allow-uids";
  if (!allow_gids.empty() && !gid) return "gid unknown, allow-gids cannot be checked";
  if (gid && !listed(allow_gids, *gid)) return "gid " + std::to_string(*gid) + " is not in allow-gids";
  return "";
}

}  // namespace sockrelay
