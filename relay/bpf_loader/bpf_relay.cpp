#include "bpf_loader/bpf_relay.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "relay.skel.h"
#include "relay_shared.h"
#include "relay_unbounded.skel.h"

namespace sockrelay {

namespace {

// libbpf returns -errno (and sets errno); keep the code, add context.
Error bpf_error(int ret, const std::string& what) {
  int code = ret < 0 ? -ret : errno;
  std::string message = what;
  if (code == EPERM || code == EACCES)
    message += " (needs root, or CAP_BPF + CAP_NET_ADMIN; check kernel.unprivileged_bpf_disabled)";
  return Error{code, message};
}

Status update_sock(int map_fd, const void* key, int sock_fd, const char* map_name) {
  uint64_t value = static_cast<uint64_t>(sock_fd);
  if (bpf_map_update_elem(map_fd, key, &value, BPF_ANY) != 0) {
    int code = errno;
    std::string hint;
    if (code == EOPNOTSUPP) hint = " (this socket kind cannot enter a sockmap on this kernel)";
    if (code == EBUSY) hint = " (the socket already carries another verdict program)";
    return Error{code, std::string("insert socket into ") + map_name + hint};
  }
  return {};
}

// Opens the verdict object with the target-buffer bound (relay.bpf.c built
// with RELAY_TARGET_BOUND) or without it. Both objects have the same maps,
// programs and read-only data, so one skeleton type serves both.
struct relay* open_relay(bool bounded) {
  if (bounded) return relay__open();
  auto* obj = static_cast<struct relay*>(calloc(1, sizeof(struct relay)));
  if (!obj) return nullptr;
  if (int err = relay__create_skeleton(obj); err != 0) {
    relay__destroy(obj);
    errno = -err;
    return nullptr;
  }
  obj->skeleton->data = const_cast<void*>(relay_unbounded__elf_bytes(&obj->skeleton->data_sz));
  if (int err = bpf_object__open_skeleton(obj->skeleton, nullptr); err != 0) {
    relay__destroy(obj);
    errno = -err;
    return nullptr;
  }
  return obj;
}

// Why the bounded verdict program did not load, in the words status prints
// after "target-buffer NOT enforced: ".
std::string bound_failure(int ret) {
  int code = ret < 0 ? -ret : errno;
  if (code == EPERM || code == EACCES)
    return "the verdict program reads the target's kernel backlog through BTF, which needs CAP_PERFMON "
           "(units/README.md \"Capabilities\")";
  return "this kernel cannot load the bound (it needs 6.2+: bpf_cast_to_kern_ctx, bpf_rdonly_cast; " +
         std::string(strerror(code)) + ")";
}

}  // namespace

void SkeletonDeleter::operator()(struct relay* skel) const { relay__destroy(skel); }

BpfRelay::BpfRelay(RelaySkeleton skel, const MapSizes& sizes, std::string bound_unavailable)
    : skel_(std::move(skel)),
      bound_unavailable_(std::move(bound_unavailable)),
      ncpus_(libbpf_num_possible_cpus()),
      sizes_(sizes) {}

BpfRelay::~BpfRelay() {
  // Private instances first: their programs reference the shared maps.
  private_.clear();
  listeners_.clear();
}

namespace {

// Before load: a loaded map's size is fixed.
Status set_map_sizes(struct relay* skel, const MapSizes& sizes) {
  const struct {
    struct bpf_map* map;
    uint32_t entries;
  } sized[] = {
      {skel->maps.relay_sources, sizes.sockets},
      {skel->maps.relay_targets, sizes.sockets},
      {skel->maps.relay_flows, sizes.flows},
      {skel->maps.relay_hold, sizes.flows},
      {skel->maps.relay_passed, sizes.flows},
      {skel->maps.relay_route_stats, sizes.route_slots},
      {skel->maps.relay_target_stats, sizes.route_slots * RELAY_MAX_TARGETS},
      {skel->maps.relay_route_limits, sizes.route_slots},
      {skel->maps.relay_target_backlog, sizes.sockets},
  };
  for (const auto& s : sized)
    if (int ret = bpf_map__set_max_entries(s.map, s.entries); ret != 0)
      return bpf_error(ret,
                       std::string("size map ") + bpf_map__name(s.map) + " to " + std::to_string(s.entries));
  return {};
}

// Opens the bounded (or unbounded) object with its maps sized.
Result<RelaySkeleton> open_sized(bool bounded, const MapSizes& sizes) {
  RelaySkeleton skel(open_relay(bounded));
  if (!skel)
    return bpf_error(-errno,
                     bounded ? "open BPF object relay.bpf.o" : "open BPF object relay_unbounded.bpf.o");
  if (auto st = set_map_sizes(skel.get(), sizes); !st) return st.error();
  return skel;
}

}  // namespace

Result<std::unique_ptr<BpfRelay>> BpfRelay::load(const MapSizes& sizes) {
  auto opened = open_sized(true, sizes);
  if (!opened) return opened.error();
  RelaySkeleton skel = std::move(*opened);
  std::string bound_unavailable;
  if (int ret = relay__load(skel.get()); ret != 0) {
    // libbpf has logged the verifier's words; say once what it means.
    bound_unavailable = bound_failure(ret);
    auto unbounded = open_sized(false, sizes);
    if (!unbounded) return unbounded.error();
    skel = std::move(*unbounded);
    if (int again = relay__load(skel.get()); again != 0)
      return bpf_error(again, "load BPF program relay_verdict");
  }
  // Debian 12's libbpf (1.1) has no sk_skb bpf_link: attach to the map.
  if (bpf_prog_attach(bpf_program__fd(skel->progs.relay_verdict), bpf_map__fd(skel->maps.relay_sources),
                      BPF_SK_SKB_VERDICT, 0) != 0)
    return bpf_error(-errno, "attach relay_verdict to relay_sources (BPF_SK_SKB_VERDICT)");
  return std::unique_ptr<BpfRelay>(new BpfRelay(std::move(skel), sizes, std::move(bound_unavailable)));
}

Status BpfRelay::add_target(uint64_t cookie, int fd) {
  return update_sock(bpf_map__fd(skel_->maps.relay_targets), &cookie, fd, "relay_targets");
}

void BpfRelay::remove_target(uint64_t cookie) {
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.relay_targets), &cookie);
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.relay_target_backlog), &cookie);
}

