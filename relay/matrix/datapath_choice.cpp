#include "matrix/datapath_choice.h"

namespace sockrelay {

namespace {

DatapathChoice user_space(std::string reason) {
  return DatapathChoice{false, false, false, std::move(reason)};
}
DatapathChoice fall_back(std::string reason) { return DatapathChoice{false, false, true, std::move(reason)}; }
DatapathChoice refuse(std::string reason) { return DatapathChoice{false, true, false, std::move(reason)}; }
DatapathChoice kernel(std::string reason) { return DatapathChoice{true, false, false, std::move(reason)}; }

std::string kernel_cannot(const MatrixCell& cell) {
  return "the matrix says the kernel cannot carry " + cell_label(cell) + ": " + cell.reason;
}

// Why this pairing cannot have the kernel path; empty when it can.
std::string why_no_kernel(const MatrixCell& cell, const std::string& kernel_unavailable) {
  if (cell.support == Support::Unsupported) return kernel_cannot(cell);
  if (cell.relay == RelayPath::UserSpace || cell.relay == RelayPath::Refused) return cell.relay_reason;
  if (!kernel_unavailable.empty()) return "the kernel path is unavailable: " + kernel_unavailable;
  return "";
}

}  // namespace

DatapathChoice choose_datapath(Datapath requested, const MatrixCell& cell,
                               const std::string& kernel_unavailable) {
  if (requested == Datapath::Userspace) return user_space("datapath = \"userspace\" in the config");
  const std::string why_not = why_no_kernel(cell, kernel_unavailable);
  if (why_not.empty() && requested == Datapath::Auto && cell.relay == RelayPath::KernelIfAsked)
    return fall_back("user space: " + cell.relay_reason);
  if (why_not.empty())
    return kernel(cell.support == Support::Caveat ? "sockmap redirect; caveat: " + cell.reason
                                                  : "sockmap redirect");
  if (requested == Datapath::Kernel || cell.relay == RelayPath::Refused)
    return refuse("datapath = \"kernel\" but " + why_not +
                  "; use datapath = \"auto\" to fall back to user space");
  return fall_back("user space because " + why_not);
}

DatapathChoice choose_subscriber_datapath(Datapath requested, Balance balance, const MatrixCell* cell,
                                          const std::string& kernel_unavailable) {
  const bool ingress = cell == nullptr;
  if (requested == Datapath::Userspace) {
    if (ingress)
      return refuse(
          "mode = \"ingress\" puts datagrams straight into the subscriber's socket, which only the kernel "
          "path "
          "can do, but datapath = \"userspace\": use datapath = \"auto\" or \"kernel\"");
    return user_space(
        "datapath = \"userspace\" in the config: user space writes each datagram to the subscribers");
  }
  std::string why_not;
  if (balance == Balance::Broadcast)
    why_not =
        "balance = \"broadcast\": one skb can be redirected to one socket only, so user space copies each "
        "datagram to every subscriber";
  else if (!ingress && cell->support == Support::Unsupported)
    why_not = kernel_cannot(*cell);
  else if (!kernel_unavailable.empty())
    why_not = "the kernel path is unavailable: " + kernel_unavailable;
  if (why_not.empty()) {
    if (ingress) return kernel("sockmap redirect (ingress) into the socket each subscriber passes");
    return kernel(cell->support == Support::Caveat
                      ? "sockmap redirect into each subscriber's connection; caveat: " + cell->reason
                      : "sockmap redirect into each subscriber's connection");
  }
  if (ingress) return refuse("mode = \"ingress\" needs the kernel path, but " + why_not);
  if (requested == Datapath::Kernel)
    return refuse("datapath = \"kernel\" but " + why_not + "; use datapath = \"auto\"");
  DatapathChoice c = fall_back("user space because " + why_not);
  c.fell_back = balance != Balance::Broadcast;  // broadcast to subscribers is user space by design
  return c;
}

}  // namespace sockrelay
