#include "daemon/privileges.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace sockrelay {

namespace {

struct CapSets {
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
};

bool read_caps(CapSets* sets) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  return syscall(SYS_capget, &header, sets->data) == 0;
}

bool has(const __u32 (&words)[2], int cap) { return (words[cap / 32] >> (cap % 32)) & 1u; }

const char* cap_name(int cap) {
  switch (cap) {
    case CAP_NET_BIND_SERVICE:
      return "cap_net_bind_service";
    case CAP_NET_ADMIN:
      return "cap_net_admin";
    case CAP_NET_RAW:
      return "cap_net_raw";
    case CAP_SYS_ADMIN:
      return "cap_sys_admin";
    case CAP_BPF:
      return "cap_bpf";
    case CAP_PERFMON:
      return "cap_perfmon";
    case CAP_DAC_OVERRIDE:
      return "cap_dac_override";
    case CAP_SYS_RESOURCE:
      return "cap_sys_resource";
    default:
      return nullptr;
  }
}

}  // namespace

std::vector<int> runtime_capabilities(bool binds_privileged_port, bool bounds_target_backlog) {
  std::vector<int> keep = {CAP_BPF, CAP_NET_ADMIN};
  if (binds_privileged_port) keep.push_back(CAP_NET_BIND_SERVICE);
  if (bounds_target_backlog) keep.push_back(CAP_PERFMON);
  return keep;
}

Status drop_capabilities_except(const std::vector<int>& keep) {
  int last = CAP_LAST_CAP;
  // The running kernel may know more capabilities than our headers.
  while (prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0) ++last;
  for (int cap = 0; cap <= last; ++cap) {
    if (std::find(keep.begin(), keep.end(), cap) != keep.end()) continue;
    // Needs CAP_SETPCAP, which root has until this loop drops it last.
    if (cap == CAP_SETPCAP) continue;
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
      // Without CAP_SETPCAP (a non-root service given ambient capabilities)
      // the bounding set is whatever systemd's CapabilityBoundingSet= made it.
      if (errno == EPERM) break;
      if (errno != EINVAL) return errno_error("prctl(PR_CAPBSET_DROP, " + std::to_string(cap) + ")");
    }
  }
  if (prctl(PR_CAPBSET_READ, CAP_SETPCAP, 0, 0, 0) == 1) prctl(PR_CAPBSET_DROP, CAP_SETPCAP, 0, 0, 0);
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);

  CapSets sets;
  if (!read_caps(&sets)) return errno_error("capget");
  __user_cap_data_struct wanted[_LINUX_CAPABILITY_U32S_3]{};
  for (int cap : keep) {
    __u32 bit = 1u << (cap % 32);
    int word = cap / 32;
    if (sets.data[word].permitted & bit) {  // keep only what we had
      wanted[word].permitted |= bit;
      wanted[word].effective |= bit;
    }
  }
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  if (syscall(SYS_capset, &header, wanted) != 0) return errno_error("capset");
  return {};
}

std::string effective_capabilities() {
  CapSets sets;
  if (!read_caps(&sets)) return "unknown";
  __u32 words[2] = {sets.data[0].effective, sets.data[1].effective};
  std::string out;
  for (int cap = 0; cap < 64; ++cap) {
    if (!has(words, cap)) continue;
    if (!out.empty()) out += ",";
    const char* name = cap_name(cap);
    out += name ? name : "cap_" + std::to_string(cap);
  }
  return out.empty() ? "none" : out;
}

}  // namespace sockrelay
