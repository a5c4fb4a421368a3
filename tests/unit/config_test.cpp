// Config parsing: every diagnostic with its exact position, and the shipped
// examples under config/.
#include "config/config.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace sockrelay {
namespace {

ParseOutcome parse(std::string_view text) { return parse_config(text, "t.toml"); }

std::string dump(const ParseOutcome& o) {
  std::string out;
  for (const Diagnostic& d : o.diagnostics) out += "  " + d.format() + "\n";
  return out.empty() ? "  (no diagnostics)\n" : out;
}

struct Want {
  int line;
  int column;
  Severity severity;
  std::string message;  // exact unless `partial`
  bool partial = false;
};
Want err(int line, int column, std::string message) {
  return Want{line, column, Severity::Error, std::move(message)};
}
Want err_has(int line, int column, std::string part) {
  return Want{line, column, Severity::Error, std::move(part), true};
}
Want warn(int line, int column, std::string message) {
  return Want{line, column, Severity::Warning, std::move(message)};
}

// Exactly these diagnostics, in this (file) order.
void expect_diags(const ParseOutcome& o, const std::vector<Want>& want) {
  ASSERT_EQ(o.diagnostics.size(), want.size()) << dump(o);
  for (std::size_t i = 0; i < want.size(); ++i) {
    const Diagnostic& d = o.diagnostics[i];
    const Want& w = want[i];
    EXPECT_EQ(d.file, "t.toml");
    EXPECT_EQ(d.pos.line, w.line) << "diagnostic " << i << "\n" << dump(o);
    EXPECT_EQ(d.pos.column, w.column) << "diagnostic " << i << "\n" << dump(o);
    EXPECT_EQ(d.severity, w.severity) << "diagnostic " << i << "\n" << dump(o);
    if (w.partial) {
      EXPECT_NE(d.message.find(w.message), std::string::npos) << "diagnostic " << i << "\n" << dump(o);
    } else {
      EXPECT_EQ(d.message, w.message) << "diagnostic " << i << "\n" << dump(o);
    }
  }
}

// Lines 1-11 of most documents below: a valid UDP relay. Errors are put into
// copies of it so the expected positions are easy to read.
constexpr char kValid[] = R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = "in"
to = "out"
)";

// kValid followed by `extra` (starting on line 12).
std::string valid_plus(const std::string& extra) { return std::string(kValid) + extra; }

// `[relay]` with `body` on lines 1.., then kValid.
std::string with_relay(const std::string& body) { return "[relay]\n" + body + "\n" + kValid; }

const std::string kKinds = "udp, tcp, unix-dgram, unix-stream, unix-seqpacket, vsock-stream, vsock-seqpacket";

// ---- a valid document ----

