// Stream endpoints for the integration tests: a server that accepts and
// runs a checked duplex transfer per connection, and the client side of
// the same transfer. Payloads are pseudo-random from a seed the client
// sends first, so each end checks every byte it receives against what the
// other end generated (a byte compare, position by position).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "relay_harness.h"

namespace sockrelay::testing {

// xorshift64*: the same seed gives the same bytes at both ends.
class ByteStream {
 public:
  explicit ByteStream(uint64_t seed) : state_(seed ? seed : 0x9e3779b97f4a7c15ull) {}
  void fill(char* out, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (left_ == 0) {
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        word_ = state_ * 2685821657736338717ull;
        left_ = 8;
      }
      out[i] = static_cast<char>(word_ & 0xff);
      word_ >>= 8;
      --left_;
    }
  }

 private:
  uint64_t state_;
  uint64_t word_ = 0;
  int left_ = 0;
};

struct TransferResult {
  uint64_t sent = 0;
  uint64_t received = 0;
  bool intact = true;    // every received byte matched
  bool got_eof = false;  // the far side's FIN arrived
  int error = 0;         // errno of a failed send/recv, 0 if none
  bool timed_out = false;
};

struct TransferPlan {
  uint64_t send_bytes = 0;
  uint64_t out_seed = 0;
  uint64_t in_seed = 0;
  bool send_seed_header = false;               // client: announce out_seed first
  bool read_seed_header = false;               // server: learn in_seed (and derive out_seed) first
  std::chrono::milliseconds pause_reading{0};  // stop reading after the first MiB for this long
  uint64_t close_after_reading = 0;            // > 0: close() once this many bytes were read
  std::chrono::milliseconds limit{60'000};
};

// Sends plan.send_bytes then shutdown(SHUT_WR), while reading to EOF and
// checking. Non-blocking, one thread.
inline TransferResult run_transfer(int fd, TransferPlan plan) {
  TransferResult r;
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  std::vector<char> out(256 * 1024), in(256 * 1024), expect(256 * 1024);
  size_t out_len = 0, out_off = 0;
  std::string header;
  if (plan.send_seed_header) header.assign(reinterpret_cast<const char*>(&plan.out_seed), 8);
  uint64_t header_in = 0;
  char header_buf[8];
  ByteStream* gen = nullptr;
  ByteStream* check = nullptr;
  std::unique_ptr<ByteStream> gen_holder, check_holder;
  auto make_gen = [&] {
    gen_holder = std::make_unique<ByteStream>(plan.out_seed);
    gen = gen_holder.get();
  };
  if (!plan.read_seed_header) {
    make_gen();
    check_holder = std::make_unique<ByteStream>(plan.in_seed);
    check = check_holder.get();
  }
  bool shut = false, paused_done = plan.pause_reading.count() == 0;
  auto deadline = std::chrono::steady_clock::now() + plan.limit;
  while (!(shut && r.got_eof)) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      break;
    }
    bool reading = true;
    if (!paused_done && r.received >= (1u << 20)) {
      std::this_thread::sleep_for(plan.pause_reading);
      paused_done = true;
    }
    // Fill the output buffer.
    if (gen && out_off == out_len && r.sent + header.size() < plan.send_bytes + header.size() && !shut) {
      uint64_t left = plan.send_bytes - r.sent;
      out_len = static_cast<size_t>(std::min<uint64_t>(left, out.size()));
      gen->fill(out.data(), out_len);
      out_off = 0;
    }
    pollfd p{fd,
             static_cast<short>((reading && !r.got_eof ? POLLIN : 0) |
                                (!shut && (gen || !header.empty()) ? POLLOUT : 0)),
             0};
    poll(&p, 1, 100);
    if (!header.empty()) {
      ssize_t n = send(fd, header.data(), header.size(), MSG_NOSIGNAL);
      if (n > 0) {
        header.erase(0, static_cast<size_t>(n));
      } else if (n < 0 && errno != EAGAIN) {
        r.error = errno;
        break;
      }
    } else if (gen && !shut) {
      if (out_off < out_len) {
        ssize_t n = send(fd, out.data() + out_off, out_len - out_off, MSG_NOSIGNAL);
        if (n > 0) {
          out_off += static_cast<size_t>(n);
          r.sent += static_cast<uint64_t>(n);
        } else if (n < 0 && errno != EAGAIN) {
          r.error = errno;
          break;
        }
      }
      if (r.sent == plan.send_bytes) {
        shutdown(fd, SHUT_WR);
        shut = true;
      }
    }
    if (!r.got_eof) {
      if (plan.read_seed_header && header_in < 8) {
        ssize_t n = recv(fd, header_buf + header_in, 8 - header_in, 0);
        if (n > 0) header_in += static_cast<uint64_t>(n);
        if (header_in == 8) {
          std::memcpy(&plan.in_seed, header_buf, 8);
          plan.out_seed = plan.in_seed ^ 0x5555aaaa5555aaaaull;
          make_gen();
          check_holder = std::make_unique<ByteStream>(plan.in_seed);
          check = check_holder.get();
        }
        if (n == 0) {
          r.got_eof = true;
          if (!gen) break;  // the peer left without a seed: nothing to answer
        }
        continue;
      }
      ssize_t n = recv(fd, in.data(), in.size(), 0);
      if (n > 0) {
        check->fill(expect.data(), static_cast<size_t>(n));
        if (std::memcmp(in.data(), expect.data(), static_cast<size_t>(n)) != 0) r.intact = false;
        r.received += static_cast<uint64_t>(n);
        if (plan.close_after_reading && r.received >= plan.close_after_reading) break;
      } else if (n == 0) {
        r.got_eof = true;
      } else if (errno != EAGAIN) {
        r.error = errno;
        break;
      }
    }
  }
  return r;
}

