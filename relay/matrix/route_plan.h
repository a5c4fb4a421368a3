// The one decision about a route: which engine runs it and on which data
// path, taken from the matrix (matrix/matrix.h) and whether the kernel path
// can be had. `check` judges a config with it, `run` and a reload open each
// route source by it, `status` shows its reason, and `sockrelay matrix`
// prints the cells it reads: they cannot disagree.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "config/model.h"
#include "matrix/datapath_choice.h"
#include "matrix/matrix.h"

namespace sockrelay {

// What runs a route source (relay/sessions/).
enum class RouteEngine {
  Datagram,     // datagram kinds to datagram kinds: a flow per client
  Stream,       // stream/seqpacket to stream/seqpacket: a session per connection
  Bridge,       // datagram <-> stream/seqpacket: a session per client or connection, in user space
  Subscribers,  // datagrams to the consumers of a subscribe endpoint
  OneWay,       // one-way datagrams: the listener is the one flow, no session per client
};
std::string_view engine_name(RouteEngine engine);  // "datagram", "stream", "bridge", "subscribers", "one-way"

// One source and one target of a route.
struct PairingPlan {
  const Endpoint* from = nullptr;
  const Endpoint* to = nullptr;
  const MatrixCell* cell = nullptr;  // the pairing's cell (for subscribers: toward the subscribe endpoint)
  DatapathChoice choice;             // what this pairing takes, the route's one data path applied
  std::string kernel_unavailable;    // what the KernelCheck said of the cell (empty: usable, or not asked)

  // "a (udp) -> b (tcp), egress".
  std::string label() const;
};

struct RoutePlan {
  const Endpoint* from = nullptr;
  RouteEngine engine = RouteEngine::Datagram;
  // The route source's data path: the kernel only when every pairing takes
  // it; refused when one pairing is refused. Its reason names why.
  DatapathChoice choice;
  std::vector<PairingPlan> pairings;  // one per target, in `to` order
};

// Why the kernel path cannot be had for a cell on this host; empty if it
// can. `check` probes each cell; the daemon answers alike for every cell.
using KernelCheck = std::function<std::string(const MatrixCell&)>;

// Plans config.routes' source route.from[from_index]. `config` must have
// passed parse_config without errors (config/route_rules.h: ingress only
// toward subscribers, one target for a bridge, ...).
RoutePlan plan_route(const Config& config, const Route& route, size_t from_index,
                     const KernelCheck& kernel_check);
// The same, with one answer for every cell (empty when BPF loaded).
RoutePlan plan_route(const Config& config, const Route& route, size_t from_index,
                     const std::string& kernel_unavailable);

}  // namespace sockrelay
