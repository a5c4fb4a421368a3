// The datagram flows of one route, kept the way conntrack keeps UDP: a flow
// is established once it saw a reply and is a conversation (its client sent
// again; conntrack's "assured"); an established flow expires after
// idle-timeout, any other (unreplied, or answered once: one request, one
// reply, like a DNS query) after unreplied-timeout. At max-sessions the
// route evicts a flow that is not established, oldest first: an answered
// one at any age (its request was answered), an unreplied one only once
// silent for the protection window (its answer may still be on its way);
// else the least recently active established flow silent for the
// protection window. When none may go, the new client is refused.
//
// Cost: O(1) amortized per flow, never a scan of every flow. Flows sit in
// two timing wheels (not established, established), each a ring of slots of
// 1/32 of its timeout, in the slot of the last activity user space knows
// of. The verdict program stamps each flow's last skb in the kernel map
// without telling user space, so a flow's slot may be older than its real
// activity, never newer. A tick visits only the slots whose flows are all
// older than the timeout by what user space knows; each visited flow's
// real activity is read (the probe: one map lookup per socket of the flow)
// and it either expires or moves to the slot of that activity, not to be
// visited again before it could expire. Eviction takes the oldest slot's
// first flow the same way. See ARCHITECTURE.md "The datagram flow table".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace sockrelay {

class FlowTable {
 public:
  struct Rules {
    uint64_t unreplied_ns = 30'000'000'000;     // unreplied-timeout
    uint64_t established_ns = 120'000'000'000;  // idle-timeout
    // A flow active more recently than this is never evicted: a flood of
    // new clients cannot push out clients in use, nor a request still
    // waiting for its answer.
    uint64_t protect_ns = 1'000'000'000;
  };
  // What the probe reads for a flow: its last activity either way (the
  // later of user space's and the verdict program's), whether anything
  // ever came back from a target, and whether its client sent more than
  // one datagram (a conversation).
  struct Seen {
    uint64_t last_ns = 0;
    bool replied = false;
    bool conversation = true;
  };

  // A flow's place in the table, a base of the flow itself (no allocation;
  // the flow's owner casts back with static_cast).
  class Node {
   public:
    Node() = default;
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    bool replied() const { return replied_; }
    bool established() const { return wheel_ == kEstablished; }
    bool in_table() const { return wheel_ != kNone; }

   private:
    friend class FlowTable;
    static constexpr uint8_t kNone = 0xff;
    Node* prev_ = nullptr;
    Node* next_ = nullptr;
    uint64_t slot_ = 0;  // absolute slot number: placed time / slot width
    uint8_t wheel_ = kNone;
    bool replied_ = false;
  };

  using Probe = std::function<Seen(Node&)>;
  // Called for a flow that expired, already out of the table; the callee
  // tears it down (its erase() is a no-op).
  using Expire = std::function<void(Node&)>;

  // Visits per admission before the eviction stops refreshing candidates
  // and judges the next one on what the probe says (an approximate LRU in
  // a pathological case: every candidate busier than user space knew).
  static constexpr int kMaxEvictionVisits = 64;

  FlowTable(Rules rules, Probe probe);
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  // A new flow, unreplied, last active `now`.
  void insert(Node& node, uint64_t now);
  // The flow leaves the table (any reason); a no-op if it is not in it.
  void erase(Node& node);
  // Expires the flows silent for longer than their timeout; returns how
  // many. Visits only flows that may have expired.
  size_t expire(uint64_t now, const Expire& on_expired);
  // At max-sessions: the flow to evict by the rules above, or nullptr when
  // none may be. The caller tears it down (and erase()s it).
  Node* victim(uint64_t now);

  size_t size() const { return wheels_[0].count + wheels_[1].count; }
  size_t unreplied() const { return wheels_[kUnreplied].count; }
  size_t established() const { return wheels_[kEstablished].count; }
  // Probe calls so far: what a tick or an admission cost, for tests and
  // the benchmark.
  uint64_t visits() const { return visits_; }
  const Rules& rules() const { return rules_; }

 private:
  static constexpr size_t kSlots = 64;
  static constexpr uint64_t kSlotsPerTimeout = 32;  // the other half: slack for a late tick
  static constexpr uint8_t kUnreplied = 0, kEstablished = 1;

  struct Slot {
    Node* head = nullptr;
    Node* tail = nullptr;
  };
  struct Wheel {
    uint64_t timeout_ns = 0;
    uint64_t width_ns = 1;  // of a slot
    uint64_t cursor = 0;    // absolute number of the oldest slot that may hold flows
    uint64_t newest = 0;    // ...and of the newest one that held one since the wheel was empty
    size_t count = 0;
    std::array<Slot, kSlots> slots{};
  };

  void place(Node& node, uint8_t wheel, uint64_t when);
  void unlink(Node& node);
  // The probe, and what it says applied: a reply seen moves the flow to the
  // established wheel. Returns its last activity.
  uint64_t look(Node& node);
  // After look(): true when the flow is in a later slot than before (it
  // was active after user space last placed it).
  bool moved_on(Node& node, uint8_t wheel, uint64_t slot, uint64_t last);
  size_t sweep(uint8_t wheel, uint64_t now, const Expire& on_expired);
  Node* oldest(uint8_t wheel);
  // The oldest flow of `wheel`, refreshed until its slot is right (within
  // `budget` visits); nullptr if the wheel is empty.
  Node* settled_oldest(uint8_t wheel, int& budget, uint64_t& last);
  // The least recently active established flow silent for protect_ns or
  // more (within a slot, and within `budget` visits), else nullptr.
  Node* unprotected(uint64_t now, int& budget);

  Rules rules_;
  Probe probe_;
  std::array<Wheel, 2> wheels_;
  uint64_t visits_ = 0;
};

}  // namespace sockrelay
