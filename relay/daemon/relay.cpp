#include "daemon/relay.h"

#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>

#include "config/config.h"
#include "config/fd_budget.h"
#include "control/metrics.h"
#include "daemon/file_limit.h"
#include "daemon/privileges.h"
#include "endpoints/activation.h"
#include "endpoints/endpoint.h"
#include "matrix/route_plan.h"
#include "relay_shared.h"

#ifndef SOCKRELAY_VERSION
#define SOCKRELAY_VERSION "dev"
#endif

namespace sockrelay {

static_assert(EventLoop::kMaxClosing == kClosingAtMost,
              "the fd budget counts the sockets close_later() holds");

namespace {

bool binds_privileged_port(const Config& config) {
  for (const auto& e : config.endpoints) {
    if (e.role != Role::Listen) continue;
    int family = e.address.family();
    uint16_t port = 0;
    if (family == AF_INET) port = ntohs(reinterpret_cast<const sockaddr_in*>(&e.address.storage)->sin_port);
    if (family == AF_INET6)
      port = ntohs(reinterpret_cast<const sockaddr_in6*>(&e.address.storage)->sin6_port);
    if (port != 0 && port < 1024) return true;
  }
  return false;
}

// The listener's allow-sources filter is the daemon's, not the route's:
// what it dropped joins the route's kernel and policy counts.
void add_filter_drops(RouteReport& report, uint64_t drops) {
  report.kernel.drop_policy += drops;
  for (auto& drop : report.drops)
    if (drop.name == kPolicyDrop) drop.value += drops;
}

// Descriptors the process holds now (status, metrics): the entries of
// /proc/self/fd, less the one the listing itself opened.
uint64_t open_descriptors() {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return 0;
  uint64_t count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count > 0 ? count - 1 : 0;
}

bool setup_level_ok(const std::string& level) {
  return level == "off" || spdlog::level::from_str(level) != spdlog::level::off;
}

// BPF is loaded for the kernel data path, and for allow-sources (a socket
// filter) even on the user-space path.
bool wants_kernel(const Config& config) {
  for (const auto& r : config.routes)
    if (r.datapath != Datapath::Userspace || !r.allow_sources.empty()) return true;
  return false;
}

}  // namespace

Relay::Relay(std::shared_ptr<const Config> config, EventLoop loop)
    : config_(std::move(config)),
      loop_(std::move(loop)),
      budget_(config_->relay.max_sessions),
      started_at_(std::chrono::steady_clock::now()) {}

Relay::~Relay() { shutdown(); }

Result<std::unique_ptr<Relay>> Relay::start(Config config) {
  auto loop = EventLoop::create();
  if (!loop) return loop.error();
  auto shared = std::make_shared<const Config>(std::move(config));
  std::unique_ptr<Relay> relay(new Relay(shared, std::move(*loop)));
  if (auto st = relay->watch_signals(); !st) return st.error();
  relay->activated_ = ActivatedSockets::take_from_systemd();
  relay->load_bpf_if_needed(*shared);
  if (auto st = relay->check_plans(*shared); !st) return st.error();
  for (size_t i = 0; i < shared->routes.size(); ++i) {
    auto opened = relay->open_route(shared, i, static_cast<uint32_t>(i));
    if (!opened) return opened.error();
    for (auto& slot : *opened) relay->slots_.push_back(std::move(slot));
  }
  if (auto st = relay->open_control(shared->relay.control); !st) return st.error();
  for (const auto& name : relay->activated_.unclaimed())
    spdlog::warn("systemd passed a socket named \"{}\" that no endpoint uses; kept for a reload", name);

  // Set-up is done: keep only what the running relay uses (privileges.h).
  const bool bounds_backlog = relay->bpf_ && relay->bpf_->target_bound_unavailable().empty();
  if (auto st =
          drop_capabilities_except(runtime_capabilities(binds_privileged_port(*shared), bounds_backlog));
      !st)
    spdlog::warn("could not drop capabilities: {}", st.error().describe());
  relay->capabilities_ = effective_capabilities();
  spdlog::info("capabilities from now on: {}", relay->capabilities_);
  return relay;
}

Status Relay::watch_signals() {
  // A peer that vanished makes a write fail with EPIPE, which the session
  // handles; splice() has no MSG_NOSIGNAL, so without this the kernel's
  // SIGPIPE would end the whole relay (measured: a server resetting its
  // connection while the relay spliced toward it).
  signal(SIGPIPE, SIG_IGN);
  // Signals through the loop, so teardown and reload run in one place.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signals_ = Fd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signals_) return errno_error("signalfd");
  return loop_.add(signals_.get(), EPOLLIN, [this](uint32_t) {
    signalfd_siginfo info;
    while (read(signals_.get(), &info, sizeof(info)) == sizeof(info)) {
      if (info.ssi_signo == SIGHUP) {
        reload();
        continue;
      }
      spdlog::info("{}: stopping", strsignal(static_cast<int>(info.ssi_signo)));
      loop_.stop();
    }
  });
}

// The control socket: systemd's if a socket unit passed one named
// "control" that no endpoint took (units/sockrelay-control.socket: its
// SocketMode= and SocketGroup= decide who may ask), else the relay's own.
Status Relay::open_control(const std::string& path) {
  Fd passed = activated_.take(kControlSocketName);
  auto control = passed ? ControlServer::adopt(std::move(passed), path) : ControlServer::open(path);
  if (!control) return control.error();
  control_.reset();  // the old socket (a reload may move it) goes first
  control_.emplace(std::move(*control));
  if (control_->from_systemd()) spdlog::info("control socket {} (socket from systemd)", path);
  Status attached = control_->attach(loop_, [this](ControlRequest request) {
    switch (request) {
      case ControlRequest::StatusJson:
        return format_status_json(snapshot());
      case ControlRequest::StatusPrometheus:
        return format_status_prometheus(snapshot());
      default:
        return format_status_text(snapshot());
    }
  });
  // A socket that listens but is not on the loop would take clients and
  // never answer them: none is better.
  if (!attached) control_.reset();
  return attached;
}

// A failed load is no failure of the relay: it is logged once, and each
// route's data path choice then says what it means for that route (user
// space instead, or refused with this reason).
void Relay::load_bpf_if_needed(const Config& config) {
  if (bpf_ || !wants_kernel(config)) return;
  const MapSizes sizes = map_sizes_for(config);
  auto bpf = BpfRelay::load(sizes);
  if (bpf) {
    spdlog::info("BPF maps sized for max-sessions {}: {}", config.relay.max_sessions,
                 describe_map_sizes(sizes));
    bpf_ = std::move(*bpf);
    bpf_unavailable_.clear();
    if (!bpf_->target_bound_unavailable().empty())
      spdlog::warn("target-buffer NOT enforced (the kernel backlog toward a target is unbounded): {}",
                   bpf_->target_bound_unavailable());
  } else {
    spdlog::warn("BPF data path unavailable: {}", bpf.error().describe());
    bpf_unavailable_ = bpf.error().describe();
  }
}

Result<Fd> Relay::take_or_open_listener(const Endpoint& endpoint, bool* from_systemd) {
  Fd fd = activated_.take(endpoint.name);
  if (from_systemd) *from_systemd = fd.valid();
  if (!fd) return open_listener(endpoint);
  if (auto st = check_socket_kind(fd.get(), endpoint); !st) return st.error();
  return fd;
}

Result<std::vector<RouteSlot>> Relay::open_route(const std::shared_ptr<const Config>& config, size_t index,
                                                 uint32_t route_id) {
  const Route& route = config->routes[index];
  if (bpf_) bpf_->set_target_buffer(route_id, route.target_buffer);
  const std::string unavailable = bpf_ ? std::string() : bpf_unavailable_;
  const RouteServices services{bpf_.get(), unavailable, loop_, budget_,
                               [this](const Endpoint& endpoint, bool* from_systemd) {
                                 return take_or_open_listener(endpoint, from_systemd);
                               }};
  std::vector<RouteSlot> slots;
  for (size_t from_index = 0; from_index < route.from.size(); ++from_index) {
    auto slot = open_route_source(config, route, from_index, route_id, services);
    if (!slot) return slot.error();
    slots.push_back(std::move(*slot));
  }
  return slots;
}

// SIGHUP: check the new config first and refuse it whole if it would not
// run; else apply the difference. Routes whose identity is unchanged keep
// their objects, sockets, map entries and sessions; removed ones stop
// (before new ones open, so a route may move its listener); new ones
// start. Sockets systemd passed stay with the relay for later reloads.
void Relay::reload() {
  notifier_.reloading();
  spdlog::info("SIGHUP: reloading {}", config_->path);
  auto next = read_reloaded_config();
  if (!next) {
    ++reloads_refused_;
    spdlog::error("reload refused, still running the previous config: {}", next.error().describe());
    notifier_.ready(status_line());
    return;
  }
  load_bpf_if_needed(**next);
  if (auto st = check_plans(**next); !st) {
    ++reloads_refused_;
    spdlog::error("reload refused, still running the previous config: {}", st.error().describe());
    notifier_.ready(status_line());
    return;
  }
  size_t stopped = stop_routes_not_in(**next);
  size_t kept = slots_.size();
  Started started = start_new_routes(*next);
  apply_relay_settings(*next);
  ++reloads_;
  spdlog::info("reloaded: {} route source(s) kept, {} stopped, {} route(s) started{}", kept, stopped,
               started.routes,
               started.failed ? ", " + std::to_string(started.failed) + " failed (above)" : "");
  notifier_.ready(status_line());
}

// The config file again, parsed and checked as `run` would; an error
// refuses the reload whole.
Result<std::shared_ptr<const Config>> Relay::read_reloaded_config() {
  const std::string& path = config_->path;
  ParseOutcome parsed = load_config(path);
  for (const auto& d : parsed.diagnostics)
    (d.severity == Severity::Error ? spdlog::error("{}", d.format()) : spdlog::warn("{}", d.format()));
  if (parsed.has_errors()) return plain_error(path + " has errors (above)");
  if (!setup_level_ok(parsed.config.relay.log_level)) return plain_error("bad log-level");
  return std::make_shared<const Config>(std::move(parsed.config));
}

// Every route source of `config` planned as it would open now: a route the
// plan refuses (e.g. datapath = "kernel" while BPF is unavailable) refuses
// the whole config, so `run` starts nothing and a reload changes nothing.
Status Relay::check_plans(const Config& config) const {
  const std::string unavailable = bpf_ ? std::string() : bpf_unavailable_;
  for (uint32_t id = 0; id < config.routes.size(); ++id) {
    const Route& route = config.routes[id];
    for (size_t from_index = 0; from_index < route.from.size(); ++from_index) {
      const RoutePlan plan = plan_route(config, route, from_index, unavailable);
      if (plan.choice.refused) return plain_error("route " + std::to_string(id) + ": " + plan.choice.reason);
    }
  }
  // A loaded map cannot grow (bpf_loader/map_sizes.h): a reload that needs
  // more entries than the maps were sized for at start is refused.
  if (bpf_)
    if (std::string why = maps_too_small(bpf_->sizes(), map_sizes_for(config)); !why.empty())
      return plain_error("the BPF maps are too small for this config: " + why);
  return {};
}

// Stops and closes the routes `next` does not have; returns how many.
size_t Relay::stop_routes_not_in(const Config& next) {
  std::vector<std::string> wanted;
  for (const auto& route : next.routes) wanted.push_back(route_identity(next, route));
  std::vector<RouteSlot> kept, removed;
  for (auto& slot : slots_) {
    bool keep = std::find(wanted.begin(), wanted.end(), slot.identity) != wanted.end();
    (keep ? kept : removed).push_back(std::move(slot));
  }
  slots_ = std::move(kept);
  for (auto& slot : removed) slot.route->stop();
  return removed.size();  // destroyed on return: their listeners close
}

// Opens the routes of `next` that are not running, each under a route id
// no running route uses (the BPF counters are per id).
Relay::Started Relay::start_new_routes(const std::shared_ptr<const Config>& next) {
  std::vector<bool> id_used(RELAY_MAX_ROUTES, false);
  for (const auto& slot : slots_) id_used[slot.route_id] = true;
  auto running = [&](const std::string& identity) {
    return std::any_of(slots_.begin(), slots_.end(),
                       [&](const RouteSlot& s) { return s.identity == identity; });
  };
  Started started;
  for (size_t i = 0; i < next->routes.size(); ++i) {
    const Route& route = next->routes[i];
    if (running(route_identity(*next, route))) continue;
    auto free_id = std::find(id_used.begin(), id_used.end(), false);
    if (free_id == id_used.end()) {
      ++started.failed;
      spdlog::error("reload: no free route id for the route at line {}", route.pos.line);
      continue;
    }
    uint32_t id = static_cast<uint32_t>(free_id - id_used.begin());
    // A reused id must not inherit a removed route's counters.
    if (bpf_) bpf_->reset_route_counters(id);
    auto opened = open_route(next, i, id);
    if (!opened) {
      ++started.failed;
      spdlog::error("reload: route at line {} not started: {}", route.pos.line, opened.error().describe());
      continue;
    }
    id_used[id] = true;
    for (auto& slot : *opened) slots_.push_back(std::move(slot));
    ++started.routes;
  }
  std::sort(slots_.begin(), slots_.end(),
            [](const RouteSlot& a, const RouteSlot& b) { return a.route_id < b.route_id; });
  return started;
}

// [relay] settings. idle-timeout applies to routes started from now on.
void Relay::apply_relay_settings(const std::shared_ptr<const Config>& next) {
  spdlog::set_level(spdlog::level::from_str(next->relay.log_level));
  budget_.set_max(next->relay.max_sessions);
  if (auto warning = fd_budget_warning(*next, fd_need(*next), hard_file_limit()))
    spdlog::warn("reload: {}", *warning);
  if (next->relay.control != config_->relay.control)
    if (auto st = open_control(next->relay.control); !st)
      spdlog::error("reload: control socket {}: {}", next->relay.control, st.error().describe());
  config_ = next;
}

std::string Relay::status_line() const {
  uint64_t packets = 0;
  if (bpf_)
    for (const auto& slot : slots_) packets += bpf_->route_counters(slot.route_id).packets;
  return std::to_string(slots_.size()) + " route source(s), " + std::to_string(budget_.used()) + "/" +
         std::to_string(budget_.max()) + " sessions, " + std::to_string(packets) + " packets in the kernel";
}

void Relay::tick() {
  for (auto& slot : slots_) slot.route->tick();
  notifier_.status(status_line());
  notifier_.watchdog_tick();
}

Status Relay::run() {
  notifier_.ready(status_line());
  spdlog::info("sockrelay {} ready: {} route(s), control socket {}", SOCKRELAY_VERSION,
               config_->routes.size(), config_->relay.control);
  // Tick often enough for idle expiry, target retries and the watchdog.
  auto period =
      std::min<std::chrono::milliseconds>({std::chrono::milliseconds(1000), config_->relay.idle_timeout / 2,
                                           config_->relay.unreplied_or_default() / 2});
  if (notifier_.watchdog_period().count() > 0) period = std::min(period, notifier_.watchdog_period());
  Status st = loop_.run(std::max(period, std::chrono::milliseconds(50)), [this] { tick(); });
  notifier_.stopping();
  shutdown();
  return st;
}

void Relay::shutdown() {
  // Map entries first (systemd's copies of our fds keep sockets alive, so
  // closing is not enough), then the program.
  for (auto& slot : slots_) slot.route->stop();
  slots_.clear();
  control_.reset();
  bpf_.reset();
}

// What the route says, with what only the relay knows: the decision it
// was built from (datapath and why), and its listener's filter drops.
RouteReport Relay::report(const RouteSlot& slot) const {
  RouteReport report = slot.route->report();
  report.datapath = slot.choice.kernel ? "kernel" : "userspace";
  report.datapath_reason = slot.choice.reason;
  if (slot.source_filter) add_filter_drops(report, slot.source_filter->drops());
  return report;
}

StatusSnapshot Relay::snapshot() const {
  StatusSnapshot s;
  s.version = SOCKRELAY_VERSION;
  s.pid = getpid();
  s.uptime_seconds = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_at_)
          .count());
  s.sessions = budget_.used();
  s.max_sessions = budget_.max();
  s.bpf_loaded = bpf_ != nullptr;
  s.capabilities = capabilities_;
  if (bpf_) s.target_bound_unavailable = bpf_->target_bound_unavailable();
  s.reloads = reloads_;
  s.reloads_refused = reloads_refused_;
  s.open_fds = open_descriptors();
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0) s.max_fds = files.rlim_cur;
  if (bpf_) s.global = bpf_->global_counters();
  for (const auto& slot : slots_) s.routes.push_back(report(slot));
  if (control_) {
    s.control.path = control_->path();
    s.control.from_systemd = control_->from_systemd();
    s.control.clients = control_->clients();
    s.control.counters = control_->counters();
  }
  return s;
}

}  // namespace sockrelay
