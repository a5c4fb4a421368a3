// A stable hash of a client's identity (FNV-1a, 32 bit), for balance =
// "hash": the same client lands on the same target across sessions and
// restarts, so it must not depend on the process (std::hash may).
#pragma once

#include <cstdint>
#include <string_view>

namespace sockrelay {

inline uint32_t stable_hash(std::string_view bytes) {
  uint32_t h = 2166136261u;
  for (unsigned char c : bytes) h = (h ^ c) * 16777619u;
  return h;
}

}  // namespace sockrelay
