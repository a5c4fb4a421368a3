// Parsing endpoint addresses as written in the config:
//   inet:  "127.0.0.1:5353", "[::1]:5353", "0.0.0.0:53"
//   unix:  "/run/x.sock" or "@abstract-name"
//   vsock: "CID:PORT" with CID a number, "any", "local" (1) or "host" (2)
#pragma once

#include <string_view>

#include "common/result.h"
#include "config/model.h"

namespace sockrelay {

// `for_listen` allows the wildcard forms (port 0 is never allowed; CID "any"
// only when listening).
Result<SocketAddress> parse_address(EndpointKind kind, std::string_view text, bool for_listen);

// Text for logs: "127.0.0.1:5353", "[::1]:53", "/run/x.sock", "@name", "3:1024".
std::string format_address(const sockaddr* sa, socklen_t len);

}  // namespace sockrelay