TEST(Config, ParsesAValidDocument) {
  auto o = parse(R"([relay]
log-level = "debug"
idle-timeout = "500ms"
max-sessions = 10
control = "/run/x/control.sock"

[endpoints.zeta]
type = "udp"
listen = "[::1]:5300"

[endpoints.alpha]
type = "unix-dgram"
connect = "@resolver"

[endpoints.beta]
type = "unix-dgram"
connect = "/run/b.sock"

[endpoints.src2]
type = "vsock-seqpacket"
listen = "any:99"

[[routes]]
from = "zeta"
to = ["alpha", "beta"]
mode = "egress"
datapath = "userspace"

[[routes]]
from = ["src2"]
to = "beta"
)");
  ASSERT_FALSE(o.has_errors()) << dump(o);
  EXPECT_TRUE(o.diagnostics.empty()) << dump(o);
  const Config& c = o.config;
  EXPECT_EQ(c.path, "t.toml");
  EXPECT_EQ(c.relay.log_level, "debug");
  EXPECT_EQ(c.relay.idle_timeout, std::chrono::milliseconds(500));
  EXPECT_EQ(c.relay.max_sessions, 10u);
  EXPECT_EQ(c.relay.control, "/run/x/control.sock");

  // File order, not key order.
  ASSERT_EQ(c.endpoints.size(), 4u);
  EXPECT_EQ(c.endpoints[0].name, "zeta");
  EXPECT_EQ(c.endpoints[1].name, "alpha");
  EXPECT_EQ(c.endpoints[2].name, "beta");
  EXPECT_EQ(c.endpoints[3].name, "src2");
  EXPECT_EQ(c.endpoints[0].kind, EndpointKind::Udp);
  EXPECT_EQ(c.endpoints[0].role, Role::Listen);
  EXPECT_EQ(c.endpoints[0].address.family(), AF_INET6);
  EXPECT_EQ(c.endpoints[0].address.text, "[::1]:5300");
  EXPECT_EQ(c.endpoints[0].pos.line, 7);
  EXPECT_EQ(c.endpoints[0].pos.column, 1);
  EXPECT_EQ(c.endpoints[1].kind, EndpointKind::UnixDgram);
  EXPECT_EQ(c.endpoints[1].role, Role::Connect);
  EXPECT_EQ(c.endpoints[3].kind, EndpointKind::VsockSeqpacket);
  ASSERT_NE(c.find_endpoint("beta"), nullptr);
  EXPECT_EQ(c.find_endpoint("beta")->address.text, "/run/b.sock");

  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[0].from, std::vector<std::string>{"zeta"});
  EXPECT_EQ(c.routes[0].to, (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ(c.routes[0].mode, Mode::Egress);
  EXPECT_EQ(c.routes[0].datapath, Datapath::Userspace);
  EXPECT_EQ(c.routes[0].balance, Balance::RoundRobin);  // default with several targets
  EXPECT_EQ(c.routes[0].pos.line, 23);
  EXPECT_EQ(c.routes[1].from, std::vector<std::string>{"src2"});
  EXPECT_EQ(c.routes[1].mode, Mode::Egress);
  EXPECT_EQ(c.routes[1].datapath, Datapath::Auto);
  EXPECT_EQ(c.routes[1].balance, Balance::Single);
  EXPECT_EQ(c.routes[1].pos.line, 29);
}

TEST(Config, DefaultsWithoutRelayTable) {
  auto o = parse(kValid);
  ASSERT_TRUE(o.diagnostics.empty()) << dump(o);
  EXPECT_EQ(o.config.relay.log_level, "info");
  EXPECT_EQ(o.config.relay.idle_timeout, std::chrono::seconds(120));
  EXPECT_EQ(o.config.relay.idle_timeout, kDefaultIdleTimeout);
  EXPECT_EQ(o.config.relay.max_sessions, 4096u);
  EXPECT_EQ(o.config.relay.control, "/run/sockrelay/control.sock");
}

TEST(Config, InlineAndDottedTablesWork) {
  auto o = parse(R"(endpoints.in = { type = "tcp", listen = "0.0.0.0:80" }
endpoints.out.type = "tcp"
endpoints.out.connect = "127.0.0.1:8080"
routes = [{ from = "in", to = "out" }]
)");
  ASSERT_TRUE(o.diagnostics.empty()) << dump(o);
  ASSERT_EQ(o.config.endpoints.size(), 2u);
  EXPECT_EQ(o.config.endpoints[0].name, "in");
  EXPECT_EQ(o.config.routes.size(), 1u);
}

// ---- syntax ----

TEST(Config, SyntaxErrorStopsParsing) {
  auto o = parse("[relay]\nlog-level = \nbogus = 1\n");
  expect_diags(o, {err_has(2, 13, "syntax error in key-value pair: expected value")});
  EXPECT_EQ(o.diagnostics[0].format().rfind("t.toml:2:13: error: syntax error in key-value pair", 0), 0u)
      << o.diagnostics[0].format();
  EXPECT_TRUE(o.has_errors());
}

TEST(Config, DuplicateKeyIsASyntaxError) {
  auto o = parse("[relay]\nmax-sessions = 1\nmax-sessions = 2\n");
  expect_diags(o, {err_has(3, 16, "cannot redefine existing integer 'max-sessions'")});
}

// ---- unknown keys ----

TEST(Config, UnknownTopLevelKey) {
  expect_diags(parse("route = 1\n" + std::string(kValid)),
               {err(1, 1, R"(unknown key "route" at top level: did you mean "routes"?)")});
  expect_diags(parse("colour = 1\n" + std::string(kValid)),
               {err(1, 1, R"(unknown key "colour" at top level; valid keys: relay, endpoints, routes)")});
}

TEST(Config, UnknownRelayKey) {
  expect_diags(
      parse(with_relay("log-levl = \"info\"\nthreads = 4")),
      {err(2, 1, R"(unknown key "log-levl" in [relay]: did you mean "log-level"?)"),
       err(3, 1,
           R"(unknown key "threads" in [relay]; valid keys: log-level, idle-timeout, unreplied-timeout, )"
           R"(max-sessions, control)")});
}

TEST(Config, UnknownEndpointKey) {
  auto o = parse(R"([endpoints.in]
type = "udp"
lisetn = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"
port = 3

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(
      o,
      {err(1, 1, R"(endpoint "in" has neither listen nor connect; give exactly one (or subscribe))"),
       err(3, 1, R"(unknown key "lisetn" in endpoint "in": did you mean "listen"?)"),
       err(8, 1, R"(unknown key "port" in endpoint "out"; valid keys: type, listen, connect, subscribe)")});
}

TEST(Config, SubscribeEndpoints) {
  const std::string feed = "[endpoints.feed]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n";
  auto ok = parse(feed + R"([endpoints.consumers]
type = "unix-seqpacket"
subscribe = "/run/consumers.sock"
[[routes]]
from = "feed"
to = "consumers"
)");
  expect_diags(ok, {});
  ASSERT_EQ(ok.config.routes.size(), 1u);
  EXPECT_EQ(ok.config.endpoints[1].role, Role::Subscribe);
  EXPECT_EQ(ok.config.routes[0].balance, Balance::Broadcast);  // the default for subscribers

  expect_diags(parse(feed + R"([endpoints.consumers]
type = "udp"
subscribe = "127.0.0.1:1"
[[routes]]
from = "feed"
to = "consumers"
)"),
               {err_has(6, 13, "subscribe takes a unix-stream or unix-seqpacket endpoint")});
  expect_diags(
      parse(feed + R"([endpoints.consumers]
type = "unix-stream"
subscribe = "/run/a.sock"
connect = "/run/b.sock"
[[routes]]
from = "feed"
to = "consumers"
)"),
      {err(
          7, 11,
          R"(endpoint "consumers" has both connect and subscribe; give exactly one of listen, connect, subscribe)")});
  expect_diags(parse(feed + R"([endpoints.consumers]
type = "unix-stream"
subscribe = "/run/a.sock"
[endpoints.other]
type = "udp"
connect = "127.0.0.1:9"
[[routes]]
from = "feed"
to = ["consumers", "other"]
)"),
               {err_has(12, 6, "with other targets")});
}

TEST(Config, UnknownRouteKey) {
  expect_diags(
      parse(valid_plus("balanse = \"hash\"\nweight = 2\n")),
      {err(12, 1, R"(unknown key "balanse" in route #1: did you mean "balance"?)"),
       err(13, 1,
           R"(unknown key "weight" in route #1; valid keys: from, to, mode, datapath, balance, allow-sources, allow-cids, allow-uids, allow-gids, one-way, when-full, target-buffer)")});
}

TEST(Config, TargetBuffer) {
  auto o = parse(kValid);
  ASSERT_TRUE(o.diagnostics.empty()) << dump(o);
  EXPECT_EQ(o.config.routes[0].target_buffer, kDefaultTargetBuffer);
  for (auto [text, bytes] : std::vector<std::pair<std::string, uint32_t>>{
           {"\"1MiB\"", 1u << 20}, {"\"512KiB\"", 512u << 10}, {"\"1G\"", 1u << 30}, {"65536", 65536}}) {
    o = parse(valid_plus("target-buffer = " + text + "\n"));
    ASSERT_TRUE(o.diagnostics.empty()) << text << "\n" << dump(o);
    EXPECT_EQ(o.config.routes[0].target_buffer, bytes) << text;
  }
  const std::string range = R"(between 64KiB and 1GiB, e.g. "4MiB" (the default))";
  expect_diags(
      parse(valid_plus("target-buffer = \"4 MB\"\n")),
      {err(12, 17,
           R"(route #1: target-buffer must be a size such as "4MiB", "512KiB" or a number of bytes, )" +
               range)});
  expect_diags(parse(valid_plus("target-buffer = \"1KiB\"\n")),
               {err(12, 17, "route #1: target-buffer 1024 bytes is out of range: " + range)});
  expect_diags(parse(valid_plus("target-buffer = -1\n")), {err_has(12, 17, "target-buffer must be a size")});
  // A stream route never drops a byte: the key is refused there.
  expect_diags(
      parse(R"([endpoints.in]
type = "tcp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "tcp"
connect = "127.0.0.1:5301"

[[routes]]
from = "in"
to = "out"
target-buffer = "1MiB"
)"),
      {err_has(12, 17, "route #1: target-buffer bounds what the kernel holds toward a datagram target")});
}

// ---- [relay] values ----

TEST(Config, WrongTypes) {
  expect_diags(parse(with_relay("max-sessions = \"4096\"")),
               {err(2, 16, "max-sessions must be an integer, got string")});
  expect_diags(parse(with_relay("max-sessions = 1.5")),
               {err(2, 16, "max-sessions must be an integer, got float")});
  expect_diags(parse(with_relay("log-level = 3")), {err(2, 13, "log-level must be a string, got integer")});
  expect_diags(parse(with_relay("control = true")), {err(2, 11, "control must be a string, got boolean")});
  expect_diags(parse("relay = 5\n" + std::string(kValid)),
               {err(1, 9, "relay must be a table ([relay]), got integer")});
}

TEST(Config, LogLevel) {
  expect_diags(
      parse(with_relay("log-level = \"verbose\"")),
      {err(
          2, 13,
          R"(log-level "verbose" is not valid; valid values: trace, debug, info, warn, error, critical, off)")});
  expect_diags(
      parse(with_relay("log-level = \"warning\"")),
      {err(2, 13,
           R"(log-level "warning" is not valid: did you mean "warn"? valid values: trace, debug, info, )"
           R"(warn, error, critical, off)")});
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    auto o = parse(with_relay(std::string("log-level = \"") + level + "\""));
    EXPECT_TRUE(o.diagnostics.empty()) << level << "\n" << dump(o);
    EXPECT_EQ(o.config.relay.log_level, level);
  }
}

TEST(Config, IdleTimeout) {
  const std::string bad =
      R"(not a duration: use an integer and a unit ms, s, m or h, e.g. "500ms", "120s", "2m")";
  expect_diags(parse(with_relay("idle-timeout = \"12x\"")), {err(2, 16, "idle-timeout \"12x\": " + bad)});
  expect_diags(parse(with_relay("idle-timeout = \"1.5s\"")), {err(2, 16, "idle-timeout \"1.5s\": " + bad)});
  expect_diags(parse(with_relay("idle-timeout = \"0s\"")),
               {err(2, 16, R"(idle-timeout must be greater than 0, e.g. "120s")")});
  expect_diags(parse(with_relay("idle-timeout = 120")),
               {err(2, 16, R"(idle-timeout must be a string with a unit, e.g. "120s", got integer)")});
  auto o = parse(with_relay("idle-timeout = \"2m\""));
  ASSERT_TRUE(o.diagnostics.empty()) << dump(o);
  EXPECT_EQ(o.config.relay.idle_timeout, std::chrono::minutes(2));
}

// A flow that never saw a reply: 30 s unless idle-timeout is shorter, never
// longer than idle-timeout, the same syntax.
TEST(Config, UnrepliedTimeout) {
  auto o = parse(with_relay(""));
  ASSERT_TRUE(o.diagnostics.empty()) << dump(o);
  EXPECT_EQ(o.config.relay.unreplied_or_default(), std::chrono::seconds(30));
  o = parse(with_relay("idle-timeout = \"10s\""));
  EXPECT_EQ(o.config.relay.unreplied_or_default(), std::chrono::seconds(10)) << "never past idle-timeout";
  o = parse(with_relay("unreplied-timeout = \"300ms\"\nidle-timeout = \"2s\""));
  ASSERT_TRUE(o.diagnostics.empty()) << dump(o);
  EXPECT_EQ(o.config.relay.unreplied_or_default(), std::chrono::milliseconds(300));
  expect_diags(parse(with_relay("unreplied-timeout = \"0s\"")),
               {err(2, 21, R"(unreplied-timeout must be greater than 0, e.g. "30s")")});
  expect_diags(parse(with_relay("unreplied-timeout = 30")),
               {err(2, 21, R"(unreplied-timeout must be a string with a unit, e.g. "30s", got integer)")});
  expect_diags(
      parse(with_relay("idle-timeout = \"1m\"\nunreplied-timeout = \"2m\"")),
      {err(3, 21,
           R"(unreplied-timeout "2m" is longer than idle-timeout (60s): a flow without a reply would )"
           R"(outlive an established one; make it at most idle-timeout)")});
}

TEST(Config, ParseDuration) {
  EXPECT_EQ(*parse_duration("500ms"), std::chrono::milliseconds(500));
  EXPECT_EQ(*parse_duration("120s"), std::chrono::seconds(120));
  EXPECT_EQ(*parse_duration("2m"), std::chrono::minutes(2));
  EXPECT_EQ(*parse_duration("1h"), std::chrono::hours(1));
  EXPECT_EQ(*parse_duration("0s"), std::chrono::milliseconds(0));
  for (const char* bad : {"", "s", "5", "5 s", " 5s", "-5s", "5S", "5sec", "5d", "1e3ms"}) {
    EXPECT_FALSE(parse_duration(bad).ok()) << bad;
  }
  auto huge = parse_duration("99999999999999999999h");
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.error().message, "duration is too large");
}

