// A datagram route to a subscribe endpoint: local consumers connect to a
// UNIX socket of the relay and, while connected, receive the route's
// datagrams. The connection is the membership: closing it leaves.
//
//  - mode = "egress": datagrams go into the subscriber's connection. A
//    unix-seqpacket connection keeps each datagram one message (written by
//    user space: seqpacket cannot enter a sockmap); a unix-stream one is a
//    byte stream, for line- or self-delimited data.
//  - mode = "ingress": the subscriber passes a socket of its own over
//    SCM_RIGHTS on its connection, and the verdict program redirects with
//    BPF_F_INGRESS straight into that socket's receive queue.
//
// balance = "broadcast" (the default): user space copies each datagram to
// every subscriber (one skb can be redirected to one socket only).
// "round-robin": one subscriber per datagram, picked by the verdict program
// on the kernel path (the source's flow lists the subscribers as targets,
// at most RELAY_MAX_TARGETS of them).
//
// A subscriber that stops reading must not stall the others. In user space
// each has a bounded queue; what does not fit is dropped and counted. In
// the kernel the psock backlog behind a full socket has no bound, so every
// kStallCheck the relay reads each subscriber's socket memory (SO_MEMINFO)
// and takes one whose buffer is half full out of the rotation until it has
// drained to a quarter; the others take its share. With every subscriber
// out, the verdict program drops and counts (all-targets-down).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bpf_loader/map_writer.h"
#include "common/fd.h"
#include "config/model.h"
#include "loop/event_loop.h"
#include "sessions/fd_limit.h"
#include "sessions/live_route.h"
#include "sessions/session_budget.h"

namespace sockrelay {

struct SubscriberCounters {
  uint64_t joined = 0;
  uint64_t left = 0;
  uint64_t refused_max_sessions = 0;  // joins refused: max-sessions reached
  uint64_t refused_full = 0;          // joins refused: RELAY_MAX_TARGETS subscribers on the kernel path
  uint64_t refused_socket = 0;        // ingress: no socket passed in time, or one that cannot be a target
  uint64_t user_packets = 0;          // datagrams user space delivered (each copy counts)
  uint64_t user_bytes = 0;
  uint64_t drop_no_subscriber = 0;    // user space: a datagram arrived with nobody subscribed
  uint64_t drop_subscriber_full = 0;  // a subscriber's queue was full: its copy dropped
  uint64_t stalls = 0;                // kernel: times a subscriber left the rotation, full
  uint64_t fd_limit = 0;              // joins paused: accept() met the relay's descriptor limit
};

struct SubscriberRouteSpec {
  uint32_t route_id = 0;
  const Endpoint* from = nullptr;  // a udp or unix-dgram listener
  const Endpoint* to = nullptr;    // the subscribe endpoint
  Balance balance = Balance::Broadcast;
  Mode mode = Mode::Egress;
  bool kernel = false;  // round-robin in the verdict program; else user space
};

class SubscriberRoute final : public LiveRoute {
 public:
  // `maps` may be null only when !spec.kernel.
  SubscriberRoute(SubscriberRouteSpec spec, Fd source, Fd subscribe_listener, MapWriter* maps,
                  EventLoop& loop, SessionBudget& budget);
  ~SubscriberRoute();
  SubscriberRoute(const SubscriberRoute&) = delete;
  SubscriberRoute& operator=(const SubscriberRoute&) = delete;

  Status start() override;
  // Subscribers that joined for ingress but passed no socket in time leave.
  void tick() override;
  // Every subscriber leaves; map entries go; the listeners stay open.
  void stop() override;
  RouteReport report() const override;  // subscriber_route_report.cpp

  size_t subscriber_count() const { return subscribers_.size(); }
  const SubscriberCounters& counters() const { return counters_; }
  std::vector<SubscriberReport> subscribers() const;
  const SubscriberRouteSpec& spec() const { return spec_; }

 private:
  struct Subscriber;
  static constexpr std::chrono::milliseconds kStallCheck{20};
  static constexpr std::chrono::seconds kPassTimeout{5};

  void on_source_readable();
  void on_join();
  void on_connection(uint64_t id, uint32_t events);
  void take_passed_socket(Subscriber& sub, int fd);
  Status activate(Subscriber& sub);
  void leave(uint64_t id, const std::string& why);
  void deliver(const char* data, size_t len);
  // False when the subscriber failed and must leave.
  bool send_to(Subscriber& sub, const char* data, size_t len);
  // False when the subscriber failed and must leave.
  bool flush(Subscriber& sub);
  bool watch_output(Subscriber& sub, bool on);
  void check_stalls();
  void rewrite_flow();
  std::string describe(const Subscriber& sub) const;

  SubscriberRouteSpec spec_;
  Fd source_;
  Fd subscribe_;
  MapWriter* maps_;
  EventLoop& loop_;
  SessionBudget& budget_;
  uint64_t source_cookie_ = 0;
  bool source_in_map_ = false;
  bool source_private_ = false;  // unix-dgram: its own verdict instance (the program sees senders)
  Fd stall_timer_;
  std::map<uint64_t, std::unique_ptr<Subscriber>> subscribers_;  // by join order
  std::vector<uint64_t> slots_;                                  // kernel: subscriber id per slot, 0 = free
  uint64_t next_id_ = 1;
  uint64_t round_robin_ = 0;  // user space's position
  SubscriberCounters counters_;
  ListenerGate join_gate_;  // the subscribe listener, paused while the relay is out of descriptors
  FdLimitLog fd_limit_log_;
  std::vector<char> buffer_;
  bool started_ = false;
};

}  // namespace sockrelay
