// The stream route's user path: the relay moves the bytes itself, with
// splice() through a pipe per direction for byte streams, and one recv/send
// per message when either end keeps message boundaries (seqpacket) or
// splice() is slow into it (vsock).
#include <fcntl.h>  // splice()
#include <poll.h>
#include <sys/socket.h>

#include <memory>

#include "common/clock.h"
#include "common/io_errors.h"
#include "sessions/stream_session.h"

namespace sockrelay {

namespace {

constexpr size_t kMessageBuffer = 256 * 1024;  // message copies: largest seqpacket message kept whole
// Rounds of out-then-in per user_copy() call: a busy session yields to the
// others on the loop after this many.
constexpr int kCopyRounds = 16;

}  // namespace

// Byte streams: the pipe toward `to`, from the route's pool, when the
// first bytes are about to go in. Out of descriptors (or pipes), the
// session closes, counted (fd-limit): nothing it read is lost, since
// nothing was read into a pipe it does not have.
bool StreamRoute::take_pipe(Session& s, Side& to) {
  if (to.pipe) return true;
  auto pipe = pipes_.take();
  if (!pipe) {
    session_setup_failed(s, pipe.error().message, pipe.error().code);
    return false;
  }
  to.pipe = std::move(*pipe);
  to.pipe_full = false;
  return true;
}

// An empty pipe goes back to the pool; one with bytes stays (they are this
// session's, in order).
void StreamRoute::release_pipe_if_empty(Side& to) {
  if (!to.pipe || to.in_pipe > 0) return;
  pipes_.give_back(std::move(to.pipe));
  to.pipe = Pipe{};
  to.pipe_full = false;
}

// Moves what `from` has toward `to`: what is buffered toward `to` goes out,
// then more is read from `from`, a few rounds while either moves.
void StreamRoute::user_copy(Session& s, Side& from, Side& to, bool from_readable) {
  CopyState state;
  state.messages = from.messages || to.messages;
  state.from_readable = from_readable;
  for (int round = 0; round < kCopyRounds; ++round) {
    state.progress = false;
    if (!(state.messages ? send_queued_messages(s, to, state) : splice_out(s, to, state))) return;
    // In: while what is buffered toward `to` fits its pipe (messages: once
    // the queue is empty). The pipe bounds user-space buffering per
    // direction: a stopped reader fills it, then we stop reading and TCP
    // flow control (or the unix socket's buffer) reaches the sender. Reading
    // on while the pipe is being written out, instead of waiting for it to
    // empty, keeps the sender's socket from filling up and its writer from
    // sleeping and waking once per pipe-full.
    bool may_read = state.messages ? to.messages_q.empty() : to.pipe_room();
    if (may_read && !from.eof && !state.from_empty) {
      if (!(state.messages ? recv_message(s, from, to, state) : splice_in(s, from, to, state))) return;
    }
    if (!state.progress) break;
    s.last_user_ns = monotonic_ns();
  }
}

// Message copies, out: the messages queued toward `to`, oldest first, until
// it is full. False when the session closed.
bool StreamRoute::send_queued_messages(Session& s, Side& to, CopyState& state) {
  while (!to.messages_q.empty()) {
    const std::string& m = to.messages_q.front();
    Sent sent = send_message(s, to, m.data(), m.size());
    if (sent.closed) return false;
    if (sent.blocked) break;
    if (sent.dropped) {  // its peer left: nothing to deliver to
      to.messages_q.clear();
      break;
    }
    // A stream target may take part of a chunk; a seqpacket one all of it.
    if (sent.bytes < m.size()) {
      if (sent.bytes > 0) to.messages_q.front().erase(0, sent.bytes);
      break;
    }
    to.messages_q.erase(to.messages_q.begin());
    state.progress = true;
  }
  return true;
}

// Byte streams, out: the pipe toward `to` into its socket. False when the
// session closed.
bool StreamRoute::splice_out(Session& s, Side& to, CopyState& state) {
  if (to.in_pipe == 0 || state.to_full) return true;
  // splice() into a socket stops only when its send buffer is full: a
  // short one needs no second call to learn that, EPOLLOUT tells when
  // there is room again.
  size_t offered = to.in_pipe;
  ssize_t n =
      splice(to.pipe.r.get(), nullptr, to.fd.get(), nullptr, offered, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  if (n < 0) {
    if (!would_block(errno)) {
      fail_session(s.id, to, errno);
      return false;
    }
    state.to_full = true;
    return true;
  }
  to.in_pipe -= static_cast<size_t>(n);
  to.user_out += static_cast<uint64_t>(n);
  counters_.user_bytes += static_cast<uint64_t>(n);
  if (static_cast<size_t>(n) < offered) state.to_full = true;
  if (n > 0) {
    to.pipe_full = false;
    state.progress = true;
  }
  release_pipe_if_empty(to);
  return true;
}

// Message copies, in: one recv() from `from`, handed straight on to `to`;
// what `to` does not take now is queued. False when the session closed.
bool StreamRoute::recv_message(Session& s, Side& from, Side& to, CopyState& state) {
  // One buffer for the whole route, allocated once and never cleared:
  // a fresh zero-filled 256 KiB string per recv() was 3 memsets per
  // message and direction, which under TCG (rep stosb, byte by byte)
  // cost ~6 ms per 64-byte round trip (perf in the vm-tests guest).
  if (!recv_buffer_) recv_buffer_ = std::make_unique_for_overwrite<char[]>(kMessageBuffer);
  char* buf = recv_buffer_.get();
  ssize_t n = recv(from.fd.get(), buf, kMessageBuffer, MSG_DONTWAIT);
  if (n < 0) {
    if (!would_block(errno)) {
      fail_session(s.id, from, errno);
      return false;
    }
    state.from_empty = true;
    return true;
  }
  if (n == 0) {
    // 0 is EOF for a stream, and either EOF or an empty message for
    // seqpacket: RDHUP tells them apart.
    pollfd p{from.fd.get(), POLLRDHUP, 0};
    if (!from.seqpacket || (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP)))) {
      from.eof = true;
    } else if (to.messages) {
      to.messages_q.emplace_back();
      state.progress = true;
    }
    return true;
  }
  // Straight on from the buffer (nothing is queued toward `to` here): only
  // what `to` does not take now is copied into the queue.
  size_t len = static_cast<size_t>(n);
  Sent sent = send_message(s, to, buf, len);
  if (sent.closed) return false;
  if (!sent.dropped && sent.bytes < len) to.messages_q.emplace_back(buf + sent.bytes, len - sent.bytes);
  state.progress = true;
  // A byte stream that filled less than the buffer had nothing more queued:
  // another recv() now would only say EAGAIN, and epoll (level-triggered)
  // reports whatever arrives next.
  if (!from.seqpacket && len < kMessageBuffer) state.from_empty = true;
  return true;
}

