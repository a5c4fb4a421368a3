// sockrelay_kernel_pair: what the kernel's sockmap redirect gives for a
// stream pairing the relay refuses to carry in the kernel (AF_UNIX, VSOCK).
//
// A benchmark instrument, not a relay: it accepts connections on --listen,
// connects each to --connect and wires the two sockets into the relay's own
// verdict program (relay/bpf_loader, the same maps and flows the relay
// uses), so bench-vsock can put "the kernel path" next to the relay's
// user-space path. It is NOT exact, which is why the relay does not do this:
//  - bytes that reach a socket before it enters the map are handed to the
//    verdict one skb per later send (no kick exists for AF_UNIX or VSOCK):
//    a client that sent a request and waits for the reply would wait for
//    ever. This tool copies them in user space right after the insertion,
//    racing the verdict program for the order of the first bytes, and once
//    more after the sender's EOF (no verdict can run any more); all counted
//    as `stranded`;
//  - nothing tells when the partner's psock backlog has emptied, so the
//    half-close is passed on once the redirected byte count and the
//    partner's unsent bytes have stood still for --quiet-ms (2000): a guess, fine
//    for a benchmark and wrong for a relay.
//
// Usage: sockrelay_kernel_pair --listen ADDR --connect ADDR [--quiet-ms MS]
//                              [--bound BYTES [--bound-mode clamp|unsteer]]
//   ADDR: vsock:CID:PORT (CID a number or "any"), A.B.C.D:PORT (tcp), /path
//   or @name (unix-stream): the same forms as sockrelay_stream_load.
//   --bound: an experiment in bounding the backlog behind a tcp source,
//   see bound() below.
// Root (it loads BPF). Runs until SIGTERM/SIGINT, then prints one line per
// finished connection pair on stdout.
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bpf_loader/bpf_relay.h"
#include "common/fd.h"
#include "common/socket_cookie.h"
#include "relay_shared.h"

namespace {

using sockrelay::Fd;

constexpr uint32_t kRouteId = 1;

volatile sig_atomic_t stop_requested = 0;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "sockrelay_kernel_pair: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

struct Address {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_UNSPEC;
};

Address parse_address(const std::string& text) {
  Address a;
  if (text.rfind("vsock:", 0) == 0) {
    auto rest = text.substr(6);
    auto colon = rest.find(':');
    if (colon == std::string::npos) die("bad vsock address " + text);
    auto* vm = reinterpret_cast<sockaddr_vm*>(&a.ss);
    vm->svm_family = AF_VSOCK;
    std::string cid = rest.substr(0, colon);
    vm->svm_cid = cid == "any" ? VMADDR_CID_ANY : static_cast<unsigned>(std::stoul(cid));
    vm->svm_port = static_cast<unsigned>(std::stoul(rest.substr(colon + 1)));
    a.len = sizeof(sockaddr_vm);
  } else if (!text.empty() && (text[0] == '/' || text[0] == '@')) {
    auto* un = reinterpret_cast<sockaddr_un*>(&a.ss);
    un->sun_family = AF_UNIX;
    if (text.size() >= sizeof(un->sun_path)) die("path too long: " + text);
    std::memcpy(un->sun_path, text.data(), text.size());
    if (text[0] == '@') un->sun_path[0] = '\0';  // abstract: no trailing NUL counted
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + text.size() + (text[0] == '@' ? 0 : 1));
  } else {
    auto colon = text.rfind(':');
    auto* in = reinterpret_cast<sockaddr_in*>(&a.ss);
    in->sin_family = AF_INET;
    if (colon == std::string::npos || inet_pton(AF_INET, text.substr(0, colon).c_str(), &in->sin_addr) != 1)
      die("address must be A.B.C.D:PORT, a unix path or vsock:CID:PORT: " + text);
    in->sin_port = htons(static_cast<uint16_t>(std::stoul(text.substr(colon + 1))));
    a.len = sizeof(sockaddr_in);
  }
  a.family = a.ss.ss_family;
  return a;
}

uint64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

// Copies what `from` has queued now into `to` (blocking writes): the bytes
// that arrived before the sockets entered the map, or the stranded ones.
uint64_t copy_queued(int from, int to) {
  char buf[65536];
  uint64_t total = 0;
  for (;;) {
    ssize_t n = recv(from, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) return total;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
      if (w < 0) return total;
      off += w;
    }
    total += static_cast<uint64_t>(n);
  }
}

// tcp: bytes the socket has taken into its send path (acked + unsent).
uint64_t tcp_bytes_written(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  int outq = 0;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || ioctl(fd, SIOCOUTQ, &outq) != 0) return 0;
  return info.tcpi_bytes_acked + static_cast<uint64_t>(outq);
}

