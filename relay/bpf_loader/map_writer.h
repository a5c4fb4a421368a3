// What sessions need from the BPF side, as an interface: the real one
// (BpfRelay) writes the kernel maps; unit tests pass a fake and run
// without privilege.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "common/result.h"
#include "relay_shared.h"
#include "report/kernel_counts.h"

namespace sockrelay {

struct FlowEntry {
  uint64_t target_cookie = 0;  // key of the partner in the targets map
  uint32_t route_id = 0;
  uint32_t flags = 0;  // RELAY_FLOW_* from bpf/relay_shared.h
  // Several targets (`to = [...]`): RELAY_BALANCE_* and the keys of the
  // targets that are up, compacted, with each one's index in `to`.
  uint32_t balance = 0;
  uint32_t n_targets = 0;
  uint32_t client_hash = 0;  // for RELAY_BALANCE_HASH: a stable hash of the client's address
  std::array<uint64_t, RELAY_MAX_TARGETS> targets{};
  std::array<uint8_t, RELAY_MAX_TARGETS> target_index{};
};

class MapWriter {
 public:
  virtual ~MapWriter() = default;

  // A socket we may redirect to, keyed by its own cookie.
  virtual Status add_target(uint64_t cookie, int fd) = 0;
  virtual void remove_target(uint64_t cookie) = 0;

  // A socket whose skbs the shared verdict program steers, keyed by cookie.
  virtual Status add_source(uint64_t cookie, int fd) = 0;
  virtual void remove_source(uint64_t cookie) = 0;

  // A socket that gets a verdict program instance of its own, known by `id`
  // until removed. AF_UNIX shows the program the sender, not the receiving
  // socket, so such sockets need per-socket constants:
  struct PrivateProgram {
    uint64_t fixed_source = 0;       // look every skb up under this key instead
    uint64_t new_client_target = 0;  // unknown senders: tag and redirect here
  };
  virtual Status add_private_source(uint64_t id, int fd, const PrivateProgram& program) = 0;
  virtual void remove_private_source(uint64_t id) = 0;

  virtual Status set_flow(uint64_t key, const FlowEntry& entry) = 0;
  virtual void remove_flow(uint64_t key) = 0;
  // When the flow's last skb passed the verdict program, 0 if none:
  // bpf_ktime_get_coarse_ns(), CLOCK_MONOTONIC at tick resolution, so it
  // compares with monotonic_ns() (common/clock.h) to within a tick.
  virtual uint64_t flow_last_ns(uint64_t key) = 0;
  // The hold of a flow being set up (bpf/relay_shared.h, struct relay_hold):
  // hold_flow() starts it (passed 0, forwarded RELAY_HOLD_LEFTOVERS), before
  // the flow entry with RELAY_FLOW_HOLD is written; set_forwarded() says how
  // many held datagrams user space forwarded; held_passed() how many the
  // verdict program passed up; release_hold() ends it (after the flow entry
  // lost RELAY_FLOW_HOLD).
  virtual Status hold_flow(uint64_t key, uint64_t channel) = 0;
  virtual Status set_forwarded(uint64_t key, uint64_t channel, uint64_t forwarded) = 0;
  virtual uint64_t held_passed(uint64_t key) = 0;
  virtual void release_hold(uint64_t key) = 0;
  // Payload bytes the verdict program redirected for this flow so far.
  // Not pure: fakes that never redirect need not implement it.
  virtual uint64_t flow_bytes(uint64_t /*key*/) { return 0; }
  // skbs of this flow the verdict program dropped itself (relay_flow.dropped).
  // Fakes that never drop need not implement it.
  virtual uint32_t flow_dropped(uint64_t /*key*/) { return 0; }
  // Zeroes the per-target counters of `to[target_index]` of a route, for a
  // slot a new subscriber takes over. Fakes need not implement it.
  virtual void reset_target_counters(uint32_t /*route_id*/, uint32_t /*target_index*/) {}
  // A UDP listener of a kernel route, known by its cookie: every datagram
  // to its address that no connected socket takes goes to it, so a flow
  // socket bound and not yet connected catches none
  // (bpf/listener_lookup.bpf.c). Fakes need not implement it.
  virtual Status keep_listener_datagrams(uint64_t /*cookie*/, int /*fd*/) {
    return plain_error("no SK_LOOKUP program here");
  }
  virtual void release_listener(uint64_t /*cookie*/) {}

  // What the verdict program counted for a route, and for `to[target_index]`
  // of it (or a subscriber's slot), for `status`. Fakes count nothing.
  virtual KernelCounts route_counters(uint32_t /*route_id*/) const { return {}; }
  virtual KernelCounts target_counters(uint32_t /*route_id*/, uint32_t /*target_index*/) const { return {}; }
};

}  // namespace sockrelay