TEST(Config, MaxSessionsRange) {
  expect_diags(parse(with_relay("max-sessions = 0")),
               {err(2, 16, "max-sessions must be between 1 and 1000000, got 0")});
  expect_diags(parse(with_relay("max-sessions = 1000001")),
               {err(2, 16, "max-sessions must be between 1 and 1000000, got 1000001")});
  EXPECT_TRUE(parse(with_relay("max-sessions = 1000000")).diagnostics.empty());
}

TEST(Config, ControlPath) {
  expect_diags(parse(with_relay("control = \"run/x.sock\"")),
               {err(2, 11,
                    R"(control "run/x.sock" must be an absolute path for the control socket, e.g. )"
                    R"("/run/sockrelay/control.sock")")});
  expect_diags(parse(with_relay("control = \"/" + std::string(107, 'c') + "\"")),
               {err(2, 11, "control path is 108 bytes, at most 107 fit in a UNIX socket address")});
}

// ---- endpoints ----

TEST(Config, BadEndpointType) {
  auto o = parse(R"([endpoints.in]
type = "udpp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "unix-datagram"
connect = "/run/x.sock"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(
      o,
      {err(2, 8, R"(endpoint "in": type "udpp" is not valid: did you mean "udp"? valid values: )" + kKinds),
       err(6, 8, R"(endpoint "out": type "unix-datagram" is not valid; valid values: )" + kKinds)});
}

TEST(Config, MissingType) {
  auto o = parse(R"([endpoints.in]
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(o, {err(1, 1, R"(endpoint "in" has no type; valid types: )" + kKinds)});
}

TEST(Config, BadAddressNamesTheEndpoint) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "1.2.3:80"

[endpoints.out]
type = "unix-dgram"
connect = "run/resolver.sock"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(
      o,
      {err(3, 10,
           R"(endpoint "in": bad udp address "1.2.3:80": expected IPv4 "A.B.C.D:PORT" or IPv6 "[ADDR]:PORT")"),
       err(7, 11,
           R"(endpoint "out": bad unix-dgram address "run/resolver.sock": must be absolute or @abstract, )"
           R"(e.g. "/run/x.sock" or "@name")")});
}

TEST(Config, AddressPortZeroAndHostname) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:0"

[endpoints.out]
type = "tcp"
connect = "localhost:53"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(o, {err_has(3, 10, R"(endpoint "in": bad udp address "127.0.0.1:0": port 0 is not allowed)"),
                   err_has(7, 11, "use a numeric address")});
}

