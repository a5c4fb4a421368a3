// Who may open a session on a route: the allow-* lists of its config,
// checked when a connection is accepted or a datagram client is first seen.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/model.h"

namespace sockrelay {

struct PeerPolicy {
  std::vector<SourceNetwork> allow_sources;      // inet peers
  std::vector<uint32_t> allow_cids;              // vsock peers
  std::vector<uint32_t> allow_uids, allow_gids;  // unix peers (SO_PEERCRED of `fd`)

  static PeerPolicy of(const Route& route);
  // Whether `peer` may in by allow-sources: an inet peer inside one of the
  // networks, or any peer when the list is empty. The one place that
  // decides it, for connections and datagram clients alike.
  static bool source_allowed(const std::vector<SourceNetwork>& allow_sources, const sockaddr_storage& peer);
  // Empty when the peer may in, else why not. `fd` is the accepted
  // connection (-1 for a datagram client: no credentials to ask).
  std::string refusal(int fd, const sockaddr_storage& peer) const;
  // The uid/gid part alone, for ids learnt another way (a datagram's
  // SCM_CREDENTIALS, sock_diag). `gid` empty: unknown, refused if asked for.
  static std::string id_refusal(const std::vector<uint32_t>& allow_uids,
                                const std::vector<uint32_t>& allow_gids, uint32_t uid,
                                std::optional<uint32_t> gid);
};

}  // namespace sockrelay
