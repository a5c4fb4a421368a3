#include "config/route_rules.h"

#include <algorithm>

#include "common/quote.h"

namespace sockrelay {

namespace {

// One route and the errors found in it.
class RouteRules {
 public:
  RouteRules(const Config& config, const Route& route, size_t number, std::vector<Diagnostic>& out)
      : config_(config),
        route_(route),
        where_("route #" + std::to_string(number)),
        first_to_(*config.find_endpoint(route.to.front())),
        out_(out) {}

  void check() {
    check_target_count();
    if (first_to_.role == Role::Subscribe)
      check_subscribers();
    else
      check_connect_targets();
    check_allow_sources();
    check_allow_cids();
    check_allow_ids();
    check_one_way();
    check_when_full();
    check_target_buffer();
  }

 private:
  void refuse(SourcePos pos, const std::string& message) {
    out_.push_back(Diagnostic{config_.path, pos, Severity::Error, where_ + ": " + message});
  }
  const Endpoint& endpoint(const std::string& name) const { return *config_.find_endpoint(name); }

  // The verdict program's flow entry has a slot per target.
  void check_target_count() {
    if (route_.to.size() > kMaxTargets)
      refuse(route_.keys.to, "to lists " + std::to_string(route_.to.size()) + " targets; at most " +
                                 std::to_string(kMaxTargets) + " `to` targets per route");
  }

  void check_connect_targets() {
    if (route_.mode == Mode::Ingress)
      refuse(
          route_.keys.mode,
          "mode = \"ingress\" (BPF_F_INGRESS) delivers into the target socket's own receive queue, which "
          "only a local consumer can read: send to a subscribe endpoint (its subscribers pass their socket "
          "over SCM_RIGHTS), or use mode = \"egress\"");
    for (const auto& name : route_.from) {
      const Endpoint& from = endpoint(name);
      if (route_.balance == Balance::Broadcast && !kind_is_datagram(from.kind)) {
        refuse(route_.keys.balance, "balance = \"broadcast\" copies datagrams; " + describe_endpoint(from) +
                                        " is a connection source, and a connection goes to one target: use "
                                        "\"round-robin\" or \"hash\"");
        break;
      }
      // A datagram <-> stream/seqpacket bridge frames per session in user
      // space (sessions/bridge_route.h): one target, one framing. Every
      // target counts: the engine is chosen from the first, so a mixed list
      // would hand a stream target to a datagram route or the reverse.
      if (route_.to.size() != 1 && refuse_mixed_targets(from)) break;
    }
  }

  // True (and refused) when a target of `from` is of the other family
  // (datagram vs stream/seqpacket).
  bool refuse_mixed_targets(const Endpoint& from) {
    for (const auto& to_name : route_.to) {
      const Endpoint& to = endpoint(to_name);
      if (kind_is_datagram(from.kind) == kind_is_datagram(to.kind)) continue;
      refuse(route_.keys.to,
             "endpoint " + describe_endpoint(from) + " -> " + describe_endpoint(to) +
                 ": a route between a datagram kind and a stream/seqpacket kind takes exactly "
                 "one `to` target");
      return true;
    }
    return false;
  }

  // A route to a subscribe endpoint (sessions/subscriber_route.h): one
  // listener for the subscribers, fed by one datagram source.
  void check_subscribers() {
    if (route_.from.size() != 1)
      refuse(route_.keys.from,
             "a route to subscribers reads one source; give one endpoint in from (or one route per source, "
             "each with a subscribe endpoint of its own)");
    size_t feeding = 0;
    for (const auto& other : config_.routes)
      feeding += std::count(other.to.begin(), other.to.end(), first_to_.name);
    if (feeding != 1)
      refuse(route_.keys.to, "subscribe endpoint " + quoted(first_to_.name) + " is the target of " +
                                 std::to_string(feeding) +
                                 " routes; give each route a subscribe endpoint of its own");
    for (const auto& name : route_.from) {
      if (!kind_is_datagram(endpoint(name).kind))
        refuse(route_.keys.from, "subscribers receive datagrams; endpoint " +
                                     describe_endpoint(endpoint(name)) +
                                     " is not a datagram source (use udp or unix-dgram)");
    }
    if (route_.balance == Balance::Hash || route_.balance == Balance::Single)
      refuse(route_.keys.balance,
             "subscribers join and leave at any time, so hashing would move every client: use balance = "
             "\"broadcast\" (every subscriber gets every datagram) or \"round-robin\"");
    else if (route_.mode == Mode::Ingress && route_.balance != Balance::RoundRobin)
      refuse(
          route_.keys.mode,
          "mode = \"ingress\" redirects each datagram into one subscriber's own socket, and one skb goes to "
          "one socket only: use balance = \"round-robin\", or mode = \"egress\" for broadcast");
  }

  // The verdict program drops a datagram the target cannot take; a stream
  // byte it must not drop.
  void check_target_buffer() {
    if (!route_.target_buffer_pos) return;
    for (const auto& name : route_.from) {
      if (kind_is_datagram(endpoint(name).kind) && kind_is_datagram(first_to_.kind)) continue;
      refuse(*route_.target_buffer_pos,
             "target-buffer bounds what the kernel holds toward a datagram target (the verdict program drops "
             "beyond it); " +
                 describe_endpoint(endpoint(name)) + " -> " + describe_endpoint(first_to_) +
                 " carries connections, whose bytes are never dropped: remove target-buffer from this route");
      return;
    }
  }