void BpfRelay::set_target_buffer(uint32_t route_id, uint32_t bytes) {
  struct relay_route_limit limit = {};
  limit.target_buffer = bytes;
  bpf_map_update_elem(bpf_map__fd(skel_->maps.relay_route_limits), &route_id, &limit, BPF_ANY);
}

Status BpfRelay::add_source(uint64_t cookie, int fd) {
  return update_sock(bpf_map__fd(skel_->maps.relay_sources), &cookie, fd, "relay_sources");
}

void BpfRelay::remove_source(uint64_t cookie) {
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.relay_sources), &cookie);
}

Status BpfRelay::add_private_source(uint64_t id, int fd, const PrivateProgram& program) {
  // Without the bound: the bounded object makes libbpf parse the kernel's
  // BTF at every load (~100 ms here under load), which a new flow would
  // wait for. Private instances steer AF_UNIX senders, whose skbs stay
  // charged to the sender's send buffer until sent on, so their backlog is
  // bounded by it (TargetBound.* unix_dgram_to_*).
  RelaySkeleton inst(open_relay(false));
  if (!inst) return bpf_error(-errno, "open private verdict instance");
  inst->rodata->fixed_source = program.fixed_source;
  inst->rodata->new_client_target = program.new_client_target;
  // Share every map but the instance's own relay_private.
  struct {
    struct bpf_map* mine;
    struct bpf_map* shared;
  } reuse[] = {
      {inst->maps.relay_sources, skel_->maps.relay_sources},
      {inst->maps.relay_targets, skel_->maps.relay_targets},
      {inst->maps.relay_flows, skel_->maps.relay_flows},
      {inst->maps.relay_hold, skel_->maps.relay_hold},
      {inst->maps.relay_passed, skel_->maps.relay_passed},
      {inst->maps.relay_route_stats, skel_->maps.relay_route_stats},
      {inst->maps.relay_global_stats, skel_->maps.relay_global_stats},
      {inst->maps.relay_target_stats, skel_->maps.relay_target_stats},
      {inst->maps.relay_route_limits, skel_->maps.relay_route_limits},
      {inst->maps.relay_target_backlog, skel_->maps.relay_target_backlog},
  };
  for (auto& r : reuse) {
    if (int ret = bpf_map__reuse_fd(r.mine, bpf_map__fd(r.shared)); ret != 0)
      return bpf_error(ret, std::string("share map ") + bpf_map__name(r.shared) + " with a private instance");
  }
  if (int ret = relay__load(inst.get()); ret != 0) return bpf_error(ret, "load private verdict instance");
  int map_fd = bpf_map__fd(inst->maps.relay_private);
  if (bpf_prog_attach(bpf_program__fd(inst->progs.relay_verdict), map_fd, BPF_SK_SKB_VERDICT, 0) != 0)
    return bpf_error(-errno, "attach private verdict instance");
  uint32_t slot = 0;
  if (auto st = update_sock(map_fd, &slot, fd, "relay_private"); !st) return st;
  private_[id] = std::move(inst);
  return {};
}

void BpfRelay::remove_private_source(uint64_t id) {
  auto it = private_.find(id);
  if (it == private_.end()) return;
  uint32_t slot = 0;
  bpf_map_delete_elem(bpf_map__fd(it->second->maps.relay_private), &slot);
  private_.erase(it);
}

Status BpfRelay::set_flow(uint64_t key, const FlowEntry& entry) {
  struct relay_flow value = {};
  value.target_cookie = entry.target_cookie;
  value.route_id = entry.route_id;
  value.flags = entry.flags;
  value.balance = entry.balance;
  value.client_hash = entry.client_hash;
  value.n_targets = std::min<uint32_t>(entry.n_targets, RELAY_MAX_TARGETS);
  for (uint32_t i = 0; i < value.n_targets; ++i) {
    value.targets[i] = entry.targets[i];
    value.target_index[i] = entry.target_index[i];
  }
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.relay_flows), &key, &value, BPF_ANY) != 0)
    return errno_error("update relay_flows");
  return {};
}

