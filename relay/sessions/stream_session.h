// The state of one stream session, shared by the files the stream route is
// split into (stream_route.cpp, stream_kernel_path.cpp, stream_user_copy.cpp,
// stream_half_close.cpp). Internal to the route: include it from those only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sessions/pipe_pool.h"
#include "sessions/stream_route.h"

namespace sockrelay {

struct StreamRoute::Side {
  const char* name = "";
  Fd fd;
  uint64_t cookie = 0;
  bool tcp = false;
  // Copied with recv()/send(), one message or chunk at a time, instead of
  // spliced: seqpacket (keeps message boundaries) and vsock (a round trip
  // through splice() into a vsock socket took ~13 ms in the guest, against
  // 1.5 ms for socat's copies: measured by vm-tests bench-vsock).
  bool messages = false;
  bool seqpacket = false;  // each recv() is one message: a short one says nothing about the queue

  // Kernel path bookkeeping, for teardown in reverse.
  bool target_added = false, flow_set = false, source_added = false;

  bool eof = false;       // no more bytes will be read from it
  bool hup = false;       // its peer is gone: nothing more can be written to it
  bool shut_wr = false;   // FIN propagated to it (or nothing left to propagate)
  uint64_t baseline = 0;  // tcp: tcp_bytes_written() before anything was written

  // User path: data read from the other side, not yet written here.
  std::vector<std::string> messages_q;  // seqpacket messages, one entry each
  // Byte streams: splice() through here. Held only while bytes are in it
  // (sessions/pipe_pool.h): none means room (one is taken to read).
  Pipe pipe;
  size_t in_pipe = 0;
  // The pipe has no free slot although in_pipe < its capacity (a slot
  // holds one piece of an skb, not always a full page): reading waits until
  // a splice out frees some, instead of polling a readable source in vain.
  bool pipe_full = false;
  bool pipe_room() const { return !pipe || (in_pipe < pipe.capacity && !pipe_full); }
  // User path: bytes read from the other side that wait to be written here.
  bool user_pending() const { return in_pipe > 0 || !messages_q.empty(); }

  bool warned_mismatch = false;  // kernel path: the byte counts disagreed (logged once)
  uint64_t user_in = 0;          // bytes user space read from it
  uint64_t user_out = 0;         // bytes user space wrote to it

  bool registered = false;
  uint32_t events = 0;

  // Sets what the endpoint kind says about this side.
  void set_kind(EndpointKind kind);
};

struct StreamRoute::Session {
  uint64_t id = 0;
  size_t target = 0;  // index into spec_.to
  uint32_t client_hash = 0;
  Side client, upstream;
  bool connecting = true;
  bool kernel = false;    // wired into the maps
  bool attached = false;  // sources added: the verdict program carries it
  uint64_t started_ns = 0;
  uint64_t last_user_ns = 0;
  std::string peer;

  Side& other(Side& s) { return &s == &client ? upstream : client; }
  bool done() const { return client.shut_wr && upstream.shut_wr; }
  // Either end keeps message boundaries: the user path copies messages.
  bool copies_messages() const { return client.messages || upstream.messages; }
};

// What one user_copy() call has learnt about its two sockets so far.
struct StreamRoute::CopyState {
  bool messages = false;       // message copies, not splice()
  bool from_readable = false;  // epoll reported `from` readable
  bool from_empty = false;     // `from` said EAGAIN (or a short stream read): nothing more to read now
  bool to_full = false;        // `to` took less than offered: its send buffer is full for now
  bool read_any = false;       // a splice in took bytes
  bool progress = false;       // this round moved something
};

// What send_message() did with one message (or chunk).
struct StreamRoute::Sent {
  size_t bytes = 0;      // taken by the socket
  bool blocked = false;  // it is full: nothing taken (an empty message is taken with 0 bytes)
  bool dropped = false;  // its peer left: nothing can be delivered to it
  bool closed = false;   // a send error closed the session
};

// tcp's own byte counts, read by the kernel path and the half-close rule
// (stream_kernel_path.cpp).
// Bytes ever handed to a tcp socket's send path (acked + still queued).
uint64_t tcp_bytes_written(int fd);
uint64_t tcp_bytes_received(int fd);
bool tcp_established(int fd);

}  // namespace sockrelay