struct Side {
  Fd fd;
  uint64_t cookie = 0;
  bool unix_side = false;
  bool eof = false;          // EPOLLRDHUP seen
  bool passed_on = false;    // the half-close went to the partner
  uint64_t last_bytes = 0;   // the flow's redirected bytes at last look
  uint64_t last_change = 0;  // ms
  uint64_t stranded = 0;
  bool tcp = false;
  uint64_t user_out = 0;      // bytes this tool wrote to it (stranded copies)
  uint64_t written_base = 0;  // tcp: bytes in its send path at insertion
  uint64_t max_backlog = 0;   // toward it: redirected, not yet in its send path
  int saved_clamp = 0;        // --bound: the source's window clamp while clamped
  bool clamped = false;       // window clamped, or (--bound-mode unsteer) out of the verdict's map
  uint64_t clamps = 0;
};

struct Pair {
  Side a, b;  // a = accepted, b = connected
};

class KernelPair {
 public:
  KernelPair(Address listen_at, Address connect_to, uint64_t quiet_ms, uint64_t bound, bool unsteer)
      : connect_to_(connect_to), quiet_ms_(quiet_ms), bound_(bound), unsteer_(unsteer) {
    auto bpf = sockrelay::BpfRelay::load();
    if (!bpf) {
      std::fprintf(stderr, "sockrelay_kernel_pair: %s\n", bpf.error().describe().c_str());
      std::exit(1);
    }
    bpf_ = std::move(*bpf);
    listener_ = Fd(socket(listen_at.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener_) die("socket");
    int one = 1;
    if (listen_at.family == AF_UNIX && reinterpret_cast<sockaddr_un*>(&listen_at.ss)->sun_path[0] != '\0')
      unlink(reinterpret_cast<sockaddr_un*>(&listen_at.ss)->sun_path);
    else
      (void)setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener_.get(), reinterpret_cast<sockaddr*>(&listen_at.ss), listen_at.len) != 0) die("bind");
    if (listen(listener_.get(), 16) != 0) die("listen");
  }

  void run() {
    while (!stop_requested) {
      std::vector<pollfd> fds{{listener_.get(), POLLIN, 0}};
      for (auto& p : pairs_) {
        fds.push_back({p->a.fd.get(), static_cast<short>(p->a.eof ? 0 : POLLRDHUP), 0});
        fds.push_back({p->b.fd.get(), static_cast<short>(p->b.eof ? 0 : POLLRDHUP), 0});
      }
      // Sockets in the map stay "readable" only for what the verdict left
      // behind; RDHUP is what matters here, so poll with a short period.
      if (poll(fds.data(), fds.size(), 10) < 0 && errno != EINTR) die("poll");
      if (fds[0].revents & POLLIN) accept_one();
      for (size_t i = 0; i < pairs_.size(); ++i) {
        Pair& p = *pairs_[i];
        if (fds[1 + 2 * i].revents & (POLLRDHUP | POLLHUP)) p.a.eof = true;
        if (fds[2 + 2 * i].revents & (POLLRDHUP | POLLHUP)) p.b.eof = true;
      }
      for (auto& p : pairs_) {
        bound(p->a, p->b);
        bound(p->b, p->a);
        pass_on(p->a, p->b);
        pass_on(p->b, p->a);
      }
      for (size_t i = 0; i < pairs_.size();) {
        if (pairs_[i]->a.passed_on && pairs_[i]->b.passed_on) {
          finish(*pairs_[i]);
          pairs_.erase(pairs_.begin() + static_cast<long>(i));
        } else {
          ++i;
        }
      }
    }
    for (auto& p : pairs_) finish(*p);
  }

 private:
  void accept_one() {
    Fd client(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client) return;
    Fd upstream(socket(connect_to_.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!upstream ||
        connect(upstream.get(), reinterpret_cast<sockaddr*>(&connect_to_.ss), connect_to_.len) != 0) {
      std::fprintf(stderr, "sockrelay_kernel_pair: connect: %s\n", std::strerror(errno));
      return;
    }
    auto p = std::make_unique<Pair>();
    p->a.fd = std::move(client);
    p->b.fd = std::move(upstream);
    for (Side* s : {&p->a, &p->b}) {
      s->cookie = sockrelay::socket_cookie(s->fd.get()).value();
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      (void)getsockname(s->fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
      s->unix_side = ss.ss_family == AF_UNIX;
      s->tcp = ss.ss_family == AF_INET;
    }
    for (Side* s : {&p->a, &p->b}) {
      if (!s->tcp) continue;
      s->written_base = tcp_bytes_written(s->fd.get());
      // A fixed receive buffer: the kernel's receive-buffer autotuning
      // raises the window clamp again as it grows the buffer (measured:
      // the backlog reached 978 MB through 8 clamps without this).
      int rcvbuf = 4 << 20;
      if (bound_ != 0) (void)setsockopt(s->fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    }
    if (!wire(*p)) return;
    // What arrived before the sockets entered the map would wait for later
    // sends (and a client waiting for a reply sends nothing): copied once
    // now, racing the verdict program for the order of the first bytes.
    copy_stranded(p->a, p->b);
    copy_stranded(p->b, p->a);
    pairs_.push_back(std::move(p));
  }

  bool wire(Pair& p) {
    auto check = [](const sockrelay::Status& st, const char* what) {
      if (!st) std::fprintf(stderr, "sockrelay_kernel_pair: %s: %s\n", what, st.error().describe().c_str());
      return static_cast<bool>(st);
    };
    if (!check(bpf_->add_target(p.a.cookie, p.a.fd.get()), "add target") ||
        !check(bpf_->add_target(p.b.cookie, p.b.fd.get()), "add target"))
      return false;
    for (auto [from, to] : {std::pair{&p.a, &p.b}, std::pair{&p.b, &p.a}}) {
      sockrelay::FlowEntry flow;
      flow.target_cookie = to->cookie;
      flow.route_id = kRouteId;
      flow.flags = RELAY_FLOW_STREAM;
      if (!check(bpf_->set_flow(from->cookie, flow), "set flow")) return false;
    }
    for (Side* s : {&p.a, &p.b}) {
      // AF_UNIX shows the verdict the sender: a private instance looks
      // every skb up under this socket's cookie instead (as the relay does).
      sockrelay::Status st =
          s->unix_side ? bpf_->add_private_source(s->cookie, s->fd.get(), {.fixed_source = s->cookie})
                       : bpf_->add_source(s->cookie, s->fd.get());
      if (!check(st, "add source")) return false;
    }
    return true;
  }

  // After `from`'s EOF: once its flow's redirected bytes stand still and
  // `to` has had nothing unsent (SIOCOUTQ) for quiet_ms_, the backlog is
  // taken to be empty (a guess: while the psock retries a full socket,
  // SIOCOUTQ rarely reads 0 for that long). What is still queued at `from`
  // then was stranded; copy it and half-close `to`.
  void pass_on(Side& from, Side& to) {
    if (!from.eof || from.passed_on) return;
    int unsent = 0;
    (void)ioctl(to.fd.get(), SIOCOUTQ, &unsent);
    uint64_t bytes = bpf_->flow_bytes(from.cookie), now = now_ms();
    if (bytes != from.last_bytes || unsent != 0 || from.last_change == 0) {
      from.last_bytes = bytes;
      from.last_change = now;
      return;
    }
    if (now - from.last_change < quiet_ms_) return;
    copy_stranded(from, to);
    (void)shutdown(to.fd.get(), SHUT_WR);
    from.passed_on = true;
  }

  static void copy_stranded(Side& from, Side& to) {
    uint64_t n = copy_queued(from.fd.get(), to.fd.get());
    from.stranded += n;
    to.user_out += n;
  }

  // --bound: the psock backlog toward a tcp `to` is what the verdict
  // redirected minus what `to` has taken into its send path (both exact).
  // Above the bound, the tcp source's advertised window is clamped to the
  // minimum, so its sender slows down instead of the backlog growing;
  // below a quarter of it, the window is given back. Not a hard bound: a
  // clamped window still lets about one segment per round trip through
  // (measured: 34-39 MB behind a 4 MiB bound), and regrows slowly.
  void bound(Side& from, Side& to) {
    if (!to.tcp) return;
    uint64_t redirected = bpf_->flow_bytes(from.cookie) + to.user_out;
    uint64_t taken = tcp_bytes_written(to.fd.get()) - to.written_base;
    uint64_t backlog = redirected > taken ? redirected - taken : 0;
    if (backlog > to.max_backlog) to.max_backlog = backlog;
    if (bound_ == 0 || !from.tcp) return;
    if (unsteer_) {
      // The other way to stop a tcp source: take it out of the verdict's
      // map, so its bytes wait in its own receive queue and its window
      // closes by itself; back in, a SO_RCVLOWAT write makes tcp call the
      // verdict program for what queued meanwhile (after the backlog, so
      // in order). The socket stays in the targets map: its psock and what
      // is queued toward it survive. A hard bound, but NOT safe for a
      // relay: the kernel clears a socket's verdict program before it gives
      // the socket its own sk_data_ready back, and an skb read in between
      // is dropped. This tool's runs have not hit it (sha256 equal over
      // ~250 cycles); the relay's version did (3c71e1d: 3 of 4 transfers
      // lost 53 B-196 KiB), which is why the relay does not do this.
      if (!from.clamped && backlog > bound_) {
        bpf_->remove_source(from.cookie);
        from.clamped = true;
        ++from.clamps;
      } else if (from.clamped && backlog < bound_ / 4) {
        int one = 1;
        if (bpf_->add_source(from.cookie, from.fd.get()) &&
            setsockopt(from.fd.get(), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) == 0)
          from.clamped = false;
      }
      return;
    }
    if (!from.clamped && backlog > bound_) {
      socklen_t len = sizeof(from.saved_clamp);
      int minimum = 1;  // the kernel raises it to its own floor
      if (getsockopt(from.fd.get(), IPPROTO_TCP, TCP_WINDOW_CLAMP, &from.saved_clamp, &len) == 0 &&
          setsockopt(from.fd.get(), IPPROTO_TCP, TCP_WINDOW_CLAMP, &minimum, sizeof(minimum)) == 0) {
        from.clamped = true;
        ++from.clamps;
      }
    } else if (from.clamped && backlog < bound_ / 4) {
      (void)setsockopt(from.fd.get(), IPPROTO_TCP, TCP_WINDOW_CLAMP, &from.saved_clamp,
                       sizeof(from.saved_clamp));
      from.clamped = false;
    }
  }

  void finish(Pair& p) {
    const char* error[2] = {"none", "none"};
    for (Side* s : {&p.a, &p.b}) {
      // A psock that hit a hard send error stops transmitting, drops the
      // rest of its backlog and leaves the error here.
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(s->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0)
        error[s == &p.b] = strerrorname_np(err);
      s->last_bytes = bpf_->flow_bytes(s->cookie);
      if (s->unix_side)
        bpf_->remove_private_source(s->cookie);
      else
        bpf_->remove_source(s->cookie);
      bpf_->remove_flow(s->cookie);
      bpf_->remove_target(s->cookie);
    }
    auto u = [](uint64_t v) { return static_cast<unsigned long long>(v); };
    std::printf(
        "PAIR kernel_bytes_a_to_b=%llu kernel_bytes_b_to_a=%llu stranded_a=%llu stranded_b=%llu error_a=%s "
        "error_b=%s max_backlog_to_b=%llu max_backlog_to_a=%llu clamps_a=%llu clamps_b=%llu\n",
        u(p.a.last_bytes), u(p.b.last_bytes), u(p.a.stranded), u(p.b.stranded), error[0], error[1],
        u(p.b.max_backlog), u(p.a.max_backlog), u(p.a.clamps), u(p.b.clamps));
    std::fflush(stdout);
  }

  Address connect_to_;
  uint64_t quiet_ms_;
  uint64_t bound_;  // bytes; 0 = no bound
  bool unsteer_;    // --bound-mode unsteer
  std::unique_ptr<sockrelay::BpfRelay> bpf_;
  Fd listener_;
  std::vector<std::unique_ptr<Pair>> pairs_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at, connect_to;
  uint64_t quiet_ms = 2000, bound = 0;
  bool unsteer = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--listen")
      listen_at = argv[i + 1];
    else if (flag == "--connect")
      connect_to = argv[i + 1];
    else if (flag == "--quiet-ms")
      quiet_ms = std::stoull(argv[i + 1]);
    else if (flag == "--bound")
      bound = std::stoull(argv[i + 1]);
    else if (flag == "--bound-mode")
      unsteer = std::string(argv[i + 1]) == "unsteer";
  }
  if (listen_at.empty() || connect_to.empty()) {
    std::fprintf(stderr,
                 "usage: sockrelay_kernel_pair --listen ADDR --connect ADDR [--quiet-ms MS]\n"
                 "       [--bound BYTES [--bound-mode clamp|unsteer]]\n"
                 "  ADDR: vsock:CID:PORT, A.B.C.D:PORT (tcp), /path or @name (unix). Wires each accepted\n"
                 "  connection and its upstream into the relay's verdict program (not exact:\n"
                 "  a benchmark of the kernel path, see the top of tests/bench/kernel_pair.cpp).\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = [](int) { stop_requested = 1; };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  KernelPair pair(parse_address(listen_at), parse_address(connect_to), quiet_ms, bound, unsteer);
  pair.run();
  return 0;
}