TEST(Config, WildcardAndVsockAnyOnlyForListen) {
  auto o = parse(R"([endpoints.in]
type = "vsock-stream"
listen = "any:1234"

[endpoints.out]
type = "vsock-stream"
connect = "any:1234"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(o, {err_has(7, 11, R"(CID "any" is valid only for listen)")});
}

TEST(Config, AddressMustBeAString) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = 5300

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(o, {err(3, 10, R"(endpoint "in": listen must be a string, got integer)")});
}

TEST(Config, ListenAndConnectBothOrNeither) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"
connect = "127.0.0.1:5302"

[endpoints.out]
type = "udp"

[[routes]]
from = "in"
to = "out"
)");
  expect_diags(
      o, {err(4, 11,
              R"(endpoint "in" has both listen and connect; give exactly one of listen, connect, subscribe)"),
          err(6, 1, R"(endpoint "out" has neither listen nor connect; give exactly one (or subscribe))")});
}

TEST(Config, EndpointNames) {
  auto o = parse(R"([endpoints."dns in"]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints."a:b"]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = "dns in"
to = "a:b"
)");
  const std::string rule =
      R"(: name must be 1 to 255 letters, digits, "_", "." or "-" (it is also systemd's FileDescriptorName=))";
  expect_diags(o, {err(1, 1, R"(endpoint "dns in")" + rule), err(5, 1, R"(endpoint "a:b")" + rule)});

  std::string long_name(256, 'n');
  auto l = parse("[endpoints.\"" + long_name + "\"]\ntype = \"udp\"\nlisten = \"127.0.0.1:1\"\n" +
                 "[endpoints.o]\ntype = \"udp\"\nconnect = \"127.0.0.1:2\"\n[[routes]]\nfrom = \"" +
                 long_name + "\"\nto = \"o\"\n");
  expect_diags(l, {err_has(1, 1, "name must be 1 to 255")});
  std::string ok_name(255, 'n');
  ok_name[0] = 'A';
  ok_name[1] = '_';
  ok_name[2] = '.';
  ok_name[3] = '-';
  ok_name[4] = '9';
  auto ok = parse("[endpoints.\"" + ok_name + "\"]\ntype = \"udp\"\nlisten = \"127.0.0.1:1\"\n" +
                  "[endpoints.o]\ntype = \"udp\"\nconnect = \"127.0.0.1:2\"\n[[routes]]\nfrom = \"" +
                  ok_name + "\"\nto = \"o\"\n");
  EXPECT_TRUE(ok.diagnostics.empty()) << dump(ok);
}

TEST(Config, EndpointMustBeATable) {
  auto o = parse("[endpoints]\nin = \"udp\"\n");
  expect_diags(o,
               {err(1, 1, "nothing to relay: define at least one [[routes]]"),
                err(2, 6, R"(endpoint "in" must be a table with type and listen or connect, got string)")});
}

TEST(Config, DuplicateListenAddresses) {
  auto o = parse(R"([endpoints.a]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.b]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.t]
type = "tcp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[endpoints.out2]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = ["a", "b", "t"]
to = ["out", "out2"]
)");
  // UDP and TCP have separate ports; two connects to one address are fine.
  expect_diags(
      o, {err(7, 10,
              R"(endpoints "a" (line 3) and "b" both listen on "127.0.0.1:5300"; each listen address may )"
              R"(be used once)")});
}

TEST(Config, DuplicateUnixListenAcrossKinds) {
  auto o = parse(R"([endpoints.d]
type = "unix-dgram"
listen = "/run/x.sock"

[endpoints.s]
type = "unix-stream"
listen = "/run/x.sock"

[endpoints.abstract]
type = "unix-stream"
listen = "@/run/x.sock"

[endpoints.v1]
type = "vsock-stream"
listen = "any:5"

[endpoints.v2]
type = "vsock-seqpacket"
listen = "any:5"

[endpoints.out]
type = "unix-dgram"
connect = "/run/y.sock"

[[routes]]
from = ["d", "s", "abstract", "v1", "v2"]
to = "out"
)");
  expect_diags(o, {err_has(7, 10, R"(endpoints "d" (line 3) and "s" both listen on "/run/x.sock")"),
                   err_has(19, 10, R"(endpoints "v1" (line 15) and "v2" both listen on "any:5")")});
}

// ---- routes ----

TEST(Config, RouteNamesUndefinedEndpoint) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = "inn"
to = ["out", "elsewhere"]
)");
  // No "in is not used" warning: the misspelt name already points at it.
  expect_diags(
      o,
      {err(10, 8, R"(route #1: from names "inn" but no endpoint has that name: did you mean "in"?)"),
       err(11, 14,
           R"(route #1: to names "elsewhere" but no endpoint has that name; defined endpoints: in, out)")});
}

TEST(Config, RouteRoles) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = "out"
to = "in"
)");
  expect_diags(
      o, {err(10, 8,
              R"(route #1: from endpoint "out" is a connect endpoint, but a route's from must be listen )"
              R"(endpoints)"),
          err(11, 6,
              R"(route #1: to endpoint "in" is a listen endpoint, but a route's to must be connect )"
              R"(endpoints (or one subscribe endpoint))")});
}

TEST(Config, RouteWithoutFromOrTo) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
to = "out"

[[routes]]
from = "in"
)");
  expect_diags(o, {err(9, 1, R"(route #1 has no "from": name the listen endpoint(s) it reads from)"),
                   err(12, 1, R"(route #2 has no "to": name the connect endpoint(s) it sends to)")});
}

TEST(Config, RouteNameListTypes) {
  auto o = parse(R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.out]
type = "udp"
connect = "127.0.0.1:5301"

[[routes]]
from = ["in", 3]
to = []

[[routes]]
from = "in"
to = 5
)");
  expect_diags(o, {warn(5, 1, R"(endpoint "out" is not used by any route)"),
                   err(10, 15, "route #1: from must list endpoint names (strings), got integer"),
                   err(11, 6, "route #1: to is empty; name at least one endpoint"),
                   err(15, 6, "route #2: to must be an endpoint name or an array of names, got integer")});
}

TEST(Config, RouteListsANameTwice) {
  auto o = parse(valid_plus("\n[[routes]]\nfrom = \"in\"\nto = [\"out\", \"out\"]\n"));
  expect_diags(o, {err(14, 8,
                       R"(route #2: endpoint "in" is already the source of route #1; a listen endpoint )"
                       R"(feeds one route)"),
                   err(15, 14, R"(route #2: to lists "out" twice)")});
}

