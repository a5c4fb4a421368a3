// SubscriberRoute's bookkeeping without privilege: a udp source on
// loopback, subscribers connecting to a unix-seqpacket subscribe endpoint
// in a temp dir, and a fake map writer for the kernel path's entries.
#include "sessions/subscriber_route.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/socket_cookie.h"
#include "fake_maps.h"
#include "relay_shared.h"
#include "socket_pairs.h"

namespace sockrelay {
namespace {

using namespace std::chrono_literals;
using namespace test_sockets;

SubscriberRouteSpec subscriber_spec(uint32_t id, const Bound& source, const Bound& subscribe, bool kernel,
                                    Balance balance = Balance::Broadcast) {
  SubscriberRouteSpec s;
  s.route_id = id;
  s.from = &source.endpoint;
  s.to = &subscribe.endpoint;
  s.balance = balance;
  s.mode = Mode::Egress;
  s.kernel = kernel;
  return s;
}

class SubscriberRouteTest : public RouteFixture {
 protected:
  void SetUp() override {
    RouteFixture::SetUp();
    source_ = bind_endpoint(EndpointKind::Udp, "feed", Role::Listen);
    subscribe_ = bind_endpoint(EndpointKind::UnixSeqpacket, "subscribers", Role::Subscribe, path("sub.sock"));
  }

  std::unique_ptr<SubscriberRoute> make_route(SessionBudget& budget, bool kernel,
                                              Balance balance = Balance::Broadcast) {
    return std::make_unique<SubscriberRoute>(subscriber_spec(6, source_, subscribe_, kernel, balance),
                                             std::move(source_.fd), std::move(subscribe_.fd),
                                             kernel ? &maps_ : nullptr, *loop_, budget);
  }

  // A subscriber connection, once the route has counted it joined.
  Fd join(SubscriberRoute& route) {
    uint64_t joined = route.counters().joined;
    Fd fd = connect_client(subscribe_.endpoint);
    EXPECT_TRUE(pump([&] { return route.counters().joined == joined + 1; }));
    return fd;
  }

  void publish(const std::string& datagram) {
    const SocketAddress& to = source_.endpoint.address;
    ASSERT_EQ(sendto(sender_.get(), datagram.data(), datagram.size(), 0, to.sa(), to.length),
              ssize_t(datagram.size()));
  }

  // Every message the subscriber has received, in order, once `count` have
  // arrived (or the patience ran out).
  std::vector<std::string> messages(const Fd& subscriber, size_t count) {
    std::vector<std::string> got;
    char buf[65536];
    pump([&] {
      ssize_t n;
      while ((n = recv(subscriber.get(), buf, sizeof(buf), MSG_DONTWAIT)) >= 0)
        got.emplace_back(buf, static_cast<size_t>(n));
      return got.size() >= count;
    });
    return got;
  }

  Bound source_, subscribe_;
  Fd sender_ = udp_client();
  FakeMaps maps_;
};

// Two subscribers each get every datagram, as one message each and in
// order; one leaves and the other goes on receiving.
TEST_F(SubscriberRouteTest, BroadcastCopiesEveryDatagramToEverySubscriberUntilItLeaves) {
  SessionBudget budget(8);
  auto route = make_route(budget, false);
  ASSERT_TRUE(route->start().ok());
  Fd first = join(*route), second = join(*route);
  EXPECT_EQ(route->subscriber_count(), 2u);
  EXPECT_EQ(budget.used(), 2u);
  std::vector<SubscriberReport> report = route->subscribers();
  ASSERT_EQ(report.size(), 2u);
  for (const SubscriberReport& r : report) EXPECT_TRUE(r.receiving);

  const std::vector<std::string> datagrams = {"a", "bb", std::string(1000, 'c')};
  for (const std::string& d : datagrams) publish(d);
  EXPECT_EQ(messages(first, 3), datagrams);
  EXPECT_EQ(messages(second, 3), datagrams);
  EXPECT_EQ(route->counters().user_packets, 6u) << "each copy counts";
  EXPECT_EQ(route->counters().user_bytes, 2 * (1 + 2 + 1000u));
  for (const SubscriberReport& r : route->subscribers()) {
    EXPECT_EQ(r.user_packets, 3u);
    EXPECT_EQ(r.dropped, 0u);
  }

  first.reset();
  ASSERT_TRUE(pump([&] { return route->counters().left == 1; }));
  EXPECT_EQ(route->subscriber_count(), 1u);
  EXPECT_EQ(budget.used(), 1u);
  publish("after");
  EXPECT_EQ(messages(second, 1), std::vector<std::string>{"after"});
  EXPECT_EQ(route->counters().user_packets, 7u);
  EXPECT_EQ(route->counters().joined, 2u);

  route->stop();
  EXPECT_EQ(route->counters().left, 2u) << "stop() makes every subscriber leave";
  EXPECT_EQ(budget.used(), 0u);
}

// Datagrams nobody is subscribed to are dropped and counted, not kept for
// a later subscriber.
TEST_F(SubscriberRouteTest, DatagramWithNoSubscriberIsDroppedAndCounted) {
  SessionBudget budget(8);
  auto route = make_route(budget, false);
  ASSERT_TRUE(route->start().ok());
  publish("lost");
  ASSERT_TRUE(pump([&] { return route->counters().drop_no_subscriber == 1; }));
  Fd sub = join(*route);
  publish("kept");
  EXPECT_EQ(messages(sub, 1), std::vector<std::string>{"kept"});
  EXPECT_EQ(route->counters().drop_no_subscriber, 1u);
  EXPECT_EQ(route->counters().user_packets, 1u);
}

TEST_F(SubscriberRouteTest, MaxSessionsRefusesAJoinAndCounts) {
  SessionBudget budget(1);
  auto route = make_route(budget, false);
  ASSERT_TRUE(route->start().ok());
  Fd member = join(*route);
  Peer refused{connect_client(subscribe_.endpoint)};
  ASSERT_TRUE(pump([&] { return route->counters().refused_max_sessions == 1; }));
  ASSERT_TRUE(read_until_ended(refused)) << "a refused subscriber's connection is closed";
  EXPECT_EQ(route->counters().joined, 1u);
  EXPECT_EQ(route->subscriber_count(), 1u);
  publish("one");
  EXPECT_EQ(messages(member, 1), std::vector<std::string>{"one"});
  EXPECT_EQ(route->counters().user_packets, 1u) << "no copy for the refused one";
}

// balance = "round-robin" in user space: one subscriber per datagram, in turn.
TEST_F(SubscriberRouteTest, RoundRobinGivesEachDatagramToOneSubscriberInTurn) {
  SessionBudget budget(8);
  auto route = make_route(budget, false, Balance::RoundRobin);
  ASSERT_TRUE(route->start().ok());
  Fd first = join(*route), second = join(*route);
  for (const char* d : {"1", "2", "3", "4"}) publish(d);
  ASSERT_TRUE(pump([&] { return route->counters().user_packets == 4; }));
  std::vector<std::string> a = messages(first, 2), b = messages(second, 2);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  std::vector<std::string> all = a;
  all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<std::string>{"1", "2", "3", "4"})) << "each datagram exactly once";
  EXPECT_EQ(std::stoi(a[1]) - std::stoi(a[0]), 2) << "subscribers take turns";
  EXPECT_EQ(std::stoi(b[1]) - std::stoi(b[0]), 2) << "subscribers take turns";
}

