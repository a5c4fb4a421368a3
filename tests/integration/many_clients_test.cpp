// Many clients against the relay's file budget (issue 14): the relay
// starts with the limits a systemd service gets (soft RLIMIT_NOFILE 1024,
// here hard 20000, set with prlimit on the child), raises its soft limit,
// and serves 4,000 UDP clients and 1,000 concurrent TCP sessions; with a
// hard limit too low, EMFILE is counted as fd-limit and the target stays in
// rotation; when-full = "wait" leaves a connection in the backlog until a
// session ends; descriptors go back to the baseline when sessions end.
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>

#include "relay_harness.h"
#include "stream_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint16_t kFront = 7300, kBack = 7301, kBack2 = 7302;

// The test process holds thousands of sockets itself.
void raise_own_limit(rlim_t n) {
  rlimit lim{n, n};
  setrlimit(RLIMIT_NOFILE, &lim);
}

std::vector<std::string> prlimit(rlim_t soft, rlim_t hard) {
  return {"prlimit", "--nofile=" + std::to_string(soft) + ":" + std::to_string(hard), "--"};
}

size_t open_fds(pid_t pid) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// "Max open files  SOFT  HARD  files" from /proc/PID/limits.
std::pair<std::string, std::string> nofile_limits(pid_t pid) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/limits"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream words(line.substr(14));
    std::string soft, hard;
    words >> soft >> hard;
    return {soft, hard};
  }
  return {};
}

// A count in `status json`, 0 while the relay cannot answer (its control
// socket pauses too when it is out of descriptors).
uint64_t status_count(RelayProcess& relay, const std::string& key) {
  uint64_t v = json_number(relay.status_json(), key);
  return v == UINT64_MAX ? 0 : v;
}

// Polls until `pred` holds or `limit` passes (a wait, not a timed assertion).
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 15s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// The Udp counters of this network namespace (/proc/self/net/snmp), for a
// failure's message: RcvbufErrors is a socket's receive buffer overflowing.
std::string udp_snmp() {
  std::istringstream in(read_file("/proc/self/net/snmp"));
  std::string line, out;
  while (std::getline(in, line))
    if (line.rfind("Udp:", 0) == 0) out += line + "\n";
  return out;
}

struct UdpRound {
  size_t answered = 0;
  size_t wrong = 0;                // a reply that was not the client's own bytes
  std::vector<size_t> unanswered;  // client indices
};

// Clients `ids` (indices into `keep`) send one request each, in waves small
// enough for the listener's receive buffer, and wait for their replies;
// every reply must be the client's own bytes. A client without a socket in
// `keep` gets one (a distinct source port).
UdpRound udp_requests(const std::vector<size_t>& ids, const Addr& relay, std::vector<Fd>& keep) {
  UdpRound r;
  // 100 datagrams of ~1 KiB truesize each fit a default receive buffer
  // (208 KiB: the echo server's; the relay's listener asks for 4 MiB); 200
  // did not always (drops at a socket).
  constexpr size_t kWave = 100;
  for (size_t first = 0; first < ids.size(); first += kWave) {
    size_t last = std::min(ids.size(), first + kWave);
    for (size_t k = first; k < last; ++k) {
      size_t i = ids[k];
      if (keep.size() <= i) keep.resize(i + 1);
      if (!keep[i]) keep[i] = Fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      std::string msg = "client " + std::to_string(i);
      sendto(keep[i].get(), msg.data(), msg.size(), 0, relay.sa(), relay.len);
    }
    std::vector<bool> done(last - first, false);
    size_t left = last - first;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (left > 0 && std::chrono::steady_clock::now() < deadline) {
      std::vector<pollfd> polls;
      for (size_t k = first; k < last; ++k)
        if (!done[k - first]) polls.push_back({keep[ids[k]].get(), POLLIN, 0});
      if (poll(polls.data(), polls.size(), 200) <= 0) continue;
      for (size_t k = first; k < last; ++k) {
        if (done[k - first]) continue;
        char buf[128];
        ssize_t got = recv(keep[ids[k]].get(), buf, sizeof(buf), 0);
        if (got < 0) continue;
        done[k - first] = true;
        --left;
        std::string want = "client " + std::to_string(ids[k]);
        if (std::string(buf, static_cast<size_t>(got)) == want)
          ++r.answered;
        else
          ++r.wrong;
      }
    }
    for (size_t k = first; k < last; ++k)
      if (!done[k - first]) r.unanswered.push_back(ids[k]);
  }
  return r;
}

