// Running the real sockrelay binary against real sockets: a temp dir, a
// config, the relay process, echo servers and clients. Used by the
// integration tests; every test enters its own network namespace first.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "control/control_server.h"

namespace sockrelay::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sockrelay-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first number after `"key":` at or after `from` in a JSON text.
inline uint64_t json_number(const std::string& json, const std::string& key, size_t from = 0) {
  std::string needle = "\"" + key + "\":";
  size_t at = json.find(needle, from);
  if (at == std::string::npos) return UINT64_MAX;
  return std::stoull(json.substr(at + needle.size()));
}
// `json_number` inside the object that follows `"section":`.
inline uint64_t json_counter(const std::string& json, const std::string& section, const std::string& key) {
  size_t at = json.find("\"" + section + "\":");
  if (at == std::string::npos) return UINT64_MAX;
  return json_number(json, key, at);
}

// What a shell command printed (stdout and stderr together) and its exit
// status (-1 if it did not exit).
struct CommandOutput {
  int status;
  std::string text;
};
inline CommandOutput run_command(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  CommandOutput out{-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.text.append(buf, n);
  int st = pclose(p);
  out.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}
// The `sockrelay` under test: this build's, or the one SOCKRELAY_TEST_RELAY
// names (tests/sanitized-ctest.sh runs these tests against the ASan/UBSan
// build's relay, so the tests themselves need no second, sanitized build).
inline const char* relay_binary() {
  const char* from_env = std::getenv("SOCKRELAY_TEST_RELAY");
  return from_env && *from_env ? from_env : SOCKRELAY_BINARY;
}

// `sockrelay ARGS` (the binary under test).
inline CommandOutput run_sockrelay(const std::string& args) {
  return run_command(std::string(relay_binary()) + " " + args);
}

// The relay as a child process: `sockrelay run --config DIR/relay.toml`.
class RelayProcess {
 public:
  RelayProcess(const TempDir& dir, const std::string& config_body, std::vector<std::string> wrapper = {})
      : dir_(dir) {
    control_ = dir.file("control.sock");
    config_ = dir.file("relay.toml");
    log_ = dir.file("relay.log");
    std::ofstream(config_) << "[relay]\nlog-level = \"debug\"\ncontrol = \"" << control_ << "\"\n"
                           << config_body;
    std::vector<std::string> argv = std::move(wrapper);
    argv.insert(argv.end(), {relay_binary(), "run", "--config", config_});
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 2);
      dup2(fd, 1);
      std::vector<char*> cargv;
      for (auto& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execvp(cargv[0], cargv.data());
      _exit(127);
    }
  }
  ~RelayProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Waits until the control socket answers; false if the relay died.
  // A deadline, not a timing check: the ASan/UBSan relay on a busy machine
  // took over 5 s to load its BPF objects (CI, this round).
  bool wait_ready(std::chrono::milliseconds limit = std::chrono::milliseconds(20000)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (control_request(control_, "status")) return true;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  std::string status_json() {
    auto r = control_request(control_, "status json");
    return r ? *r : std::string();
  }
  // SIGTERM and wait; the exit status (or -1 on timeout).
  int terminate(std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  std::string log() const { return read_file(log_); }
  const std::string& control() const { return control_; }
  const std::string& config_path() const { return config_; }
  pid_t pid() const { return pid_; }

 private:
  const TempDir& dir_;
  std::string config_, control_, log_;
  pid_t pid_ = -1;
  int exit_status_ = -1;
};

// Writes the relay's config anew (the [relay] table RelayProcess wrote, then
// `body`), for a SIGHUP to read.
inline void rewrite(const RelayProcess& relay, const std::string& body) {
  std::ofstream(relay.config_path()) << "[relay]\nlog-level = \"debug\"\ncontrol = \"" << relay.control()
                                     << "\"\n"
                                     << body;
}

// Waits until `status json` shows `reloads` (or `reloads-refused`) >= n.
inline bool wait_reloads(RelayProcess& relay, const std::string& key, uint64_t n) {
  for (int i = 0; i < 100; ++i) {
    std::string s = relay.status_json();
    if (!s.empty() && json_number(s, key) >= n && json_number(s, key) != UINT64_MAX) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  return false;
}

// A socket address from "127.0.0.1:PORT" or a UNIX path.
struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  static Addr inet(const std::string& ip, uint16_t port) {
    Addr a;
    auto* sin = reinterpret_cast<sockaddr_in*>(&a.ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &sin->sin_addr);
    a.len = sizeof(sockaddr_in);
    return a;
  }
  static Addr unix_path(const std::string& path) {
    Addr a;
    auto* sun = reinterpret_cast<sockaddr_un*>(&a.ss);
    sun->sun_family = AF_UNIX;
    std::strncpy(sun->sun_path, path.c_str(), sizeof(sun->sun_path) - 1);
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return a;
  }
  // Only inside a vm-tests guest (vsock loopback, CID 1): never on the host.
  static Addr vsock(uint32_t cid, uint32_t port) {
    Addr a;
    auto* svm = reinterpret_cast<sockaddr_vm*>(&a.ss);
    svm->svm_family = AF_VSOCK;
    svm->svm_cid = cid;
    svm->svm_port = port;
    a.len = sizeof(sockaddr_vm);
    return a;
  }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
  int family() const { return ss.ss_family; }
};

inline Fd bound_dgram(const Addr& addr) {
  Fd s(socket(addr.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (addr.family() == AF_UNIX) unlink(reinterpret_cast<const sockaddr_un*>(&addr.ss)->sun_path);
  if (bind(s.get(), addr.sa(), addr.len) != 0) return Fd();
  return s;
}

// Echoes every datagram back to its sender until destroyed; with `answer`,
// only those it accepts (the others are read and ignored).
class DgramEcho {
 public:
  using Answer = std::function<bool(const char* data, size_t len)>;
  // `rcvbuf` > 0: its receive buffer (SO_RCVBUFFORCE), for bursts.
  explicit DgramEcho(const Addr& addr, Answer answer = nullptr, int rcvbuf = 0)
      : sock_(bound_dgram(addr)), answer_(std::move(answer)) {
    if (rcvbuf > 0) setsockopt(sock_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    thread_ = std::thread([this] { loop(); });
  }
  ~DgramEcho() { kill(); }
  bool ok() const { return sock_.valid(); }
  uint64_t echoed() const { return echoed_; }
  // Stops and closes its socket, as a SIGKILL does: the port refuses from
  // then on (ICMP port unreachable). The datagrams it held unread (lost
  // with the process) are counted and returned.
  uint64_t kill() {
    if (!thread_.joinable()) return 0;
    stop_ = true;
    thread_.join();
    uint64_t held = 0;
    char buf[2048];
    while (recv(sock_.get(), buf, sizeof(buf), MSG_DONTWAIT) >= 0) ++held;
    sock_ = Fd();
    return held;
  }

 private:
  void loop() {
    char buf[65536];
    while (!stop_) {
      pollfd p{sock_.get(), POLLIN, 0};
      if (poll(&p, 1, 50) != 1) continue;
      sockaddr_storage from{};
      socklen_t flen = sizeof(from);
      ssize_t n =
          recvfrom(sock_.get(), buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &flen);
      if (n < 0 || (answer_ && !answer_(buf, static_cast<size_t>(n)))) continue;
      if (sendto(sock_.get(), buf, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), flen) == n)
        ++echoed_;
    }
  }
  Fd sock_;
  Answer answer_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> echoed_{0};
  std::thread thread_;
};

struct PingPongResult {
  uint64_t sent = 0;
  uint64_t matched = 0;  // replies byte-identical to what this client sent, in time
  uint64_t late = 0;     // byte-identical replies to an earlier datagram, after its wait ran out
  uint64_t foreign = 0;  // replies carrying another client's payload (misrouted)
  uint64_t corrupt = 0;  // replies that are neither
  uint64_t timeouts = 0;
  bool first_answered = false;  // the very first datagram got its reply, without a retry

  uint64_t delivered() const { return matched + late; }
};

// Sends `count` datagrams one at a time from `client` to `relay`, each
// carrying the client id and a sequence number padded to `size` bytes,
// and waits for each echo. A reply that arrives after its wait ran out is
// still checked byte for byte (against what was sent for its sequence) and
// counted as late.
inline PingPongResult ping_pong(Fd& client, const Addr& relay, int client_id, int count, size_t size = 64) {
  PingPongResult r;
  std::vector<char> msg(size, 'x'), expect(size, 'x'), reply(65536);
  auto fill = [&](std::vector<char>& buf, int seq) {
    std::snprintf(buf.data(), size, "client=%d seq=%d ", client_id, seq);
  };
  for (int i = 0; i < count; ++i) {
    fill(msg, i);
    if (sendto(client.get(), msg.data(), size, 0, relay.sa(), relay.len) != static_cast<ssize_t>(size)) {
      ++r.timeouts;
      continue;
    }
    ++r.sent;
    for (;;) {
      pollfd p{client.get(), POLLIN, 0};
      if (poll(&p, 1, 1000) != 1) {
        ++r.timeouts;
        break;
      }
      ssize_t n = recv(client.get(), reply.data(), reply.size(), 0);
      if (n == static_cast<ssize_t>(size) && std::memcmp(reply.data(), msg.data(), size) == 0) {
        ++r.matched;
        if (i == 0) r.first_answered = true;
        break;
      }
      int id = -1, seq = -1;
      if (n > 0 && std::sscanf(reply.data(), "client=%d seq=%d", &id, &seq) == 2 && id != client_id) {
        ++r.foreign;
        continue;
      }
      if (n == static_cast<ssize_t>(size) && seq >= 0 && seq < i) {
        fill(expect, seq);
        (std::memcmp(reply.data(), expect.data(), size) == 0 ? r.late : r.corrupt) += 1;
        continue;
      }
      ++r.corrupt;
    }
    // A relay that stopped answering fails the test in seconds, not hours.
    if (r.timeouts >= 5) break;
  }
  return r;
}

}  // namespace sockrelay::testing
