// FlowTable's rules against FakeMaps standing in for the verdict program's
// stamps: the two timeouts, eviction order (answered-once and unreplied
// oldest first, then the least recently active established flow), the
// protection window that
// refuses instead, and that a tick visits only the flows that may expire.
// Time is passed in, so nothing here sleeps.
#include "sessions/flow_table.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "common/clock.h"
#include "fake_maps.h"

namespace sockrelay {
namespace {

constexpr uint64_t kSec = 1'000'000'000;

// A flow as the table sees it: the key of its client-side flow entry and of
// its reply flow entry in the (fake) map, as a datagram route has them.
struct TestFlow : FlowTable::Node {
  uint64_t forward_key = 0;
  uint64_t reply_key = 0;
  uint64_t user_last_ns = 0;
  bool one_request = false;  // its client sent one datagram so far
  bool closed = false;
};

class FlowTableTest : public ::testing::Test {
 protected:
  FlowTable::Rules rules() {
    FlowTable::Rules r;
    r.unreplied_ns = 30 * kSec;
    r.established_ns = 120 * kSec;
    r.protect_ns = 1 * kSec;
    return r;
  }
  // Reads the fake map as DatagramRoute::probe() reads the real one.
  FlowTable::Seen probe(FlowTable::Node& node) {
    auto& f = static_cast<TestFlow&>(node);
    FlowTable::Seen seen{f.user_last_ns, false, !f.one_request};
    if (uint64_t reply = maps_.flow_last_ns(f.reply_key)) {
      seen.replied = true;
      seen.last_ns = std::max(seen.last_ns, reply);
    }
    seen.last_ns = std::max(seen.last_ns, maps_.flow_last_ns(f.forward_key));
    return seen;
  }
  std::unique_ptr<FlowTable> make() {
    return std::make_unique<FlowTable>(rules(), [this](FlowTable::Node& n) { return probe(n); });
  }
  TestFlow& add(FlowTable& table, uint64_t now) {
    flows_.push_back(std::make_unique<TestFlow>());
    TestFlow& f = *flows_.back();
    f.forward_key = 1000 + 2 * flows_.size();
    f.reply_key = f.forward_key + 1;
    f.user_last_ns = now;
    table.insert(f, now);
    return f;
  }
  // The verdict program carried a datagram of the client / of the target.
  void client_sent(TestFlow& f, uint64_t at) { maps_.last_ns[f.forward_key] = at; }
  void target_replied(TestFlow& f, uint64_t at) { maps_.last_ns[f.reply_key] = at; }
  size_t expire(FlowTable& table, uint64_t now) {
    return table.expire(now, [](FlowTable::Node& n) { static_cast<TestFlow&>(n).closed = true; });
  }