  void check_allow_sources() {
    if (route_.allow_sources.empty()) return;
    for (const auto& name : route_.from) {
      if (endpoint(name).kind == EndpointKind::Udp) continue;
      refuse(route_.keys.allow_sources,
             "allow-sources is enforced for udp sources only in this version; endpoint " +
                 describe_endpoint(endpoint(name)) + " is not one");
      return;
    }
  }

  void check_allow_cids() {
    if (route_.allow_cids.empty()) return;
    for (const auto& name : route_.from) {
      if (kind_is_vsock(endpoint(name).kind)) continue;
      refuse(route_.keys.allow_cids,
             "allow-cids applies to vsock sources; endpoint " + describe_endpoint(endpoint(name)) +
                 " is not one (use allow-sources for udp, allow-uids/allow-gids for unix)");
      return;
    }
  }

  // unix-stream and unix-seqpacket peers by SO_PEERCRED; unix-dgram senders
  // by each datagram's credentials, in datagram routes only
  // (sessions/datagram_route.h): bridges and subscribers do not check them.
  void check_allow_ids() {
    if (route_.allow_uids.empty() && route_.allow_gids.empty()) return;
    const SourcePos at = route_.allow_uids.empty() ? route_.keys.allow_gids : route_.keys.allow_uids;
    for (const auto& name : route_.from) {
      const Endpoint& e = endpoint(name);
      const bool unix_connection =
          e.kind == EndpointKind::UnixStream || e.kind == EndpointKind::UnixSeqpacket;
      const bool unix_dgram_route = e.kind == EndpointKind::UnixDgram && first_to_.role != Role::Subscribe &&
                                    kind_is_datagram(first_to_.kind);
      if (!unix_connection && !unix_dgram_route) {
        refuse(at,
               "allow-uids and allow-gids are enforced for unix-stream and unix-seqpacket sources, and for "
               "unix-dgram sources of routes to datagram endpoints, only in this version; endpoint " +
                   describe_endpoint(e) + " is not one");
        return;
      }
      // The verdict program re-sends a new sender's datagram from kernel
      // context: it arrives without the sender's credentials, and
      // sock_diag knows a socket's owner uid but no gid. ("auto" takes user
      // space for a unix-dgram source: matrix rule 9.)
      if (!route_.allow_gids.empty() && unix_dgram_route && route_.datapath == Datapath::Kernel) {
        refuse(
            route_.keys.allow_gids,
            "allow-gids on unix-dgram endpoint " + describe_endpoint(e) +
                " needs datapath = \"auto\" or \"userspace\": the kernel path cannot learn a sender's gid "
                "(its "
                "datagrams reach user space without their credentials, and sock_diag gives a socket's owner "
                "uid only)");
        return;
      }
    }
  }

  // one-way = true (sessions/one_way_route.h): the listener itself is the
  // one flow of every client, steered straight to a datagram target.
  void check_one_way() {
    if (!route_.one_way) return;
    const SourcePos at = route_.keys.one_way;
    for (const auto& name : route_.from)
      if (!kind_is_datagram(endpoint(name).kind))
        return refuse(
            at, "one-way carries datagrams that get no reply; endpoint " + describe_endpoint(endpoint(name)) +
                    " is a connection source, and a connection always has a way back: remove one-way");
    if (first_to_.role == Role::Subscribe)
      return refuse(at,
                    "one-way does not apply to a route to subscribers: subscribers never reply, and each one "
                    "already has its own socket; remove one-way");
    for (const auto& name : route_.to)
      if (!kind_is_datagram(endpoint(name).kind))
        return refuse(at, "one-way sends each datagram on as it is; endpoint " +
                              describe_endpoint(endpoint(name)) +
                              " is a stream/seqpacket target, which needs a framed session per client (a "
                              "bridge): remove one-way");
    if (route_.balance == Balance::Broadcast)
      return refuse(route_.keys.balance,
                    "balance = \"broadcast\" on a one-way route: the verdict program redirects an skb to one "
                    "socket only, and a one-way route has no flow user space could copy from; use "
                    "\"round-robin\" or \"hash\", or remove one-way");
    if (!route_.allow_uids.empty() || !route_.allow_gids.empty())
      refuse(route_.allow_uids.empty() ? route_.keys.allow_gids : route_.keys.allow_uids,
             "allow-uids/allow-gids check a sender when its flow is set up, and a one-way route sets up no "
             "flow per sender: remove them, or remove one-way");
  }

  // Only a connection can wait in a listen backlog: a datagram client's
  // next datagram is simply dropped (counted) at max-sessions.
  void check_when_full() {
    if (route_.when_full != WhenFull::Wait) return;
    for (const auto& name : route_.from) {
      const Endpoint& e = endpoint(name);
      if (!kind_is_datagram(e.kind)) continue;
      refuse(
          route_.keys.when_full,
          "when-full = \"wait\" applies to connection sources (tcp, unix-stream, unix-seqpacket, vsock-*); "
          "endpoint " +
              describe_endpoint(e) +
              " is a datagram source, whose new clients' datagrams are dropped (counted as max-sessions) "
              "when the relay is full: remove when-full");
      return;
    }
  }

  const Config& config_;
  const Route& route_;
  const std::string where_;
  const Endpoint& first_to_;
  std::vector<Diagnostic>& out_;
};

}  // namespace

std::vector<Diagnostic> check_route_rules(const Config& config) {
  std::vector<Diagnostic> out;
  for (size_t i = 0; i < config.routes.size(); ++i) RouteRules(config, config.routes[i], i + 1, out).check();
  return out;
}

}  // namespace sockrelay
