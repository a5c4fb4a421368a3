// Pipes for splice(), held by a user-space stream session only while a
// direction has bytes in flight: taken when a splice in needs one, given
// back once spliced out to empty. An idle session holds its two sockets
// and nothing else; a pipe with bytes in it stays with its session (the
// bytes are that session's, in order). The pool keeps a few empty pipes so
// a busy route does not open and close one per burst.
//
// Pipe size: 256 KiB asked, what F_GETPIPE_SZ says is used. Past
// /proc/sys/fs/pipe-user-pages-soft (16384 pages: 256 pipes of 256 KiB for
// the relay's user) the kernel refuses F_SETPIPE_SZ to an unprivileged user
// (EPERM) and creates new pipes with 2 pages (8 KiB) (measured,
// ARCHITECTURE.md "Descriptors and pipe pages per session"): they still
// work, with more splice() calls per byte. Holding pipes only while bytes
// are in flight keeps the relay under that line far longer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/fd.h"
#include "common/result.h"

namespace sockrelay {

struct Pipe {
  Fd r, w;
  size_t capacity = 0;  // bytes it takes (F_GETPIPE_SZ)
  explicit operator bool() const { return w.valid(); }
};

class PipePool {
 public:
  // Bytes in flight per direction. Not more: every byte in the pipe pins
  // the page the sender's copy filled, and the sink's copy out is then
  // colder. 1 MiB cost the two ends ~0.13 CPU-s/GiB more than 256 KiB on one
  // tcp stream (perf, tests/bench/README.md); 64 KiB cost the relay 0.1 more
  // in splice() calls.
  static constexpr size_t kPipeSize = 256 * 1024;
  // Empty pipes kept for the next burst; more are closed.
  static constexpr size_t kKeepIdle = 16;

  // An empty pipe: from the pool, else a new one. The error keeps pipe2's
  // errno (EMFILE/ENFILE: the relay's descriptor limit).
  Result<Pipe> take();
  // `pipe` must be empty (everything spliced in was spliced out).
  void give_back(Pipe pipe);
  // Called every tick: the idle pipes go when none was taken since the
  // last call, so a route gone quiet holds no pipe (its descriptors back to
  // the baseline).
  void trim();

  size_t idle() const { return idle_.size(); }
  uint64_t opened() const { return opened_; }
  // Pipes the kernel would not grow to kPipeSize (pipe-user-pages-soft).
  uint64_t small() const { return small_; }

 private:
  std::vector<Pipe> idle_;
  bool taken_since_trim_ = false;
  uint64_t opened_ = 0;
  uint64_t small_ = 0;
};

}  // namespace sockrelay