inline Fd stream_connect(const Addr& to, int type = SOCK_STREAM) {
  Fd s(socket(to.family(), type | SOCK_CLOEXEC, 0));
  if (connect(s.get(), to.sa(), to.len) != 0) return Fd();
  return s;
}

// Accepts connections and runs a transfer on each (the far end of the
// client's plan: it reads the seed header and sends `reply_bytes`).
class StreamServer {
 public:
  StreamServer(const Addr& addr, uint64_t reply_bytes, TransferPlan base = {}, int type = SOCK_STREAM)
      : reply_bytes_(reply_bytes), base_(base) {
    listener_ = Fd(socket(addr.family(), type | SOCK_CLOEXEC, 0));
    int one = 1;
    setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (addr.family() == AF_UNIX) unlink(reinterpret_cast<const sockaddr_un*>(&addr.ss)->sun_path);
    if (bind(listener_.get(), addr.sa(), addr.len) != 0 || listen(listener_.get(), 64) != 0)
      listener_.reset();
    if (listener_) thread_ = std::thread([this] { loop(); });
  }
  ~StreamServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (auto& t : workers_) t.join();
  }
  bool ok() const { return listener_.valid(); }
  std::vector<TransferResult> results() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }
  size_t finished() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.size();
  }
  int accepted() const { return accepted_; }
  bool wait_finished(size_t n, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (finished() < n && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return finished() >= n;
  }

 private:
  void loop() {
    while (!stop_) {
      pollfd p{listener_.get(), POLLIN, 0};
      if (poll(&p, 1, 50) != 1) continue;
      int c = accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ++accepted_;
      workers_.emplace_back([this, c] {
        Fd conn(c);
        TransferPlan plan = base_;
        plan.read_seed_header = true;
        plan.send_bytes = reply_bytes_;
        TransferResult r = run_transfer(conn.get(), plan);
        std::lock_guard<std::mutex> lock(mu_);
        results_.push_back(r);
      });
    }
  }
  uint64_t reply_bytes_;
  TransferPlan base_;
  Fd listener_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::vector<TransferResult> results_;
};

// An echo server on a seqpacket socket: each message back as it came.
// (Or a stream socket: each read back as it came.)
class SeqpacketEcho {
 public:
  explicit SeqpacketEcho(const Addr& addr, int type = SOCK_SEQPACKET) {
    listener_ = Fd(socket(addr.family(), type | SOCK_CLOEXEC, 0));
    int one = 1;
    setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (addr.family() == AF_UNIX) unlink(reinterpret_cast<const sockaddr_un*>(&addr.ss)->sun_path);
    if (bind(listener_.get(), addr.sa(), addr.len) != 0 || listen(listener_.get(), 8) != 0) listener_.reset();
    if (listener_) thread_ = std::thread([this] { serve(); });
  }
  ~SeqpacketEcho() {
    if (thread_.joinable()) thread_.join();
  }
  bool ok() const { return listener_.valid(); }

 private:
  void serve() {
    Fd conn(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    std::vector<char> buf(70000);
    for (;;) {
      ssize_t n = recv(conn.get(), buf.data(), buf.size(), 0);
      if (n <= 0) break;
      send(conn.get(), buf.data(), static_cast<size_t>(n), MSG_NOSIGNAL);
    }
    shutdown(conn.get(), SHUT_WR);
  }
  Fd listener_;
  std::thread thread_;
};

// Sends messages of several sizes, `rounds` times, each answered by an echo
// server, and checks every reply is the same message, whole: "" when all
// came back, else what went wrong. Message sizes stay below 65 000 bytes.
inline std::string seqpacket_round_trips(int fd, size_t rounds, std::vector<size_t>* sizes_out = nullptr) {
  const std::vector<size_t> sizes = {1, 100, 4096, 60000, 7, 3000};
  if (sizes_out) *sizes_out = sizes;
  std::vector<char> buf(70000), got(70000);
  for (size_t round = 0; round < rounds; ++round) {
    for (size_t size : sizes) {
      for (size_t i = 0; i < size; ++i) buf[i] = static_cast<char>(i * 31 + size + round);
      if (send(fd, buf.data(), size, 0) != static_cast<ssize_t>(size))
        return std::string("send: ") + std::strerror(errno);
      ssize_t n = recv(fd, got.data(), got.size(), 0);
      if (n != static_cast<ssize_t>(size))
        return "a message boundary was lost: sent " + std::to_string(size) + ", got " + std::to_string(n);
      if (std::memcmp(buf.data(), got.data(), size) != 0) return "message bytes differ";
    }
  }
  return "";
}

}  // namespace sockrelay::testing
