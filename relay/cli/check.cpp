#include <unistd.h>

#include <cstdio>
#include <map>
#include <optional>
#include <tuple>

#include "cli/commands.h"
#include "common/json.h"
#include "config/config.h"
#include "daemon/relay.h"
#include "matrix/datapath_choice.h"
#include "matrix/matrix.h"
#include "probe/probe.h"

namespace sockrelay::cli {

namespace {

constexpr const char* kCheckHelp = R"(Usage: sockrelay check [--config FILE] [--json] [--no-probe]

Validate a config without running it: TOML syntax, every key and value,
addresses, endpoint names, and every route's pairing against the
supported-configuration matrix AND the running kernel (each pairing used is
probed once with a real sockmap redirect). Problems are printed as
FILE:LINE:COL: severity: message.

  datapath = "kernel" on a pairing the matrix or this kernel cannot carry
                      is an error;
  datapath = "auto"   that falls back to user space is a warning;
  a pairing with a caveat (e.g. stream -> datagram boundaries) is a note.

Options:
  --config FILE   the config to check (default /etc/sockrelay/sockrelay.toml)
  --json          machine-readable result
  --no-probe      judge by the matrix alone (no BPF, no privilege needed)
  --help          this text

Exit status: 0 if the config would run, 1 if not, 2 on a bad command line.
)";

struct RouteVerdict {
  uint32_t id;
  std::string from, to;
  Mode mode;
  DatapathChoice choice;
  std::string probe;  // what the probe saw, or why it did not run
};

using CellKey = std::tuple<EndpointKind, EndpointKind, Mode>;

// Probes each distinct cell once; remembers why the kernel path is unusable.
class KernelJudge {
 public:
  explicit KernelJudge(bool enabled) {
    if (!enabled) {
      unavailable_ = "not probed (--no-probe)";
      return;
    }
    auto p = Prober::create();
    if (p)
      prober_.emplace(std::move(*p));
    else
      unavailable_ = p.error().describe();
  }
  // Empty when the kernel delivered through this cell; else why not.
  std::string unavailable(const MatrixCell& cell, std::string* seen) {
    if (!prober_) {
      *seen = unavailable_;
      return probe_disabled_ ? std::string() : unavailable_;
    }
    CellKey key{cell.source, cell.target, cell.mode};
    auto it = cache_.find(key);
    if (it == cache_.end())
      it = cache_.emplace(key, prober_->probe_cell(cell.source, cell.target, cell.mode)).first;
    const ProbeResult& r = it->second;
    *seen = std::string(outcome_name(r.outcome)) + (r.detail.empty() ? "" : ": " + r.detail);
    if (r.outcome == ProbeResult::Delivered || r.outcome == ProbeResult::NotTestableHere) return "";
    return "this kernel did not deliver through it in a probe (" + *seen + ")";
  }
  void disable_probe_errors() { probe_disabled_ = true; }

 private:
  std::optional<Prober> prober_;
  std::string unavailable_;
  bool probe_disabled_ = false;
  std::map<CellKey, ProbeResult> cache_;
};

}  // namespace

int check_command(const Args& args) {
  std::string config_path = kDefaultConfig;
  bool json = false, probe = true;
  OptionScanner scan(args);
  std::string arg;
  while (scan.next(&arg)) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kCheckHelp, stdout);
      return kExitOk;
    }
    if (arg == "--config") {
      if (!scan.value(&config_path)) return usage_error("check", "--config needs a FILE");
    } else if (arg == "--json") {
      json = true;
    } else if (arg == "--no-probe") {
      probe = false;
    } else {
      return usage_error("check", "unknown option '" + arg + "'");
    }
  }

  ParseOutcome parsed = load_config(config_path);
  std::vector<Diagnostic> diags = parsed.diagnostics;
  std::vector<RouteVerdict> verdicts;
  if (!parsed.has_errors()) {
    KernelJudge judge(probe);
    if (!probe) judge.disable_probe_errors();
    const Config& config = parsed.config;
    for (uint32_t id = 0; id < config.routes.size(); ++id) {
      const Route& route = config.routes[id];
      if (auto st = check_runnable(config, route); !st) {
        diags.push_back({config_path, route.pos, Severity::Error, st.error().describe()});
        continue;
      }
      for (const auto& from_name : route.from) {
        for (const auto& to_name : route.to) {
          const Endpoint* from = config.find_endpoint(from_name);
          const Endpoint* to = config.find_endpoint(to_name);
          const MatrixCell& cell = matrix_cell(from->kind, to->kind, route.mode);
          RouteVerdict v{id, from_name, to_name, route.mode, {}, {}};
          std::string why_not =
              route.datapath == Datapath::Userspace ? "" : judge.unavailable(cell, &v.probe);
          if (to->role != Role::Subscribe)
            v.choice = choose_datapath(route.datapath, cell, why_not);
          else
            v.choice = choose_subscriber_datapath(route.datapath, route.balance,
                                                  route.mode == Mode::Ingress ? nullptr : &cell, why_not);
          std::string pairing = from_name + " (" + std::string(kind_name(from->kind)) + ") -> " + to_name +
                                " (" + std::string(kind_name(to->kind)) + "), " +
                                std::string(mode_name(route.mode)) + ": ";
          if (v.choice.refused)
            diags.push_back({config_path, route.pos, Severity::Error, pairing + v.choice.reason});
          else if (v.choice.fell_back)
            diags.push_back({config_path, route.pos, Severity::Warning, pairing + v.choice.reason});
          else if (v.choice.kernel && cell.support == Support::Caveat)
            diags.push_back({config_path, route.pos, Severity::Note,
                             pairing + "kernel path with a caveat: " + cell.reason});
          if (v.choice.kernel && route.balance == Balance::Broadcast && to->role != Role::Subscribe &&
              to_name == route.to.front())
            diags.push_back(
                {config_path, route.pos, Severity::Note,
                 "balance = \"broadcast\": one skb can be redirected to one socket only, so the "
                 "verdict program hands each datagram to user space, which sends a copy to each of "
                 "the " +
                     std::to_string(route.to.size()) +
                     " targets (a receive per datagram and a send per copy; see `sockrelay matrix`)"});
          verdicts.push_back(std::move(v));
        }
      }
    }
  }
  bool ok = true;
  for (const auto& d : diags)
    if (d.severity == Severity::Error) ok = false;

  if (json) {
    JsonWriter j;
    j.begin_object().field("file", config_path).field("ok", ok);
    j.key("diagnostics").begin_array();
    for (const auto& d : diags) {
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
    for (const auto& v : verdicts) {
      j.begin_object()
          .field("id", v.id)
          .field("from", v.from)
          .field("to", v.to)
          .field("mode", mode_name(v.mode))
          .field("datapath", v.choice.refused  ? "refused"
                             : v.choice.kernel ? "kernel"
                                               : "userspace")
          .field("reason", v.choice.reason)
          .field("probe", v.probe)
          .end_object();
    }
    j.end_array().end_object();
    std::printf("%s\n", j.str().c_str());
  } else {
    for (const auto& d : diags) std::fprintf(stderr, "%s\n", d.format().c_str());
    for (const auto& v : verdicts)
      if (!v.choice.refused)
        std::printf("route %u: %s -> %s: %s path (%s)\n", v.id, v.from.c_str(), v.to.c_str(),
                    v.choice.kernel ? "kernel" : "user-space", v.choice.reason.c_str());
    std::printf("%s: %s\n", config_path.c_str(), ok ? "OK, would run" : "would NOT run");
  }
  return ok ? kExitOk : kExitFailure;
}

}  // namespace sockrelay::cli
