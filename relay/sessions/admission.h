// Who may open a session, and whether the relay has room for it: the one
// rule every connection route (stream, bridge) applies to a new peer. A
// refusal is counted every time and logged once per kRefusalLogEvery, so a
// flood of refused peers cannot flood the journal.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <string>

#include "common/fd.h"
#include "sessions/fd_limit.h"
#include "sessions/peer_policy.h"
#include "sessions/session_budget.h"

namespace sockrelay {

class Admission {
 public:
  static constexpr uint64_t kRefusalLogEvery = 1000;
  // Connections accepted per wake-up: one busy listener cannot starve the
  // others on the loop.
  static constexpr int kAcceptBatch = 64;

  // The counters are the route's own (its counters() shows them); they and
  // `policy` must outlive this object, as members of the same route do.
  Admission(uint32_t route_id, const PeerPolicy& policy, SessionBudget& budget, uint64_t& refused_policy,
            uint64_t& refused_max_sessions)
      : route_id_(route_id),
        policy_(policy),
        budget_(budget),
        refused_policy_(refused_policy),
        refused_max_sessions_(refused_max_sessions) {}

  // True when `peer` may open a session: the policy allows it and a slot of
  // the relay's session budget is now taken for it (the route gives it back
  // when the session ends). `fd` is the accepted connection, -1 for a
  // datagram client (no credentials to ask).
  bool admit(int fd, const sockaddr_storage& peer, const std::string& peer_text);

  struct Peer {
    Fd fd;  // non-blocking, close-on-exec
    sockaddr_storage addr{};
    std::string text;  // for log lines: its address, or "unix client"
  };
  // Why accept_batch() stopped.
  enum class Stop {
    Drained,           // the backlog is empty, or a batch was taken
    OutOfDescriptors,  // accept() met the relay's descriptor limit (`error` says which)
    Full,              // wait_when_full and no session left: nothing accepted
  };
  struct Outcome {
    Stop stop = Stop::Drained;
    int error = 0;
  };
  // Accepts what waits on `listener` (up to kAcceptBatch) and hands each
  // admitted connection to `on_admitted`. A refused one is closed at once:
  // the client sees EOF (tcp: RST if it already sent). With
  // `wait_when_full`, nothing is accepted while max-sessions is reached:
  // connections wait in the backlog (the route takes its listener out of
  // the poll set on Stop::Full).
  Outcome accept_batch(int listener, const std::function<void(Peer)>& on_admitted,
                       bool wait_when_full = false);

  // What a connection route's listener answers to, besides its peers.
  struct Listener {
    int fd;
    ListenerGate& gate;  // watches `fd`: paused here
    FdLimitLog& log;
    uint64_t& fd_limit;  // the route's fd-limit count
    bool wait_when_full;
  };
  // The listener's readiness handler: accept_batch(), then, out of
  // descriptors (counted and logged) or full with wait_when_full, the
  // listener out of the poll set for a pause (it is level-triggered: left
  // in, it would wake the loop at once, again and again); the connections
  // wait in its backlog.
  void serve(const Listener& listener, const std::function<void(Peer)>& on_admitted);

 private:
  uint32_t route_id_;
  const PeerPolicy& policy_;
  SessionBudget& budget_;
  uint64_t& refused_policy_;
  uint64_t& refused_max_sessions_;
};

}  // namespace sockrelay
