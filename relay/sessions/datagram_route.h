// One datagram route source: a udp or unix-dgram listener relayed to one or
// several udp or unix-dgram targets, with replies flowing back to each
// client.
//
// Each client is a flow: an upstream socket of its own per target (so
// replies can be told apart) and, for the reply path, a socket connected to
// the client. With several targets the verdict program picks one per
// datagram (round-robin, or by the client's hash); broadcast goes through
// user space, since one skb can be redirected to one socket only.
// On the kernel path the verdict program moves every datagram after the
// first; user space sees only what the kernel passes to it (a new client's
// first datagram, data queued before a socket entered the map, flows whose
// reply path the kernel cannot carry) and moves that itself.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpf_loader/map_writer.h"
#include "common/fd.h"
#include "config/model.h"
#include "loop/event_loop.h"
#include "sessions/datagram_batch.h"
#include "sessions/fd_limit.h"
#include "sessions/flow_table.h"
#include "sessions/live_route.h"
#include "sessions/pass_up_channel.h"
#include "sessions/session_budget.h"
#include "sessions/target_health.h"
#include "sessions/unix_listener_steering.h"
#include "sessions/upstream_pool.h"

namespace sockrelay {

// Work done in user space and everything dropped, by reason.
struct DatagramCounters {
  uint64_t user_packets = 0;  // datagrams user space forwarded (either way)
  uint64_t user_bytes = 0;
  uint64_t flows_created = 0;
  uint64_t flows_expired = 0;          // silent for unreplied-timeout or idle-timeout
  uint64_t expired_unreplied = 0;      // ...of them, never replied to
  uint64_t flows_evicted = 0;          // closed at max-sessions for a new client (flow_table.h)
  uint64_t flows_failed = 0;           // torn down on a socket error
  uint64_t refused_max_sessions = 0;   // datagrams dropped: max-sessions reached
  uint64_t drop_setup_failed = 0;      // datagrams dropped: upstream socket could not be opened
  uint64_t drop_fd_limit = 0;          // datagrams dropped: the relay's descriptor limit (EMFILE/ENFILE)
  uint64_t drop_send_error = 0;        // datagrams dropped: send() failed (full queue, refused)
  uint64_t drop_no_reply_path = 0;     // replies dropped: the client has no address to reply to
  uint64_t drop_all_targets_down = 0;  // datagrams dropped in user space: no target up
  uint64_t drop_target_full = 0;       // datagrams dropped: a target's queue stayed full
  // A UDP flow socket user space reads (broadcast, or a flow the kernel
  // does not carry): what the kernel dropped at its full receive buffer,
  // for flows already closed (open ones are read at report time).
  uint64_t drop_flow_overflow = 0;
  uint64_t drop_stray = 0;      // another client's datagram on a new flow socket (release_filters())
  uint64_t refused_policy = 0;  // datagrams dropped: client not in allow-sources/uids/gids
  // Datagrams lost to a target that refused (killed, restarting): count_lost_at_close().
  uint64_t drop_target_unreachable = 0;
};

struct DatagramRouteSpec {
  uint32_t route_id = 0;
  const Endpoint* from = nullptr;
  std::vector<const Endpoint*> to;  // 1..RELAY_MAX_TARGETS, the config's order
  Balance balance = Balance::Single;
  std::vector<SourceNetwork> allow_sources;  // empty: every client
  // unix-dgram sources; empty: every sender. User-space path: each
  // datagram's SCM_CREDENTIALS. Kernel path: the sender socket's owner
  // (the verdict program's tag, else sock_diag) when its flow is set up;
  // no gid there, so start() refuses allow_gids on it.
  std::vector<uint32_t> allow_uids, allow_gids;
  bool kernel = true;  // kernel data path; false: user space carries it all
  std::chrono::milliseconds idle_timeout = kDefaultIdleTimeout;            // a flow that saw a reply
  std::chrono::milliseconds unreplied_timeout = kDefaultUnrepliedTimeout;  // one that did not
};

class DatagramRoute final : public LiveRoute {
 public:
  // `maps` may be null only when !spec.kernel.
  DatagramRoute(DatagramRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop, SessionBudget& budget);
  ~DatagramRoute();
  DatagramRoute(const DatagramRoute&) = delete;
  DatagramRoute& operator=(const DatagramRoute&) = delete;

  Status start() override;
  // Periodic work: tears down flows silent for longer than their timeout
  // (unreplied_timeout or idle_timeout, see flow_table.h) or whose steered
  // sockets report an error, and retries failed targets whose back-off has
  // passed.
  void tick() override;
  // Removes every map entry and closes every socket but the listener.
  void stop() override;
  RouteReport report() const override;   // datagram_route_report.cpp
  uint64_t listener_drops() const;       // datagram_route_report.cpp
  uint64_t flow_overflow_drops() const;  // datagram_route_report.cpp