// `n` new clients, each its own socket, one request each.
UdpRound udp_clients(size_t n, const Addr& relay, std::vector<Fd>& keep) {
  std::vector<size_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = keep.size() + i;
  return udp_requests(ids, relay, keep);
}

// A tcp echo server on one epoll thread: each connection's bytes back, and
// its FIN after them.
class TcpEcho {
 public:
  explicit TcpEcho(const Addr& addr) {
    listener_ = Fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    int one = 1;
    setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener_.get(), addr.sa(), addr.len) != 0 || listen(listener_.get(), 4096) != 0)
      listener_.reset();
    if (listener_) thread_ = std::thread([this] { loop(); });
  }
  ~TcpEcho() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  bool ok() const { return listener_.valid(); }

 private:
  struct Conn {
    Fd fd;
    std::string pending;
    bool eof = false;
  };
  void loop() {
    Fd ep(epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{EPOLLIN, {.fd = listener_.get()}};
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, listener_.get(), &ev);
    std::map<int, Conn> conns;
    std::vector<epoll_event> events(256);
    char buf[65536];
    while (!stop_) {
      int n = epoll_wait(ep.get(), events.data(), static_cast<int>(events.size()), 50);
      for (int k = 0; k < n; ++k) {
        int fd = events[k].data.fd;
        if (fd == listener_.get()) {
          for (int c; (c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
            epoll_event cev{EPOLLIN | EPOLLOUT | EPOLLET, {.fd = c}};
            epoll_ctl(ep.get(), EPOLL_CTL_ADD, c, &cev);
            conns[c].fd = Fd(c);
          }
          continue;
        }
        Conn& c = conns[fd];
        for (ssize_t got; !c.eof && (got = recv(fd, buf, sizeof(buf), 0)) != -1;) {
          if (got == 0) c.eof = true;
          c.pending.append(buf, static_cast<size_t>(got));
        }
        while (!c.pending.empty()) {
          ssize_t sent = send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
          if (sent <= 0) break;
          c.pending.erase(0, static_cast<size_t>(sent));
        }
        if (c.eof && c.pending.empty()) {
          shutdown(fd, SHUT_WR);
          conns.erase(fd);
        }
      }
    }
  }
  Fd listener_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct TcpRound {
  size_t exact = 0;   // the whole body came back, byte for byte, then EOF
  size_t failed = 0;  // reset, short, or different
};

// `n` concurrent sessions: each connects, sends a random body (1..64 KiB),
// half-closes, and reads the echo to EOF. One thread, epoll.
TcpRound tcp_sessions(size_t n, const Addr& relay, std::chrono::milliseconds limit = 60s) {
  struct Client {
    Fd fd;
    std::string body, echoed;
    size_t sent = 0;
    bool shut = false, done = false;
  };
  std::mt19937_64 rng(42);
  std::vector<Client> clients(n);
  Fd ep(epoll_create1(EPOLL_CLOEXEC));
  for (size_t i = 0; i < n; ++i) {
    Client& c = clients[i];
    c.body.resize(1 + rng() % 65536);
    for (char& ch : c.body) ch = static_cast<char>(rng());
    c.fd = Fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    connect(c.fd.get(), relay.sa(), relay.len);
    epoll_event ev{EPOLLIN | EPOLLOUT | EPOLLRDHUP, {.u64 = i}};
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, c.fd.get(), &ev);
  }
  TcpRound r;
  size_t left = n;
  std::vector<epoll_event> events(512);
  char buf[65536];
  auto deadline = std::chrono::steady_clock::now() + limit;
  auto finish = [&](Client& c, bool ok) {
    c.done = true;
    --left;
    (ok ? r.exact : r.failed) += 1;
    epoll_ctl(ep.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.fd.reset();
  };
  while (left > 0 && std::chrono::steady_clock::now() < deadline) {
    int got = epoll_wait(ep.get(), events.data(), static_cast<int>(events.size()), 100);
    for (int k = 0; k < got; ++k) {
      Client& c = clients[events[k].data.u64];
      if (c.done) continue;
      while (!c.shut && c.sent < c.body.size()) {
        ssize_t s = send(c.fd.get(), c.body.data() + c.sent, c.body.size() - c.sent, MSG_NOSIGNAL);
        if (s <= 0) break;
        c.sent += static_cast<size_t>(s);
      }
      if (!c.shut && c.sent == c.body.size()) {
        shutdown(c.fd.get(), SHUT_WR);
        c.shut = true;
        epoll_event ev{EPOLLIN | EPOLLRDHUP, {.u64 = events[k].data.u64}};
        epoll_ctl(ep.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
      }
      for (;;) {
        ssize_t n_in = recv(c.fd.get(), buf, sizeof(buf), 0);
        if (n_in > 0) {
          c.echoed.append(buf, static_cast<size_t>(n_in));
          continue;
        }
        if (n_in == 0) finish(c, c.shut && c.echoed == c.body);
        if (n_in < 0 && errno != EAGAIN) finish(c, false);
        break;
      }
    }
  }
  r.failed += left;
  return r;
}

std::string udp_config(const std::string& relay_extra, bool two_targets) {
  std::string to = two_targets ? "to = [\"back\", \"back2\"]\n" : "to = \"back\"\n";
  return relay_extra + "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:" + std::to_string(kFront) +
         "\"\n[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:" + std::to_string(kBack) +
         "\"\n[endpoints.back2]\ntype = \"udp\"\nconnect = \"127.0.0.1:" + std::to_string(kBack2) +
         "\"\n[[routes]]\nfrom = \"front\"\n" + to;
}

std::string tcp_config(const std::string& route_extra) {
  return "[endpoints.front]\ntype = \"tcp\"\nlisten = \"127.0.0.1:" + std::to_string(kFront) +
         "\"\n[endpoints.back]\ntype = \"tcp\"\nconnect = \"127.0.0.1:" + std::to_string(kBack) +
         "\"\n[[routes]]\nfrom = \"front\"\nto = \"back\"\n" + route_extra;
}

class ManyClients : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
    raise_own_limit(65536);
  }
  TempDir dir_;
};

