#include "daemon/relay.h"

#include <netinet/in.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>

#include "common/quote.h"
#include "config/config.h"
#include "daemon/privileges.h"
#include "endpoints/activation.h"
#include "endpoints/endpoint.h"
#include "matrix/datapath_choice.h"
#include "matrix/matrix.h"
#include "relay_shared.h"

#ifndef SOCKRELAY_VERSION
#define SOCKRELAY_VERSION "dev"
#endif

namespace sockrelay {

namespace {

std::string describe_endpoint(const Endpoint& e) {
  return e.name + " (" + std::string(kind_name(e.kind)) + " " + e.address.text + ")";
}

// What makes a route the same route across a reload: every field that
// shapes its sockets and its data path, endpoints included.
std::string route_identity(const Config& config, const Route& route) {
  std::string id = std::string(mode_name(route.mode)) + "|" + std::string(datapath_name(route.datapath)) +
                   "|" + std::string(balance_name(route.balance));
  auto add = [&](const char* side, const std::string& name) {
    const Endpoint* e = config.find_endpoint(name);
    id += std::string("|") + side + ":" + e->name + "/" + std::string(kind_name(e->kind)) + "/" +
          std::string(role_name(e->role)) + "/" + e->address.text;
  };
  for (const auto& n : route.from) add("from", n);
  for (const auto& n : route.to) add("to", n);
  return id;
}

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

// A route to a subscribe endpoint (sessions/subscriber_route.h).
Status check_subscriber_route(const Config& config, const Route& route, const std::string& where) {
  // One listener for the subscribers, fed by one source.
  if (route.from.size() != 1)
    return plain_error(where +
                       ": a route to subscribers reads one source; give one endpoint in from "
                       "(or one route per source, each with a subscribe endpoint of its own)");
  size_t feeding = 0;
  for (const auto& other : config.routes)
    feeding += std::count(other.to.begin(), other.to.end(), route.to[0]);
  if (feeding != 1)
    return plain_error(where + ": subscribe endpoint \"" + route.to[0] + "\" is the target of " +
                       std::to_string(feeding) + " routes; give each route a subscribe endpoint of its own");
  for (const auto& name : route.from) {
    const Endpoint* e = config.find_endpoint(name);
    if (!kind_is_datagram(e->kind))
      return plain_error(where + ": subscribers receive datagrams; endpoint " + describe_endpoint(*e) +
                         " is not a datagram source (use udp or unix-dgram)");
  }
  if (route.balance == Balance::Hash || route.balance == Balance::Single)
    return plain_error(where +
                       ": subscribers join and leave at any time, so hashing would move every client: use "
                       "balance = \"broadcast\" (every subscriber gets every datagram) or \"round-robin\"");
  if (route.mode == Mode::Ingress && route.balance != Balance::RoundRobin)
    return plain_error(where +
                       ": mode = \"ingress\" redirects each datagram into one subscriber's own socket, and "
                       "one skb goes to one socket only: use balance = \"round-robin\", or mode = \"egress\" "
                       "for broadcast");
  if (route.mode == Mode::Ingress && route.datapath == Datapath::Userspace)
    return plain_error(
        where +
        ": mode = \"ingress\" puts datagrams straight into the subscriber's socket, which only "
        "the kernel path can do: use datapath = \"auto\" or \"kernel\"");
  return {};
}

}  // namespace

// What this version can run; everything else is refused by name.
Status check_runnable(const Config& config, const Route& route) {
  std::string where = "route at line " + std::to_string(route.pos.line);
  if (route.to.size() > RELAY_MAX_TARGETS)
    return plain_error(where + ": at most " + std::to_string(RELAY_MAX_TARGETS) + " `to` targets per route");
  if (route.balance == Balance::Broadcast && !kind_is_datagram(config.find_endpoint(route.from[0])->kind))
    return plain_error(where +
                       ": balance = \"broadcast\" copies datagrams; a stream connection goes to one target: "
                       "use \"round-robin\" or \"hash\"");
  for (const auto& name : route.to) {
    const Endpoint* to = config.find_endpoint(name);
    if (route.mode == Mode::Ingress && kind_family(to->kind) == AF_VSOCK)
      return plain_error(
          where + ": mode = \"ingress\" into " + describe_endpoint(*to) + ": " +
          matrix_cell(config.find_endpoint(route.from[0])->kind, to->kind, Mode::Ingress).reason +
          "; use mode = \"egress\"");
  }
  const Endpoint* first_to = config.find_endpoint(route.to[0]);
  if (first_to->role == Role::Subscribe) {
    if (auto st = check_subscriber_route(config, route, where); !st) return st;
  } else if (route.mode != Mode::Egress) {
    return plain_error(where +
                       ": mode = \"ingress\" delivers into the target socket's own receive queue, which only "
                       "a local consumer can read: send to a subscribe endpoint (its subscribers pass their "
                       "socket over SCM_RIGHTS), or use mode = \"egress\"");
  }
  for (const auto& name : route.from)
    if (!route.allow_sources.empty() && config.find_endpoint(name)->kind != EndpointKind::Udp)
      return plain_error(where +
                         ": allow-sources is enforced for udp sources only in this version; endpoint " +
                         describe_endpoint(*config.find_endpoint(name)) + " is not one");
  for (const auto& name : route.from) {
    const Endpoint* e = config.find_endpoint(name);
    if (!route.allow_cids.empty() && kind_family(e->kind) != AF_VSOCK)
      return plain_error(where + ": allow-cids applies to vsock sources; endpoint " + describe_endpoint(*e) +
                         " is not one (use allow-sources for udp, allow-uids/allow-gids for unix)");
    bool unix_conn = e->kind == EndpointKind::UnixStream || e->kind == EndpointKind::UnixSeqpacket;
    // unix-dgram: by each datagram's credentials, in datagram routes only
    // (sessions/datagram_route.h); bridges and subscribers do not check them.
    bool unix_dgram_route = e->kind == EndpointKind::UnixDgram && first_to->role != Role::Subscribe &&
                            kind_is_datagram(first_to->kind);
    if ((!route.allow_uids.empty() || !route.allow_gids.empty()) && !unix_conn && !unix_dgram_route)
      return plain_error(where +
                         ": allow-uids and allow-gids are enforced for unix-stream and unix-seqpacket "
                         "sources, and for unix-dgram sources of routes to datagram endpoints, only in this "
                         "version; endpoint " +
                         describe_endpoint(*e) + " is not one");
    if (!route.allow_gids.empty() && unix_dgram_route && route.datapath != Datapath::Userspace)
      return plain_error(where + ": allow-gids on unix-dgram endpoint " + describe_endpoint(*e) +
                         " needs datapath = \"userspace\": the kernel path cannot learn a sender's gid "
                         "(its datagrams reach user space without their credentials, and sock_diag gives "
                         "a socket's owner uid only)");
  }
  for (const auto& name : route.from) {
    for (const auto& to_name : route.to) {
      const Endpoint* e = config.find_endpoint(name);
      const Endpoint* to = config.find_endpoint(to_name);
      // A datagram <-> stream/seqpacket bridge frames per session in user
      // space (sessions/bridge_route.h): one target, one framing.
      if (kind_is_datagram(e->kind) != kind_is_datagram(to->kind) && route.to.size() != 1)
        return plain_error(where + ": endpoint " + describe_endpoint(*e) + " -> " + describe_endpoint(*to) +
                           ": a route between a datagram kind and a stream/seqpacket kind takes exactly one "
                           "`to` target");
    }
  }
  return {};
}

Relay::Relay(std::shared_ptr<const Config> config, EventLoop loop)
    : config_(std::move(config)),
      loop_(std::move(loop)),
      budget_(config_->relay.max_sessions),
      started_at_(std::chrono::steady_clock::now()) {}

Relay::~Relay() { shutdown(); }

Result<std::unique_ptr<Relay>> Relay::start(Config config) {
  for (const auto& route : config.routes)
    if (auto st = check_runnable(config, route); !st) return st.error();

  auto loop = EventLoop::create();
  if (!loop) return loop.error();
  auto shared = std::make_shared<const Config>(std::move(config));
  std::unique_ptr<Relay> relay(new Relay(shared, std::move(*loop)));
  if (auto st = relay->watch_signals(); !st) return st.error();
  relay->activated_ = ActivatedSockets::take_from_systemd();
  if (auto st = relay->load_bpf_if_needed(*shared); !st) return st.error();
  for (size_t i = 0; i < shared->routes.size(); ++i) {
    auto opened = relay->open_route(shared, i, static_cast<uint32_t>(i));
    if (!opened) return opened.error();
    for (auto& source : *opened) relay->sources_.push_back(std::move(source));
  }
  for (const auto& name : relay->activated_.unclaimed())
    spdlog::warn("systemd passed a socket named \"{}\" that no endpoint uses; kept for a reload", name);
  if (auto st = relay->open_control(shared->relay.control); !st) return st.error();

  // Set-up is done: keep only what the running relay uses (privileges.h).
  if (auto st = drop_capabilities_except(runtime_capabilities(binds_privileged_port(*shared))); !st)
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

Status Relay::open_control(const std::string& path) {
  auto control = ControlServer::open(path);
  if (!control) return control.error();
  control_.reset();  // the old socket (a reload may move it) goes first
  control_.emplace(std::move(*control));
  return control_->attach(loop_, [this](const std::string& request) {
    if (request == "status json") return format_status_json(snapshot());
    if (request == "status") return format_status_text(snapshot());
    return "error: unknown request " + quoted(request) + "; known: status, status json\n";
  });
}

Status Relay::load_bpf_if_needed(const Config& config) {
  if (bpf_ || !wants_kernel(config)) return {};
  auto bpf = BpfRelay::load();
  if (bpf) {
    bpf_ = std::move(*bpf);
    bpf_unavailable_.clear();
  } else {
    spdlog::warn("BPF data path unavailable: {}", bpf.error().describe());
    bpf_unavailable_ = bpf.error().describe();
  }
  return {};
}

Result<Fd> Relay::take_or_open_listener(const Endpoint& endpoint, bool* from_systemd) {
  Fd fd = activated_.take(endpoint.name);
  if (from_systemd) *from_systemd = fd.valid();
  if (!fd) return open_listener(endpoint);
  if (auto st = check_socket_kind(fd.get(), endpoint); !st) return st.error();
  return fd;
}

Result<std::vector<Relay::RouteSource>> Relay::open_route(const std::shared_ptr<const Config>& config,
                                                          size_t index, uint32_t id) {
  const Route& route = config->routes[index];
  const Endpoint* to = config->find_endpoint(route.to[0]);
  std::vector<RouteSource> sources;
  for (const auto& from_name : route.from) {
    const Endpoint* from = config->find_endpoint(from_name);
    // The kernel path only if every pairing of the route allows it.
    DatapathChoice choice;
    const std::string unavailable = bpf_ ? std::string() : bpf_unavailable_;
    if (to->role == Role::Subscribe)
      choice = choose_subscriber_datapath(
          route.datapath, route.balance,
          route.mode == Mode::Ingress ? nullptr : &matrix_cell(from->kind, to->kind, route.mode),
          unavailable);
    for (const auto& to_name : route.to) {
      if (to->role == Role::Subscribe) break;
      const Endpoint* target = config->find_endpoint(to_name);
      const MatrixCell& cell = matrix_cell(from->kind, target->kind, route.mode);
      choice = choose_datapath(route.datapath, cell, unavailable);
      if (!choice.kernel) break;
    }
    if (choice.refused) return plain_error("route " + std::to_string(id) + ": " + choice.reason);
    bool from_systemd = false;
    auto taken = take_or_open_listener(*from, &from_systemd);
    if (!taken) return taken.error();
    Fd listener = std::move(*taken);
    RouteSource source;
    if (!route.allow_sources.empty() && from->kind == EndpointKind::Udp) {
      // Outsiders dropped before they are queued. Datagram and bridge
      // routes check again in user space, for when BPF is unavailable;
      // subscriber routes rely on the filter.
      if (bpf_) {
        auto filter = SourceFilter::attach(listener.get(), route.allow_sources);
        if (!filter) return filter.error().wrap("route " + std::to_string(id) + ": allow-sources");
        source.source_filter = std::move(*filter);
      } else if (to->role == Role::Subscribe) {
        return plain_error("route " + std::to_string(id) +
                           ": allow-sources on a route to subscribers needs the BPF socket filter, and BPF "
                           "is unavailable: " +
                           bpf_unavailable_);
      }
    }
    source.config = config;
    source.route_id = id;
    source.identity = route_identity(*config, route);
    source.datapath_reason = choice.reason;
    if (to->role == Role::Subscribe) {
      auto subscribe = take_or_open_listener(*to, nullptr);
      if (!subscribe) return subscribe.error();
      SubscriberRouteSpec spec;
      spec.route_id = id;
      spec.from = from;
      spec.to = to;
      spec.balance = route.balance;
      spec.mode = route.mode;
      spec.kernel = choice.kernel;
      source.subscribers = std::make_unique<SubscriberRoute>(spec, std::move(listener), std::move(*subscribe),
                                                             bpf_.get(), loop_, budget_);
      if (auto st = source.subscribers->start(); !st) return st.error().wrap("route " + std::to_string(id));
    } else if (kind_is_datagram(from->kind) != kind_is_datagram(to->kind)) {
      BridgeRouteSpec spec;
      spec.route_id = id;
      spec.from = from;
      spec.to = to;
      spec.policy = PeerPolicy::of(route);
      spec.idle_timeout = config->relay.idle_timeout;
      source.bridge = std::make_unique<BridgeRoute>(spec, std::move(listener), loop_, budget_);
      if (auto st = source.bridge->start(); !st) return st.error().wrap("route " + std::to_string(id));
    } else if (kind_is_datagram(from->kind)) {
      DatagramRouteSpec spec;
      spec.route_id = id;
      spec.from = from;
      for (const auto& to_name : route.to) spec.to.push_back(config->find_endpoint(to_name));
      spec.balance = route.balance;
      spec.allow_sources = route.allow_sources;
      spec.allow_uids = route.allow_uids;
      spec.allow_gids = route.allow_gids;
      spec.kernel = choice.kernel;
      spec.idle_timeout = config->relay.idle_timeout;
      source.route = std::make_unique<DatagramRoute>(spec, std::move(listener), bpf_.get(), loop_, budget_);
      if (auto st = source.route->start(); !st) return st.error().wrap("route " + std::to_string(id));
    } else {
      StreamRouteSpec spec;
      spec.route_id = id;
      spec.from = from;
      for (const auto& to_name : route.to) spec.to.push_back(config->find_endpoint(to_name));
      spec.balance = route.balance;
      spec.kernel = choice.kernel;
      spec.policy = PeerPolicy::of(route);
      spec.idle_timeout = config->relay.idle_timeout;
      source.stream = std::make_unique<StreamRoute>(spec, std::move(listener), bpf_.get(), loop_, budget_);
      if (auto st = source.stream->start(); !st) return st.error().wrap("route " + std::to_string(id));
    }
    std::string targets;
    for (const auto& to_name : route.to)
      targets += (targets.empty() ? "" : ", ") + describe_endpoint(*config->find_endpoint(to_name));
    spdlog::info("route {}: {} -> {}: {}{}", id, describe_endpoint(*from), targets, choice.reason,
                 from_systemd ? " (socket from systemd)" : "");
    sources.push_back(std::move(source));
  }
  return sources;
}

// SIGHUP: check the new config first and refuse it whole if it would not
// run; else apply the difference. Routes whose identity is unchanged keep
// their objects, sockets, map entries and sessions; removed ones stop
// (before new ones open, so a route may move its listener); new ones
// start. Sockets systemd passed stay with the relay for later reloads.
void Relay::reload() {
  notifier_.reloading();
  const std::string path = config_->path;
  spdlog::info("SIGHUP: reloading {}", path);
  auto refuse = [&](const std::string& why) {
    ++reloads_refused_;
    spdlog::error("reload refused, still running the previous config: {}", why);
    notifier_.ready(status_line());
  };
  ParseOutcome parsed = load_config(path);
  for (const auto& d : parsed.diagnostics)
    (d.severity == Severity::Error ? spdlog::error("{}", d.format()) : spdlog::warn("{}", d.format()));
  if (parsed.has_errors()) return refuse(path + " has errors (above)");
  for (const auto& route : parsed.config.routes)
    if (auto st = check_runnable(parsed.config, route); !st) return refuse(st.error().describe());
  if (!setup_level_ok(parsed.config.relay.log_level)) return refuse("bad log-level");
  auto next = std::make_shared<const Config>(std::move(parsed.config));
  (void)load_bpf_if_needed(*next);

  // Which old sources survive.
  std::vector<std::string> wanted;
  for (const auto& route : next->routes) wanted.push_back(route_identity(*next, route));
  std::vector<RouteSource> kept, removed;
  for (auto& source : sources_) {
    bool keep = std::find(wanted.begin(), wanted.end(), source.identity) != wanted.end();
    (keep ? kept : removed).push_back(std::move(source));
  }
  sources_.clear();
  for (auto& source : removed) {
    if (source.route) source.route->stop();
    if (source.stream) source.stream->stop();
    if (source.bridge) source.bridge->stop();
    if (source.subscribers) source.subscribers->stop();
  }
  size_t stopped = removed.size();
  removed.clear();  // closes their listeners

  // New routes get route ids no kept route uses (BPF counters are per id).
  std::vector<bool> id_used(RELAY_MAX_ROUTES, false);
  for (const auto& source : kept) id_used[source.route_id] = true;
  size_t started = 0, failed = 0;
  for (size_t i = 0; i < next->routes.size(); ++i) {
    bool is_kept = false;
    for (const auto& source : kept) is_kept = is_kept || source.identity == wanted[i];
    if (is_kept) continue;
    uint32_t id = 0;
    while (id < RELAY_MAX_ROUTES && id_used[id]) ++id;
    if (id == RELAY_MAX_ROUTES) {
      ++failed;
      spdlog::error("reload: no free route id for the route at line {}", next->routes[i].pos.line);
      continue;
    }
    // A reused id must not inherit a removed route's counters.
    if (bpf_) bpf_->reset_route_counters(id);
    auto opened = open_route(next, i, id);
    if (!opened) {
      ++failed;
      spdlog::error("reload: route at line {} not started: {}", next->routes[i].pos.line,
                    opened.error().describe());
      continue;
    }
    id_used[id] = true;
    for (auto& source : *opened) kept.push_back(std::move(source));
    ++started;
  }
  sources_ = std::move(kept);
  std::sort(sources_.begin(), sources_.end(),
            [](const RouteSource& a, const RouteSource& b) { return a.route_id < b.route_id; });

  // [relay] settings. idle-timeout applies to routes started from now on.
  spdlog::set_level(spdlog::level::from_str(next->relay.log_level));
  budget_.set_max(next->relay.max_sessions);
  if (next->relay.control != config_->relay.control)
    if (auto st = open_control(next->relay.control); !st)
      spdlog::error("reload: control socket {}: {}", next->relay.control, st.error().describe());
  config_ = next;
  ++reloads_;
  spdlog::info("reloaded: {} route source(s) kept, {} stopped, {} route(s) started{}",
               sources_.size() - started, stopped, started,
               failed ? ", " + std::to_string(failed) + " failed (above)" : "");
  notifier_.ready(status_line());
}

std::string Relay::status_line() const {
  uint64_t packets = 0;
  if (bpf_)
    for (const auto& s : sources_) packets += bpf_->route_counters(s.route_id).packets;
  return std::to_string(sources_.size()) + " route source(s), " + std::to_string(budget_.used()) + "/" +
         std::to_string(budget_.max()) + " sessions, " + std::to_string(packets) + " packets in the kernel";
}

void Relay::tick() {
  for (auto& s : sources_) {
    if (s.route) s.route->tick();
    if (s.stream) s.stream->expire_idle();
    if (s.bridge) s.bridge->expire_idle();
    if (s.subscribers) s.subscribers->tick();
  }
  notifier_.status(status_line());
  notifier_.watchdog_tick();
}

Status Relay::run() {
  notifier_.ready(status_line());
  spdlog::info("sockrelay {} ready: {} route(s), control socket {}", SOCKRELAY_VERSION,
               config_->routes.size(), config_->relay.control);
  // Tick often enough for idle expiry, target retries and the watchdog.
  auto period =
      std::min<std::chrono::milliseconds>(std::chrono::milliseconds(1000), config_->relay.idle_timeout / 2);
  if (notifier_.watchdog_period().count() > 0) period = std::min(period, notifier_.watchdog_period());
  Status st = loop_.run(std::max(period, std::chrono::milliseconds(50)), [this] { tick(); });
  notifier_.stopping();
  shutdown();
  return st;
}

void Relay::shutdown() {
  // Map entries first (systemd's copies of our fds keep sockets alive, so
  // closing is not enough), then the program.
  for (auto& s : sources_) {
    if (s.route) s.route->stop();
    if (s.stream) s.stream->stop();
    if (s.bridge) s.bridge->stop();
    if (s.subscribers) s.subscribers->stop();
  }
  sources_.clear();
  control_.reset();
  bpf_.reset();
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
  s.reloads = reloads_;
  s.reloads_refused = reloads_refused_;
  if (bpf_) s.global = bpf_->global_counters();
  for (const auto& src : sources_) {
    RouteStatus r;
    r.datapath_reason = src.datapath_reason;
    if (src.route) {
      const auto& spec = src.route->spec();
      r.id = src.route_id;
      r.from = describe_endpoint(*spec.from);
      for (const auto* target : spec.to) r.to += (r.to.empty() ? "" : ", ") + describe_endpoint(*target);
      if (spec.to.size() > 1) r.to = "[" + r.to + "] balance " + std::string(balance_name(spec.balance));
      r.datapath = spec.kernel ? "kernel" : "userspace";
      r.sessions = src.route->flow_count();
      r.user = src.route->counters();
      if (spec.to.size() > 1) {
        auto reports = src.route->targets();
        for (uint32_t t = 0; t < reports.size(); ++t) {
          TargetStatus ts;
          ts.report = reports[t];
          if (bpf_) ts.kernel = bpf_->target_counters(spec.route_id, t);
          r.targets.push_back(ts);
        }
      }
    } else if (src.subscribers) {
      const auto& spec = src.subscribers->spec();
      r.id = src.route_id;
      r.from = describe_endpoint(*spec.from);
      r.to = describe_endpoint(*spec.to) + " subscribers, balance " +
             std::string(balance_name(spec.balance)) + ", mode " + std::string(mode_name(spec.mode));
      r.datapath = spec.kernel ? "kernel" : "userspace";
      r.sessions = src.subscribers->subscriber_count();
      r.is_subscribers = true;
      r.subscribers = src.subscribers->counters();
      r.user.flows_created = r.subscribers.joined;
      r.user.refused_max_sessions = r.subscribers.refused_max_sessions;
      r.user.user_packets = r.subscribers.user_packets;
      r.user.user_bytes = r.subscribers.user_bytes;
      r.user.drop_all_targets_down = r.subscribers.drop_no_subscriber;
      r.user.drop_target_full = r.subscribers.drop_subscriber_full;
      for (auto& report : src.subscribers->subscribers()) {
        SubscriberStatus ss;
        if (bpf_ && report.slot >= 0)
          ss.kernel = bpf_->target_counters(spec.route_id, static_cast<uint32_t>(report.slot));
        ss.report = std::move(report);
        r.subscriber_list.push_back(std::move(ss));
      }
    } else {
      // Stream routes and datagram <-> stream bridges report alike.
      r.id = src.route_id;
      if (src.stream) {
        const auto& spec = src.stream->spec();
        r.from = describe_endpoint(*spec.from);
        for (const auto* target : spec.to) r.to += (r.to.empty() ? "" : ", ") + describe_endpoint(*target);
        if (spec.to.size() > 1) {
          r.to = "[" + r.to + "] balance " + std::string(balance_name(spec.balance));
          for (const auto& report : src.stream->targets()) r.targets.push_back(TargetStatus{report, {}});
        }
        r.datapath = spec.kernel ? "kernel" : "userspace";
      } else {
        r.from = describe_endpoint(*src.bridge->spec().from);
        r.to = describe_endpoint(*src.bridge->spec().to);
        r.datapath = "userspace";
      }
      r.sessions = src.stream ? src.stream->session_count() : src.bridge->session_count();
      r.is_stream = true;
      r.stream = src.stream ? src.stream->counters() : src.bridge->counters();
      // The fields both kinds share, so `status` reads the same for both.
      r.user.flows_created = r.stream.sessions_created;
      r.user.flows_expired = r.stream.sessions_expired;
      r.user.flows_failed = r.stream.sessions_failed;
      r.user.refused_max_sessions = r.stream.refused_max_sessions;
      r.user.refused_policy = r.stream.refused_policy;
      r.user.drop_setup_failed = r.stream.connect_failed;
      r.user.user_bytes = r.stream.user_bytes;
      r.user.user_packets = r.stream.user_messages;
    }
    if (bpf_) r.kernel = bpf_->route_counters(r.id);
    if (src.source_filter) r.kernel.drop_policy += src.source_filter->drops();
    r.user.refused_policy += r.kernel.drop_policy;  // one "policy" count, wherever it was dropped
    s.routes.push_back(std::move(r));
  }
  return s;
}

}  // namespace sockrelay
