// `sockrelay check`: a config judged the way `run` would take it. The
// config's own errors come from parse_config (config/config.h), each route
// source's data path from plan_route (matrix/route_plan.h), with the kernel
// path measured by a probe of each cell the config uses.
#include <sys/sysinfo.h>

#include <cstdio>
#include <map>
#include <optional>
#include <tuple>

#include "bpf_loader/map_sizes.h"
#include "cli/commands.h"
#include "common/json.h"
#include "config/config.h"
#include "config/fd_budget.h"
#include "daemon/file_limit.h"
#include "matrix/matrix.h"
#include "matrix/route_plan.h"
#include "probe/probe.h"

namespace sockrelay::cli {

namespace {

constexpr const char* kCheckHelp = R"(Usage: sockrelay check [--config FILE] [--json] [--no-probe]

Validate a config without running it: TOML syntax, every key and value,
addresses, endpoint names, what this version can run, and every route's
pairing against the supported-configuration matrix AND the running kernel
(each pairing used is probed once with a real sockmap redirect). Problems
are printed as FILE:LINE:COL: severity: message.

  datapath = "kernel" on a pairing the matrix or this kernel cannot carry
                      is an error;
  datapath = "auto"   that falls back to user space is a warning;
  a pairing with a caveat (e.g. stream -> datagram boundaries) is a note.

It also prints the BPF map sizes `run` would load for max-sessions and the
routes, and an estimate of their kernel memory (config/README.md, "BPF map
sizes"): a reload cannot grow them past what the relay started with.

Options:
  --config FILE   the config to check (default /etc/sockrelay/sockrelay.toml)
  --json          machine-readable result
  --no-probe      judge by the matrix alone (no BPF, no privilege needed)
  --help          this text

Exit status: 0 if the config would run, 1 if not, 2 on a bad command line.
)";

struct CheckOptions {
  std::string config_path = kDefaultConfig;
  bool json = false;
  bool probe = true;
};

// The options, or the exit status when there is nothing to check (--help,
// a bad command line).
std::optional<int> parse_options(const Args& args, CheckOptions& options) {
  OptionScanner scan(args);
  std::string arg;
  while (scan.next(&arg)) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kCheckHelp, stdout);
      return kExitOk;
    }
    if (arg == "--config") {
      if (!scan.value(&options.config_path)) return usage_error("check", "--config needs a FILE");
    } else if (arg == "--json") {
      options.json = true;
    } else if (arg == "--no-probe") {
      options.probe = false;
    } else {
      return usage_error("check", "unknown option '" + arg + "'");
    }
  }
  return std::nullopt;
}

using CellKey = std::tuple<EndpointKind, EndpointKind, Mode>;

// Probes each distinct cell once; remembers why the kernel path is unusable.
class KernelJudge {
 public:
  explicit KernelJudge(bool enabled) {
    if (!enabled) {
      not_probed_ = "not probed (--no-probe)";
      return;
    }
    auto p = Prober::create();
    if (p)
      prober_.emplace(std::move(*p));
    else
      unavailable_ = not_probed_ = p.error().describe();
  }
  // Empty when the kernel delivered through this cell (or was not asked);
  // else why not.
  std::string unavailable(const MatrixCell& cell) {
    if (!prober_) return unavailable_;
    const ProbeResult& r = measure(cell);
    if (r.outcome == ProbeResult::Delivered || r.outcome == ProbeResult::NotTestableHere) return "";
    return "this kernel did not deliver through it in a probe (" + seen(cell) + ")";
  }
  // What `check` says of the target-buffer bound: empty without a probe.
  std::string target_buffer() const {
    if (!prober_) return "";
    const std::string& why = prober_->target_bound_unavailable();
    return why.empty()
               ? "enforced in the kernel on this machine"
               : "NOT enforced on this machine (the kernel backlog toward a target is unbounded): " + why;
  }
  // What the probe saw, or why it did not run.
  std::string seen(const MatrixCell& cell) {
    if (!prober_) return not_probed_;
    const ProbeResult& r = measure(cell);
    return std::string(outcome_name(r.outcome)) + (r.detail.empty() ? "" : ": " + r.detail);
  }