// The relay under service limits raises its own soft limit, serves 4,000
// UDP clients (every one answered with its own bytes), and its descriptors
// go back to the baseline once their flows expire.
TEST_F(ManyClients, FourThousandUdpClientsUnderServiceLimits) {
  DgramEcho echo(Addr::inet("127.0.0.1", kBack));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, udp_config("idle-timeout = \"20s\"\n", false), prlimit(1024, 20000));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  auto [soft, hard] = nofile_limits(relay.pid());
  EXPECT_EQ(soft, "20000") << "the relay did not raise its soft limit to the hard one";
  EXPECT_EQ(hard, "20000");
  EXPECT_NE(relay.log().find("file descriptor limit raised from 1024 to 20000"), std::string::npos)
      << relay.log();
  size_t baseline = open_fds(relay.pid());

  std::vector<Fd> clients;
  Addr front = Addr::inet("127.0.0.1", kFront);
  UdpRound r = udp_clients(4000, front, clients);
  EXPECT_EQ(r.wrong, 0u) << "a client got another client's reply";
  // A request goes unanswered only if its datagram was dropped and counted:
  // `stray`, another client's datagram the kernel queued on a new flow
  // socket just after connect() (its filter dropped it; counted when the
  // filter goes, two ticks later). Nothing else may be lost.
  std::string json;
  eventually([&] {
    json = relay.status_json();
    return r.answered + json_number(json, "stray") >= 4000;
  });
  uint64_t stray = json_number(json, "stray");
  RecordProperty("answered-first-try", static_cast<int>(r.answered));
  RecordProperty("stray", static_cast<int>(stray));
  EXPECT_EQ(r.answered + stray, 4000u) << r.unanswered.size() << " unanswered\n" << udp_snmp() << json;
  EXPECT_EQ(json_number(json, "fd-limit"), 0u) << json;
  EXPECT_EQ(json_number(json, "setup-failed"), 0u) << json;
  // A client whose request was a stray asks again, as a real one would,
  // and is answered: no client is left without a flow.
  UdpRound again = udp_requests(r.unanswered, front, clients);
  EXPECT_EQ(r.answered + again.answered, 4000u) << "retried " << r.unanswered.size() << "\n"
                                                << relay.status_json();
  EXPECT_EQ(again.wrong, 0u);

  // Every client's flow open at once: 4,000 flows (8,000 descriptors and
  // more) under a soft limit that was 1024. Under load the run can outlast
  // idle-timeout; a flow that expired counts as having been open.
  json = relay.status_json();
  EXPECT_EQ(json_number(json, "sessions-created"), 4000u) << json;
  EXPECT_EQ(json_number(json, "sessions") + json_number(json, "sessions-expired"), 4000u)
      << "every client's flow open at once: " << json;

  // The flows expire (idle-timeout) and give every descriptor back, but
  // what the route opened with its first kernel flow and keeps until it
  // stops: the hold channel (a socket pair, datagram_hold.cpp) and the
  // linger timer.
  constexpr size_t kRouteLifetimeFds = 3;
  clients.clear();
  EXPECT_TRUE(eventually([&] { return open_fds(relay.pid()) <= baseline + kRouteLifetimeFds; }, 45s))
      << "descriptors: " << open_fds(relay.pid()) << ", baseline " << baseline << " + " << kRouteLifetimeFds;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// A burst bigger than the listener's receive buffer while the relay cannot
