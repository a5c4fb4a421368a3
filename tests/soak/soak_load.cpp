// The soak test's clients and targets (tests/soak/soak.sh): every byte and
// datagram carries what is needed to check it end to end.
//
//   udp-client    --to A:P --duration S [--flows F] [--rate R]
//       F flows (one socket each) send datagrams of random size, each with
//       a sequence number and an FNV-1a of its payload, to an echo behind the
//       relay; replies are checked (checksum, flow, no duplicates). After S
//       seconds it waits 2 s for late replies and prints
//       "udp sent N received N bad N duplicate N".
//   stream-client --to A:P --duration S [--parallel P] [--max-bytes B] [--reset-every K]
//       P threads, each a sequence of connections: a pseudo-random stream of
//       up to B bytes (seeded per connection) sent while the echo is read
//       and compared byte by byte, then a half-close and the rest of the echo
//       to EOF. Every K-th connection resets itself (SO_LINGER 0) half-way.
//       Prints "stream started N complete N mismatch N cut N reset N
//       connect-failed N bytes N": complete = every byte back, byte-exact;
//       mismatch = a byte back that differs from what was sent (a bug); cut
//       = the connection ended early (a killed target), every byte that
//       came back was right.
//   stream-echo   --bind A:P [--stall-ms MS --stall-every MS]
//       Echoes every connection (a thread each) and half-closes after its
//       EOF. With --stall-*: stops reading for MS every so often (a target
//       that stalls; the relay must hold the client back, not lose bytes).
// Datagram echo: sockrelay_udp_load echo (tests/bench/udp_load.cpp).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <unordered_set>

#include "../bench/load_common.h"

namespace {

using bench::die;
using bench::die_errno;
using bench::now_ns;

sockaddr_in parse_inet(const std::string& text) {
  size_t colon = text.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  if (colon == std::string::npos || inet_pton(AF_INET, text.substr(0, colon).c_str(), &sa.sin_addr) != 1)
    die("expected IPv4 A:P, got " + text);
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(text.substr(colon + 1))));
  return sa;
}

uint64_t fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// xorshift64*: the same seed gives the same stream on both ends of a check.
struct Random {
  uint64_t s;
  explicit Random(uint64_t seed) : s(seed * 2654435761u + 0x9e3779b97f4a7c15ull) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  void fill(uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(next() >> 56);
  }
};

// ---- udp-client -------------------------------------------------------------

struct DatagramHeader {
  uint32_t flow;
  uint32_t seq;
  uint32_t length;  // payload bytes after the header
  uint32_t pad;
  uint64_t checksum;  // fnv1a of the payload
};

void udp_client(const bench::Options& o) {
  sockaddr_in to = parse_inet(o.text("to"));
  double duration = o.number("duration", 10);
  auto flows = static_cast<size_t>(o.number("flows", 8));
  double rate = o.number("rate", 2000);  // datagrams/s over all flows
  std::vector<int> socks;
  for (size_t i = 0; i < flows; ++i) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) die_errno("udp socket");
    socks.push_back(fd);
  }
  std::vector<std::unordered_set<uint32_t>> seen(flows);
  std::vector<uint32_t> next_seq(flows, 0);
  uint64_t sent = 0, received = 0, bad = 0, duplicate = 0;
  Random random(42);
  uint8_t buf[2048];
  auto receive_all = [&]() {
    for (size_t f = 0; f < flows; ++f) {
      for (;;) {
        ssize_t n = recv(socks[f], buf, sizeof(buf), 0);
        if (n < 0) break;  // EAGAIN, or ECONNREFUSED from a killed target: counted as loss
        DatagramHeader h{};
        if (static_cast<size_t>(n) < sizeof(h)) {
          ++bad;
          continue;
        }
        std::memcpy(&h, buf, sizeof(h));
        if (h.flow != f || h.length != n - sizeof(h) || fnv1a(buf + sizeof(h), h.length) != h.checksum) {
          ++bad;
        } else if (!seen[f].insert(h.seq).second) {
          ++duplicate;
        } else {
          ++received;
        }
      }
    }
  };
  const uint64_t start = now_ns(), end = start + static_cast<uint64_t>(duration * 1e9);
  const uint64_t gap = static_cast<uint64_t>(1e9 / std::max(rate, 1.0));
  uint64_t next_send = start;
  std::vector<pollfd> pfds;
  for (int fd : socks) pfds.push_back({fd, POLLIN, 0});
  while (!bench::g_stop && now_ns() < end) {
    uint64_t now = now_ns();
    while (next_send <= now) {
      size_t f = sent % flows;
      DatagramHeader h{static_cast<uint32_t>(f), next_seq[f]++, static_cast<uint32_t>(random.next() % 1400),
                       0, 0};
      random.fill(buf + sizeof(h), h.length);
      h.checksum = fnv1a(buf + sizeof(h), h.length);
      std::memcpy(buf, &h, sizeof(h));
      send(socks[f], buf, sizeof(h) + h.length, 0);  // a refused send is a lost datagram, counted below
      ++sent;
      next_send += gap;
    }
    poll(pfds.data(), pfds.size(), 1);
    receive_all();
  }
  for (uint64_t drain_end = now_ns() + 2000000000ull; now_ns() < drain_end;) {
    poll(pfds.data(), pfds.size(), 50);
    receive_all();
  }
  std::printf("udp sent %llu received %llu bad %llu duplicate %llu\n", static_cast<unsigned long long>(sent),
              static_cast<unsigned long long>(received), static_cast<unsigned long long>(bad),
              static_cast<unsigned long long>(duplicate));
}