// The kernel path (round-robin in the verdict program), against the fake:
// the source is steered under its own cookie; each subscriber that joins
// becomes a target of the source's flow in a slot of its own (the slot's
// counters reset for it), and one that leaves is out of the flow before
// its socket leaves the map. stop() leaves no entry behind.
TEST_F(SubscriberRouteTest, KernelSubscribersAreTheSourceFlowsTargets) {
  SessionBudget budget(8);
  uint64_t source_cookie = socket_cookie(source_.fd.get()).value();
  auto route = make_route(budget, true, Balance::RoundRobin);
  ASSERT_TRUE(route->start().ok());
  EXPECT_EQ(maps_.sources, std::set<uint64_t>{source_cookie});
  ASSERT_EQ(maps_.flows.count(source_cookie), 1u) << "the source's flow exists before it is steered";
  EXPECT_LT(maps_.first("set_flow", source_cookie), maps_.first("add_source", source_cookie));
  EXPECT_EQ(maps_.flows[source_cookie].n_targets, 0u);

  Fd first = join(*route);
  Fd second = join(*route);
  const FlowEntry& flow = maps_.flows[source_cookie];
  EXPECT_EQ(flow.route_id, 6u);
  EXPECT_EQ(flow.balance, uint32_t(RELAY_BALANCE_ROUND_ROBIN));
  ASSERT_EQ(flow.n_targets, 2u);
  EXPECT_EQ(maps_.targets, (std::set<uint64_t>{flow.targets[0], flow.targets[1]}));
  EXPECT_EQ(flow.target_index[0], 0u);
  EXPECT_EQ(flow.target_index[1], 1u);
  EXPECT_EQ(maps_.counter_resets, (std::vector<std::pair<uint32_t, uint32_t>>{{6, 0}, {6, 1}}));
  uint64_t first_target = flow.targets[0], second_target = flow.targets[1];
  std::vector<SubscriberReport> report = route->subscribers();
  ASSERT_EQ(report.size(), 2u);
  EXPECT_EQ(report[0].slot, 0);
  EXPECT_EQ(report[1].slot, 1);

  first.reset();
  ASSERT_TRUE(pump([&] { return route->counters().left == 1; }));
  const FlowEntry& after = maps_.flows[source_cookie];
  ASSERT_EQ(after.n_targets, 1u);
  EXPECT_EQ(after.targets[0], second_target);
  EXPECT_EQ(after.target_index[0], 1u) << "the one left keeps its slot";
  EXPECT_EQ(maps_.targets, std::set<uint64_t>{second_target});
  size_t last_flow_write = 0;
  for (size_t i = 0; i < maps_.calls.size(); ++i)
    if (maps_.calls[i] == FakeMaps::Call{"set_flow", source_cookie}) last_flow_write = i;
  EXPECT_LT(last_flow_write, maps_.first("remove_target", first_target))
      << "a leaving subscriber must be out of the flow before its socket leaves the map";

  // Its slot is free again: the next subscriber takes it, counters reset.
  Fd third = join(*route);
  EXPECT_EQ(maps_.flows[source_cookie].n_targets, 2u);
  EXPECT_EQ(maps_.counter_resets.back(), (std::pair<uint32_t, uint32_t>{6, 0}));

  route->stop();
  // Subscribers leave after the source's flow is gone: none of them may
  // write it back.
  EXPECT_EQ(maps_.flows.count(source_cookie), 0u) << "the source's flow outlived stop()";
  EXPECT_TRUE(maps_.empty()) << "stop() must remove every map entry";
  EXPECT_EQ(budget.used(), 0u);
}

}  // namespace
}  // namespace sockrelay
