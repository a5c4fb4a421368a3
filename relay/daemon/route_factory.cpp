#include "daemon/route_factory.h"

#include <spdlog/spdlog.h>

#include <vector>

#include "sessions/bridge_route.h"
#include "sessions/datagram_route.h"
#include "sessions/one_way_route.h"
#include "sessions/peer_policy.h"
#include "sessions/stream_route.h"
#include "sessions/subscriber_route.h"

namespace sockrelay {

namespace {

// What every kind's builder reads.
struct SourceBuild {
  const Config& config;
  const Route& route;
  const Endpoint& from;
  RouteEngine engine;
  uint32_t route_id;
  bool kernel;
  const RouteServices& services;
};

std::vector<const Endpoint*> targets_of(const Config& config, const Route& route) {
  std::vector<const Endpoint*> targets;
  for (const auto& name : route.to) targets.push_back(config.find_endpoint(name));
  return targets;
}

std::unique_ptr<LiveRoute> build_datagram(const SourceBuild& b, Fd listener) {
  DatagramRouteSpec spec;
  spec.route_id = b.route_id;
  spec.from = &b.from;
  spec.to = targets_of(b.config, b.route);
  spec.balance = b.route.balance;
  spec.allow_sources = b.route.allow_sources;
  spec.allow_uids = b.route.allow_uids;
  spec.allow_gids = b.route.allow_gids;
  spec.kernel = b.kernel;
  spec.idle_timeout = b.config.relay.idle_timeout;
  spec.unreplied_timeout = b.config.relay.unreplied_or_default();
  return std::make_unique<DatagramRoute>(spec, std::move(listener), b.services.maps, b.services.loop,
                                         b.services.budget);
}

std::unique_ptr<LiveRoute> build_stream(const SourceBuild& b, Fd listener) {
  StreamRouteSpec spec;
  spec.route_id = b.route_id;
  spec.from = &b.from;
  spec.to = targets_of(b.config, b.route);
  spec.balance = b.route.balance;
  spec.kernel = b.kernel;
  spec.policy = PeerPolicy::of(b.route);
  spec.idle_timeout = b.config.relay.idle_timeout;
  spec.wait_when_full = b.route.when_full == WhenFull::Wait;
  return std::make_unique<StreamRoute>(spec, std::move(listener), b.services.maps, b.services.loop,
                                       b.services.budget);
}

// A bridge frames in user space: the matrix never gives it the kernel path.
std::unique_ptr<LiveRoute> build_bridge(const SourceBuild& b, Fd listener) {
  BridgeRouteSpec spec;
  spec.route_id = b.route_id;
  spec.from = &b.from;
  spec.to = b.config.find_endpoint(b.route.to[0]);
  spec.policy = PeerPolicy::of(b.route);
  spec.idle_timeout = b.config.relay.idle_timeout;
  spec.wait_when_full = b.route.when_full == WhenFull::Wait;
  return std::make_unique<BridgeRoute>(spec, std::move(listener), b.services.loop, b.services.budget);
}

// No session per client: the listener and a socket per target.
std::unique_ptr<LiveRoute> build_one_way(const SourceBuild& b, Fd listener) {
  OneWayRouteSpec spec;
  spec.route_id = b.route_id;
  spec.from = &b.from;
  spec.to = targets_of(b.config, b.route);
  spec.balance = b.route.balance;
  spec.allow_sources = b.route.allow_sources;
  spec.kernel = b.kernel;
  return std::make_unique<OneWayRoute>(spec, std::move(listener), b.services.maps, b.services.loop);
}

// Two listeners: the source, and the subscribe endpoint consumers join on.
Result<std::unique_ptr<LiveRoute>> build_subscribers(const SourceBuild& b, Fd listener) {
  SubscriberRouteSpec spec;
  spec.route_id = b.route_id;
  spec.from = &b.from;
  spec.to = b.config.find_endpoint(b.route.to[0]);
  spec.balance = b.route.balance;
  spec.mode = b.route.mode;
  spec.kernel = b.kernel;
  auto subscribe = b.services.take_listener(*spec.to, nullptr);
  if (!subscribe) return subscribe.error();
  return std::unique_ptr<LiveRoute>(std::make_unique<SubscriberRoute>(
      spec, std::move(listener), std::move(*subscribe), b.services.maps, b.services.loop, b.services.budget));
}

Result<std::unique_ptr<LiveRoute>> build_route(const SourceBuild& b, Fd listener) {
  switch (b.engine) {
    case RouteEngine::Datagram:
      return build_datagram(b, std::move(listener));
    case RouteEngine::Stream:
      return build_stream(b, std::move(listener));
    case RouteEngine::Bridge:
      return build_bridge(b, std::move(listener));
    case RouteEngine::Subscribers:
      return build_subscribers(b, std::move(listener));
    case RouteEngine::OneWay:
      return build_one_way(b, std::move(listener));
  }
  return plain_error("unknown route kind");
}

// allow-sources on a udp listener: outsiders dropped in the kernel before
// they are queued. Datagram and bridge routes check again in user space,
// for when BPF is unavailable; routes to subscribers rely on the filter.
Result<std::unique_ptr<SourceFilter>> attach_source_filter(const SourceBuild& b, int listener) {
  const std::string where = "route " + std::to_string(b.route_id);
  if (b.route.allow_sources.empty() || b.from.kind != EndpointKind::Udp)
    return std::unique_ptr<SourceFilter>();
  if (b.services.maps) {
    auto filter = SourceFilter::attach(listener, b.route.allow_sources);
    if (!filter) return filter.error().wrap(where + ": allow-sources");
    return filter;
  }
  // Without BPF: the route checks in user space (routes to subscribers
  // cannot, and their plan refused them already).
  return std::unique_ptr<SourceFilter>();
}

}  // namespace

std::string route_identity(const Config& config, const Route& route) {
  std::string id = std::string(mode_name(route.mode)) + "|" + std::string(datapath_name(route.datapath)) +
                   "|" + std::string(balance_name(route.balance)) + (route.one_way ? "|one-way" : "");
  auto add = [&](const char* side, const std::string& name) {
    const Endpoint* e = config.find_endpoint(name);
    id += std::string("|") + side + ":" + e->name + "/" + std::string(kind_name(e->kind)) + "/" +
          std::string(role_name(e->role)) + "/" + e->address.text;
  };
  for (const auto& n : route.from) add("from", n);
  for (const auto& n : route.to) add("to", n);
  return id;
}

Result<RouteSlot> open_route_source(const std::shared_ptr<const Config>& config, const Route& route,
                                    size_t from_index, uint32_t route_id, const RouteServices& services) {
  const std::string where = "route " + std::to_string(route_id);
  const RoutePlan plan = plan_route(*config, route, from_index, services.kernel_unavailable);
  const Endpoint& from = *plan.from;
  RouteSlot slot;
  slot.identity = route_identity(*config, route);
  slot.route_id = route_id;
  slot.config = config;
  slot.choice = plan.choice;
  if (slot.choice.refused) return plain_error(where + ": " + slot.choice.reason);
  bool from_systemd = false;
  auto listener = services.take_listener(from, &from_systemd);
  if (!listener) return listener.error();
  const SourceBuild build{*config, route, from, plan.engine, route_id, slot.choice.kernel, services};
  auto filter = attach_source_filter(build, listener->get());
  if (!filter) return filter.error();
  slot.source_filter = std::move(*filter);
  auto built = build_route(build, std::move(*listener));
  if (!built) return built.error();
  slot.route = std::move(*built);
  if (auto st = slot.route->start(); !st) return st.error().wrap(where);
  spdlog::info("{}: {} -> {}: {}{}", where, describe_endpoint(from),
               describe_targets(targets_of(*config, route), route.balance), slot.choice.reason,
               from_systemd ? " (socket from systemd)" : "");
  return slot;
}

}  // namespace sockrelay
