// Whether one target of a route is in the rotation, and when a target that
// failed is tried again. Every route kind uses this one rule:
//   - a failure takes the target out of the rotation for its back-off;
//   - the back-off starts at 500 ms and doubles with each failure, up to
//     30 s; a target whose last failure is older than 30 s starts afresh;
//   - once the back-off has passed the route may try it again
//     (retry_due()); the route calls recovered() when a try succeeds, and
//     failed() again when it does not (which doubles the back-off).
#pragma once

#include <cstdint>

namespace sockrelay {

class TargetHealth {
 public:
  static constexpr uint64_t kFirstBackoffMs = 500;
  static constexpr uint64_t kMaxBackoffMs = 30'000;

  // Counts the failure; true when it took the target out of the rotation
  // (it was up, or its retry was due and failed), so the caller logs it
  // once and moves its traffic elsewhere.
  bool failed(uint64_t now_ns);
  void recovered() { down_ = false; }

  bool up() const { return !down_; }
  // Down, and its back-off has passed: the route may try it.
  bool retry_due(uint64_t now_ns) const { return down_ && now_ns >= retry_at_ns_; }
  // Up, or due for a try: a new session may be sent to it.
  bool usable(uint64_t now_ns) const { return !down_ || retry_due(now_ns); }
  // The back-off the last failure set (for the log line).
  uint64_t backoff_ms() const { return backoff_ms_; }
  // Until the next try, 0 when up or due.
  int64_t retry_in_ms(uint64_t now_ns) const;
  uint64_t failures() const { return failures_; }

 private:
  bool down_ = false;
  uint64_t retry_at_ns_ = 0;
  uint64_t failed_at_ns_ = 0;
  uint64_t backoff_ms_ = 0;  // 0: never failed
  uint64_t failures_ = 0;
};

}  // namespace sockrelay
