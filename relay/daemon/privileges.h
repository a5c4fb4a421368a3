// Least privilege after set-up. Once its BPF program is loaded and its
// endpoints are bound, the relay keeps only what it still uses at run time:
//   CAP_BPF               every bpf() call (map updates per session) when
//                         kernel.unprivileged_bpf_disabled is set (Debian: 2)
//   CAP_NET_ADMIN         loading SK_SKB program instances (AF_UNIX flows get
//                         their own) is a networking program type
//   CAP_NET_BIND_SERVICE  only if an endpoint listens on a port below 1024
//   CAP_PERFMON           only while the verdict program bounds the kernel
//                         backlog toward each target (bpf/target_bound.h): it
//                         reads kernel structs, and private instances of it
//                         are loaded at run time
// Without CAP_PERFMON the verifier also walks speculative paths; relay.bpf.c
// stays loop-free so it passes anyway (bpf_loader_test checks).
// Everything else leaves the effective, permitted, inheritable and bounding
// sets, so not even a later execve() could get it back.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace sockrelay {

// Capability numbers to keep (<linux/capability.h> values).
std::vector<int> runtime_capabilities(bool binds_privileged_port, bool bounds_target_backlog);

// Drops every capability not in `keep` from all sets. A process that holds
// none of them (not root) is left as it is.
Status drop_capabilities_except(const std::vector<int>& keep);

// The effective set, e.g. "cap_net_admin,cap_bpf" ("none" when empty).
std::string effective_capabilities();

}  // namespace sockrelay