// ---- stream-client ----------------------------------------------------------

struct StreamTotals {
  std::atomic<uint64_t> started{0}, complete{0}, mismatch{0}, cut{0}, reset{0}, connect_failed{0}, bytes{0};
};

enum class StreamEnd { Complete, Mismatch, Cut, Reset, ConnectFailed };

// One connection: send `size` bytes of Random(seed) while reading the echo
// back and comparing it with a second Random(seed).
StreamEnd one_stream(const sockaddr_in& to, uint64_t seed, size_t size, bool reset_half_way,
                     uint64_t& echoed) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die_errno("socket");
  if (connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0) {
    close(fd);
    return StreamEnd::ConnectFailed;
  }
  int flags = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &flags, sizeof(flags));
  Random out(seed), expect(seed);
  size_t sent = 0, got = 0;
  bool half_closed = false;
  uint8_t wbuf[16384], rbuf[16384], ebuf[16384];
  size_t wlen = 0, woff = 0;
  StreamEnd result = StreamEnd::Complete;
  const uint64_t give_up = now_ns() + 60000000000ull;  // a stream that hangs for a minute is cut
  for (;;) {
    if (reset_half_way && sent >= size / 2) {
      linger l{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
      result = StreamEnd::Reset;
      break;
    }
    if (sent == size && !half_closed) {
      shutdown(fd, SHUT_WR);
      half_closed = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (sent < size ? POLLOUT : 0)), 0};
    if (poll(&p, 1, 1000) == 0) {
      if (now_ns() > give_up || bench::g_stop) {
        result = StreamEnd::Cut;
        break;
      }
      continue;
    }
    if ((p.revents & POLLOUT) && sent < size) {
      if (woff == wlen) {
        wlen = std::min(sizeof(wbuf), size - sent);
        out.fill(wbuf, wlen);
        woff = 0;
      }
      ssize_t n = send(fd, wbuf + woff, wlen - woff, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        woff += static_cast<size_t>(n);
        sent += static_cast<size_t>(n);
      }
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, rbuf, sizeof(rbuf), MSG_DONTWAIT);
      if (n > 0) {
        expect.fill(ebuf, static_cast<size_t>(n));
        if (got + static_cast<size_t>(n) > size || std::memcmp(rbuf, ebuf, static_cast<size_t>(n)) != 0) {
          result = StreamEnd::Mismatch;
          break;
        }
        got += static_cast<size_t>(n);
        echoed += static_cast<uint64_t>(n);
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        result = got == size && sent == size ? StreamEnd::Complete : StreamEnd::Cut;
        break;
      }
    }
  }
  close(fd);
  return result;
}

