// The one clock of the relay: CLOCK_MONOTONIC in nanoseconds, the clock the
// verdict program's timestamps use too (bpf_ktime_get_coarse_ns), so user
// space can compare its own times with the kernel's.
#pragma once

#include <chrono>
#include <cstdint>

namespace sockrelay {

inline uint64_t monotonic_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

inline constexpr uint64_t ms_to_ns(uint64_t ms) { return ms * 1'000'000ull; }

}  // namespace sockrelay
