#include "config/fd_budget.h"

#include <sys/socket.h>

#include <algorithm>

namespace sockrelay {

namespace {

// stdio, epoll, signalfd, the BPF maps, programs and links, the journal's
// socket, with room to spare (a started relay with one route holds ~25).
constexpr uint64_t kBaseOverhead = 48;
// The control socket and the clients it serves at once (ControlLimits).
constexpr uint64_t kControlOverhead = 1 + 128;
// Per route source: its listener (a subscribe endpoint is a second one)
// and its timers.
constexpr uint64_t kPerSource = 4;

bool any_of_kinds(const Config& config, const std::vector<std::string>& names, bool (*pred)(EndpointKind)) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) {
    const Endpoint* e = config.find_endpoint(n);
    return e != nullptr && pred(e->kind);
  });
}

size_t ip_targets(const Config& config, const Route& route) {
  return std::count_if(route.to.begin(), route.to.end(), [&](const std::string& n) {
    const Endpoint* e = config.find_endpoint(n);
    return e != nullptr && (e->address.family() == AF_INET || e->address.family() == AF_INET6);
  });
}

bool to_subscribers(const Config& config, const Route& route) {
  const Endpoint* first_to = route.to.empty() ? nullptr : config.find_endpoint(route.to.front());
  return first_to && first_to->role == Role::Subscribe;
}

// Sessions that are datagram flows: datagram sources toward datagram targets.
bool datagram_flows(const Config& config, const Route& route) {
  return !to_subscribers(config, route) && any_of_kinds(config, route.from, kind_is_datagram) &&
         any_of_kinds(config, route.to, kind_is_datagram);
}

bool keeps_messages(EndpointKind kind) {
  return kind_socktype(kind) == SOCK_SEQPACKET || kind_is_vsock(kind);
}

}  // namespace

uint64_t fds_per_session(const Config& config, const Route& route, std::string* what) {
  auto say = [&](const char* text, uint64_t n) {
    if (what) *what = text;
    return n;
  };
  if (to_subscribers(config, route)) return say("subscriber", route.mode == Mode::Ingress ? 2 : 1);
  if (datagram_flows(config, route)) return say("datagram flow", 1 + route.to.size());
  if (any_of_kinds(config, route.from, kind_is_datagram) || any_of_kinds(config, route.to, kind_is_datagram))
    return say("bridge", 2);
  if (any_of_kinds(config, route.from, keeps_messages) || any_of_kinds(config, route.to, keeps_messages))
    return say("stream, message copies", 2);
  if (route.datapath == Datapath::Kernel) return say("stream, kernel path", 2);
  // Two sockets and, while both directions have bytes in flight, a pipe
  // (two descriptors) each.
  return say("stream, user path", 6);
}

FdNeed fd_need(const Config& config) {
  FdNeed need;
  need.fixed = kBaseOverhead + kControlOverhead + kClosingAtMost;
  for (size_t i = 0; i < config.routes.size(); ++i) {
    const Route& route = config.routes[i];
    need.fixed += kPerSource * route.from.size();
    std::string what;
    uint64_t n = fds_per_session(config, route, &what);
    if (datagram_flows(config, route)) need.fixed += kReadyUpstreamsPerTarget * ip_targets(config, route);
    if (n > need.per_session) {
      need.per_session = n;
      need.dearest =
          "route #" + std::to_string(i + 1) + " (" + what + ", " + std::to_string(n) + " per session)";
    }
  }
  need.total = need.fixed + uint64_t{config.relay.max_sessions} * need.per_session;
  return need;
}

std::optional<std::string> fd_budget_warning(const Config& config, const FdNeed& need, uint64_t hard_limit) {
  if (need.total <= hard_limit) return std::nullopt;
  uint64_t fits =
      need.per_session == 0 || hard_limit <= need.fixed ? 0 : (hard_limit - need.fixed) / need.per_session;
  return "max-sessions = " + std::to_string(config.relay.max_sessions) + " needs up to " +
         std::to_string(need.total) + " file descriptors (" + need.dearest + ", plus " +
         std::to_string(need.fixed) + " fixed), but the limit is " + std::to_string(hard_limit) +
         ": past about " + std::to_string(fits) +
         " sessions new ones are dropped as fd-limit. Raise LimitNOFILE= in the unit (e.g. LimitNOFILE=" +
         std::to_string(need.total) + ") or lower max-sessions to " + std::to_string(fits);
}

}  // namespace sockrelay
