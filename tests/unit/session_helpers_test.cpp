// The helpers every connection route shares: admission (policy, budget,
// refusal counts), the send queue, and the stop drain.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
// clang-format off: <sys/socket.h> must come before <linux/vm_sockets.h>.
#include <linux/vm_sockets.h>
// clang-format on
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sessions/admission.h"
#include "sessions/send_queue.h"
#include "sessions/stop_drain.h"

namespace sockrelay {
namespace {

sockaddr_storage vsock_peer(uint32_t cid) {
  sockaddr_storage peer{};
  auto* vm = reinterpret_cast<sockaddr_vm*>(&peer);
  vm->svm_family = AF_VSOCK;
  vm->svm_cid = cid;
  return peer;
}

TEST(Admission, CountsPolicyAndBudgetRefusalsApart) {
  PeerPolicy policy;
  policy.allow_cids = {3};
  SessionBudget budget(1);
  uint64_t refused_policy = 0, refused_max = 0;
  Admission admission(1, policy, budget, refused_policy, refused_max);

  EXPECT_FALSE(admission.admit(-1, vsock_peer(7), "cid 7"));
  EXPECT_EQ(refused_policy, 1u);
  EXPECT_EQ(budget.used(), 0u) << "a refused peer takes no budget";

  EXPECT_TRUE(admission.admit(-1, vsock_peer(3), "cid 3"));
  EXPECT_EQ(budget.used(), 1u);
  EXPECT_FALSE(admission.admit(-1, vsock_peer(3), "cid 3 again"));
  EXPECT_EQ(refused_max, 1u);
  EXPECT_EQ(refused_policy, 1u);
  budget.give_back();
  EXPECT_TRUE(admission.admit(-1, vsock_peer(3), "cid 3 once more"));
}

// A unix-stream listener in the abstract namespace: no file, no privilege.
Fd abstract_listener(const std::string& name, sockaddr_un& addr, socklen_t& len) {
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd.get(), 8) != 0) return Fd();
  return fd;
}

Fd connect_to(const sockaddr_un& addr, socklen_t len) {
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0) return Fd();
  return fd;
}

TEST(Admission, AcceptBatchHandsOverAdmittedConnectionsOnly) {
  sockaddr_un addr;
  socklen_t len;
  Fd listener = abstract_listener("sockrelay-admission-" + std::to_string(getpid()), addr, len);
  ASSERT_TRUE(listener.valid()) << std::strerror(errno);
  PeerPolicy policy;
  policy.allow_uids = {getuid()};  // SO_PEERCRED of our own connections: admitted
  SessionBudget budget(2);
  uint64_t refused_policy = 0, refused_max = 0;
  Admission admission(1, policy, budget, refused_policy, refused_max);

  std::vector<Fd> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(connect_to(addr, len));
  std::vector<Admission::Peer> admitted;
  admission.accept_batch(listener.get(), [&](Admission::Peer p) { admitted.push_back(std::move(p)); });
  ASSERT_EQ(admitted.size(), 2u) << "the budget holds two";
  EXPECT_EQ(refused_max, 1u);
  EXPECT_EQ(admitted[0].text, "unix client");
  EXPECT_TRUE(admitted[0].fd.valid());

  policy.allow_uids = {getuid() + 1};
  budget.give_back();
  clients.push_back(connect_to(addr, len));
  admission.accept_batch(listener.get(), [&](Admission::Peer p) { admitted.push_back(std::move(p)); });
  EXPECT_EQ(admitted.size(), 2u);
  EXPECT_EQ(refused_policy, 1u);
}

std::pair<Fd, Fd> socket_pair(int type) {
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return {};
  return {Fd(sv[0]), Fd(sv[1])};
}

std::string read_all(int fd) {
  std::string got;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) return got;
    got.append(buf, static_cast<size_t>(n));
  }
}

