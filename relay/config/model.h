// The relay's configuration as plain data: what `config.cpp` builds from a
// TOML file and every other module reads. No parsing, no syscalls here.
#pragma once

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sockrelay {

enum class EndpointKind {
  Udp,
  Tcp,
  UnixDgram,
  UnixStream,
  UnixSeqpacket,
  VsockStream,
  VsockSeqpacket,
};
inline constexpr EndpointKind kAllKinds[] = {
    EndpointKind::Udp,
    EndpointKind::Tcp,
    EndpointKind::UnixDgram,
    EndpointKind::UnixStream,
    EndpointKind::UnixSeqpacket,
    EndpointKind::VsockStream,
    EndpointKind::VsockSeqpacket,
};

// "udp", "unix-dgram", ... (the config spelling).
std::string_view kind_name(EndpointKind kind);
std::optional<EndpointKind> kind_from_name(std::string_view name);
int kind_family(EndpointKind kind);        // AF_INET (or AF_INET6), AF_UNIX, AF_VSOCK
int kind_socktype(EndpointKind kind);      // SOCK_DGRAM, SOCK_STREAM, SOCK_SEQPACKET
bool kind_is_stream(EndpointKind kind);    // byte streams: tcp, unix-stream, vsock-stream
bool kind_is_datagram(EndpointKind kind);  // message kinds: udp, unix-dgram (seqpacket is neither)
bool kind_is_vsock(EndpointKind kind);     // vsock-stream, vsock-seqpacket

// Subscribe: a UNIX listener where local consumers join a route at run
// time and receive its datagrams (sessions/subscriber_route.h).
enum class Role { Listen, Connect, Subscribe };
enum class Mode { Egress, Ingress };
enum class Datapath { Auto, Kernel, Userspace };
enum class Balance { Single, RoundRobin, Hash, Broadcast };
inline constexpr Mode kAllModes[] = {Mode::Egress, Mode::Ingress};

std::string_view mode_name(Mode mode);
std::string_view datapath_name(Datapath datapath);
std::string_view balance_name(Balance balance);
std::string_view role_name(Role role);  // "listen", "connect", "subscribe"
std::optional<Mode> mode_from_name(std::string_view name);
std::optional<Datapath> datapath_from_name(std::string_view name);
std::optional<Balance> balance_from_name(std::string_view name);

// Routes are numbered 0..kMaxRoutes-1 in config order; equals RELAY_MAX_ROUTES
// in bpf/relay_shared.h (config.cpp checks that they agree).
inline constexpr std::size_t kMaxRoutes = 256;
// `to` targets a route may list; equals RELAY_MAX_TARGETS (checked likewise).
inline constexpr std::size_t kMaxTargets = 8;

// How long a flow or session may stay silent before it is closed, unless
// [relay] idle-timeout says otherwise. Every route spec starts from it.
inline constexpr std::chrono::milliseconds kDefaultIdleTimeout{120'000};
// A datagram flow that never saw a reply is closed after this, unless
// [relay] unreplied-timeout says otherwise (never later than idle-timeout).
inline constexpr std::chrono::milliseconds kDefaultUnrepliedTimeout{30'000};

// Route key target-buffer: the bytes (skb truesize) the kernel may hold
// toward one target of a datagram route before the verdict program drops
// (target-full). Equals RELAY_DEFAULT_TARGET_BUFFER (config.cpp checks).
inline constexpr uint32_t kDefaultTargetBuffer = 4u << 20;
inline constexpr uint32_t kMinTargetBuffer = 64u << 10;
inline constexpr uint32_t kMaxTargetBuffer = 1u << 30;

// Where a value came from, for "FILE:LINE:COL: message".
struct SourcePos {
  int line = 0;
  int column = 0;
};

// A resolved socket address. `text` is what the user wrote, for messages.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;

  int family() const { return storage.ss_family; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  bool operator==(const SocketAddress& other) const;  // same family and bytes
};

struct Endpoint {
  std::string name;  // also the systemd FileDescriptorName=
  EndpointKind kind = EndpointKind::Udp;
  Role role = Role::Listen;
  SocketAddress address;
  SourcePos pos;  // of the [endpoints.NAME] table
};

// A network in `allow-sources`, e.g. 10.0.0.0/8 or ::1/128.
struct SourceNetwork {
  int family = 0;                  // AF_INET or AF_INET6
  unsigned char address[16] = {};  // network byte order; 4 bytes used for AF_INET
  int prefix = 0;                  // bits
  std::string text;                // as written

  bool contains(const sockaddr* sa) const;  // an AF_INET/AF_INET6 peer address
};

// Where each key of a [[routes]] table was written (its value's position),
// so a rule about one key points at it. A key the table lacks points at the
// [[routes]] table itself.
struct RouteKeyPositions {
  SourcePos from, to, mode, datapath, balance, allow_sources, allow_cids, allow_uids, allow_gids;
  SourcePos one_way;
  SourcePos when_full;
};

// A connection source at max-sessions: accept and close each new
// connection (Reset), or leave them in the listen backlog until a session
// ends (Wait).
enum class WhenFull { Reset, Wait };

struct Route {
  std::vector<std::string> from;  // endpoint names
  std::vector<std::string> to;
  Mode mode = Mode::Egress;
  Datapath datapath = Datapath::Auto;
  Balance balance = Balance::Single;
  // Clients of inet sources allowed to open a session; empty = everyone.
  std::vector<SourceNetwork> allow_sources;
  // Peers of vsock sources by CID, and of unix stream/seqpacket sources by
  // the uid/gid from SO_PEERCRED, allowed to open a session; empty = all.
  std::vector<uint32_t> allow_cids;
  std::vector<uint32_t> allow_uids;
  std::vector<uint32_t> allow_gids;
  // `one-way = true`: datagrams go to the target(s) and no reply is
  // expected, so no client gets a flow or a socket of its own
  // (sessions/one_way_route.h).
  bool one_way = false;
  WhenFull when_full = WhenFull::Reset;
  SourcePos pos;  // of the [[routes]] table
  RouteKeyPositions keys;
  // Kernel memory toward one target of a datagram route (bytes of skb
  // truesize); written: target_buffer_pos is the key's position.
  uint32_t target_buffer = kDefaultTargetBuffer;
  std::optional<SourcePos> target_buffer_pos;
};

struct RelaySettings {
  std::string log_level = "info";  // trace|debug|info|warn|error|critical|off
  std::chrono::milliseconds idle_timeout = kDefaultIdleTimeout;
  // Datagram flows without a reply; unset: min(30 s, idle_timeout).
  std::optional<std::chrono::milliseconds> unreplied_timeout;
  uint32_t max_sessions = 4096;
  std::chrono::milliseconds unreplied_or_default() const {
    return unreplied_timeout.value_or(std::min(kDefaultUnrepliedTimeout, idle_timeout));
  }
  SourcePos max_sessions_pos{1, 1};  // where max-sessions was written (the file's start if not)
  std::string control = "/run/sockrelay/control.sock";
};

struct Config {
  std::string path;  // the file it was read from
  RelaySettings relay;
  std::vector<Endpoint> endpoints;
  std::vector<Route> routes;

  const Endpoint* find_endpoint(std::string_view name) const;
};

// An endpoint as logs, errors and `status` name it: "dns-in (udp 127.0.0.1:5300)".
std::string describe_endpoint(const Endpoint& endpoint);
// A route's targets: the one target, or "[a (...), b (...)] balance round-robin".
std::string describe_targets(const std::vector<const Endpoint*>& targets, Balance balance);

}  // namespace sockrelay
