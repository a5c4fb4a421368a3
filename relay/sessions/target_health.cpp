#include "sessions/target_health.h"

#include <algorithm>

#include "common/clock.h"

namespace sockrelay {

bool TargetHealth::failed(uint64_t now_ns) {
  ++failures_;
  // A failure while the back-off runs (other sessions still on their way
  // to it) says nothing new.
  if (down_ && now_ns < retry_at_ns_) return false;
  bool recent = backoff_ms_ != 0 && now_ns - failed_at_ns_ <= ms_to_ns(kMaxBackoffMs);
  backoff_ms_ = recent ? std::min(backoff_ms_ * 2, kMaxBackoffMs) : kFirstBackoffMs;
  down_ = true;
  failed_at_ns_ = now_ns;
  retry_at_ns_ = now_ns + ms_to_ns(backoff_ms_);
  return true;
}

int64_t TargetHealth::retry_in_ms(uint64_t now_ns) const {
  if (!down_ || now_ns >= retry_at_ns_) return 0;
  // Rounded up: "0" must mean the retry is due, not "due within a ms".
  return static_cast<int64_t>((retry_at_ns_ - now_ns + 999'999ull) / 1'000'000ull);
}

}  // namespace sockrelay
