// sockrelay_udp_floor: the least a user-space UDP relay can do for clients of
// one request each, the floor many_clients.sh measures the relay against.
//
//   sockrelay_udp_floor --listen A:P --to A:P [--keep N]
//
// A new client's datagram leaves at once through an upstream socket made
// ahead (connected, watched); the answer goes back from the listener. The
// last N clients' sockets are kept (default 4096, the relay's default
// max-sessions), the oldest closed as a new one comes. Sockets are made and
// closed when no event waits. No flow table, policy, counters or kernel
// path: whatever first-reply time this adds to direct, no user-space relay
// can add less on this machine. Runs until SIGINT/SIGTERM, then prints one
// line of key=value pairs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deque>
#include <unordered_map>

#include "load_common.h"

using namespace bench;

namespace {

sockaddr_in parse_inet(const std::string& text) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  auto colon = text.rfind(':');
  if (colon == std::string::npos || inet_pton(AF_INET, text.substr(0, colon).c_str(), &a.sin_addr) != 1)
    die("address must be A.B.C.D:PORT: " + text);
  a.sin_port = htons(static_cast<uint16_t>(std::strtoul(text.c_str() + colon + 1, nullptr, 10)));
  return a;
}

class Floor {
 public:
  Floor(const sockaddr_in& listen_at, const sockaddr_in& target, size_t keep)
      : target_(target), keep_(keep), epoll_(epoll_create1(EPOLL_CLOEXEC)) {
    listener_ = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener_, reinterpret_cast<const sockaddr*>(&listen_at), sizeof(listen_at)) != 0)
      die_errno("bind");
    watch(listener_);
  }

  void run() {
    epoll_event events[64];
    while (!g_stop) {
      bool idle_work = ready_.size() < kReady || clients_.size() > keep_;
      int n = epoll_wait(epoll_, events, 64, idle_work ? 0 : 200);
      if (n == 0 && idle_work) {
        while (ready_.size() < kReady) ready_.push_back(make_upstream());
        while (clients_.size() > keep_) close_oldest();
      }
      for (int i = 0; i < n; ++i)
        events[i].data.fd == listener_ ? on_listener() : on_upstream(events[i].data.fd);
    }
    std::printf("udp-floor clients=%llu answers=%llu\n", static_cast<unsigned long long>(clients_seen_),
                static_cast<unsigned long long>(answers_));
  }

 private:
  static constexpr size_t kReady = 8;

  void watch(int fd) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) die_errno("epoll_ctl");
  }

  int make_upstream() {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&target_), sizeof(target_)) != 0)
      die_errno("upstream socket");
    watch(fd);
    return fd;
  }

  void close_oldest() {
    clients_.erase(order_.front());
    close(order_.front());
    order_.pop_front();
  }

  void on_listener() {
    char buf[2048];
    sockaddr_in from{};
    socklen_t len = sizeof(from);
    ssize_t n;
    while ((n = recvfrom(listener_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len)) >= 0) {
      int up;
      if (ready_.empty()) {
        up = make_upstream();
      } else {
        up = ready_.front();
        ready_.pop_front();
      }
      send(up, buf, static_cast<size_t>(n), 0);
      clients_[up] = from;
      order_.push_back(up);
      ++clients_seen_;
      len = sizeof(from);
    }
  }

  void on_upstream(int fd) {
    char buf[2048];
    ssize_t n;
    auto it = clients_.find(fd);
    while ((n = recv(fd, buf, sizeof(buf), 0)) >= 0) {
      if (it == clients_.end()) continue;  // no client yet: dropped
      sendto(listener_, buf, static_cast<size_t>(n), 0, reinterpret_cast<const sockaddr*>(&it->second),
             sizeof(it->second));
      ++answers_;
    }
  }

  sockaddr_in target_;
  size_t keep_;
  int epoll_;
  int listener_ = -1;
  std::deque<int> ready_;
  std::unordered_map<int, sockaddr_in> clients_;  // by upstream socket
  std::deque<int> order_;                         // upstream sockets, oldest first
  uint64_t clients_seen_ = 0, answers_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  start_tool("sockrelay_udp_floor");
  std::string listen_at, to;
  size_t keep = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key == "--listen")
      listen_at = argv[i + 1];
    else if (key == "--to")
      to = argv[i + 1];
    else if (key == "--keep")
      keep = std::strtoul(argv[i + 1], nullptr, 10);
    else
      die("unknown option " + key);
  }
  if (listen_at.empty() || to.empty()) die("usage: sockrelay_udp_floor --listen A:P --to A:P [--keep N]");
  Floor(parse_inet(listen_at), parse_inet(to), keep).run();
  return 0;
}
