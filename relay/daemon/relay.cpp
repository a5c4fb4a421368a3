#include "daemon/relay.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

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

bool wants_kernel(const Config& config) {
  for (const auto& r : config.routes)
    if (r.datapath != Datapath::Userspace) return true;
  return false;
}

// What this version can run; everything else is refused by name.
Status check_runnable(const Config& config, const Route& route) {
  std::string where = "route at line " + std::to_string(route.pos.line);
  if (route.to.size() > RELAY_MAX_TARGETS)
    return plain_error(where + ": at most " + std::to_string(RELAY_MAX_TARGETS) + " `to` targets per route");
  if (route.to.size() != 1 && !kind_is_datagram(config.find_endpoint(route.to[0])->kind))
    return plain_error(where + ": several `to` targets are implemented for datagram routes (udp, unix-dgram) "
                               "only; use one target per stream route");
  if (route.mode != Mode::Egress)
    return plain_error(where +
                       ": mode = \"ingress\" delivers into the target socket's own receive queue, which only "
                       "a local subscriber socket can use; subscribers are not implemented yet: use "
                       "mode = \"egress\"");
  // Datagram kinds relay to datagram kinds (flows), stream and seqpacket
  // kinds to stream and seqpacket kinds (sessions); a mix needs framing
  // rules this version does not have.
  for (const auto& name : route.from) {
   for (const auto& to_name : route.to) {
    const Endpoint* e = config.find_endpoint(name);
    const Endpoint* to = config.find_endpoint(to_name);
    if (kind_is_datagram(e->kind) != kind_is_datagram(to->kind))
      return plain_error(where + ": endpoint " + describe_endpoint(*e) + " -> " + describe_endpoint(*to) +
                         ": relaying between a datagram kind and a stream/seqpacket kind is not implemented yet; "
                         "pair udp/unix-dgram with each other, and tcp/unix-stream/unix-seqpacket with each other");
   }
  }
  return {};
}

}  // namespace

Relay::Relay(Config config, EventLoop loop)
    : config_(std::move(config)),
      loop_(std::move(loop)),
      budget_(config_.relay.max_sessions),
      started_at_(std::chrono::steady_clock::now()) {}

Relay::~Relay() { shutdown(); }

Result<std::unique_ptr<Relay>> Relay::start(Config config) {
  for (const auto& route : config.routes)
    if (auto st = check_runnable(config, route); !st) return st.error();

  auto loop = EventLoop::create();
  if (!loop) return loop.error();
  std::unique_ptr<Relay> relay(new Relay(std::move(config), std::move(*loop)));

  // Signals through the loop, so teardown runs in one place.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  relay->signals_ = Fd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!relay->signals_) return errno_error("signalfd");
  Relay* self = relay.get();
  (void)relay->loop_.add(relay->signals_.get(), EPOLLIN, [self](uint32_t) {
    signalfd_siginfo info;
    while (read(self->signals_.get(), &info, sizeof(info)) == sizeof(info)) {
      if (info.ssi_signo == SIGHUP) {
        spdlog::warn("SIGHUP: reload is not implemented yet; restart the relay to apply a new config");
        continue;
      }
      spdlog::info("{}: stopping", strsignal(static_cast<int>(info.ssi_signo)));
      self->loop_.stop();
    }
  });

  if (wants_kernel(relay->config_)) {
    auto bpf = BpfRelay::load();
    if (bpf) {
      relay->bpf_ = std::move(*bpf);
    } else {
      spdlog::warn("BPF data path unavailable: {}", bpf.error().describe());
      relay->bpf_unavailable_ = bpf.error().describe();
    }
  }
  if (auto st = relay->open_routes(); !st) return st.error();

  auto control = ControlServer::open(relay->config_.relay.control);
  if (!control) return control.error();
  relay->control_.emplace(std::move(*control));
  (void)relay->control_->attach(relay->loop_, [self](const std::string& request) {
    if (request == "status json") return format_status_json(self->snapshot());
    if (request == "status") return format_status_text(self->snapshot());
    return std::string("unknown request \"") + request + "\"; known: status, status json\n";
  });
  return relay;
}