// read it (stopped): what the kernel dropped there is counted as
// listener-overflow, and every datagram the listener kept is answered.
TEST_F(ManyClients, ListenerOverflowIsCounted) {
  DgramEcho echo(Addr::inet("127.0.0.1", kBack), nullptr, 16 << 20);
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, udp_config("", false), prlimit(1024, 20000));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  // 2,000 datagrams of 8,000 bytes: about twice what the relay's listener
  // holds (it asks for 4 MiB, endpoints/endpoint.cpp).
  constexpr size_t kClients = 2000;
  auto request = [](size_t i) {
    std::string msg = "client " + std::to_string(i);
    msg.resize(8000, '.');
    return msg;
  };
  Addr front = Addr::inet("127.0.0.1", kFront);
  std::vector<Fd> clients;
  ASSERT_EQ(kill(relay.pid(), SIGSTOP), 0);
  for (size_t i = 0; i < kClients; ++i) {
    clients.emplace_back(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    std::string msg = request(i);
    sendto(clients.back().get(), msg.data(), msg.size(), 0, front.sa(), front.len);
  }
  ASSERT_EQ(kill(relay.pid(), SIGCONT), 0);

  size_t answered = 0, wrong = 0;
  std::vector<bool> done(kClients, false);
  std::string json;
  auto all_accounted = [&] {
    for (size_t i = 0; i < kClients; ++i) {
      char buf[16384];
      ssize_t got = done[i] ? -1 : recv(clients[i].get(), buf, sizeof(buf), 0);
      if (got < 0) continue;
      done[i] = true;
      (std::string(buf, static_cast<size_t>(got)) == request(i) ? answered : wrong) += 1;
    }
    json = relay.status_json();
    return answered + json_number(json, "listener-overflow") + json_number(json, "stray") >= kClients;
  };
  eventually(all_accounted);
  uint64_t overflow = json_number(json, "listener-overflow");
  RecordProperty("answered", static_cast<int>(answered));
  RecordProperty("listener-overflow", static_cast<int>(overflow));
  EXPECT_GT(overflow, 0u) << "the burst fit the listener's buffer: the test proves nothing\n" << udp_snmp();
  EXPECT_EQ(answered + overflow + json_number(json, "stray"), kClients) << udp_snmp() << json;
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(json_number(json, "sessions-created"), answered) << json;
}

// 1,000 concurrent tcp sessions on the user path (random bodies, half-close,
// echo), all byte-exact; every descriptor (sockets, pipes) back after.
TEST_F(ManyClients, ThousandConcurrentTcpSessionsUnderServiceLimits) {
  TcpEcho echo(Addr::inet("127.0.0.1", kBack));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, tcp_config(""), prlimit(1024, 20000));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  size_t baseline = open_fds(relay.pid());

  TcpRound r = tcp_sessions(1000, Addr::inet("127.0.0.1", kFront));
  EXPECT_EQ(r.exact, 1000u) << r.failed << " failed";
  std::string json = relay.status_json();
  EXPECT_EQ(json_number(json, "fd-limit"), 0u) << json;
  EXPECT_EQ(json_counter(json, "stream", "sessions-failed"), 0u) << json;

  EXPECT_TRUE(eventually([&] { return open_fds(relay.pid()) <= baseline; }))
      << "descriptors: " << open_fds(relay.pid()) << ", baseline " << baseline;
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
}

