// The control socket under clients that do not cooperate: silent ones,
// garbage, a crowd, a reader that never reads. The relay serves them from
// the same single-threaded loop that sets up datagram flows, so the loop
// must never wait for any of them. The real binary, each test in its own
// network namespace.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <iostream>
#include <random>
#include <string_view>

#include "common/quote.h"
#include "relay_harness.h"
#include "test_env.h"

namespace sockrelay::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A control connection opened the way an event-driven monitoring tool opens
// one: non-blocking, so a full listen queue is a failed connect (EAGAIN)
// rather than a wait.
Fd connect_control(const std::string& path) {
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  Addr addr = Addr::unix_path(path);
  if (connect(fd.get(), addr.sa(), addr.len) != 0) return Fd();
  return fd;
}

// A few bytes on a fresh connection: they fit its socket buffer at once.
bool send_bytes(const Fd& fd, std::string_view bytes) {
  return send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

struct Reply {
  std::string text;
  bool closed = false;  // the relay closed the connection after it
};

// What arrives on `fd` until the relay closes it or `deadline` passes.
Reply read_reply(const Fd& fd, Clock::time_point deadline) {
  Reply r;
  char buf[65536];
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0 || !fd) return r;
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) != 1) continue;
    ssize_t n = recv(fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      r.text.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      // The end, or ECONNRESET: the relay closed with bytes of ours unread.
      r.closed = true;
      return r;
    }
  }
}

Clock::time_point in(milliseconds ms) { return Clock::now() + ms; }

// One request on its own connection, with a time limit (control_request
// would wait forever on a relay that is stuck).
Reply ask(const std::string& path, const std::string& request, milliseconds limit = milliseconds(2000)) {
  Fd fd = connect_control(path);
  if (!fd || !send_bytes(fd, request + "\n")) return {};
  return read_reply(fd, in(limit));
}

bool starts_with(const std::string& text, std::string_view prefix) { return text.rfind(prefix, 0) == 0; }

// A JSON syntax check, enough to tell a whole reply from a cut or mangled one.
class JsonChecker {
 public:
  static bool valid(std::string_view text) {
    JsonChecker c(text);
    if (!c.value(0)) return false;
    c.space();
    return c.at_ == text.size();
  }

 private:
  explicit JsonChecker(std::string_view text) : t_(text) {}
  bool more() const { return at_ < t_.size(); }
  void space() {
    while (more() && std::string_view(" \t\r\n").find(t_[at_]) != std::string_view::npos) ++at_;
  }
  bool eat(char c) {
    space();
    if (!more() || t_[at_] != c) return false;
    ++at_;
    return true;
  }
  bool value(int depth) {
    space();
    if (!more() || depth > 64) return false;
    char c = t_[at_];
    if (c == '{' || c == '[') return members(c == '{' ? '}' : ']', depth);
    if (c == '"') return string();
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    for (std::string_view word : {"true", "false", "null"})
      if (t_.substr(at_, word.size()) == word) {
        at_ += word.size();
        return true;
      }
    return false;
  }
  // An object (keys and values) or an array, from its opening bracket.
  bool members(char close, int depth) {
    ++at_;
    if (eat(close)) return true;
    do {
      if (close == '}' && !(key() && eat(':'))) return false;
      if (!value(depth + 1)) return false;
    } while (eat(','));
    return eat(close);
  }
  bool key() {
    space();
    return more() && t_[at_] == '"' && string();
  }
  // From the opening quote.
  bool string() {
    for (++at_; more(); ++at_) {
      auto c = static_cast<unsigned char>(t_[at_]);
      if (c == '"') {
        ++at_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\' &&
          (++at_ >= t_.size() || std::string_view("\"\\/bfnrtu").find(t_[at_]) == std::string_view::npos))
        return false;
    }
    return false;
  }
  bool number() {
    size_t digits = t_[at_] == '-' ? ++at_ : at_;
    while (more() && std::string_view("0123456789.eE+-").find(t_[at_]) != std::string_view::npos) ++at_;
    return at_ > digits;
  }

  std::string_view t_;
  size_t at_ = 0;
};