Status Relay::open_routes() {
  ActivatedSockets activated = ActivatedSockets::take_from_systemd();
  for (uint32_t id = 0; id < config_.routes.size(); ++id) {
    const Route& route = config_.routes[id];
    const Endpoint* to = config_.find_endpoint(route.to[0]);
    for (const auto& from_name : route.from) {
      const Endpoint* from = config_.find_endpoint(from_name);
      // The kernel path only if every pairing of the route allows it.
      DatapathChoice choice;
      for (const auto& to_name : route.to) {
        const Endpoint* target = config_.find_endpoint(to_name);
        const MatrixCell& cell = matrix_cell(from->kind, target->kind, route.mode);
        choice = choose_datapath(route.datapath, cell, bpf_ ? std::string() : bpf_unavailable_);
        if (!choice.kernel) break;
      }
      if (choice.refused) return plain_error("route " + std::to_string(id) + ": " + choice.reason);

      Fd listener = activated.take(from->name);
      bool from_systemd = listener.valid();
      if (from_systemd) {
        if (auto st = check_socket_kind(listener.get(), *from); !st) return st;
      } else {
        auto opened = open_listener(*from);
        if (!opened) return opened.error();
        listener = std::move(*opened);
      }
      RouteSource source;
      source.datapath_reason = choice.reason;
      if (kind_is_datagram(from->kind)) {
        DatagramRouteSpec spec;
        spec.route_id = id;
        spec.from = from;
        for (const auto& to_name : route.to) spec.to.push_back(config_.find_endpoint(to_name));
        spec.balance = route.balance;
        spec.kernel = choice.kernel;
        spec.idle_timeout = config_.relay.idle_timeout;
        source.route = std::make_unique<DatagramRoute>(spec, std::move(listener), bpf_.get(), loop_, budget_);
        if (auto st = source.route->start(); !st) return st.error().wrap("route " + std::to_string(id));
      } else {
        StreamRouteSpec spec;
        spec.route_id = id;
        spec.from = from;
        spec.to = to;
        spec.kernel = choice.kernel;
        spec.idle_timeout = config_.relay.idle_timeout;
        source.stream = std::make_unique<StreamRoute>(spec, std::move(listener), bpf_.get(), loop_, budget_);
        if (auto st = source.stream->start(); !st) return st.error().wrap("route " + std::to_string(id));
      }
      spdlog::info("route {}: {} -> {}: {}{}", id, describe_endpoint(*from), describe_endpoint(*to),
                   choice.reason, from_systemd ? " (socket from systemd)" : "");
      sources_.push_back(std::move(source));
    }
  }
  for (const auto& name : activated.unclaimed())
    spdlog::warn("systemd passed a socket named \"{}\" that no endpoint uses; closing it", name);
  return {};
}

void Relay::tick() {
  for (auto& s : sources_) {
    if (s.route) s.route->tick();
    if (s.stream) s.stream->expire_idle();
  }
}

Status Relay::run() {
  sd_notify(0, "READY=1\nSTATUS=relaying");
  spdlog::info("sockrelay {} ready: {} route(s), control socket {}", SOCKRELAY_VERSION, config_.routes.size(),
               config_.relay.control);
  auto period =
      std::min<std::chrono::milliseconds>(std::chrono::milliseconds(1000), config_.relay.idle_timeout / 2);
  Status st = loop_.run(std::max(period, std::chrono::milliseconds(50)), [this] { tick(); });
  sd_notify(0, "STOPPING=1");
  shutdown();
  return st;
}

void Relay::shutdown() {
  // Map entries first (systemd's copies of our fds keep sockets alive, so
  // closing is not enough), then the program.
  for (auto& s : sources_) {
    if (s.route) s.route->stop();
    if (s.stream) s.stream->stop();
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
  if (bpf_) s.global = bpf_->global_counters();
  for (const auto& src : sources_) {
    RouteStatus r;
    r.datapath_reason = src.datapath_reason;
    if (src.route) {
      const auto& spec = src.route->spec();
      r.id = spec.route_id;
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
    } else {
      const auto& spec = src.stream->spec();
      r.id = spec.route_id;
      r.from = describe_endpoint(*spec.from);
      r.to = describe_endpoint(*spec.to);
      r.datapath = spec.kernel ? "kernel" : "userspace";
      r.sessions = src.stream->session_count();
      r.is_stream = true;
      r.stream = src.stream->counters();
      // The fields both kinds share, so `status` reads the same for both.
      r.user.flows_created = r.stream.sessions_created;
      r.user.flows_expired = r.stream.sessions_expired;
      r.user.flows_failed = r.stream.sessions_failed;
      r.user.refused_max_sessions = r.stream.refused_max_sessions;
      r.user.drop_setup_failed = r.stream.connect_failed;
      r.user.user_bytes = r.stream.user_bytes;
      r.user.user_packets = r.stream.user_messages;
    }
    if (bpf_) r.kernel = bpf_->route_counters(r.id);
    s.routes.push_back(std::move(r));
  }
  return s;
}

}  // namespace sockrelay