  size_t flow_count() const { return flows_.size(); }
  const FlowTable& flow_table() const { return table_; }
  const DatagramCounters& counters() const { return counters_; }
  std::vector<TargetReport> targets() const;
  const DatagramRouteSpec& spec() const { return spec_; }

 private:
  struct Flow;
  struct Upstream;
  struct Stranger;
  // A target of the route: its health, route-wide (a failed target leaves
  // the rotation of every flow until a retry finds it answering), and what
  // user space sent to it.
  struct TargetState {
    TargetHealth health;
    uint64_t user_packets = 0;
    uint64_t user_bytes = 0;
  };

  bool unix_listener() const;
  bool broadcast() const { return spec_.balance == Balance::Broadcast; }
  bool unix_ids_policy() const { return !spec_.allow_uids.empty() || !spec_.allow_gids.empty(); }

  // datagram_route.cpp: the listener, and finding each datagram's flow.
  Status steer_unix_listener();
  Status ask_local_address();
  void keep_listener_datagrams();
  bool on_listener_readable();  // true once the listener's queue is empty
  // `tagged_cookie`: the sender's cookie when the verdict program tagged it.
  // `tagged_uid`: the sender socket's owner, when the verdict program tagged it.
  // `meta`: what the listener learnt besides the sender (datagram_batch.h),
  // null when it asked for nothing.
  void handle_client_datagram(const sockaddr_storage& peer, socklen_t peer_len, uint64_t tagged_cookie,
                              std::optional<uint32_t> tagged_uid, const DatagramMeta* meta, const char* data,
                              size_t len);
  // allow-uids/allow-gids of a unix listener, before a flow is looked up:
  // true when the datagram is dropped (and counted).
  bool sender_refused(const sockaddr_storage& peer, socklen_t peer_len, uint64_t tagged_cookie,
                      const ucred* cred);
  // Empty when the sender may in, else why not (allow-uids/allow-gids).
  std::string credential_refusal(const ucred* cred) const;
  void count_refusal(const std::string& who, const std::string& why);
  std::string flow_key(const sockaddr_storage& peer, socklen_t peer_len, uint64_t tagged_cookie) const;
  Flow* find_flow(const std::string& key, uint64_t tagged_cookie);
  // `failure` empty: an orderly close (idle, stop); else why it failed.
  void destroy_flow(const std::string& key, const std::string& failure);
  void expire_idle();
  // What the flow table reads of a flow: its last activity either way and
  // whether a target ever answered (user space's, and the verdict
  // program's stamps on the client's and on the reply flows).
  FlowTable::Seen probe(const Flow& flow) const;
  // max-sessions reached: closes the flow the table names, if any.
  bool evict_one(const Flow& newcomer);

  // datagram_flow_setup.cpp: a new client's flow, one named step each.
  Flow* create_flow(const std::string& key, const sockaddr_storage& peer, socklen_t peer_len,
                    uint64_t tagged_cookie, std::optional<uint32_t> owner_uid, const DatagramMeta* meta);
  std::unique_ptr<Flow> identify_client(const std::string& key, const sockaddr_storage& peer,
                                        socklen_t peer_len, uint64_t tagged_cookie,
                                        std::optional<uint32_t>& owner_uid) const;
  bool owner_allowed(const Flow& flow, uint64_t tagged_cookie, std::optional<uint32_t> owner_uid);
  bool source_allowed(const Flow& flow, const sockaddr_storage& peer);
  bool take_session(const Flow& flow);
  bool open_upstreams(Flow& flow);
  Status open_upstream(Flow& flow, size_t target);
  void set_flow_local_address(Flow& flow) const;
  bool defers_flow_socket(const Flow& flow) const;
  bool open_flow_socket(Flow& flow);
  void open_reply_socket(Flow& flow);
  std::string connect_reply_socket(Flow& flow, std::vector<Stranger>& strangers);
  void try_kernel_path(Flow& flow, std::vector<Stranger>& strangers);
  Status wire_kernel(Flow& flow, std::vector<Stranger>& strangers);
  Status wire_upstream(Flow& flow, size_t target);
  void unwire_client(Flow& flow);
  void unwire_upstream(Upstream& up);
  Flow* add_flow(std::unique_ptr<Flow> flow, std::string& setup_error);
  void watch_flow_socket(Flow& flow, std::string& setup_error);
  void start_flow(const std::string& key, const std::string& setup_error);
  void settle(const std::string& key);
  void release_filters();
  void count_stray_drops(Flow& flow);
  void settle_upstream(const std::string& key, size_t target);

