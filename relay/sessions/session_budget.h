// max-sessions across every route: one budget the whole relay shares.
#pragma once

#include <cstdint>

namespace sockrelay {

class SessionBudget {
 public:
  explicit SessionBudget(uint32_t max) : max_(max) {}
  bool try_take() {
    if (used_ >= max_) return false;
    ++used_;
    return true;
  }
  void give_back() {
    if (used_ > 0) --used_;
  }
  // A lower max refuses new sessions until enough old ones end.
  void set_max(uint32_t max) { max_ = max; }
  uint32_t used() const { return used_; }
  uint32_t max() const { return max_; }

 private:
  uint32_t max_;
  uint32_t used_ = 0;
};

}  // namespace sockrelay
