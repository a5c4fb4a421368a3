// A MapWriter that keeps the maps in memory, for unit tests of the routes
// without privilege: what is in each map now, and every call in order (a
// route must add a socket as a target before it steers it as a source, and
// take it out of the sources first). It never redirects anything, so the
// byte counts the verdict program would keep are whatever a test sets.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "bpf_loader/map_writer.h"

namespace sockrelay {

class FakeMaps : public MapWriter {
 public:
  // One call the route made, e.g. {"add_source", 4097}.
  struct Call {
    std::string op;
    uint64_t key = 0;
    bool operator==(const Call&) const = default;
  };

  Status add_target(uint64_t cookie, int fd) override {
    record("add_target", cookie);
    targets.insert(cookie);
    target_fds[cookie] = fd;
    return {};
  }
  void remove_target(uint64_t cookie) override {
    record("remove_target", cookie);
    targets.erase(cookie);
    target_fds.erase(cookie);
  }
  Status add_source(uint64_t cookie, int) override {
    if (fail_add_source) return plain_error("add_source refused by the test");
    record("add_source", cookie);
    sources.insert(cookie);
    return {};
  }
  void remove_source(uint64_t cookie) override {
    record("remove_source", cookie);
    sources.erase(cookie);
  }
  Status add_private_source(uint64_t id, int, const PrivateProgram& program) override {
    if (fail_add_private_source) return plain_error("add_private_source refused by the test");
    record("add_private_source", id);
    privates[id] = program;
    return {};
  }
  void remove_private_source(uint64_t id) override {
    record("remove_private_source", id);
    privates.erase(id);
  }
  Status set_flow(uint64_t key, const FlowEntry& entry) override {
    record("set_flow", key);
    flows[key] = entry;
    return {};
  }
  void remove_flow(uint64_t key) override {
    record("remove_flow", key);
    flows.erase(key);
  }
  uint64_t flow_last_ns(uint64_t key) override {
    auto it = last_ns.find(key);
    return it == last_ns.end() ? 0 : it->second;
  }
  uint64_t flow_bytes(uint64_t key) override {
    auto it = redirected.find(key);
    return it == redirected.end() ? 0 : it->second;
  }
  Status hold_flow(uint64_t key, uint64_t channel) override {
    record("hold_flow", key);
    passed[key] = 0;
    holds[key] = {RELAY_HOLD_LEFTOVERS, channel};
    if (on_hold) on_hold(key);
    return {};
  }
  Status set_forwarded(uint64_t key, uint64_t channel, uint64_t forwarded) override {
    record("set_forwarded", key);
    holds[key] = {forwarded, channel};
    return {};
  }
  uint64_t held_passed(uint64_t key) override {
    auto it = passed.find(key);
    return it == passed.end() ? 0 : it->second;
  }
  void release_hold(uint64_t key) override {
    record("release_hold", key);
    holds.erase(key);
    passed.erase(key);
  }
  // What the verdict program would do with the next skb of flow `key`:
  // true when it goes straight to the target; false when it is passed up
  // (counted in `passed`, as the program would).
  bool verdict_redirects(uint64_t key) {
    auto flow = flows.find(key);
    if (flow == flows.end() || !(flow->second.flags & RELAY_FLOW_HOLD)) return true;
    auto hold = holds.find(key);
    auto p = passed.find(key);
    if (hold == holds.end() || p == passed.end() || p->second == hold->second.forwarded) return true;
    ++p->second;
    return false;
  }
  void reset_target_counters(uint32_t route_id, uint32_t target_index) override {
    counter_resets.emplace_back(route_id, target_index);
  }

  bool empty() const {
    return targets.empty() && sources.empty() && privates.empty() && flows.empty() && holds.empty() &&
           passed.empty();
  }
  // How many calls of `op` were made, for any key.
  size_t count(const std::string& op) const {
    size_t n = 0;
    for (const Call& c : calls) n += c.op == op ? 1 : 0;
    return n;
  }
  // Position of the first call {op, key} in `calls`, or calls.size().
  size_t first(const std::string& op, uint64_t key) const {
    for (size_t i = 0; i < calls.size(); ++i)
      if (calls[i] == Call{op, key}) return i;
    return calls.size();
  }

  // Set by a test: runs when a flow goes on hold, e.g. to play the verdict
  // program passing datagrams up (send them to holds[key].channel's fd,
  // tagged held, and raise passed[key]).
  std::function<void(uint64_t key)> on_hold;
  // Set by a test: the next add_source / add_private_source fails.
  bool fail_add_source = false, fail_add_private_source = false;
  std::set<uint64_t> targets, sources;
  std::map<uint64_t, int> target_fds;  // what the verdict program would redirect to
  std::map<uint64_t, PrivateProgram> privates;
  std::map<uint64_t, FlowEntry> flows;
  struct Hold {
    uint64_t forwarded = 0, channel = 0;
  };
  std::map<uint64_t, Hold> holds;       // relay_hold
  std::map<uint64_t, uint64_t> passed;  // relay_passed, as the verdict program would count
  std::vector<Call> calls;
  std::vector<std::pair<uint32_t, uint32_t>> counter_resets;  // (route, target index)
  // What the verdict program would report, set by the test.
  std::map<uint64_t, uint64_t> last_ns;     // flow_last_ns
  std::map<uint64_t, uint64_t> redirected;  // flow_bytes

 private:
  void record(const char* op, uint64_t key) { calls.push_back({op, key}); }
};

}  // namespace sockrelay