void BpfRelay::remove_flow(uint64_t key) { bpf_map_delete_elem(bpf_map__fd(skel_->maps.relay_flows), &key); }

uint64_t BpfRelay::flow_last_ns(uint64_t key) {
  struct relay_flow value = {};
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_flows), &key, &value) != 0) return 0;
  return value.last_ns;
}

uint64_t BpfRelay::flow_bytes(uint64_t key) {
  struct relay_flow value = {};
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_flows), &key, &value) != 0) return 0;
  return value.bytes;
}

uint32_t BpfRelay::flow_dropped(uint64_t key) {
  struct relay_flow value = {};
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_flows), &key, &value) != 0) return 0;
  return value.dropped;
}

Status BpfRelay::hold_flow(uint64_t key, uint64_t channel) {
  uint64_t zero = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.relay_passed), &key, &zero, BPF_ANY) != 0)
    return errno_error("update relay_passed");
  return set_forwarded(key, channel, RELAY_HOLD_LEFTOVERS);
}

// The whole value of relay_hold: the verdict program only reads it.
Status BpfRelay::set_forwarded(uint64_t key, uint64_t channel, uint64_t forwarded) {
  struct relay_hold value = {};
  value.forwarded = forwarded;
  value.channel = channel;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.relay_hold), &key, &value, BPF_ANY) != 0)
    return errno_error("update relay_hold");
  return {};
}

uint64_t BpfRelay::held_passed(uint64_t key) {
  uint64_t passed = 0;
  bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_passed), &key, &passed);
  return passed;
}

void BpfRelay::release_hold(uint64_t key) {
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.relay_hold), &key);
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.relay_passed), &key);
}

Status BpfRelay::keep_listener_datagrams(uint64_t cookie, int fd) {
  auto lookup = ListenerLookup::attach(fd);
  if (!lookup) return lookup.error();
  listeners_[cookie] = std::move(*lookup);
  return {};
}

void BpfRelay::release_listener(uint64_t cookie) { listeners_.erase(cookie); }

KernelCounts BpfRelay::route_counters(uint32_t route_id) const {
  std::vector<struct relay_route_stats> per_cpu(ncpus_);
  KernelCounts sum;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_route_stats), &route_id, per_cpu.data()) != 0)
    return sum;
  for (const auto& s : per_cpu) {
    sum.packets += s.packets;
    sum.bytes += s.bytes;
    sum.drop_no_target += s.drop_no_target;
    sum.drop_policy += s.drop_policy;
    sum.drop_target_full += s.drop_target_full;
  }
  return sum;
}

void BpfRelay::reset_route_counters(uint32_t route_id) {
  std::vector<struct relay_route_stats> zero_route(ncpus_);
  bpf_map_update_elem(bpf_map__fd(skel_->maps.relay_route_stats), &route_id, zero_route.data(), BPF_ANY);
  for (uint32_t t = 0; t < RELAY_MAX_TARGETS; ++t) reset_target_counters(route_id, t);
}

void BpfRelay::reset_target_counters(uint32_t route_id, uint32_t target_index) {
  std::vector<struct relay_target_stats> zero(ncpus_);
  uint32_t slot = route_id * RELAY_MAX_TARGETS + target_index;
  bpf_map_update_elem(bpf_map__fd(skel_->maps.relay_target_stats), &slot, zero.data(), BPF_ANY);
}

KernelCounts BpfRelay::target_counters(uint32_t route_id, uint32_t target_index) const {
  std::vector<struct relay_target_stats> per_cpu(ncpus_);
  KernelCounts sum;
  uint32_t slot = route_id * RELAY_MAX_TARGETS + target_index;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_target_stats), &slot, per_cpu.data()) != 0)
    return sum;
  for (const auto& s : per_cpu) {
    sum.packets += s.packets;
    sum.bytes += s.bytes;
    sum.drop_target_full += s.drop_target_full;
  }
  return sum;
}

GlobalCounters BpfRelay::global_counters() const {
  GlobalCounters g;
  std::vector<uint64_t> per_cpu(ncpus_);
  auto read = [&](uint32_t index) {
    uint64_t total = 0;
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.relay_global_stats), &index, per_cpu.data()) == 0)
      for (uint64_t v : per_cpu) total += v;
    return total;
  };
  g.unknown_source = read(RELAY_GLOBAL_UNKNOWN_SOURCE);
  g.bad_route = read(RELAY_GLOBAL_BAD_ROUTE);
  g.tag_failed = read(RELAY_GLOBAL_TAG_FAILED);
  g.new_client_lost = read(RELAY_GLOBAL_NEW_CLIENT_LOST);
  g.all_targets_down = read(RELAY_GLOBAL_ALL_TARGETS_DOWN);
  return g;
}

}  // namespace sockrelay
