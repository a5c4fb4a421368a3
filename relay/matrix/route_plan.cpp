#include "matrix/route_plan.h"

#include <algorithm>

namespace sockrelay {

namespace {

RouteEngine engine_for(const Endpoint& from, const Endpoint& first_to) {
  if (first_to.role == Role::Subscribe) return RouteEngine::Subscribers;
  if (kind_is_datagram(from.kind) != kind_is_datagram(first_to.kind)) return RouteEngine::Bridge;
  return kind_is_datagram(from.kind) ? RouteEngine::Datagram : RouteEngine::Stream;
}

PairingPlan pairing(const Route& route, const Endpoint& from, const Endpoint& to) {
  PairingPlan p;
  p.from = &from;
  p.to = &to;
  p.cell = &matrix_cell(from.kind, to.kind, route.mode);
  return p;
}

// A route to subscribers: one pairing, toward the subscribe endpoint.
void plan_subscribers(const Route& route, RoutePlan& plan, const KernelCheck& kernel_check) {
  PairingPlan& p = plan.pairings.front();
  // The allow-sources socket filter is BPF too, whatever the data path.
  const bool needs_filter = !route.allow_sources.empty() && plan.from->kind == EndpointKind::Udp;
  if (route.datapath != Datapath::Userspace || needs_filter) p.kernel_unavailable = kernel_check(*p.cell);
  const std::string& unavailable = p.kernel_unavailable;
  p.choice = choose_subscriber_datapath(route.datapath, route.balance,
                                        route.mode == Mode::Ingress ? nullptr : p.cell,
                                        route.datapath == Datapath::Userspace ? std::string() : unavailable);
  if (!p.choice.refused && needs_filter && !unavailable.empty())
    p.choice =
        DatapathChoice{false, true, false,
                       "allow-sources on a route to subscribers needs the BPF socket filter, and BPF is "
                       "unavailable: " +
                           unavailable};
  plan.choice = p.choice;
}

// A route to connect endpoints: a pairing per target, one data path for all.
void plan_targets(const Route& route, RoutePlan& plan, const KernelCheck& kernel_check) {
  for (PairingPlan& p : plan.pairings) {
    if (route.datapath != Datapath::Userspace) p.kernel_unavailable = kernel_check(*p.cell);
    p.choice = choose_datapath(route.datapath, *p.cell, p.kernel_unavailable);
  }
  auto first = [&](auto predicate) {
    return std::find_if(plan.pairings.begin(), plan.pairings.end(),
                        [&](const PairingPlan& p) { return predicate(p.choice); });
  };
  auto deciding = first([](const DatapathChoice& c) { return c.refused; });
  if (deciding == plan.pairings.end()) deciding = first([](const DatapathChoice& c) { return !c.kernel; });
  if (deciding == plan.pairings.end()) deciding = plan.pairings.begin();
  plan.choice = deciding->choice;
  if (plan.choice.kernel || plan.choice.refused) return;
  // One pairing in user space takes the whole source there (the verdict
  // program's flow entry carries every target, or none).
  for (PairingPlan& p : plan.pairings) {
    if (!p.choice.kernel) continue;
    p.choice = DatapathChoice{false, false, true,
                              "user space because " + deciding->label() +
                                  " takes user space, and a route source takes one data path"};
  }
}

// A one-way udp listener is one flow for every client, and the verdict
// program sees the listener, not the client's address: it cannot hash
// clients apart (a unix-dgram sender it sees, by cookie).
void plan_one_way_hash(const Route& route, RoutePlan& plan) {
  if (plan.engine != RouteEngine::OneWay || route.balance != Balance::Hash ||
      plan.from->kind != EndpointKind::Udp || !plan.choice.kernel)
    return;
  const std::string why =
      "one-way balance = \"hash\" on a udp source: the verdict program sees the listener, not the client's "
      "address, so user space hashes each datagram's source address";
  if (route.datapath == Datapath::Kernel)
    plan.choice = DatapathChoice{
        false, true, false, why + "; use datapath = \"auto\" or \"userspace\", or balance = \"round-robin\""};
  else
    plan.choice = DatapathChoice{false, false, true, "user space because " + why};
  for (PairingPlan& p : plan.pairings) p.choice = plan.choice;
}

}  // namespace

std::string_view engine_name(RouteEngine engine) {
  switch (engine) {
    case RouteEngine::Datagram:
      return "datagram";
    case RouteEngine::Stream:
      return "stream";
    case RouteEngine::Bridge:
      return "bridge";
    case RouteEngine::Subscribers:
      return "subscribers";
    case RouteEngine::OneWay:
      return "one-way";
  }
  return "unknown";
}

std::string PairingPlan::label() const {
  return from->name + " (" + std::string(kind_name(from->kind)) + ") -> " + to->name + " (" +
         std::string(kind_name(to->kind)) + "), " + std::string(mode_name(cell->mode));
}

RoutePlan plan_route(const Config& config, const Route& route, size_t from_index,
                     const KernelCheck& kernel_check) {
  RoutePlan plan;
  plan.from = config.find_endpoint(route.from.at(from_index));
  const Endpoint& first_to = *config.find_endpoint(route.to.front());
  plan.engine = route.one_way ? RouteEngine::OneWay : engine_for(*plan.from, first_to);
  for (const std::string& name : route.to)
    plan.pairings.push_back(pairing(route, *plan.from, *config.find_endpoint(name)));
  if (plan.engine == RouteEngine::Subscribers)
    plan_subscribers(route, plan, kernel_check);
  else
    plan_targets(route, plan, kernel_check);
  plan_one_way_hash(route, plan);
  return plan;
}

RoutePlan plan_route(const Config& config, const Route& route, size_t from_index,
                     const std::string& kernel_unavailable) {
  return plan_route(config, route, from_index, [&](const MatrixCell&) { return kernel_unavailable; });
}

}  // namespace sockrelay