// Milliseconds from a new client's first datagram to its echo through the
// relay. The first datagram of a flow is handled by the relay's loop (it
// sets the flow up), so a loop held up by anything shows here first.
double first_reply_ms(const Addr& relay) {
  Fd client = bound_dgram(Addr::inet("127.0.0.1", 0));
  const char msg[] = "first datagram";
  char buf[64];
  auto start = Clock::now();
  if (sendto(client.get(), msg, sizeof(msg), 0, relay.sa(), relay.len) != sizeof(msg)) return 1e9;
  pollfd p{client.get(), POLLIN, 0};
  if (poll(&p, 1, 5000) != 1 || recv(client.get(), buf, sizeof(buf), 0) != sizeof(msg)) return 1e9;
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Latency {
  double median = 0, max = 0;
};

// `first_reply_ms` over `clients` new clients, one after the other.
Latency first_reply_latency(const Addr& relay, int clients) {
  std::vector<double> ms;
  for (int i = 0; i < clients; ++i) ms.push_back(first_reply_ms(relay));
  std::sort(ms.begin(), ms.end());
  return Latency{ms[ms.size() / 2], ms.back()};
}

// Requests a buggy or hostile client might send, with the reply each must
// get. Random bytes are seeded, so a failure repeats.
struct Garbage {
  std::string bytes;
  bool end_input = false;  // shut down the sending side after the bytes (no newline)
  std::string_view reply_starts;
};

std::vector<Garbage> garbage_requests() {
  std::mt19937 random(16);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(random() % 256);
    std::replace(s.begin(), s.end(), '\n', '?');
    return s;
  };
  return {
      {random_bytes(200) + "\n", false, "error: unknown request \""},
      {random_bytes(40) + "\r\n", false, "error: unknown request \""},
      {std::string(300, 'A') + "\n", false, "error: request too long"},
      {std::string(1000, 'B'), false, "error: request too long"},
      {std::string("\xff\xfe\0status", 9), true, "error: unknown request \""},
  };
}

class ControlSocket : public ::testing::Test {
 protected:
  void SetUp() override {
    SOCKRELAY_REQUIRE_ROOT();
    SOCKRELAY_PRIVATE_NETNS();
  }
  static Addr front() { return Addr::inet("127.0.0.1", 5300); }
  static constexpr const char* kUdpToUdp =
      "[endpoints.front]\ntype = \"udp\"\nlisten = \"127.0.0.1:5300\"\n"
      "[endpoints.back]\ntype = \"udp\"\nconnect = \"127.0.0.1:5301\"\n"
      "[[routes]]\nfrom = \"front\"\nto = \"back\"\n";
  TempDir dir_;
};

// Twenty clients that connect and say nothing, and five that send garbage:
// a new UDP client is answered about as fast as without them, and every
// garbage client gets an error line. (Before, the loop waited up to a
// second in poll() for each silent client: ~1 s for a new UDP client.)
TEST_F(ControlSocket, SilentAndGarbageClientsDoNotDelayDatagrams) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  ASSERT_TRUE(echo.ok());
  RelayProcess relay(dir_, kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  Latency quiet = first_reply_latency(front(), 10);

  std::vector<Fd> silent;
  for (int i = 0; i < 20; ++i) {
    silent.push_back(connect_control(relay.control()));
    EXPECT_TRUE(silent.back().valid()) << "silent client " << i << ": connect: " << strerror(errno);
  }
  std::vector<Garbage> garbage = garbage_requests();
  std::vector<Fd> garbage_clients;
  for (const Garbage& g : garbage) {
    Fd fd = connect_control(relay.control());
    EXPECT_TRUE(fd && send_bytes(fd, g.bytes)) << "garbage client: " << strerror(errno);
    if (g.end_input) shutdown(fd.get(), SHUT_WR);
    garbage_clients.push_back(std::move(fd));
  }
  Latency loaded = first_reply_latency(front(), 10);

  std::cout << "first reply of a new UDP client (10 clients each): median " << quiet.median << " ms, max "
            << quiet.max << " ms with no control client; median " << loaded.median << " ms, max "
            << loaded.max << " ms with 20 silent and 5 garbage control clients\n";
  EXPECT_LT(loaded.max, 500.0) << "the control clients held up the relay's loop";

  auto deadline = in(milliseconds(3000));
  for (size_t i = 0; i < garbage.size(); ++i) {
    Reply r = read_reply(garbage_clients[i], deadline);
    EXPECT_TRUE(starts_with(r.text, garbage[i].reply_starts))
        << "garbage " << i << " got " << quoted(r.text) << ", expected " << garbage[i].reply_starts;
    EXPECT_TRUE(r.closed) << "garbage " << i << " left open";
  }
  // The silent ones are closed at their deadline, told why.
  Reply closed = read_reply(silent.front(), in(milliseconds(4000)));
  EXPECT_TRUE(closed.closed) << "a silent client was never closed";
  EXPECT_EQ(closed.text, "error: no request within 2000 ms\n");
  EXPECT_TRUE(JsonChecker::valid(ask(relay.control(), "status json").text)) << relay.log();
}

