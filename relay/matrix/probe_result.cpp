#include "matrix/probe_result.h"

namespace sockrelay {

std::string_view outcome_name(ProbeResult::Outcome outcome) {
  switch (outcome) {
    case ProbeResult::Delivered:
      return "delivered";
    case ProbeResult::NotDelivered:
      return "not-delivered";
    case ProbeResult::CannotEnterMap:
      return "cannot-enter-map";
    case ProbeResult::NotTestableHere:
      return "not-testable-here";
    case ProbeResult::Error:
      return "error";
  }
  return "unknown";
}

bool probe_agrees(const MatrixCell& cell, const ProbeResult& result) {
  switch (result.outcome) {
    case ProbeResult::NotTestableHere:
      return true;
    case ProbeResult::Error:
      return false;
    case ProbeResult::Delivered:
      return cell.support != Support::Unsupported;
    case ProbeResult::NotDelivered:
    case ProbeResult::CannotEnterMap:
      return cell.support == Support::Unsupported;
  }
  return false;
}

}  // namespace sockrelay
