// The running relay: endpoints opened (or taken from systemd), one route
// object per route source, the BPF data path, the control socket and the
// event loop that ties them together.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf_loader/bpf_relay.h"
#include "common/result.h"
#include "config/model.h"
#include "control/control_server.h"
#include "control/status.h"
#include "sessions/datagram_route.h"
#include "sessions/event_loop.h"
#include "sessions/stream_route.h"

namespace sockrelay {

class Relay {
 public:
  // Everything up to serving: BPF loaded when a route wants the kernel
  // path, endpoints bound, routes in the maps, control socket listening.
  static Result<std::unique_ptr<Relay>> start(Config config);
  ~Relay();

  // Serves until SIGTERM/SIGINT, then tears down. Returns the loop's error.
  Status run();
  StatusSnapshot snapshot() const;

 private:
  // One of the two is set: datagram kinds get flows, stream and
  // seqpacket kinds get sessions.
  struct RouteSource {
    std::unique_ptr<DatagramRoute> route;
    std::unique_ptr<StreamRoute> stream;
    std::string datapath_reason;
  };

  Relay(Config config, EventLoop loop);
  Status open_routes();
  void tick();
  void shutdown();

  Config config_;
  EventLoop loop_;
  SessionBudget budget_;
  std::unique_ptr<BpfRelay> bpf_;
  std::string bpf_unavailable_;  // why bpf_ is null
  std::vector<RouteSource> sources_;
  std::optional<ControlServer> control_;
  Fd signals_;
  std::chrono::steady_clock::time_point started_at_;
};

}  // namespace sockrelay