// A hundred clients connected at once, all asking for `status json`: every
// one gets a whole JSON reply. Every tenth sends its line in two pieces.
// (Before, the listen queue held 16: the rest of a burst was refused.)
TEST_F(ControlSocket, HundredConcurrentStatusRequestsAllAnswered) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  constexpr int kClients = 100;
  std::vector<Fd> clients;
  int refused = 0;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(connect_control(relay.control()));
    if (!clients.back()) ++refused;
  }
  EXPECT_EQ(refused, 0) << "connections refused: the listen queue is too short";
  // A refused client has no socket: it sends nothing and counts as unanswered.
  for (int i = 0; i < kClients; ++i)
    EXPECT_TRUE(!clients[i] || send_bytes(clients[i], i % 10 == 0 ? "stat" : "status json\n"));
  std::this_thread::sleep_for(milliseconds(50));
  for (int i = 0; i < kClients; i += 10) EXPECT_TRUE(!clients[i] || send_bytes(clients[i], "us json\n"));

  auto deadline = in(milliseconds(5000));
  int answered = 0;
  for (int i = 0; i < kClients; ++i) {
    Reply r = read_reply(clients[i], deadline);
    bool ok = r.closed && JsonChecker::valid(r.text);
    answered += ok;
    EXPECT_TRUE(ok || !clients[i]) << "client " << i << " got " << quoted(r.text.substr(0, 200));
  }
  EXPECT_EQ(answered, kClients) << relay.log();
}

// Routes enough, with names long enough, that `status json` is several
// hundred kilobytes: more than a UNIX socket takes before its reader reads.
std::string many_routes_config() {
  std::string name(60, 'n');
  std::string c;
  std::string targets;
  for (int t = 0; t < 8; ++t) {
    std::string target = "target-" + std::to_string(t) + "-" + name;
    c += "[endpoints." + target + "]\ntype = \"udp\"\nconnect = \"127.0.0.1:" + std::to_string(6000 + t) +
         "\"\n";
    targets += (t ? ", \"" : "\"") + target + "\"";
  }
  for (int r = 0; r < 255; ++r) {
    std::string from = "front-" + std::to_string(r) + "-" + name;
    c += "[endpoints." + from + "]\ntype = \"udp\"\nlisten = \"127.0.0.1:" + std::to_string(20000 + r) +
         "\"\n[[routes]]\nfrom = \"" + from + "\"\nto = [" + targets + "]\ndatapath = \"userspace\"\n";
  }
  return c;
}

// The send buffer a new socket gets, which a reply must outgrow for this
// test to see a write that would block; 0 when unknown.
size_t default_send_buffer() {
  std::string text = read_file("/proc/sys/net/core/wmem_default");
  return text.empty() ? 0 : std::stoul(text);
}

// A client that asks for a large reply and never reads it: the relay writes
// what the socket takes, keeps the rest, and goes on serving others and
// relaying datagrams; the reader still gets the whole reply when it reads.
// (Before, send() blocked the loop until that client read.)
TEST_F(ControlSocket, ReaderThatDoesNotReadDoesNotBlockTheRelay) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, std::string(kUdpToUdp) + many_routes_config());
  ASSERT_TRUE(relay.wait_ready(milliseconds(10000))) << relay.log();
  Fd slow = connect_control(relay.control());
  ASSERT_TRUE(slow.valid() && send_bytes(slow, "status json\n"));
  std::this_thread::sleep_for(milliseconds(200));  // the relay has written what fits

  Reply other = ask(relay.control(), "status");
  EXPECT_TRUE(other.closed && starts_with(other.text, "sockrelay ")) << "another client was not answered";
  EXPECT_LT(first_reply_ms(front()), 500.0) << "a new UDP client was held up";

  Reply all = read_reply(slow, in(milliseconds(5000)));
  EXPECT_TRUE(all.closed);
  EXPECT_TRUE(JsonChecker::valid(all.text))
      << "the slow reader's reply is not whole: " << all.text.size() << " bytes";
  EXPECT_GT(all.text.size(), default_send_buffer())
      << "the reply fits the socket buffer: this test cannot see a write that would block";
}

// One client more than the relay serves at once is told so and closed at
// once; the clients already connected are unaffected.
TEST_F(ControlSocket, ClientsOverTheLimitAreRefusedAtOnce) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  std::vector<Fd> silent;
  for (int i = 0; i < 128; ++i) {
    silent.push_back(connect_control(relay.control()));
    ASSERT_TRUE(silent.back().valid()) << "client " << i << ": connect: " << strerror(errno);
    if (i % 32 == 31) std::this_thread::sleep_for(milliseconds(20));  // let the relay accept them
  }
  std::this_thread::sleep_for(milliseconds(100));
  Fd extra = connect_control(relay.control());
  ASSERT_TRUE(extra.valid()) << strerror(errno);
  Reply refused = read_reply(extra, in(milliseconds(1000)));
  EXPECT_TRUE(refused.closed);
  EXPECT_EQ(refused.text, "error: too many control clients at once (128); try again\n");

  ASSERT_TRUE(send_bytes(silent.back(), "status json\n"));
  Reply r = read_reply(silent.back(), in(milliseconds(1000)));
  EXPECT_TRUE(r.closed && JsonChecker::valid(r.text)) << quoted(r.text.substr(0, 200));
  EXPECT_NE(relay.log().find("client(s) refused so far: more than 128 at once"), std::string::npos)
      << relay.log();
}

