// A one-way datagram route (`one-way = true`): syslog- or statsd-style
// traffic that gets no reply. No client gets a flow or a socket of its own,
// so the relay holds the same descriptors for ten clients or a million:
// the listener, and one socket connected to each target.
//
// Kernel path: the listener itself is the one flow. It enters the verdict
// program's maps with a relay_flows entry keyed by what the program sees
// for its datagrams (ARCHITECTURE.md, "Kernel facts"):
//   - udp: the receiving socket, i.e. the listener's own cookie; the
//     listener joins relay_sources;
//   - unix-dgram: the *sender*, a different cookie per client, so the
//     listener gets a private program instance whose fixed source key is
//     the listener's cookie (MapWriter::PrivateProgram::fixed_source).
// The entry lists the targets that are up; the program picks one per
// datagram (round-robin, or balance = "hash": the sending socket's cookie,
// which only AF_UNIX shows the program; a udp one-way route with hash runs
// in user space, where each datagram's source address is known: see
// matrix/route_plan.cpp).
//
// User-space path (BPF unavailable, datapath = "userspace", udp with hash):
// the listener is read a batch at a time and each datagram sent on to a
// target; still no flow and no socket per client.
//
// Whatever a target sends back has nowhere to go: it is read and counted
// (`target-replies` in status) once per tick.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf_loader/map_writer.h"
#include "common/fd.h"
#include "config/model.h"
#include "loop/event_loop.h"
#include "sessions/live_route.h"
#include "sessions/target_health.h"

namespace sockrelay {

struct OneWayCounters {
  uint64_t user_packets = 0;  // datagrams user space sent on
  uint64_t user_bytes = 0;
  uint64_t drop_send_error = 0;        // send() to a target failed
  uint64_t drop_target_full = 0;       // a target's queue stayed full
  uint64_t drop_all_targets_down = 0;  // user space: no target in the rotation
  uint64_t refused_policy = 0;         // user space: not in allow-sources
  uint64_t target_replies = 0;         // datagrams a target sent back: read and dropped
};

struct OneWayRouteSpec {
  uint32_t route_id = 0;
  const Endpoint* from = nullptr;
  std::vector<const Endpoint*> to;  // 1..RELAY_MAX_TARGETS, datagram kinds
  Balance balance = Balance::Single;
  std::vector<SourceNetwork> allow_sources;  // user space checks these; the kernel's socket filter too
  bool kernel = true;
};

class OneWayRoute final : public LiveRoute {
 public:
  // `maps` may be null only when !spec.kernel.
  OneWayRoute(OneWayRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop);
  ~OneWayRoute() override;
  OneWayRoute(const OneWayRoute&) = delete;
  OneWayRoute& operator=(const OneWayRoute&) = delete;

  Status start() override;
  // Target errors and replies, and retries of failed targets.
  void tick() override;
  void stop() override;
  RouteReport report() const override;  // one_way_route_report.cpp

  const OneWayCounters& counters() const { return counters_; }
  // The relay_flows key of the listener's entry (its cookie); 0 before start().
  uint64_t flow_key() const { return flow_written_ ? listener_cookie_ : 0; }

 private:
  struct Target {
    Fd fd;  // connected to the target; closed while it is down
    uint64_t cookie = 0;
    bool in_map = false;
    bool watched = false;             // EPOLLOUT while `pending` is not empty
    std::deque<std::string> pending;  // user space: what the target's queue did not take yet
    TargetHealth health;
    uint64_t user_packets = 0;
    uint64_t user_bytes = 0;
  };

  bool unix_listener() const { return spec_.from->address.family() == AF_UNIX; }
  size_t targets_up() const;

  Status open_target(size_t t);
  void close_target(size_t t);
  Status steer_listener();
  void unsteer_listener();
  Status write_flow();

  void on_listener_readable();
  void forward(const sockaddr_storage& peer, socklen_t peer_len, const char* data, size_t len);
  bool source_allowed(const sockaddr_storage& peer) const;
  std::optional<size_t> pick_target(const sockaddr_storage& peer, socklen_t peer_len);
  void send_or_queue(size_t t, const char* data, size_t len);
  void flush_pending(size_t t);
  void watch_target(size_t t);

  void check_targets();
  void target_failed(size_t t, const std::string& why);
  void retry_targets();

  OneWayRouteSpec spec_;
  Fd listener_;
  uint64_t listener_cookie_ = 0;
  MapWriter* maps_;
  EventLoop& loop_;
  std::vector<Target> targets_;
  OneWayCounters counters_;
  uint64_t next_ = 0;  // user space's round-robin position
  std::unique_ptr<char[]> buffer_;
  bool listener_watched_ = false;
  bool listener_steered_ = false;
  bool flow_written_ = false;
};

}  // namespace sockrelay