TEST(Config, RouteEnums) {
  expect_diags(parse(valid_plus("mode = \"egres\"\n")),
               {err(12, 8,
                    R"(route #1: mode "egres" is not valid: did you mean "egress"? valid values: egress, )"
                    R"(ingress)")});
  expect_diags(
      parse(valid_plus("datapath = \"bpf\"\n")),
      {err(12, 12, R"(route #1: datapath "bpf" is not valid; valid values: auto, kernel, userspace)")});
  expect_diags(parse(valid_plus("mode = 1\n")), {err(12, 8, "route #1: mode must be a string, got integer")});
  auto ok = parse(valid_plus("datapath = \"kernel\"\n"));
  ASSERT_TRUE(ok.diagnostics.empty()) << dump(ok);
  EXPECT_EQ(ok.config.routes[0].datapath, Datapath::Kernel);
  // Ingress parses, and is then refused toward a connect endpoint, at the mode (route_rules.h).
  auto ingress = parse(valid_plus("mode = \"ingress\"\n"));
  EXPECT_EQ(ingress.config.routes[0].mode, Mode::Ingress);
  expect_diags(ingress, {err_has(12, 8,
                                 "route #1: mode = \"ingress\" (BPF_F_INGRESS) delivers into the target "
                                 "socket's own receive queue")});
}

TEST(Config, BalanceWithOneTargetIsAWarning) {
  auto o = parse(valid_plus("balance = \"hash\"\n"));
  expect_diags(
      o, {warn(12, 11,
               R"(route #1: balance "hash" has no effect with a single target; remove it or list several )"
               R"(endpoints in "to")")});
  EXPECT_FALSE(o.has_errors());
  EXPECT_EQ(o.config.routes[0].balance, Balance::Single);
  EXPECT_EQ(o.diagnostics[0].format().rfind("t.toml:12:11: warning: route #1: balance", 0), 0u);
}

TEST(Config, BalanceWithSeveralTargets) {
  const std::string doc = R"([endpoints.in]
type = "udp"
listen = "127.0.0.1:5300"

[endpoints.a]
type = "unix-dgram"
connect = "/run/a.sock"

[endpoints.b]
type = "unix-dgram"
connect = "/run/b.sock"

[[routes]]
from = "in"
to = ["a", "b"]
)";
  auto rr = parse(doc);
  ASSERT_TRUE(rr.diagnostics.empty()) << dump(rr);
  EXPECT_EQ(rr.config.routes[0].balance, Balance::RoundRobin);
  auto bc = parse(doc + "balance = \"broadcast\"\n");
  ASSERT_TRUE(bc.diagnostics.empty()) << dump(bc);
  EXPECT_EQ(bc.config.routes[0].balance, Balance::Broadcast);
  auto h = parse(doc + "balance = \"hash\"\n");
  EXPECT_EQ(h.config.routes[0].balance, Balance::Hash);
  expect_diags(
      parse(doc + "balance = \"single\"\n"),
      {err(16, 11,
           R"(route #1: balance "single" is not valid; valid values: round-robin, hash, broadcast)")});
  expect_diags(
      parse(doc + "balance = \"roundrobin\"\n"),
      {err(16, 11,
           R"(route #1: balance "roundrobin" is not valid: did you mean "round-robin"? valid values: )"
           R"(round-robin, hash, broadcast)")});
}

TEST(Config, RoutesMustBeAnArrayOfTables) {
  auto o = parse(std::string(kValid, std::string(kValid).find("[[routes]]")) + "[routes]\nfrom = \"in\"\n");
  expect_diags(o, {err(9, 1, "routes must be an array of tables: write each one as [[routes]], got table")});
  auto a = parse(std::string("routes = [1]\n") + std::string(kValid, std::string(kValid).find("[[routes]]")));
  expect_diags(a, {err(1, 11, "route #1 must be a table: write it as [[routes]], got integer")});
}

TEST(Config, UnusedEndpointIsAWarning) {
  auto o = parse(valid_plus("\n[endpoints.spare]\ntype = \"tcp\"\nconnect = \"127.0.0.1:9\"\n"));
  expect_diags(o, {warn(13, 1, R"(endpoint "spare" is not used by any route)")});
  EXPECT_FALSE(o.has_errors());
  EXPECT_EQ(o.config.endpoints.back().name, "spare");
}

TEST(Config, NothingToRelay) {
  expect_diags(parse(""), {err(1, 1,
                               "nothing to relay: define at least one [[routes]] and the [endpoints.NAME] it "
                               "joins")});
  expect_diags(
      parse("[relay]\nlog-level = \"info\"\n"),
      {err(1, 1, "nothing to relay: define at least one [[routes]] and the [endpoints.NAME] it joins")});
  std::string endpoints_only(kValid, std::string(kValid).find("[[routes]]"));
  expect_diags(parse(endpoints_only), {err(1, 1, "nothing to relay: define at least one [[routes]]")});
  expect_diags(parse("routes = []\n" + endpoints_only),
               {err(1, 10, "nothing to relay: define at least one [[routes]]")});
}

TEST(Config, TooManyRoutes) {
  // 257 listeners, each with its own route to one upstream.
  std::string doc = "[endpoints.up]\ntype = \"udp\"\nconnect = \"127.0.0.1:9\"\n";  // lines 1-3
  const int n = static_cast<int>(kMaxRoutes) + 1;
  for (int i = 0; i < n; ++i) {  // 3 lines each
    doc += "[endpoints.e" + std::to_string(i) +
           "]\ntype = \"udp\"\nlisten = \"127.0.0.1:" + std::to_string(1000 + i) + "\"\n";
  }
  int line = 3 + 3 * n + 1;
  int route_257_line = 0;
  for (int i = 0; i < n; ++i) {  // 3 lines each
    if (i == n - 1) route_257_line = line;
    doc += "[[routes]]\nfrom = \"e" + std::to_string(i) + "\"\nto = \"up\"\n";
    line += 3;
  }
  auto o = parse(doc);
  expect_diags(o, {err(route_257_line, 1, "too many routes: 257, at most 256 (RELAY_MAX_ROUTES)")});

  // Exactly the limit is fine.
  auto cut = doc.rfind("[[routes]]");
  auto at_limit = parse(doc.substr(0, cut));
  std::vector<Diagnostic> errors;
  for (const Diagnostic& d : at_limit.diagnostics) {
    if (d.severity == Severity::Error) errors.push_back(d);
  }
  EXPECT_TRUE(errors.empty()) << dump(at_limit);
  EXPECT_EQ(at_limit.config.routes.size(), kMaxRoutes);
}