// `status` counts what the control socket refused, in text and JSON.
TEST_F(ControlSocket, StatusShowsTheControlSocketsOwnCounters) {
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  RelayProcess relay(dir_, kUdpToUdp);
  ASSERT_TRUE(relay.wait_ready()) << relay.log();
  EXPECT_TRUE(starts_with(ask(relay.control(), "garbage").text, "error: unknown request \"garbage\""));
  EXPECT_TRUE(starts_with(ask(relay.control(), std::string(300, 'x')).text, "error: request too long"));
  std::string json = relay.status_json();
  EXPECT_EQ(json_counter(json, "control", "refused-unknown"), 1u) << json;
  EXPECT_EQ(json_counter(json, "control", "refused-too-long"), 1u) << json;
  EXPECT_EQ(json_counter(json, "control", "refused-too-many"), 0u) << json;
  EXPECT_NE(json.find("\"from-systemd\":false"), std::string::npos) << json;
  Reply text = ask(relay.control(), "status");
  EXPECT_NE(text.text.find("control   " + relay.control() + ", clients 1, accepted "), std::string::npos)
      << text.text;
  EXPECT_NE(text.text.find("refused-too-long 1, refused-unknown 1, refused-busy 0, timed-out 0"),
            std::string::npos)
      << text.text;
}

// A control socket systemd created (FileDescriptorName=control, as
// units/sockrelay-control.socket): the relay serves it, says so in
// `status`, and leaves its file (and mode) alone when it stops.
TEST_F(ControlSocket, SocketFromSystemdNamedControlIsServed) {
  if (access("/usr/bin/systemd-socket-activate", X_OK) != 0)
    GTEST_SKIP() << "systemd-socket-activate not installed (Debian package systemd)";
  DgramEcho echo(Addr::inet("127.0.0.1", 5301));
  std::string control = dir_.file("control.sock");  // RelayProcess's control path
  RelayProcess relay(dir_, kUdpToUdp,
                     {"/usr/bin/systemd-socket-activate", "-l", control, "--fdname=control"});
  ASSERT_TRUE(relay.wait_ready()) << relay.log();  // the first connection starts it
  Reply text = ask(control, "status");
  EXPECT_NE(text.text.find("control   " + control + " (socket from systemd)"), std::string::npos)
      << text.text << relay.log();
  EXPECT_LT(first_reply_ms(front()), 1e9) << "a datagram through the relay is answered: " << relay.log();
  struct stat before {};
  ASSERT_EQ(stat(control.c_str(), &before), 0);
  ASSERT_EQ(chmod(control.c_str(), 0660), 0);
  EXPECT_EQ(relay.terminate(), 0) << relay.log();
  struct stat after {};
  EXPECT_EQ(stat(control.c_str(), &after), 0) << "systemd's socket file stays when the relay stops";
  EXPECT_EQ(after.st_mode & 0777, 0660u);
}

// systemd's control socket on another path than [relay] control: the relay
// refuses to start and names both paths.
TEST_F(ControlSocket, SocketFromSystemdOnAnotherPathIsRefused) {
  if (access("/usr/bin/systemd-socket-activate", X_OK) != 0)
    GTEST_SKIP() << "systemd-socket-activate not installed (Debian package systemd)";
  std::string other = dir_.file("other.sock");
  RelayProcess relay(dir_, kUdpToUdp, {"/usr/bin/systemd-socket-activate", "-l", other, "--fdname=control"});
  std::this_thread::sleep_for(milliseconds(300));  // until it listens
  Fd start = connect_control(other);               // starts the relay
  ASSERT_TRUE(start.valid()) << strerror(errno);
  for (int i = 0; i < 100 && relay.log().find("error") == std::string::npos; ++i)
    std::this_thread::sleep_for(milliseconds(20));
  std::string log = relay.log();
  EXPECT_NE(log.find("systemd passed a control socket bound to \"" + other + "\", but [relay] control is \"" +
                     relay.control() + "\""),
            std::string::npos)
      << log;
}

}  // namespace
}  // namespace sockrelay::testing
