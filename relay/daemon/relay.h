// The running relay: endpoints opened (or taken from systemd), one route
// object per route source, the BPF data path, the control socket and the
// event loop that ties them together; reload applies a new config as a
// difference, so sessions on unchanged routes keep flowing.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf_loader/bpf_relay.h"
#include "bpf_loader/source_filter.h"
#include "common/result.h"
#include "config/model.h"
#include "control/control_server.h"
#include "control/status.h"
#include "daemon/notify.h"
#include "endpoints/activation.h"
#include "sessions/bridge_route.h"
#include "sessions/datagram_route.h"
#include "loop/event_loop.h"
#include "sessions/stream_route.h"
#include "sessions/subscriber_route.h"

namespace sockrelay {

// What this version can run; everything else is refused by name (`run`
// and `check` both ask).
Status check_runnable(const Config& config, const Route& route);

class Relay {
 public:
  // Everything up to serving: BPF loaded when a route wants the kernel
  // path, endpoints bound, routes in the maps, control socket listening,
  // capabilities dropped to what the running relay still uses.
  static Result<std::unique_ptr<Relay>> start(Config config);
  ~Relay();

  // Serves until SIGTERM/SIGINT, then tears down. SIGHUP reloads the
  // config file. Returns the loop's error.
  Status run();
  StatusSnapshot snapshot() const;

 private:
  // One listening endpoint of one route. Exactly one of the route objects
  // is set: datagram kinds get flows, stream and seqpacket kinds sessions.
  struct RouteSource {
    std::shared_ptr<const Config> config;  // owns the Endpoints the route points into
    uint32_t route_id = 0;
    std::string identity;  // equal identities survive a reload untouched
    std::unique_ptr<DatagramRoute> route;
    std::unique_ptr<StreamRoute> stream;
    std::unique_ptr<BridgeRoute> bridge;           // datagram <-> stream/seqpacket
    std::unique_ptr<SubscriberRoute> subscribers;  // datagrams to a subscribe endpoint
    std::string datapath_reason;
    // allow-sources on a udp listener, in the kernel. Declared last so it
    // is detached before the route closes the listener.
    std::unique_ptr<SourceFilter> source_filter;
  };

  Relay(std::shared_ptr<const Config> config, EventLoop loop);
  Status watch_signals();
  Status open_control(const std::string& path);
  Status load_bpf_if_needed(const Config& config);
  // The socket systemd passed under the endpoint's name (checked), else a
  // new listener.
  Result<Fd> take_or_open_listener(const Endpoint& endpoint, bool* from_systemd);
  // Opens the sources of config->routes[index] under `route_id`.
  Result<std::vector<RouteSource>> open_route(const std::shared_ptr<const Config>& config, size_t index,
                                              uint32_t route_id);
  void reload();
  void tick();
  void shutdown();
  std::string status_line() const;

  std::shared_ptr<const Config> config_;
  EventLoop loop_;
  SessionBudget budget_;
  ServiceNotifier notifier_;
  ActivatedSockets activated_;  // systemd's sockets no route has claimed (yet)
  std::unique_ptr<BpfRelay> bpf_;
  std::string bpf_unavailable_;  // why bpf_ is null
  std::vector<RouteSource> sources_;
  std::optional<ControlServer> control_;
  Fd signals_;
  std::chrono::steady_clock::time_point started_at_;
  uint64_t reloads_ = 0;
  uint64_t reloads_refused_ = 0;
  std::string capabilities_;  // effective set after the drop, for status
};

}  // namespace sockrelay
