// flow_table_bench: what expiry costs a datagram route's tick with N flows
// (default 10,000), measured against a real BPF hash map of relay_flow
// values (root). Each flow has what a kernel flow has in the map: its
// client-side entry and its reply entry, both stamped by "the verdict
// program" (here: this program, outside the timed part).
//
// Two ways, on the same flows, tick after tick of simulated time (one tick
// a second; the map reads are real syscalls, the clock is simulated so the
// run takes seconds, not minutes):
//   scan   — what the route did before the flow table: every flow's two
//            entries read on every tick;
//   table  — relay/sessions/flow_table.h: only the flows whose known
//            activity is older than their timeout are read.
// Steady state: N flows, `--active` percent of them carrying traffic every
// second, the others silent until they expire and a new client replaces
// them (so N stays N).
#include <bpf/bpf.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "relay_shared.h"
#include "sessions/flow_table.h"

namespace {

using sockrelay::FlowTable;
constexpr uint64_t kSec = 1'000'000'000;

struct Flow : FlowTable::Node {
  uint64_t client_key = 0, reply_key = 0;
  uint64_t created = 0;
  bool active = false;
};

struct Options {
  int flows = 10'000;
  int seconds = 300;
  int active_pct = 50;
  int warmup = 150;  // ticks not measured: every flow of the start has been visited once
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (k == "--flows")
      o.flows = v;
    else if (k == "--seconds")
      o.seconds = v;
    else if (k == "--active")
      o.active_pct = v;
    else {
      std::fprintf(stderr, "usage: %s [--flows N] [--seconds S] [--active PERCENT] [--warmup TICKS]\n",
                   argv[0]);
      std::exit(2);
    }
  }
  return o;
}

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o), rng_(42) {
    map_fd_ = bpf_map_create(BPF_MAP_TYPE_HASH, "bench_flows", sizeof(uint64_t), sizeof(relay_flow),
                             static_cast<uint32_t>(o.flows) * 4, nullptr);
    if (map_fd_ < 0) {
      std::fprintf(stderr, "bpf_map_create: %s (run as root)\n", std::strerror(-map_fd_));
      std::exit(1);
    }
    FlowTable::Rules rules;  // 30 s unreplied, 120 s established, 1 s protection
    table_ = std::make_unique<FlowTable>(rules,
                                         [this](FlowTable::Node& n) { return probe(static_cast<Flow&>(n)); });
  }
  ~Bench() { close(map_fd_); }

  void run() {
    uint64_t t = 1000 * kSec;
    // Start as a route that has run for a while: creation times spread
    // over the last idle-timeout, each flow answered.
    for (int i = 0; i < o_.flows; ++i) add(t - static_cast<uint64_t>(i) * 120 * kSec / o_.flows, t);
    for (int s = 0; s < o_.warmup; ++s) tick(t += kSec, nullptr, nullptr);
    std::vector<uint64_t> scan_ns, table_ns;
    uint64_t scan_reads = 0, table_visits_before = table_->visits(), replaced_before = replaced_;
    for (int s = 0; s < o_.seconds; ++s) scan_reads += tick(t += kSec, &scan_ns, &table_ns);
    report("scan (before)", scan_ns, static_cast<double>(scan_reads) / o_.seconds);
    report("flow table", table_ns,
           2.0 * static_cast<double>(table_->visits() - table_visits_before) / o_.seconds);
    std::printf("flows %d, active %d %%, %d ticks measured after %d, expired and replaced %lu\n", o_.flows,
                o_.active_pct, o_.seconds, o_.warmup,
                static_cast<unsigned long>(replaced_ - replaced_before));
  }

 private:
  // One simulated second: the active flows' traffic stamped, then both
  // ways timed. Returns the scan's map reads.
  uint64_t tick(uint64_t t, std::vector<uint64_t>* scan_ns, std::vector<uint64_t>* table_ns) {
    for (auto& f : flows_)
      if (f->active) stamp(*f, t - kSec / 2);
    uint64_t a = now_ns();
    uint64_t reads = scan(t);
    uint64_t b = now_ns();
    std::vector<Flow*> expired;
    table_->expire(t, [&](FlowTable::Node& n) { expired.push_back(&static_cast<Flow&>(n)); });
    uint64_t c = now_ns();
    if (scan_ns) scan_ns->push_back(b - a);
    if (table_ns) table_ns->push_back(c - b);
    for (Flow* f : expired) replace(*f, t);
    return reads;
  }
  void write(uint64_t key, uint64_t last) {
    relay_flow v{};
    v.last_ns = last;
    bpf_map_update_elem(map_fd_, &key, &v, BPF_ANY);
  }
  uint64_t read(uint64_t key) {
    relay_flow v{};
    return bpf_map_lookup_elem(map_fd_, &key, &v) == 0 ? v.last_ns : 0;
  }
  void stamp(Flow& f, uint64_t at) {
    write(f.client_key, at);
    write(f.reply_key, at);
  }
  void add(uint64_t created, uint64_t now) {
    auto f = std::make_unique<Flow>();
    f->client_key = next_key_++;
    f->reply_key = next_key_++;
    f->created = created;
    f->active = static_cast<int>(rng_() % 100) < o_.active_pct;
    stamp(*f, std::min(now, created + kSec / 100));  // answered 10 ms after its first datagram
    table_->insert(*f, created);
    flows_.push_back(std::move(f));
  }
  void replace(Flow& f, uint64_t now) {
    bpf_map_delete_elem(map_fd_, &f.client_key);
    bpf_map_delete_elem(map_fd_, &f.reply_key);
    auto it = std::find_if(flows_.begin(), flows_.end(), [&](const auto& p) { return p.get() == &f; });
    std::swap(*it, flows_.back());
    flows_.pop_back();
    add(now, now);
    ++replaced_;
  }
  FlowTable::Seen probe(Flow& f) {
    FlowTable::Seen seen{f.created, false};
    if (uint64_t r = read(f.reply_key)) {
      seen.replied = true;
      seen.last_ns = std::max(seen.last_ns, r);
    }
    seen.last_ns = std::max(seen.last_ns, read(f.client_key));
    return seen;
  }
  // The route's tick before the table: every flow's entries read, the
  // expired ones found (left to the table to remove, so both see the same
  // flows).
  uint64_t scan(uint64_t now) {
    uint64_t reads = 0, due = 0;
    for (auto& f : flows_) {
      uint64_t last = std::max({f->created, read(f->reply_key), read(f->client_key)});
      reads += 2;
      due += now - std::min(now, last) > 120 * kSec;
    }
    sink_ += due;
    return reads;
  }
  static void report(const char* name, std::vector<uint64_t> ns, double reads) {
    std::sort(ns.begin(), ns.end());
    double sum = 0;
    for (uint64_t v : ns) sum += static_cast<double>(v);
    std::printf("%-14s ns/tick mean %10.0f  p50 %10lu  p99 %10lu  max %10lu  map reads/tick %8.1f\n", name,
                sum / static_cast<double>(ns.size()), static_cast<unsigned long>(ns[ns.size() / 2]),
                static_cast<unsigned long>(ns[ns.size() * 99 / 100]), static_cast<unsigned long>(ns.back()),
                reads);
  }

  Options o_;
  std::mt19937 rng_;
  int map_fd_ = -1;
  std::unique_ptr<FlowTable> table_;
  std::vector<std::unique_ptr<Flow>> flows_;
  uint64_t next_key_ = 1;
  uint64_t replaced_ = 0;
  uint64_t sink_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  Bench(o).run();
  return 0;
}