TEST(Config, CollectsEveryProblemInFileOrder) {
  auto o = parse(R"([relay]
log-level = "loud"
max-sessions = -1
idle-timeout = "forever"

[endpoints.in]
type = "udp"
listen = "127.0.0.1:99999"

[endpoints.out]
type = "unix-dgram"
connect = "relative.sock"
extra = 1

[[routes]]
from = "in"
to = "ghost"
mode = "sideways"
)");
  expect_diags(o, {err_has(2, 13, "log-level \"loud\" is not valid"),
                   err_has(3, 16, "max-sessions must be between 1 and 1000000, got -1"),
                   err_has(4, 16, "idle-timeout \"forever\": not a duration"),
                   err_has(8, 10, "port 99999 is out of range 1..65535"),
                   err_has(12, 11, "must be absolute or @abstract"),
                   err_has(13, 1, "unknown key \"extra\" in endpoint \"out\""),
                   err_has(17, 6, "to names \"ghost\" but no endpoint has that name"),
                   err_has(18, 8, "mode \"sideways\" is not valid")});
}

// ---- files ----

TEST(Config, LoadConfigUnreadableFile) {
  auto o = load_config("/nonexistent/sockrelay.toml");
  ASSERT_EQ(o.diagnostics.size(), 1u);
  EXPECT_EQ(
      o.diagnostics[0].format(),
      "/nonexistent/sockrelay.toml:0:0: error: cannot read config: No such file or directory; create it or "
      "pass --config FILE");
  auto dir = load_config("/");
  ASSERT_EQ(dir.diagnostics.size(), 1u);
  EXPECT_EQ(dir.diagnostics[0].message,
            "cannot read config: Is a directory; create it or pass --config FILE");
}

std::filesystem::path config_dir() {
  // tests/unit/config_test.cpp -> <repo>/config
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "config";
}

TEST(ShippedConfigs, EveryExampleIsValid) {
  const std::set<std::string> expected = {
      "sockrelay.toml",
      "udp-to-unix-dgram.toml",
      "unix-dgram-to-udp.toml",
      "unix-to-unix.toml",
      "tcp-proxy.toml",
      "unix-stream-to-tcp.toml",
      "vsock-guest-to-host-unix.toml",
      "fan-out.toml",
      "vsock-guest-to-host-seqpacket.toml",
      "vsock-host-to-guest.toml",
  };
  std::set<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator(config_dir())) {
    if (entry.path().extension() != ".toml") continue;
    found.insert(entry.path().filename().string());
    auto o = load_config(entry.path().string());
    EXPECT_TRUE(o.diagnostics.empty()) << entry.path() << "\n" << dump(o);
    EXPECT_FALSE(o.config.routes.empty()) << entry.path();
  }
  for (const std::string& name : expected) EXPECT_TRUE(found.count(name)) << "missing config/" << name;
}

TEST(ShippedConfigs, DefaultIsTheDemo) {
  auto o = load_config((config_dir() / "sockrelay.toml").string());
  ASSERT_FALSE(o.has_errors()) << dump(o);
  const Config& c = o.config;
  EXPECT_EQ(c.relay.control, "/run/sockrelay/control.sock");
  ASSERT_EQ(c.endpoints.size(), 2u);
  EXPECT_EQ(c.endpoints[0].kind, EndpointKind::Udp);
  EXPECT_EQ(c.endpoints[0].role, Role::Listen);
  EXPECT_EQ(c.endpoints[0].address.text, "127.0.0.1:5300");
  EXPECT_EQ(c.endpoints[1].kind, EndpointKind::Udp);
  EXPECT_EQ(c.endpoints[1].role, Role::Connect);
  EXPECT_EQ(c.endpoints[1].address.text, "127.0.0.1:5301");
  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].datapath, Datapath::Auto);
  EXPECT_EQ(c.routes[0].mode, Mode::Egress);
}

TEST(ShippedConfigs, UseCasesHaveTheirShape) {
  auto kinds = [](const std::string& file) {
    auto o = load_config((config_dir() / file).string());
    std::vector<std::pair<EndpointKind, Role>> out;
    for (const Endpoint& e : o.config.endpoints) out.emplace_back(e.kind, e.role);
    return out;
  };
  using K = EndpointKind;
  using R = Role;
  EXPECT_EQ(kinds("udp-to-unix-dgram.toml"),
            (std::vector<std::pair<K, R>>{{K::Udp, R::Listen}, {K::UnixDgram, R::Connect}}));
  EXPECT_EQ(kinds("unix-dgram-to-udp.toml"),
            (std::vector<std::pair<K, R>>{{K::UnixDgram, R::Listen}, {K::Udp, R::Connect}}));
  EXPECT_EQ(kinds("tcp-proxy.toml"),
            (std::vector<std::pair<K, R>>{{K::Tcp, R::Listen}, {K::Tcp, R::Connect}}));
  EXPECT_EQ(kinds("unix-stream-to-tcp.toml"),
            (std::vector<std::pair<K, R>>{{K::UnixStream, R::Listen}, {K::Tcp, R::Connect}}));
  EXPECT_EQ(kinds("vsock-guest-to-host-unix.toml"),
            (std::vector<std::pair<K, R>>{{K::VsockStream, R::Listen}, {K::UnixStream, R::Connect}}));
  auto vs = load_config((config_dir() / "vsock-guest-to-host-unix.toml").string());
  EXPECT_EQ(vs.config.endpoints[0].address.text, "any:1234");
  EXPECT_EQ(vs.config.endpoints[1].address.text, "/run/service.sock");
  auto fan = load_config((config_dir() / "fan-out.toml").string());
  ASSERT_EQ(fan.config.routes.size(), 1u);
  EXPECT_EQ(fan.config.routes[0].to.size(), 3u);
  EXPECT_EQ(fan.config.routes[0].balance, Balance::RoundRobin);
  EXPECT_EQ(fan.config.endpoints[1].kind, EndpointKind::UnixDgram);
}

}  // namespace
}  // namespace sockrelay

