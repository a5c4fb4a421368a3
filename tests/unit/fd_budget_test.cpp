// The relay's file budget: what each route kind needs per session, the
// warning `check` and `run` give, the when-full key, and the pipe pool.
#include "config/fd_budget.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <string>

#include "config/config.h"
#include "sessions/pipe_pool.h"

namespace sockrelay {
namespace {

constexpr const char* kEndpoints = R"([relay]
max-sessions = 1000
[endpoints.u]
type = "udp"
listen = "127.0.0.1:5300"
[endpoints.uo]
type = "udp"
connect = "127.0.0.1:5301"
[endpoints.uo2]
type = "udp"
connect = "127.0.0.1:5302"
[endpoints.t]
type = "tcp"
listen = "127.0.0.1:5400"
[endpoints.to]
type = "tcp"
connect = "127.0.0.1:5401"
[endpoints.q]
type = "unix-seqpacket"
listen = "@q"
[endpoints.qo]
type = "unix-seqpacket"
connect = "@qo"
[endpoints.sub]
type = "unix-stream"
subscribe = "/run/sub.sock"
[[routes]]
)";

std::string dump(const ParseOutcome& o) {
  std::string out;
  for (const Diagnostic& d : o.diagnostics) out += "  " + d.format() + "\n";
  return out;
}

Config config_with(const std::string& route) {
  ParseOutcome o = parse_config(kEndpoints + route, "t.toml");
  EXPECT_FALSE(o.has_errors()) << dump(o);
  return o.config;
}

TEST(FdBudget, EachRouteKindCostsWhatItOpensPerSession) {
  struct Case {
    std::string route;
    uint64_t per_session;
    std::string what;
  };
  const Case cases[] = {
      {"from = \"u\"\nto = \"uo\"\n", 2, "datagram flow"},
      {"from = \"u\"\nto = [\"uo\", \"uo2\"]\n", 3, "datagram flow"},
      {"from = \"t\"\nto = \"to\"\n", 6, "stream, user path"},
      {"from = \"t\"\nto = \"to\"\ndatapath = \"kernel\"\n", 2, "stream, kernel path"},
      {"from = \"q\"\nto = \"qo\"\n", 2, "stream, message copies"},
      {"from = \"u\"\nto = \"to\"\n", 2, "bridge"},
      {"from = \"u\"\nto = \"sub\"\n", 1, "subscriber"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.route);
    Config config = config_with(c.route);
    std::string what;
    EXPECT_EQ(fds_per_session(config, config.routes.at(0), &what), c.per_session);
    EXPECT_EQ(what, c.what);
  }
}

TEST(FdBudget, TheNeedIsFixedPlusMaxSessionsTimesTheDearestSession) {
  Config config = config_with("from = \"t\"\nto = \"to\"\n[[routes]]\nfrom = \"u\"\nto = \"uo\"\n");
  FdNeed need = fd_need(config);
  EXPECT_EQ(need.per_session, 6u);
  EXPECT_EQ(need.dearest, "route #1 (stream, user path, 6 per session)");
  EXPECT_GT(need.fixed, 0u);
  EXPECT_EQ(need.total, need.fixed + 1000u * 6u);
}

TEST(FdBudget, TheSocketsMadeAheadForEachUdpTargetAreInTheFixedNeed) {
  FdNeed one = fd_need(config_with("from = \"u\"\nto = \"uo\"\n"));
  FdNeed two = fd_need(config_with("from = \"u\"\nto = [\"uo\", \"uo2\"]\n"));
  EXPECT_EQ(two.fixed - one.fixed, kReadyUpstreamsPerTarget);
  // A stream route makes none ahead.
  FdNeed stream = fd_need(config_with("from = \"t\"\nto = \"to\"\n"));
  EXPECT_EQ(one.fixed - stream.fixed, kReadyUpstreamsPerTarget);
}

TEST(FdBudget, WarnsWithTheNumberTheLimitAndTheFix) {
  Config config = config_with("from = \"t\"\nto = \"to\"\n");
  FdNeed need = fd_need(config);
  EXPECT_FALSE(fd_budget_warning(config, need, need.total).has_value());
  auto warning = fd_budget_warning(config, need, 1024);
  ASSERT_TRUE(warning.has_value());
  uint64_t fits = (1024 - need.fixed) / 6;
  EXPECT_EQ(*warning, "max-sessions = 1000 needs up to " + std::to_string(need.total) +
                          " file descriptors (route #1 (stream, user path, 6 per session), plus " +
                          std::to_string(need.fixed) + " fixed), but the limit is 1024: past about " +
                          std::to_string(fits) +
                          " sessions new ones are dropped as fd-limit. Raise LimitNOFILE= in the unit (e.g. "
                          "LimitNOFILE=" +
                          std::to_string(need.total) + ") or lower max-sessions to " + std::to_string(fits));
}

TEST(FdBudget, MaxSessionsPositionIsKeptForTheWarning) {
  Config config = config_with("from = \"t\"\nto = \"to\"\n");
  EXPECT_EQ(config.relay.max_sessions_pos.line, 2);
  EXPECT_EQ(config.relay.max_sessions_pos.column, 16);
}

TEST(WhenFull, ParsedForConnectionSources) {
  EXPECT_EQ(config_with("from = \"t\"\nto = \"to\"\n").routes[0].when_full, WhenFull::Reset);
  EXPECT_EQ(config_with("from = \"t\"\nto = \"to\"\nwhen-full = \"wait\"\n").routes[0].when_full,
            WhenFull::Wait);
  EXPECT_EQ(config_with("from = \"t\"\nto = \"to\"\nwhen-full = \"reset\"\n").routes[0].when_full,
            WhenFull::Reset);
}

TEST(WhenFull, BadValueAndDatagramSourceAreErrorsAtTheKey) {
  // [[routes]] is line 27: from 28, to 29, when-full 30.
  ParseOutcome bad =
      parse_config(std::string(kEndpoints) + "from = \"t\"\nto = \"to\"\nwhen-full = \"queue\"\n", "t.toml");
  ASSERT_TRUE(bad.has_errors()) << dump(bad);
  EXPECT_NE(dump(bad).find("t.toml:30:13: error: route #1: when-full"), std::string::npos) << dump(bad);
  ParseOutcome dgram =
      parse_config(std::string(kEndpoints) + "from = \"u\"\nto = \"uo\"\nwhen-full = \"wait\"\n", "t.toml");
  ASSERT_TRUE(dgram.has_errors()) << dump(dgram);
  EXPECT_NE(
      dump(dgram).find("t.toml:30:13: error: route #1: when-full = \"wait\" applies to connection sources"),
      std::string::npos)
      << dump(dgram);
}

TEST(PipePool, AnEmptyPipeIsReusedAndTrimmedWhenIdle) {
  PipePool pool;
  auto first = pool.take();
  ASSERT_TRUE(first.ok()) << first.error().describe();
  EXPECT_GT(first->capacity, 0u);
  int fd = first->w.get();
  pool.give_back(std::move(*first));
  EXPECT_EQ(pool.idle(), 1u);
  auto again = pool.take();  // the same pipe, not a new one
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->w.get(), fd);
  EXPECT_EQ(pool.opened(), 1u);
  pool.give_back(std::move(*again));
  pool.trim();  // taken since the last trim: kept
  EXPECT_EQ(pool.idle(), 1u);
  pool.trim();  // not taken since: closed
  EXPECT_EQ(pool.idle(), 0u);
}

TEST(PipePool, OutOfDescriptorsKeepsTheErrno) {
  rlimit saved{};
  getrlimit(RLIMIT_NOFILE, &saved);
  PipePool pool;
  std::vector<Pipe> held;
  rlimit low{64, saved.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  int code = 0;
  for (int i = 0; i < 64 && code == 0; ++i) {
    auto p = pool.take();
    if (p)
      held.push_back(std::move(*p));
    else
      code = p.error().code;
  }
  setrlimit(RLIMIT_NOFILE, &saved);
  EXPECT_EQ(code, EMFILE);
}

}  // namespace
}  // namespace sockrelay
