// sockrelay_bare_redirect: the `bare` path of udp_bench.sh, the floor the
// relay is measured against. One UDP flow relayed by the least a sockmap
// redirect can do (bare_redirect.bpf.c): a front socket bound to --listen
// and connected to --client, an upstream socket connected to --target, both
// in one SOCKMAP whose verdict redirects every skb (egress) to the other.
// Same topology as the relay's kernel path for one client, without its
// flow table, counters, first-datagram handling or event loop.
//
//   sockrelay_bare_redirect --listen A:P --client A:P --target A:P
//
// Prints "ready" once both sockets are steered, then waits for SIGTERM or
// SIGINT; everything is released on the way out. A bench tool, not part of
// the relay.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "bare_redirect.skel.h"

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "sockrelay_bare_redirect: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

struct SkeletonDeleter {
  void operator()(bare_redirect* skel) const { bare_redirect__destroy(skel); }
};

sockaddr_in parse(const std::string& text) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  auto colon = text.rfind(':');
  if (colon == std::string::npos || inet_pton(AF_INET, text.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
    errno = EINVAL;
    die("address must be A.B.C.D:PORT: " + text);
  }
  sa.sin_port = htons(static_cast<uint16_t>(std::atoi(text.c_str() + colon + 1)));
  return sa;
}

void put(int map_fd, uint32_t key, const Fd& sock) {
  uint64_t value = static_cast<uint64_t>(sock.get());
  if (bpf_map_update_elem(map_fd, &key, &value, BPF_ANY) != 0) die("insert socket into bare_socks");
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen, client, target;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    (key == "--listen"   ? listen
     : key == "--client" ? client
     : key == "--target" ? target
                         : key) = argv[i + 1];
  }
  if (listen.empty() || client.empty() || target.empty()) {
    std::fprintf(stderr, "usage: sockrelay_bare_redirect --listen A:P --client A:P --target A:P\n");
    return 2;
  }
  const sockaddr_in front_addr = parse(listen), client_addr = parse(client), target_addr = parse(target);

  Fd front(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)),
      upstream(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (front.get() < 0 || upstream.get() < 0) die("socket");
  if (bind(front.get(), reinterpret_cast<const sockaddr*>(&front_addr), sizeof(front_addr)) != 0)
    die("bind " + listen);
  if (connect(upstream.get(), reinterpret_cast<const sockaddr*>(&target_addr), sizeof(target_addr)) != 0)
    die("connect " + target);

  std::unique_ptr<bare_redirect, SkeletonDeleter> skel(bare_redirect__open());
  if (!skel) die("open bare_redirect.bpf.o");
  skel->rodata->front_port = ntohs(front_addr.sin_port);
  if (bare_redirect__load(skel.get()) != 0) die("load bare_verdict");
  int map_fd = bpf_map__fd(skel->maps.bare_socks);
  // Debian 12's libbpf (1.1) has no sk_skb bpf_link: attach to the map.
  if (bpf_prog_attach(bpf_program__fd(skel->progs.bare_verdict), map_fd, BPF_SK_SKB_VERDICT, 0) != 0)
    die("attach bare_verdict");
  put(map_fd, 1, upstream);
  put(map_fd, 0, front);
  // Connected only now that it is steered: a datagram queued before would
  // wait for a later one to push it through the program.
  if (connect(front.get(), reinterpret_cast<const sockaddr*>(&client_addr), sizeof(client_addr)) != 0)
    die("connect " + client);

  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  std::printf("ready\n");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  // Out of the map before the sockets close (the skeleton goes last).
  for (uint32_t key : {0u, 1u}) bpf_map_delete_elem(map_fd, &key);
  return 0;
}