// A hard limit too low for the clients: the new clients past it are dropped
// as fd-limit, the log says so a few times (not once per client), and both
// targets stay in the rotation: the relay's limit is not theirs.
TEST_F(ManyClients, UdpOutOfDescriptorsIsFdLimitAndTargetsStayUp) {
  DgramEcho echo(Addr::inet("127.0.0.1", kBack)), echo2(Addr::inet("127.0.0.1", kBack2));
  ASSERT_TRUE(echo.ok() && echo2.ok());
  RelayProcess relay(dir_, udp_config("idle-timeout = \"1s\"\n", true), prlimit(300, 300));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();

  std::vector<Fd> clients;
  UdpRound r = udp_clients(400, Addr::inet("127.0.0.1", kFront), clients);
  EXPECT_GT(r.answered, 0u);
  EXPECT_LT(r.answered, 400u) << "the limit was never met: the test proves nothing";
  // The flows expire and give their descriptors back: status can answer.
  clients.clear();
  std::string json;
  ASSERT_TRUE(eventually([&] { return !(json = relay.status_json()).empty(); })) << relay.log();
  EXPECT_GT(json_number(json, "fd-limit"), 0u) << json;
  EXPECT_EQ(json_number(json, "setup-failed"), 0u) << json;
  EXPECT_EQ(json.find("\"up\":false"), std::string::npos) << "a target was taken down: " << json;
  std::string log = relay.log();
  size_t lines = 0;
  for (size_t at = 0; (at = log.find("out of file descriptors", at)) != std::string::npos; ++at) ++lines;
  EXPECT_GE(lines, 1u);
  EXPECT_LE(lines, 3u) << "the fd-limit log is not rate-limited";
  EXPECT_EQ(log.find("out of the rotation"), std::string::npos) << log;
}

// Out of descriptors at accept(): the listener pauses (no spin, no log
// flood), connections wait in the backlog, and are served once sessions
// end and give their descriptors back.
TEST_F(ManyClients, TcpAcceptOutOfDescriptorsWaitsInTheBacklog) {
  TcpEcho echo(Addr::inet("127.0.0.1", kBack));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, tcp_config(""), prlimit(200, 200));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Addr front = Addr::inet("127.0.0.1", kFront);

  // Idle sessions until the relay cannot open more: each holds 2 descriptors.
  std::vector<Fd> idle;
  for (int i = 0; i < 150; ++i) idle.push_back(stream_connect(front));
  ASSERT_TRUE(eventually([&] { return status_count(relay, "fd-limit") > 0; })) << relay.log();
  // The sessions the relay took are idle and stay; the one below waits.
  TcpRound during = tcp_sessions(1, front, 300ms);
  EXPECT_EQ(during.exact, 0u) << "served while the relay had no descriptor to spare?";
  idle.clear();  // their sessions end, their descriptors come back
  TcpRound after = tcp_sessions(20, front);
  EXPECT_EQ(after.exact, 20u) << relay.log();
  std::string log = relay.log();
  size_t lines = 0;
  for (size_t at = 0; (at = log.find("out of file descriptors", at)) != std::string::npos; ++at) ++lines;
  EXPECT_LE(lines, 3u) << "accept() at EMFILE logged without limit";
}

// when-full = "wait": at max-sessions the next connection is not accepted
// and reset but waits in the backlog, and is served when a session ends.
TEST_F(ManyClients, WhenFullWaitLeavesTheConnectionInTheBacklog) {
  TcpEcho echo(Addr::inet("127.0.0.1", kBack));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, "max-sessions = 2\n" + tcp_config("when-full = \"wait\"\n"));
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Addr front = Addr::inet("127.0.0.1", kFront);
  Fd a = stream_connect(front), b = stream_connect(front);
  ASSERT_TRUE(eventually([&] { return status_count(relay, "sessions") == 2; })) << relay.status_json();

  Fd waiting = stream_connect(front);  // the kernel completes it; the relay does not accept it
  ASSERT_TRUE(waiting.valid());
  ASSERT_EQ(send(waiting.get(), "ping", 4, MSG_NOSIGNAL), 4);
  shutdown(waiting.get(), SHUT_WR);
  pollfd p{waiting.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 300), 0) << "answered (or reset) while the relay was full";

  a.reset();  // a session ends: room for the waiting one
  std::string echoed;
  char buf[16];
  for (;;) {
    pollfd q{waiting.get(), POLLIN, 0};
    if (poll(&q, 1, 10'000) != 1) break;
    ssize_t n = recv(waiting.get(), buf, sizeof(buf), 0);
    if (n <= 0) break;
    echoed.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(echoed, "ping");
  std::string json = relay.status_json();
  EXPECT_EQ(json_counter(json, "stream", "refused-max-sessions"), 0u) << json;
}

}  // namespace
}  // namespace sockrelay::testing
