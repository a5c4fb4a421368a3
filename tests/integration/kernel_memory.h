// What a stalled target costs: kernel memory (slab and socket pages) and a
// process's resident memory, and the flood and the drain that measure
// them. Shared by the bound tests of kernel-path (target_bound_test.cpp)
// and user-space routes into VSOCK (vsock_bound_test.cpp).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "relay_harness.h"

namespace sockrelay::testing {

constexpr uint64_t kMemKiB = 1024;

// Kernel memory an skb backlog occupies: unreclaimable slab (sk_buff heads
// in skbuff_head_cache, linear data in kmalloc caches) plus the pages
// sockets have charged (/proc/net/sockstat "mem", for page-frag data).
inline uint64_t kernel_skb_memory() {
  uint64_t sunreclaim_kb = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    uint64_t value = 0;
    meminfo >> value;
    if (key == "SUnreclaim:") sunreclaim_kb = value;
    meminfo.ignore(64, '\n');
  }
  uint64_t socket_pages = 0;
  std::ifstream sockstat("/proc/net/sockstat");
  for (std::string word; sockstat >> word;) {
    if (word == "mem") {
      uint64_t pages = 0;
      sockstat >> pages;
      socket_pages += pages;
    }
  }
  return sunreclaim_kb * kMemKiB + socket_pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// A process's resident memory (VmRSS), in bytes; 0 if it cannot be read.
inline uint64_t process_rss(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string key; status >> key;) {
    if (key == "VmRSS:") {
      uint64_t kb = 0;
      status >> kb;
      return kb * kMemKiB;
    }
    status.ignore(256, '\n');
  }
  return 0;
}

// Sends numbered datagrams of `size` bytes (at most 2048) as fast as the
// socket takes them until `stop`; returns how many it sent.
inline uint64_t flood(int fd, const Addr& to, const std::atomic<bool>& stop, size_t size) {
  char buf[2048] = {};
  size = std::min(size, sizeof(buf));
  uint64_t sent = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    std::memcpy(buf, &sent, sizeof(sent));
    if (sendto(fd, buf, size, MSG_DONTWAIT, to.sa(), to.len) == static_cast<ssize_t>(size)) {
      ++sent;
    } else if (errno == EAGAIN || errno == ENOBUFS) {
      std::this_thread::yield();
    }
  }
  return sent;
}

// Reads everything queued on `fd` until it has seen a message starting
// with `marker`, or `limit` passed.
inline bool read_until_marker(int fd, const char* marker, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  char buf[2048];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n >= static_cast<ssize_t>(std::strlen(marker)) && std::memcmp(buf, marker, std::strlen(marker)) == 0)
      return true;
  }
  return false;
}

}  // namespace sockrelay::testing
