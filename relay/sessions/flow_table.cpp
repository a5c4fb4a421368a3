// Two timing wheels of flows (see flow_table.h): every flow sits in the slot
// of the last activity user space knows of, which is never later than its
// real one; a visit reads the real one and moves the flow on.
#include "sessions/flow_table.h"

#include <algorithm>
#include <utility>

namespace sockrelay {

FlowTable::FlowTable(Rules rules, Probe probe) : rules_(rules), probe_(std::move(probe)) {
  wheels_[kUnreplied].timeout_ns = rules_.unreplied_ns;
  wheels_[kEstablished].timeout_ns = rules_.established_ns;
  for (Wheel& w : wheels_) w.width_ns = std::max<uint64_t>(1, w.timeout_ns / kSlotsPerTimeout);
}

void FlowTable::insert(Node& node, uint64_t now) {
  erase(node);
  node.replied_ = false;
  place(node, kUnreplied, now);
}

void FlowTable::erase(Node& node) {
  if (node.in_table()) unlink(node);
}

void FlowTable::place(Node& node, uint8_t wheel, uint64_t when) {
  Wheel& w = wheels_[wheel];
  uint64_t slot = when / w.width_ns;
  if (w.count == 0) {
    w.cursor = w.newest = slot;  // an empty wheel starts where its first flow is
  } else if (slot < w.cursor && slot + kSlots > w.newest) {
    w.cursor = slot;  // older than every flow so far, and the ring reaches back to it
  }
  // Never more than a turn of the ring from the cursor: a flow that would
  // be is placed nearer, and visited early, which costs one probe, never
  // late.
  slot = std::clamp(slot, w.cursor, w.cursor + kSlots - 1);
  w.newest = std::max(w.newest, slot);
  Slot& s = w.slots[slot % kSlots];
  node.prev_ = s.tail;
  node.next_ = nullptr;
  if (s.tail)
    s.tail->next_ = &node;
  else
    s.head = &node;
  s.tail = &node;
  node.slot_ = slot;
  node.wheel_ = wheel;
  ++w.count;
}

void FlowTable::unlink(Node& node) {
  Wheel& w = wheels_[node.wheel_];
  Slot& s = w.slots[node.slot_ % kSlots];
  if (node.prev_)
    node.prev_->next_ = node.next_;
  else
    s.head = node.next_;
  if (node.next_)
    node.next_->prev_ = node.prev_;
  else
    s.tail = node.prev_;
  node.prev_ = node.next_ = nullptr;
  node.wheel_ = Node::kNone;
  --w.count;
}

uint64_t FlowTable::look(Node& node) {
  ++visits_;
  Seen seen = probe_(node);
  if (seen.replied) node.replied_ = true;
  if (seen.replied && seen.conversation && node.wheel_ == kUnreplied) {
    unlink(node);
    place(node, kEstablished, seen.last_ns);
  }
  return seen.last_ns;
}

bool FlowTable::moved_on(Node& node, uint8_t wheel, uint64_t slot, uint64_t last) {
  if (last / wheels_[wheel].width_ns <= slot) return false;
  unlink(node);
  place(node, wheel, last);
  return node.slot_ != slot;
}

size_t FlowTable::expire(uint64_t now, const Expire& on_expired) {
  // Unreplied first: a flow found replied there moves to the established
  // wheel, and is judged by idle-timeout in the same call.
  return sweep(kUnreplied, now, on_expired) + sweep(kEstablished, now, on_expired);
}

// The slots whose every flow is silent for longer than the timeout as far
// as user space knows; a slot partly so waits for the next tick (an expiry
// is late by at most a slot, 1/32 of the timeout, plus a tick).
size_t FlowTable::sweep(uint8_t wheel, uint64_t now, const Expire& on_expired) {
  Wheel& w = wheels_[wheel];
  size_t expired = 0;
  while (w.count > 0) {
    uint64_t slot = w.cursor;
    if ((slot + 1) * w.width_ns + w.timeout_ns > now) break;
    Slot& s = w.slots[slot % kSlots];
    while (s.head) {
      Node& node = *s.head;
      uint64_t last = look(node);
      if (node.wheel_ != wheel) continue;  // replied after all: established now
      if (now - std::min(now, last) > w.timeout_ns) {
        unlink(node);  // before the callee frees it
        on_expired(node);
        ++expired;
      } else {
        // Active after user space placed it: to its real slot, later than
        // this one (last >= now - timeout >= this slot's end).
        unlink(node);
        place(node, wheel, last);
      }
    }
    w.cursor = std::max(w.cursor, slot + 1);
  }
  return expired;
}

FlowTable::Node* FlowTable::oldest(uint8_t wheel) {
  Wheel& w = wheels_[wheel];
  if (w.count == 0) return nullptr;
  // Empty slots before the first flow hold nothing: the cursor moves past.
  for (size_t i = 0; i < kSlots; ++i, ++w.cursor)
    if (Node* head = w.slots[w.cursor % kSlots].head) return head;
  return nullptr;  // not reached: count > 0 means a slot holds a flow
}

FlowTable::Node* FlowTable::settled_oldest(uint8_t wheel, int& budget, uint64_t& last) {
  for (Node* node = oldest(wheel); node; node = oldest(wheel)) {
    uint64_t slot = node->slot_;
    last = look(*node);
    --budget;
    if (node->wheel_ != wheel) {  // replied after all: not a candidate here
      if (budget <= 0) return nullptr;
      continue;
    }
    if (budget <= 0 || !moved_on(*node, wheel, slot, last)) return node;
  }
  return nullptr;
}

// Only a flow placed before the cutoff can have been silent since (a flow
// is never placed after its last activity), so only the slots that start
// before it are searched, oldest first, each flow moved to its real slot
// as it is read. None found: every established flow was active within the
// window (or the visits ran out), and the newcomer is refused.
FlowTable::Node* FlowTable::unprotected(uint64_t now, int& budget) {
  if (now < rules_.protect_ns || !oldest(kEstablished)) return nullptr;
  uint64_t cutoff = now - rules_.protect_ns;
  Wheel& w = wheels_[kEstablished];
  for (uint64_t slot = w.cursor; slot < w.cursor + kSlots && slot * w.width_ns <= cutoff; ++slot) {
    Node* node = w.slots[slot % kSlots].head;
    while (node && budget > 0) {
      Node* next = node->next_;  // stays in this slot: look() moves no other flow
      uint64_t last = look(*node);
      --budget;
      if (last <= cutoff) return node;
      moved_on(*node, kEstablished, slot, last);
      node = next;
    }
  }
  return nullptr;
}

// An unreplied flow is protected too while it was active within the
// window: its request may still be on its way to the target and back.
// Evicted at once, its answer met a closed socket (measured, 100,000
// clients over 60 s through a full table: 26 % unanswered, almost none of
// them counted by the relay, each the newest flow evicted by the next new
// client). The oldest flow of the wheel is the least recently active one:
// if it is an unreplied one and protected, every unreplied flow is. An
// answered one (a reply came, its client has not sent again) goes at any
// age: with one-request clients (DNS-like) that is what lets a full table
// take thousands of new clients a second; a client that sends again after
// its reply is established, and protected like any.
FlowTable::Node* FlowTable::victim(uint64_t now) {
  int budget = kMaxEvictionVisits;
  uint64_t last = 0;
  Node* node = settled_oldest(kUnreplied, budget, last);
  if (node && (node->replied_ || last + rules_.protect_ns <= now)) return node;
  return unprotected(now, budget);
}

}  // namespace sockrelay