  // datagram_hold.cpp: a new flow's datagrams in order while it is set up.
  uint64_t hold_channel_key() const;
  Status open_hold_channel();
  Status begin_hold(Flow& flow);
  void read_before_steering(Flow& flow, std::vector<Stranger>& strangers);
  void park_strangers(std::vector<Stranger>& strangers);
  void forward_parked_before(const std::string& key, uint64_t stamp_ns);
  bool stranger_parked(const std::string& key) const;
  void forward_parked(uint64_t read);
  void forward_stranger(const Stranger& s);
  void note_lingering(Flow& flow);
  void narrow_receive_buffer(Flow& flow);
  void read_lingering(Flow& flow, bool through_kernel);
  bool inject_for(const Flow& flow);
  void on_held_datagram(uint64_t key, const char* data, size_t len);
  void catch_early(Flow& flow, const char* data, size_t len, bool held);
  void listener_read_done(uint64_t read, bool drained);
  void leftovers_forwarded(Flow& flow);
  void flush_waiting(Flow& flow);
  void advance_holds();
  void advance_hold(Flow& flow);
  void end_hold(Flow& flow);
  void forget_hold(Flow& flow);
  void linger_check();

  // datagram_forwarding.cpp: datagrams user space moves, and the sockets
  // it watches for them.
  void send_to_upstream(Flow& flow, const char* data, size_t len);
  void send_or_queue(Flow& flow, size_t target, const char* data, size_t len);
  void send_to_client(Flow& flow, const char* data, size_t len);
  void flush_pending(Flow& flow, size_t target);
  void count_sent(size_t target, size_t len);
  void on_client_socket_readable(Flow& flow, uint32_t events);
  void on_upstream_readable(Flow& flow, size_t target, uint32_t events);
  static uint32_t upstream_events(const Flow& flow, const Upstream& up);
  void watch_upstream(Flow& flow, size_t target);
  void poll_errors();
  bool kernel_stopped_sending(const Flow& flow) const;

  // datagram_targets.cpp: target health and the flow entries that follow it.
  bool target_usable(const Flow& flow, size_t target) const;
  void upstream_failed(Flow& flow, size_t target, const std::string& why);
  void target_failed(size_t target, const std::string& why);
  void ask_refill();
  void refill_ready_upstreams();
  void retry_targets();
  Status reopen_target(size_t target);
  Status reopen_upstream(const std::string& key, size_t target);
  void close_upstream(Flow& flow, size_t target);
  void count_lost_at_close(Flow& flow, uint32_t program_dropped);
  FlowEntry forward_entry(const Flow& flow) const;
  Status write_forward_flow(Flow& flow);
  void update_forward_flow(Flow& flow);
  void rewrite_forward_flows();

  DatagramRouteSpec spec_;
  Fd listener_;
  uint64_t listener_cookie_ = 0;
  uint32_t listener_inode_ = 0;
  MapWriter* maps_;
  EventLoop& loop_;
  SessionBudget& budget_;
  // Flows by client: UDP by address bytes; AF_UNIX by "cookie:N" on the
  // kernel path (the verdict program knows senders by cookie) or by
  // "addr:BYTES" on the user-space path.
  std::unordered_map<std::string, std::unique_ptr<Flow>> flows_;
  FlowTable table_;  // the same flows, by activity: expiry and eviction
  std::unordered_map<std::string, std::string> unix_address_alias_;  // "addr:..." -> "cookie:..." key
  // A unix listener on the kernel path: steered by its own program instance.
  std::unique_ptr<UnixListenerSteering> unix_steering_;
  // The hold (datagram_hold.cpp): where a UDP listener's held datagrams
  // are passed up (a unix listener's come on its new-client channel), the
  // flows on hold by the key the verdict program sees, those a held
  // datagram came for since the last sync, those that wait for a listener
  // read to come back empty, those that may have datagrams lingering.
  std::unique_ptr<PassUpChannel> hold_channel_;
  std::unordered_map<uint64_t, std::string> held_;
  std::unordered_map<uint64_t, std::pair<std::string, uint64_t>> hold_ended_;  // flow, tick (end_hold())
  std::vector<std::string> touched_holds_;
  std::vector<std::string> awaiting_listener_;
  // Strangers waiting for their place among their clients' datagrams on
  // the listener (park_strangers()).
  std::vector<Stranger> parked_;
  std::vector<std::string> lingering_;
  uint64_t listener_reads_ = 0;
  Fd linger_timer_;
  DatagramCounters counters_;
  // Flows whose UDP flow socket is filtered, by key (release_filters()).
  std::vector<std::string> filtered_;
  uint64_t ticks_ = 0;
  FdLimitLog fd_limit_log_;
  std::vector<TargetState> targets_;  // by index in spec_.to
  // Upstream sockets made ahead for new flows, refilled when the loop is
  // idle (refill_ready_upstreams()); `refill_asked_` while one is asked.
  UpstreamPool ready_upstreams_;
  bool refill_asked_ = false;
  // User-space receive batches (uninitialised: pages are touched only as
  // datagrams fill them). The listener's is its own: a datagram in its batch
  // may create a flow, whose sockets are read while the batch is handled.
  std::unique_ptr<char[]> buffer_;
  std::unique_ptr<char[]> listener_buffer_;
  bool started_ = false;
  bool listener_kept_ = false;  // keep_listener_datagrams() took
};

}  // namespace sockrelay