namespace sockrelay {
namespace {

TEST(AllowSources, ParsesNetworksAndMatchesClients) {
  ParseOutcome out = parse_config(
      "[endpoints.a]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
      "[endpoints.b]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
      "[[routes]]\nfrom = \"a\"\nto = \"b\"\nallow-sources = [\"10.0.0.0/8\", \"::1/128\", "
      "\"192.168.1.7\"]\n",
      "t.toml");
  ASSERT_FALSE(out.has_errors()) << (out.diagnostics.empty() ? "" : out.diagnostics[0].format());
  const auto& nets = out.config.routes[0].allow_sources;
  ASSERT_EQ(nets.size(), 3u);
  auto v4 = [](const char* ip) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
  };
  sockaddr_in in = v4("10.200.3.4"), out_of = v4("11.0.0.1"), host = v4("192.168.1.7"),
              near = v4("192.168.1.8");
  EXPECT_TRUE(nets[0].contains(reinterpret_cast<sockaddr*>(&in)));
  EXPECT_FALSE(nets[0].contains(reinterpret_cast<sockaddr*>(&out_of)));
  EXPECT_TRUE(nets[2].contains(reinterpret_cast<sockaddr*>(&host)));
  EXPECT_FALSE(nets[2].contains(reinterpret_cast<sockaddr*>(&near)));
  sockaddr_in6 lo6{};
  lo6.sin6_family = AF_INET6;
  lo6.sin6_addr = in6addr_loopback;
  EXPECT_TRUE(nets[1].contains(reinterpret_cast<sockaddr*>(&lo6)));
  EXPECT_FALSE(nets[0].contains(reinterpret_cast<sockaddr*>(&lo6)));
}

TEST(AllowSources, BadNetworkIsAnErrorAtItsPosition) {
  ParseOutcome out = parse_config(
      "[endpoints.a]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
      "[endpoints.b]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
      "[[routes]]\nfrom = \"a\"\nto = \"b\"\nallow-sources = [\"10.0.0.0/33\"]\n",
      "t.toml");
  ASSERT_TRUE(out.has_errors());
  EXPECT_EQ(out.diagnostics[0].pos.line, 10);
  EXPECT_NE(out.diagnostics[0].message.find("is not a network"), std::string::npos)
      << out.diagnostics[0].message;
}

}  // namespace
}  // namespace sockrelay

namespace sockrelay {
namespace {

TEST(AllowIds, CidsUidsAndGidsByNumberOrName) {
  ParseOutcome out = parse_config(
      "[endpoints.a]\ntype = \"vsock-stream\"\nlisten = \"any:5000\"\n"
      "[endpoints.b]\ntype = \"unix-stream\"\nconnect = \"/run/b.sock\"\n"
      "[[routes]]\nfrom = \"a\"\nto = \"b\"\nallow-cids = [3, \"host\", \"local\"]\n",
      "t.toml");
  ASSERT_FALSE(out.has_errors()) << (out.diagnostics.empty() ? "" : out.diagnostics[0].format());
  EXPECT_EQ(out.config.routes[0].allow_cids, (std::vector<uint32_t>{3, 2, 1}));
  // uids and gids are for unix sources (route_rules.h).
  out = parse_config(
      "[endpoints.a]\ntype = \"unix-stream\"\nlisten = \"@a\"\n"
      "[endpoints.b]\ntype = \"unix-stream\"\nconnect = \"/run/b.sock\"\n"
      "[[routes]]\nfrom = \"a\"\nto = \"b\"\n"
      "allow-uids = [0, \"root\"]\nallow-gids = [\"root\", 7]\n",
      "t.toml");
  ASSERT_FALSE(out.has_errors()) << (out.diagnostics.empty() ? "" : out.diagnostics[0].format());
  const Route& r = out.config.routes[0];
  EXPECT_EQ(r.allow_uids, (std::vector<uint32_t>{0, 0}));
  EXPECT_EQ(r.allow_gids, (std::vector<uint32_t>{0, 7}));
}

TEST(AllowIds, UnknownNamesAndBadTypesAreErrorsAtTheirPosition) {
  for (auto [line, expect] :
       {std::pair{"allow-cids = [\"hypervisor\"]", "is not a CID"},
        std::pair{"allow-uids = [\"no-such-user-sockrelay\"]", "is not a user on this system"},
        std::pair{"allow-gids = [-1]", "out of range"}, std::pair{"allow-cids = 3", "must be an array"}}) {
    ParseOutcome out =
        parse_config(std::string("[endpoints.a]\ntype = \"vsock-stream\"\nlisten = \"any:5000\"\n"
                                 "[endpoints.b]\ntype = \"unix-stream\"\nconnect = \"/run/b.sock\"\n"
                                 "[[routes]]\nfrom = \"a\"\nto = \"b\"\n") +
                         line + "\n",
                     "t.toml");
    ASSERT_TRUE(out.has_errors()) << line;
    EXPECT_EQ(out.diagnostics[0].pos.line, 10) << line;
    EXPECT_NE(out.diagnostics[0].message.find(expect), std::string::npos) << out.diagnostics[0].message;
  }
}

}  // namespace
}  // namespace sockrelay

// ---- what this version can run (config/route_rules.h) ----

