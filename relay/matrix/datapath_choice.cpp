#include "matrix/datapath_choice.h"

namespace sockrelay {

DatapathChoice choose_datapath(Datapath requested, const MatrixCell& cell,
                               const std::string& kernel_unavailable) {
  DatapathChoice c;
  if (requested == Datapath::Userspace) {
    c.reason = "datapath = \"userspace\" in the config";
    return c;
  }
  std::string why_not;
  if (cell.support == Support::Unsupported)
    why_not = "the matrix says the kernel cannot carry " + std::string(kind_name(cell.source)) + " -> " +
              std::string(kind_name(cell.target)) + " (" + std::string(mode_name(cell.mode)) +
              "): " + cell.reason;
  else if (!kernel_unavailable.empty())
    why_not = "the kernel path is unavailable: " + kernel_unavailable;
  if (why_not.empty() && requested == Datapath::Auto && !kind_is_datagram(cell.source)) {
    // Measured (tests/integration/stream_relay_test.cpp): the stream kernel
    // path still loses bytes around half-close and has no backpressure from
    // a TCP source. Until that is fixed it runs only when asked for by name.
    c.fell_back = true;
    c.reason =
        "user space: the stream kernel path is experimental (half-close and backpressure not yet "
        "reliable); set datapath = \"kernel\" to use it anyway";
    return c;
  }
  if (why_not.empty()) {
    c.kernel = true;
    c.reason =
        cell.support == Support::Caveat ? "sockmap redirect; caveat: " + cell.reason : "sockmap redirect";
    return c;
  }
  if (requested == Datapath::Kernel) {
    c.refused = true;
    c.reason =
        "datapath = \"kernel\" but " + why_not + "; use datapath = \"auto\" to fall back to user space";
    return c;
  }
  c.fell_back = true;
  c.reason = "user space because " + why_not;
  return c;
}

}  // namespace sockrelay