  FakeMaps maps_;
  std::vector<std::unique_ptr<TestFlow>> flows_;
  const uint64_t t0_ = 1000 * kSec;  // an arbitrary monotonic time
};

TEST_F(FlowTableTest, UnrepliedFlowExpiresAtTheShorterTimeout) {
  auto table = make();
  TestFlow& unreplied = add(*table, t0_);
  TestFlow& replied = add(*table, t0_);
  target_replied(replied, t0_ + kSec / 10);
  EXPECT_EQ(expire(*table, t0_ + 29 * kSec), 0u);
  EXPECT_FALSE(unreplied.closed);
  // Within a slot (1/32 of the timeout) after it is due.
  EXPECT_EQ(expire(*table, t0_ + 32 * kSec), 1u);
  EXPECT_TRUE(unreplied.closed);
  EXPECT_FALSE(replied.closed) << "a flow that saw a reply lives for idle-timeout";
  EXPECT_TRUE(replied.replied());
  EXPECT_EQ(table->established(), 1u);
  EXPECT_EQ(expire(*table, t0_ + 119 * kSec), 0u);
  EXPECT_EQ(expire(*table, t0_ + 125 * kSec), 1u);
  EXPECT_TRUE(replied.closed);
  EXPECT_EQ(table->size(), 0u);
}

TEST_F(FlowTableTest, KernelActivityKeepsAFlowAliveAndItExpiresAfterItsLastDatagram) {
  auto table = make();
  TestFlow& f = add(*table, t0_);
  target_replied(f, t0_ + kSec);
  client_sent(f, t0_ + 100 * kSec);  // the verdict program's stamp, unknown to user space
  EXPECT_EQ(expire(*table, t0_ + 200 * kSec), 0u);
  EXPECT_FALSE(f.closed);
  EXPECT_EQ(expire(*table, t0_ + 219 * kSec), 0u);
  EXPECT_EQ(expire(*table, t0_ + 225 * kSec), 1u) << "120 s after its last datagram, within a slot";
  EXPECT_TRUE(f.closed);
}

TEST_F(FlowTableTest, NeverExpiresEarlyWhateverTheTickTimes) {
  auto table = make();
  std::vector<TestFlow*> flows;
  for (int i = 0; i < 200; ++i) {
    TestFlow& f = add(*table, t0_ + i * kSec / 10);
    target_replied(f, t0_ + i * kSec / 10);
    flows.push_back(&f);
  }
  for (uint64_t now = t0_; now < t0_ + 200 * kSec; now += 370'000'000) {
    expire(*table, now);
    for (TestFlow* f : flows)
      if (f->closed) {
        EXPECT_GT(now - f->user_last_ns, 120 * kSec);
      }
  }
  for (TestFlow* f : flows) EXPECT_TRUE(f->closed);
}

TEST_F(FlowTableTest, EvictsUnrepliedOldestFirstThenLeastRecentlyActive) {
  auto table = make();
  TestFlow& busy = add(*table, t0_);
  TestFlow& quiet = add(*table, t0_ + kSec);
  TestFlow& old_unreplied = add(*table, t0_ + 2 * kSec);
  TestFlow& new_unreplied = add(*table, t0_ + 3 * kSec);
  target_replied(busy, t0_ + kSec);
  target_replied(quiet, t0_ + 2 * kSec);
  client_sent(busy, t0_ + 8 * kSec);  // busier than user space knows
  // An unreplied flow that turns out replied is not a candidate.
  target_replied(old_unreplied, t0_ + 4 * kSec);
  uint64_t now = t0_ + 10 * kSec;
  EXPECT_EQ(table->victim(now), &new_unreplied);
  table->erase(new_unreplied);
  // Established now: the least recently active, whatever the order they came in.
  EXPECT_EQ(table->victim(now), &quiet);
  table->erase(quiet);
  EXPECT_EQ(table->victim(now), &old_unreplied);
  table->erase(old_unreplied);
  EXPECT_EQ(table->victim(now), &busy);
}

TEST_F(FlowTableTest, AnUnrepliedFlowWaitingForItsAnswerIsNotEvicted) {
  auto table = make();
  TestFlow& established = add(*table, t0_);
  target_replied(established, t0_ + kSec / 10);
  TestFlow& waiting = add(*table, t0_ + 5 * kSec);  // its request just went out
  uint64_t now = t0_ + 5 * kSec + kSec / 2;
  EXPECT_EQ(table->victim(now), &established) << "the unreplied flow is half a second old: protected";
  table->erase(established);
  EXPECT_EQ(table->victim(now), nullptr) << "no flow silent for the window: the newcomer is refused";
  EXPECT_EQ(table->victim(t0_ + 6 * kSec + kSec / 10), &waiting) << "silent for 1.1 s: evictable";
}

// One request, one reply (DNS-like): not established. It expires at the
// shorter timeout, and a full table may evict it at any age, before an
// established flow and before an unreplied one still waiting for its answer.
TEST_F(FlowTableTest, AnAnsweredOnceFlowIsEvictableAtAnyAgeAndExpiresAtTheShorterTimeout) {
  auto table = make();
  TestFlow& established = add(*table, t0_);
  target_replied(established, t0_ + kSec / 10);
  client_sent(established, t0_ + kSec / 5);
  TestFlow& answered = add(*table, t0_ + 2 * kSec);
  answered.one_request = true;
  target_replied(answered, t0_ + 2 * kSec + kSec / 100);
  TestFlow& waiting = add(*table, t0_ + 3 * kSec);  // its request just went out
  uint64_t now = t0_ + 3 * kSec + kSec / 10;
  EXPECT_EQ(table->victim(now), &answered) << "answered 0.1 s ago, yet evictable";
  EXPECT_TRUE(answered.replied());
  EXPECT_FALSE(answered.established());
  EXPECT_TRUE(established.established());
  table->erase(answered);
  EXPECT_EQ(table->victim(now), &established) << "silent for 2.9 s; the unreplied one is protected";
  table->erase(established);
  EXPECT_EQ(table->victim(now), nullptr);
  EXPECT_FALSE(waiting.replied());

  // Expiry: an answered-once flow at unreplied-timeout; its client sending
  // again makes it established (idle-timeout).
  auto table2 = make();
  TestFlow& once = add(*table2, t0_);
  once.one_request = true;
  target_replied(once, t0_ + kSec / 10);
  TestFlow& again = add(*table2, t0_);
  again.one_request = true;
  target_replied(again, t0_ + kSec / 10);
  again.one_request = false;  // it sent again
  EXPECT_EQ(expire(*table2, t0_ + 32 * kSec), 1u);
  EXPECT_TRUE(once.closed);
  EXPECT_FALSE(again.closed);
  EXPECT_TRUE(again.established());
}

TEST_F(FlowTableTest, RefusesWhenEveryEstablishedFlowWasActiveWithinTheProtection) {
  auto table = make();
  std::vector<TestFlow*> flows;
  for (int i = 0; i < 10; ++i) {
    TestFlow& f = add(*table, t0_);
    target_replied(f, t0_ + kSec / 2);
    flows.push_back(&f);
  }
  uint64_t now = t0_ + 5 * kSec;
  for (TestFlow* f : flows) client_sent(*f, now - kSec / 2);  // all in use...
  client_sent(*flows[3], now - 9 * kSec / 10);                // ...this one a little less
  EXPECT_EQ(table->victim(now), nullptr)
      << "every flow active within the last second: the newcomer is refused";
  EXPECT_EQ(table->victim(now + kSec / 5), flows[3]) << "silent for 1.1 s: evictable, the others are not";
  EXPECT_LE(table->visits(), 3u * flows.size()) << "each flow read about once per admission";
}

TEST_F(FlowTableTest, AnEvictionVisitsABoundedNumberOfFlows) {
  auto table = make();
  for (int i = 0; i < 1000; ++i) {
    TestFlow& f = add(*table, t0_);
    target_replied(f, t0_);
    client_sent(f, t0_ + 10 * kSec);  // all busy, unknown to user space
  }
  uint64_t before = table->visits();
  EXPECT_EQ(table->victim(t0_ + 10 * kSec), nullptr);
  EXPECT_LE(table->visits() - before, static_cast<uint64_t>(FlowTable::kMaxEvictionVisits) + 1);
}

TEST_F(FlowTableTest, ATickVisitsOnlyTheFlowsThatMayHaveExpired) {
  auto table = make();
  constexpr int kFlows = 10'000;
  for (int i = 0; i < kFlows; ++i) {
    TestFlow& f = add(*table, t0_ + static_cast<uint64_t>(i) * 12'000'000);  // 10,000 over 120 s
    target_replied(f, f.user_last_ns);
  }
  uint64_t now = t0_ + 120 * kSec;
  expire(*table, now);  // the unreplied wheel: each visited once, moved to established
  EXPECT_EQ(table->established(), static_cast<size_t>(kFlows));
  uint64_t visits = table->visits();
  // One tick a second for two more minutes: every flow expires, each
  // visited about once, never all of them on every tick.
  uint64_t most = 0;
  for (int tick = 1; tick <= 130; ++tick) {
    uint64_t before = table->visits();
    expire(*table, now + static_cast<uint64_t>(tick) * kSec);
    most = std::max(most, table->visits() - before);
  }
  EXPECT_EQ(table->size(), 0u);
  EXPECT_LE(table->visits() - visits, static_cast<uint64_t>(kFlows) + kFlows / 10);
  EXPECT_LT(most, static_cast<uint64_t>(kFlows) / 10) << "a tick visits a slot's worth, not the table";
}

TEST_F(FlowTableTest, IdleTableTickVisitsNothing) {
  auto table = make();
  for (int i = 0; i < 1000; ++i) {
    TestFlow& f = add(*table, t0_);
    target_replied(f, t0_);
  }
  expire(*table, t0_ + 31 * kSec);  // unreplied wheel: each found replied once
  uint64_t visits = table->visits();
  for (int tick = 0; tick < 80; ++tick) expire(*table, t0_ + 32 * kSec + static_cast<uint64_t>(tick) * kSec);
  EXPECT_EQ(table->visits(), visits) << "nothing is due before idle-timeout: no map reads";
}

TEST_F(FlowTableTest, ALateTickStillExpiresEveryFlowOnce) {
  auto table = make();
  for (int i = 0; i < 100; ++i) add(*table, t0_ + static_cast<uint64_t>(i) * kSec);
  // No tick for ten minutes (a stopped process), then flows keep coming.
  TestFlow& late = add(*table, t0_ + 600 * kSec);
  EXPECT_EQ(expire(*table, t0_ + 601 * kSec), 100u);
  EXPECT_FALSE(late.closed);
  EXPECT_EQ(expire(*table, t0_ + 632 * kSec), 1u);
  EXPECT_TRUE(late.closed);
}

}  // namespace
}  // namespace sockrelay
