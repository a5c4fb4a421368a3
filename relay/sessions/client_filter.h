// A UDP flow socket's filter: a classic socket filter that admits only
// datagrams from its client (source address and port) and drops the rest.
// It runs when a datagram is queued, before the verdict program sees it
// (DatagramRoute::connect_reply_socket()).
#pragma once

#include <sys/socket.h>

#include "common/result.h"

namespace sockrelay {

Status admit_only_client(int fd, const sockaddr_storage& peer);

}  // namespace sockrelay