 private:
  const ProbeResult& measure(const MatrixCell& cell) {
    CellKey key{cell.source, cell.target, cell.mode};
    auto it = cache_.find(key);
    if (it == cache_.end())
      it = cache_.emplace(key, prober_->probe_cell(cell.source, cell.target, cell.mode)).first;
    return it->second;
  }

  std::optional<Prober> prober_;
  std::string unavailable_;  // why every cell is unusable (the probe could not load)
  std::string not_probed_;   // what `seen` says without a prober
  std::map<CellKey, ProbeResult> cache_;
};

// One pairing as `check` reports it.
struct Verdict {
  uint32_t route_id;
  RouteEngine engine;
  PairingPlan pairing;
  std::string probe;  // what the probe saw, or why it did not run
};

struct Judgement {
  std::vector<Diagnostic> diagnostics;
  std::vector<Verdict> verdicts;
  std::optional<MapSizes> maps;  // what `run` would size the BPF maps to
  MapMemory memory;
  uint32_t max_sessions = 0;
  std::string target_buffer;  // KernelJudge::target_buffer() when a route runs in the kernel
  bool ok() const {
    for (const auto& d : diagnostics)
      if (d.severity == Severity::Error) return false;
    return true;
  }
};

// Refusals are errors, fall-backs warnings, caveats and broadcast copies
// notes; all at the route's [[routes]] table.
void report_plan(const Config& config, const Route& route, const RoutePlan& plan, Judgement& out) {
  auto add = [&](Severity severity, std::string message) {
    out.diagnostics.push_back({config.path, route.pos, severity, std::move(message)});
  };
  for (const PairingPlan& p : plan.pairings) {
    const std::string prefix = p.label() + ": ";
    if (p.choice.refused)
      add(Severity::Error, prefix + p.choice.reason);
    else if (p.choice.fell_back)
      add(Severity::Warning, prefix + p.choice.reason);
    else if (p.choice.kernel && p.cell->support == Support::Caveat)
      add(Severity::Note, prefix + "kernel path with a caveat: " + p.cell->reason);
  }
  if (plan.choice.kernel && route.balance == Balance::Broadcast && plan.engine != RouteEngine::Subscribers)
    add(Severity::Note,
        "balance = \"broadcast\": one skb can be redirected to one socket only, so the verdict program hands "
        "each "
        "datagram to user space, which sends a copy to each of the " +
            std::to_string(route.to.size()) +
            " targets (a receive per datagram and a send per copy; see `sockrelay matrix`)");
}

// Every route source planned as `run` would open it.
void judge_routes(const Config& config, bool probe, Judgement& out) {
  KernelJudge judge(probe);
  const KernelCheck kernel_check = [&](const MatrixCell& cell) { return judge.unavailable(cell); };
  for (uint32_t id = 0; id < config.routes.size(); ++id) {
    const Route& route = config.routes[id];
    for (size_t from = 0; from < route.from.size(); ++from) {
      RoutePlan plan = plan_route(config, route, from, kernel_check);
      report_plan(config, route, plan, out);
      for (PairingPlan& p : plan.pairings) {
        if (p.choice.kernel && !p.choice.refused) out.target_buffer = judge.target_buffer();
        std::string seen = route.datapath == Datapath::Userspace ? "" : judge.seen(*p.cell);
        out.verdicts.push_back(Verdict{id, plan.engine, std::move(p), std::move(seen)});
      }
    }
  }
}

// What max-sessions needs in descriptors against the hard limit here
// (`run` raises its soft limit to it): a warning at max-sessions when it
// cannot hold them. Under systemd the unit's LimitNOFILE= is the limit.
void judge_file_budget(const Config& config, Judgement& out) {
  if (auto warning = fd_budget_warning(config, fd_need(config), hard_file_limit()))
    out.diagnostics.push_back({config.path, config.relay.max_sessions_pos, Severity::Warning,
                               *warning + " (the hard limit of this shell)"});
}