TEST(SendQueue, AStreamTakesPartAndTheRestStaysInOrder) {
  auto [ours, peer] = socket_pair(SOCK_STREAM);
  ASSERT_TRUE(ours.valid());
  int small = 4096;
  ASSERT_EQ(setsockopt(ours.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  SendQueue q;
  std::string sent;
  for (int i = 0; i < 64; ++i) {
    std::string run(1000, static_cast<char>('a' + i % 26));
    q.push(run.data(), run.size());
    sent += run;
  }
  EXPECT_EQ(q.bytes(), sent.size());
  std::string got;
  SendQueue::Written first = q.write_to(ours.get());
  EXPECT_EQ(first.error, 0);
  EXPECT_LT(first.bytes, sent.size()) << "a 4 KiB send buffer cannot take 64 KB";
  EXPECT_EQ(q.bytes(), sent.size() - first.bytes);
  size_t whole = first.entries;
  for (int round = 0; round < 1000 && !q.empty(); ++round) {
    got += read_all(peer.get());
    SendQueue::Written w = q.write_to(ours.get());
    ASSERT_EQ(w.error, 0);
    whole += w.entries;
  }
  got += read_all(peer.get());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(whole, 64u);
  EXPECT_EQ(got, sent) << "byte-exact, in order";
}

TEST(SendQueue, SeqpacketKeepsMessagesWholeAndAFailureIsReported) {
  auto [ours, peer] = socket_pair(SOCK_SEQPACKET);
  ASSERT_TRUE(ours.valid());
  SendQueue q;
  q.push("one", 3);
  q.push("", 0);
  q.push("three", 5);
  SendQueue::Written w = q.write_to(ours.get());
  EXPECT_EQ(w.entries, 3u);
  EXPECT_EQ(w.bytes, 8u);
  char buf[16];
  EXPECT_EQ(recv(peer.get(), buf, sizeof(buf), 0), 3);
  EXPECT_EQ(recv(peer.get(), buf, sizeof(buf), 0), 0) << "the empty message is one too";
  EXPECT_EQ(recv(peer.get(), buf, sizeof(buf), 0), 5);

  peer.reset();
  q.push("lost", 4);
  w = q.write_to(ours.get());
  EXPECT_EQ(w.error, EPIPE);
  EXPECT_EQ(q.entries(), 1u) << "a failed send leaves the queue as it was";
}

// An entry no fd reports on (fd -1) keeps the drain going until it is no
// longer pending, without flush() being called for it.
TEST(StopDrain, UnwatchedEntriesAreLookedAtAgainUntilDone) {
  int asked = 0, flushed = 0;
  auto started = std::chrono::steady_clock::now();
  drain_before_stop(
      [&] {
        ++asked;
        return asked < 4 ? std::vector<std::pair<int, uint64_t>>{{-1, 7}}
                         : std::vector<std::pair<int, uint64_t>>{};
      },
      [&](uint64_t) { ++flushed; });
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(asked, 4);
  EXPECT_EQ(flushed, 0);
  EXPECT_GE(took, 3 * kStopDrainRecheck) << "looked at again every kStopDrainRecheck, not in a busy loop";
  EXPECT_LT(took, kStopDrain);
}

TEST(StopDrain, AWritableConnectionIsFlushedUntilNothingIsPending) {
  auto [ours, peer] = socket_pair(SOCK_STREAM);
  ASSERT_TRUE(ours.valid());
  int pending = 3;
  std::vector<uint64_t> flushed;
  drain_before_stop(
      [&] {
        return pending > 0 ? std::vector<std::pair<int, uint64_t>>{{ours.get(), 42}}
                           : std::vector<std::pair<int, uint64_t>>{};
      },
      [&](uint64_t id) {
        flushed.push_back(id);
        --pending;
      });
  EXPECT_EQ(flushed, (std::vector<uint64_t>{42, 42, 42}));
}

}  // namespace
}  // namespace sockrelay
