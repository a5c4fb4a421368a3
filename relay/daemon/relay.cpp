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
  if (route.to.size() != 1)
    return plain_error(where + ": several `to` targets (balance) are not implemented yet; use one target per route");
  if (route.mode != Mode::Egress)
    return plain_error(where + ": mode = \"ingress\" delivers into the target socket's own receive queue, which only "
                               "a local subscriber socket can use; subscribers are not implemented yet: use "
                               "mode = \"egress\"");
  for (const auto& name : route.from) {
    const Endpoint* e = config.find_endpoint(name);
    if (!kind_is_datagram(e->kind))
      return plain_error(where + ": endpoint " + describe_endpoint(*e) +
                         ": this version relays udp and unix-dgram only (stream and seqpacket sessions are not "
                         "implemented yet)");
  }
  const Endpoint* to = config.find_endpoint(route.to[0]);
  if (!kind_is_datagram(to->kind))
    return plain_error(where + ": endpoint " + describe_endpoint(*to) +
                       ": this version relays udp and unix-dgram only");
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
      const MatrixCell& cell = matrix_cell(from->kind, to->kind, route.mode);
      DatapathChoice choice = choose_datapath(route.datapath, cell, bpf_ ? std::string() : bpf_unavailable_);
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
      DatagramRouteSpec spec{id, from, to, choice.kernel, config_.relay.idle_timeout};
      auto dr = std::make_unique<DatagramRoute>(spec, std::move(listener), bpf_.get(), loop_, budget_);
      if (auto st = dr->start(); !st) return st.error().wrap("route " + std::to_string(id));
      spdlog::info("route {}: {} -> {}: {}{}", id, describe_endpoint(*from), describe_endpoint(*to), choice.reason,
                   from_systemd ? " (socket from systemd)" : "");
      sources_.push_back(RouteSource{std::move(dr), choice.reason});
    }
  }
  for (const auto& name : activated.unclaimed())
    spdlog::warn("systemd passed a socket named \"{}\" that no endpoint uses; closing it", name);
  return {};
}

void Relay::tick() {
  for (auto& s : sources_) s.route->expire_idle();
}

Status Relay::run() {
  sd_notify(0, "READY=1\nSTATUS=relaying");
  spdlog::info("sockrelay {} ready: {} route(s), control socket {}", SOCKRELAY_VERSION, config_.routes.size(),
               config_.relay.control);
  auto period = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(1000), config_.relay.idle_timeout / 2);
  Status st = loop_.run(std::max(period, std::chrono::milliseconds(50)), [this] { tick(); });
  sd_notify(0, "STOPPING=1");
  shutdown();
  return st;
}

void Relay::shutdown() {
  // Map entries first (systemd's copies of our fds keep sockets alive, so
  // closing is not enough), then the program.
  for (auto& s : sources_) s.route->stop();
  sources_.clear();
  control_.reset();
  bpf_.reset();
}

StatusSnapshot Relay::snapshot() const {
  StatusSnapshot s;
  s.version = SOCKRELAY_VERSION;
  s.pid = getpid();
  s.uptime_seconds = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_at_).count());
  s.sessions = budget_.used();
  s.max_sessions = budget_.max();
  s.bpf_loaded = bpf_ != nullptr;
  if (bpf_) s.global = bpf_->global_counters();
  for (const auto& src : sources_) {
    const auto& spec = src.route->spec();
    RouteStatus r;
    r.id = spec.route_id;
    r.from = describe_endpoint(*spec.from);
    r.to = describe_endpoint(*spec.to);
    r.datapath = spec.kernel ? "kernel" : "userspace";
    r.datapath_reason = src.datapath_reason;
    r.sessions = src.route->flow_count();
    r.user = src.route->counters();
    if (bpf_) r.kernel = bpf_->route_counters(spec.route_id);
    s.routes.push_back(std::move(r));
  }
  return s;
}

}  // namespace sockrelay
