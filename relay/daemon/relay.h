// The running relay: endpoints opened (or taken from systemd), one running
// route per route source (daemon/route_factory.h builds them), the BPF data
// path, the control socket and the event loop that ties them together;
// reload applies a new config as a difference, so sessions on unchanged
// routes keep flowing. The relay loops over its routes and never asks
// which kind it holds.
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
#include "daemon/notify.h"
#include "daemon/route_factory.h"
#include "endpoints/activation.h"
#include "loop/event_loop.h"
#include "sessions/session_budget.h"

namespace sockrelay {

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
  Relay(std::shared_ptr<const Config> config, EventLoop loop);
  Status watch_signals();
  Status open_control(const std::string& path);
  void load_bpf_if_needed(const Config& config);
  // The socket systemd passed under the endpoint's name (checked), else a
  // new listener.
  Result<Fd> take_or_open_listener(const Endpoint& endpoint, bool* from_systemd);
  // Opens the sources of config->routes[index] under `route_id`.
  Result<std::vector<RouteSlot>> open_route(const std::shared_ptr<const Config>& config, size_t index,
                                            uint32_t route_id);
  // Reload, step by step.
  void reload();
  Result<std::shared_ptr<const Config>> read_reloaded_config();
  Status check_plans(const Config& config) const;
  size_t stop_routes_not_in(const Config& next);
  struct Started {
    size_t routes = 0;
    size_t failed = 0;
  };
  Started start_new_routes(const std::shared_ptr<const Config>& next);
  void apply_relay_settings(const std::shared_ptr<const Config>& next);

  void tick();
  void shutdown();
  std::string status_line() const;
  RouteReport report(const RouteSlot& slot) const;

  std::shared_ptr<const Config> config_;
  EventLoop loop_;
  SessionBudget budget_;
  ServiceNotifier notifier_;
  ActivatedSockets activated_;  // systemd's sockets no route has claimed (yet)
  std::unique_ptr<BpfRelay> bpf_;
  std::string bpf_unavailable_;   // why bpf_ is null
  std::vector<RouteSlot> slots_;  // by route id
  std::optional<ControlServer> control_;
  Fd signals_;
  std::chrono::steady_clock::time_point started_at_;
  uint64_t reloads_ = 0;
  uint64_t reloads_refused_ = 0;
  std::string capabilities_;  // effective set after the drop, for status
};

}  // namespace sockrelay