std::string_view datapath_word(const DatapathChoice& choice) {
  return choice.refused ? "refused" : choice.kernel ? "kernel" : "userspace";
}

void print_json(const std::string& path, const Judgement& judgement) {
  JsonWriter j;
  j.begin_object().field("file", path).field("ok", judgement.ok());
  j.key("diagnostics").begin_array();
  for (const auto& d : judgement.diagnostics) {
    const char* sev = d.severity == Severity::Error     ? "error"
                      : d.severity == Severity::Warning ? "warning"
                                                        : "note";
    j.begin_object()
        .field("line", d.pos.line)
        .field("column", d.pos.column)
        .field("severity", sev)
        .field("message", d.message)
        .end_object();
  }
  j.end_array();
  j.key("routes").begin_array();
  for (const auto& v : judgement.verdicts) {
    j.begin_object()
        .field("id", v.route_id)
        .field("from", v.pairing.from->name)
        .field("to", v.pairing.to->name)
        .field("mode", mode_name(v.pairing.cell->mode))
        .field("engine", engine_name(v.engine))
        .field("datapath", datapath_word(v.pairing.choice))
        .field("reason", v.pairing.choice.reason)
        .field("probe", v.probe)
        .end_object();
  }
  j.end_array();
  if (judgement.maps) {
    j.key("maps")
        .begin_object()
        .field("sockets", judgement.maps->sockets)
        .field("flows", judgement.maps->flows)
        .field("route-slots", judgement.maps->route_slots)
        .field("estimated-kernel-bytes-at-start", judgement.memory.at_load)
        .field("estimated-kernel-bytes-when-full", judgement.memory.when_full)
        .end_object();
  }
  j.field("target-buffer", judgement.target_buffer).end_object();
  std::printf("%s\n", j.str().c_str());
}

void print_text(const std::string& path, const Judgement& judgement) {
  for (const auto& d : judgement.diagnostics) std::fprintf(stderr, "%s\n", d.format().c_str());
  for (const auto& v : judgement.verdicts) {
    const DatapathChoice& choice = v.pairing.choice;
    if (choice.refused) continue;
    std::printf("route %u: %s -> %s: %s path (%s)\n", v.route_id, v.pairing.from->name.c_str(),
                v.pairing.to->name.c_str(), choice.kernel ? "kernel" : "user-space", choice.reason.c_str());
  }
  if (judgement.maps) {
    auto mib = [](uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); };
    std::printf(
        "BPF maps sized for max-sessions = %u: %s; kernel memory (an estimate from key/value sizes x "
        "entries): %.1f MiB at "
        "start, up to %.1f MiB when full\n",
        judgement.max_sessions, describe_map_sizes(*judgement.maps).c_str(), mib(judgement.memory.at_load),
        mib(judgement.memory.when_full));
  }
  if (!judgement.target_buffer.empty()) std::printf("target-buffer: %s\n", judgement.target_buffer.c_str());
  std::printf("%s: %s\n", path.c_str(), judgement.ok() ? "OK, would run" : "would NOT run");
}

}  // namespace

int check_command(const Args& args) {
  CheckOptions options;
  if (auto exit_status = parse_options(args, options)) return *exit_status;
  ParseOutcome parsed = load_config(options.config_path);
  Judgement judgement;
  judgement.diagnostics = parsed.diagnostics;
  if (!parsed.has_errors()) {
    judge_routes(parsed.config, options.probe, judgement);
    judgement.maps = map_sizes_for(parsed.config);
    judgement.max_sessions = parsed.config.relay.max_sessions;
    judgement.memory = estimate_map_memory(*judgement.maps, static_cast<uint32_t>(get_nprocs_conf()));
    judge_file_budget(parsed.config, judgement);
  }
  if (options.json)
    print_json(options.config_path, judgement);
  else
    print_text(options.config_path, judgement);
  return judgement.ok() ? kExitOk : kExitFailure;
}

}  // namespace sockrelay::cli