namespace sockrelay {
namespace {

// Lines 1-33: sources u (udp), d (unix-dgram), t (tcp), v (vsock-stream),
// s (unix-stream); targets uo, uo2 (udp), to, to2 (tcp), so (unix-stream)
// and the subscribe endpoint sub.
// Line 34 is [[routes]], so a route's keys start on line 35.
constexpr char kEndpoints[] = R"([endpoints.u]
type = "udp"
listen = "127.0.0.1:5300"
[endpoints.d]
type = "unix-dgram"
listen = "@d"
[endpoints.t]
type = "tcp"
listen = "127.0.0.1:5400"
[endpoints.v]
type = "vsock-stream"
listen = "any:5000"
[endpoints.s]
type = "unix-stream"
listen = "@s"
[endpoints.uo]
type = "udp"
connect = "127.0.0.1:5301"
[endpoints.uo2]
type = "udp"
connect = "127.0.0.1:5302"
[endpoints.to]
type = "tcp"
connect = "127.0.0.1:5401"
[endpoints.to2]
type = "tcp"
connect = "127.0.0.1:5402"
[endpoints.so]
type = "unix-stream"
connect = "/run/so.sock"
[endpoints.sub]
type = "unix-stream"
subscribe = "/run/sub.sock"
[[routes]]
)";

// The errors only (unused endpoints are warnings).
std::vector<Diagnostic> errors_of(const ParseOutcome& o) {
  std::vector<Diagnostic> errors;
  for (const Diagnostic& d : o.diagnostics)
    if (d.severity == Severity::Error) errors.push_back(d);
  return errors;
}

struct RuleCase {
  std::string route;  // from line 35
  int line, column;
  std::string message;  // part of it
};

TEST(RouteRules, EachIsReportedAtTheKeyToChange) {
  const RuleCase cases[] = {
      {"from = \"t\"\nto = [\"to\", \"to2\"]\nbalance = \"broadcast\"\n", 37, 11,
       "route #1: balance = \"broadcast\" copies datagrams; t (tcp 127.0.0.1:5400) is a connection source"},
      {"from = \"u\"\nto = \"uo\"\nmode = \"ingress\"\n", 37, 8,
       "route #1: mode = \"ingress\" (BPF_F_INGRESS) delivers into the target socket's own receive queue"},
      {"from = [\"u\", \"d\"]\nto = \"sub\"\n", 35, 8, "a route to subscribers reads one source"},
      {"from = \"t\"\nto = \"sub\"\n", 35, 8,
       "subscribers receive datagrams; endpoint t (tcp 127.0.0.1:5400)"},
      {"from = \"u\"\nto = \"sub\"\nbalance = \"hash\"\n", 37, 11, "hashing would move every client"},
      {"from = \"u\"\nto = \"sub\"\nmode = \"ingress\"\n", 37, 8, "one skb goes to one socket only"},
      {"from = \"t\"\nto = \"to\"\nallow-sources = [\"10.0.0.0/8\"]\n", 37, 17,
       "allow-sources is enforced for udp sources only in this version; endpoint t (tcp 127.0.0.1:5400)"},
      {"from = \"u\"\nto = \"uo\"\nallow-cids = [3]\n", 37, 14, "allow-cids applies to vsock sources"},
      {"from = \"t\"\nto = \"to\"\nallow-uids = [0]\n", 37, 14, "allow-uids and allow-gids are enforced for"},
      {"from = \"d\"\nto = \"uo\"\nallow-uids = [0]\nallow-gids = [0]\ndatapath = \"kernel\"\n", 38, 14,
       "allow-gids on unix-dgram endpoint d (unix-dgram @d) needs datapath = \"auto\" or \"userspace\""},
      {"from = \"u\"\nto = [\"so\", \"to\"]\n", 36, 6,
       "a route between a datagram kind and a stream/seqpacket kind takes exactly one `to` target"},
      // The other family second in the list: every target counts, not the first only.
      {"from = \"u\"\nto = [\"uo\", \"to\"]\n", 36, 6,
       "a route between a datagram kind and a stream/seqpacket kind takes exactly one `to` target"},
  };
  for (const RuleCase& c : cases) {
    SCOPED_TRACE(c.route);
    ParseOutcome o = parse(kEndpoints + c.route);
    std::vector<Diagnostic> errors = errors_of(o);
    ASSERT_EQ(errors.size(), 1u) << dump(o);
    EXPECT_EQ(errors[0].pos.line, c.line) << dump(o);
    EXPECT_EQ(errors[0].pos.column, c.column) << dump(o);
    EXPECT_NE(errors[0].message.find(c.message), std::string::npos) << dump(o);
  }
}

TEST(RouteRules, WhatThisVersionRunsPasses) {
  for (const char* route : {
           "from = \"u\"\nto = [\"uo\", \"uo2\"]\nbalance = \"broadcast\"\n",
           "from = \"d\"\nto = \"uo\"\nallow-uids = [0]\nallow-gids = [0]\ndatapath = \"userspace\"\n",
           "from = \"v\"\nto = \"so\"\nallow-cids = [3]\n",
           "from = \"s\"\nto = \"to\"\nallow-uids = [0]\n",
           "from = \"u\"\nto = \"sub\"\nmode = \"ingress\"\nbalance = \"round-robin\"\n",
           // Ingress needs the kernel path: plan_route refuses this one, not the config.
           "from = \"u\"\nto = \"sub\"\nmode = \"ingress\"\nbalance = \"round-robin\"\ndatapath = "
           "\"userspace\"\n",
           "from = \"u\"\nto = \"so\"\nallow-sources = [\"10.0.0.0/8\"]\n",
       }) {
    ParseOutcome o = parse(kEndpoints + std::string(route));
    EXPECT_TRUE(errors_of(o).empty()) << route << dump(o);
  }
}

TEST(RouteRules, ASubscribeEndpointFedByTwoRoutesIsReportedForEach) {
  ParseOutcome o =
      parse(kEndpoints + std::string("from = \"u\"\nto = \"sub\"\n[[routes]]\nfrom = \"d\"\nto = \"sub\"\n"));
  std::vector<Diagnostic> errors = errors_of(o);
  ASSERT_EQ(errors.size(), 2u) << dump(o);
  EXPECT_EQ(errors[0].pos.line, 36);
  EXPECT_EQ(errors[1].pos.line, 39);
  for (const Diagnostic& d : errors)
    EXPECT_NE(d.message.find("subscribe endpoint \"sub\" is the target of 2 routes"), std::string::npos)
        << dump(o);
}

TEST(RouteRules, AtMostEightTargets) {
  std::string doc = "[endpoints.in]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n";
  std::string to;
  for (int i = 0; i <= static_cast<int>(kMaxTargets); ++i) {
    doc += "[endpoints.o" + std::to_string(i) +
           "]\ntype = \"udp\"\nconnect = \"127.0.0.1:" + std::to_string(6000 + i) + "\"\n";
    to += std::string(to.empty() ? "" : ", ") + "\"o" + std::to_string(i) + "\"";
  }
  const int route_line = 3 + 3 * (static_cast<int>(kMaxTargets) + 1) + 1;
  expect_diags(parse(doc + "[[routes]]\nfrom = \"in\"\nto = [" + to + "]\n"),
               {err(route_line + 2, 6, "route #1: to lists 9 targets; at most 8 `to` targets per route")});
}

// The rules read a whole, consistent config: a file with other errors
// reports those first.
TEST(RouteRules, WaitForAFileWithoutOtherErrors) {
  ParseOutcome o =
      parse(kEndpoints + std::string("from = \"u\"\nto = \"uo\"\nmode = \"ingress\"\nbogus = 1\n"));
  std::vector<Diagnostic> errors = errors_of(o);
  ASSERT_EQ(errors.size(), 1u) << dump(o);
  EXPECT_EQ(errors[0].pos.line, 38);
  EXPECT_NE(errors[0].message.find("unknown key \"bogus\" in route #1"), std::string::npos) << dump(o);
}

TEST(RouteRules, RouteKeysKeepTheirPositions) {
  ParseOutcome o = parse(kEndpoints + std::string("to = \"uo\"\nfrom = \"u\"\ndatapath = \"kernel\"\n"));
  ASSERT_FALSE(o.has_errors()) << dump(o);
  const Route& r = o.config.routes[0];
  EXPECT_EQ(r.pos.line, 34);
  EXPECT_EQ(r.keys.to.line, 35);
  EXPECT_EQ(r.keys.to.column, 6);
  EXPECT_EQ(r.keys.from.line, 36);
  EXPECT_EQ(r.keys.datapath.line, 37);
  EXPECT_EQ(r.keys.datapath.column, 12);
  // A key the route lacks points at the route.
  EXPECT_EQ(r.keys.mode.line, 34);
  EXPECT_EQ(r.keys.allow_gids.line, 34);
}

}  // namespace
}  // namespace sockrelay