// Byte streams, in: `from` into the pipe toward `to`, as much as it has
// room for. False when the session closed.
bool StreamRoute::splice_in(Session& s, Side& from, Side& to, CopyState& state) {
  if (!take_pipe(s, to)) return false;
  size_t room = to.pipe.capacity - to.in_pipe;
  ssize_t n =
      splice(from.fd.get(), nullptr, to.pipe.w.get(), nullptr, room, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  if (n <= 0) {  // nothing came (EAGAIN, EOF): an empty pipe goes back at once
    int err = errno;
    release_pipe_if_empty(to);
    errno = err;
  }
  if (n < 0) {
    if (!would_block(errno)) {
      fail_session(s.id, from, errno);
      return false;
    }
    // epoll said `from` has bytes (or EOF), yet not one came: the pipe has
    // no free slot left. Wait for a splice out, not EPOLLIN.
    if (state.from_readable && !state.read_any && to.in_pipe > 0) to.pipe_full = true;
    state.from_empty = true;
    return true;
  }
  if (n == 0) {
    from.eof = true;
    return true;
  }
  to.in_pipe += static_cast<size_t>(n);
  from.user_in += static_cast<uint64_t>(n);
  state.progress = true;
  state.read_any = true;
  // Fewer bytes than asked: the receive queue is empty (or the pipe ran out
  // of slots). Another splice() now would say EAGAIN; epoll
  // (level-triggered) reports what arrives next.
  if (static_cast<size_t>(n) < room) state.from_empty = true;
  return true;
}

// Message copies: hands `size` bytes to `to`. A seqpacket target takes a
// message whole or not at all, a stream target may take part.
StreamRoute::Sent StreamRoute::send_message(Session& s, Side& to, const char* data, size_t size) {
  ssize_t n = send(to.fd.get(), data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0) {
    if (would_block(errno)) return {.blocked = true};
    if (errno == EPIPE && to.hup) return {.dropped = true};
    fail_session(s.id, to, errno);
    return {.closed = true};
  }
  counters_.user_bytes += static_cast<uint64_t>(n);
  if (static_cast<size_t>(n) == size) ++counters_.user_messages;
  return {.bytes = static_cast<size_t>(n)};
}

}  // namespace sockrelay