void stream_client(const bench::Options& o) {
  sockaddr_in to = parse_inet(o.text("to"));
  double duration = o.number("duration", 10);
  auto parallel = static_cast<int>(o.number("parallel", 4));
  auto max_bytes = static_cast<size_t>(o.number("max-bytes", 1 << 20));
  auto reset_every = static_cast<uint64_t>(o.number("reset-every", 7));
  const uint64_t end = now_ns() + static_cast<uint64_t>(duration * 1e9);
  StreamTotals totals;
  std::vector<std::thread> threads;
  for (int t = 0; t < parallel; ++t) {
    threads.emplace_back([&, t] {
      Random sizes(1000 + static_cast<uint64_t>(t));
      for (uint64_t i = 0; !bench::g_stop && now_ns() < end; ++i) {
        uint64_t id = ++totals.started;
        size_t size = 1 + sizes.next() % max_bytes;
        bool reset = reset_every != 0 && id % reset_every == 0;
        uint64_t echoed = 0;
        StreamEnd e = one_stream(to, id * 7919 + static_cast<uint64_t>(t), size, reset, echoed);
        totals.bytes += echoed;
        if (e == StreamEnd::Complete) ++totals.complete;
        if (e == StreamEnd::Mismatch) ++totals.mismatch;
        if (e == StreamEnd::Cut) ++totals.cut;
        if (e == StreamEnd::Reset) ++totals.reset;
        if (e == StreamEnd::ConnectFailed) {
          ++totals.connect_failed;
          usleep(20000);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::printf(
      "stream started %llu complete %llu mismatch %llu cut %llu reset %llu connect-failed %llu bytes %llu\n",
      static_cast<unsigned long long>(totals.started.load()),
      static_cast<unsigned long long>(totals.complete.load()),
      static_cast<unsigned long long>(totals.mismatch.load()),
      static_cast<unsigned long long>(totals.cut.load()),
      static_cast<unsigned long long>(totals.reset.load()),
      static_cast<unsigned long long>(totals.connect_failed.load()),
      static_cast<unsigned long long>(totals.bytes.load()));
}

// ---- stream-echo ------------------------------------------------------------

void echo_connection(int fd, uint64_t stall_ms, uint64_t stall_every_ms) {
  uint8_t buf[65536];
  uint64_t next_stall = stall_every_ms ? now_ns() + stall_every_ms * 1000000ull : UINT64_MAX;
  for (;;) {
    if (now_ns() >= next_stall) {
      usleep(static_cast<useconds_t>(stall_ms * 1000));  // reads nothing: the relay must hold the bytes back
      next_stall = now_ns() + stall_every_ms * 1000000ull;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = send(fd, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
      if (w <= 0) {
        close(fd);
        return;
      }
      off += w;
    }
  }
  shutdown(fd, SHUT_WR);
  close(fd);
}

void stream_echo(const bench::Options& o) {
  sockaddr_in at = parse_inet(o.text("bind"));
  auto stall_ms = static_cast<uint64_t>(o.number("stall-ms", 0));
  auto stall_every = static_cast<uint64_t>(o.number("stall-every", 0));
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(l, reinterpret_cast<sockaddr*>(&at), sizeof(at)) != 0 || listen(l, 128) != 0)
    die_errno("bind/listen");
  while (!bench::g_stop) {
    int c = accept(l, nullptr, nullptr);
    if (c < 0) continue;
    std::thread(echo_connection, c, stall_ms, stall_every).detach();
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench::start_tool("sockrelay_soak_load");
  std::string role = argc > 1 ? argv[1] : "";
  if (role == "udp-client") return udp_client(bench::parse_options(argc, argv)), 0;
  if (role == "stream-client") return stream_client(bench::parse_options(argc, argv)), 0;
  if (role == "stream-echo") return stream_echo(bench::parse_options(argc, argv)), 0;
  std::fprintf(
      stderr,
      "usage: sockrelay_soak_load udp-client --to A:P --duration S [--flows F] [--rate R]\n"
      "       sockrelay_soak_load stream-client --to A:P --duration S [--parallel P] [--max-bytes B]\n"
      "                                         [--reset-every K]\n"
      "       sockrelay_soak_load stream-echo --bind A:P [--stall-ms MS --stall-every MS]\n");
  return 2;
}
