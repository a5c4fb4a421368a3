#include "bpf_loader/listener_lookup.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/fd.h"
#include "listener_lookup.skel.h"

namespace sockrelay {

namespace {

// The listener's address into the program's constants (network byte
// order, as the program's context has it; the port in host order).
Status set_address(struct listener_lookup* skel, int listener) {
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  if (getsockname(listener, reinterpret_cast<sockaddr*>(&local), &len) != 0)
    return errno_error("listener lookup: getsockname");
  auto* ro = skel->rodata;
  ro->listen_family = local.ss_family;
  if (local.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&local);
    ro->listen_port = ntohs(in->sin_port);
    std::memcpy(const_cast<uint32_t*>(&ro->listen_addr[0]), &in->sin_addr, 4);
    ro->listen_wildcard = in->sin_addr.s_addr == htonl(INADDR_ANY);
  } else if (local.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&local);
    ro->listen_port = ntohs(in6->sin6_port);
    std::memcpy(const_cast<uint32_t*>(&ro->listen_addr[0]), &in6->sin6_addr, 16);
    ro->listen_wildcard = IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
  } else {
    return plain_error("listener lookup: not a UDP listener");
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<ListenerLookup>> ListenerLookup::attach(int listener) {
  struct listener_lookup* skel = listener_lookup__open();
  if (!skel) return Error{errno, "open BPF object listener_lookup.bpf.o"};
  std::unique_ptr<ListenerLookup> lookup(new ListenerLookup(skel));
  if (auto st = set_address(skel, listener); !st) return st.error();
  if (int ret = listener_lookup__load(skel); ret != 0)
    return Error{-ret, "load BPF program relay_listener_lookup (SK_LOOKUP)"};
  uint32_t zero = 0;
  uint64_t value = static_cast<uint64_t>(listener);
  if (bpf_map_update_elem(bpf_map__fd(skel->maps.listener), &zero, &value, BPF_ANY) != 0)
    return Error{errno, "insert the listener into its SK_LOOKUP map"};
  // The thread's own namespace: the one its sockets were made in.
  Fd netns(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!netns) return errno_error("open /proc/thread-self/ns/net");
  lookup->link_ = bpf_program__attach_netns(skel->progs.relay_listener_lookup, netns.get());
  if (!lookup->link_) return Error{errno, "attach relay_listener_lookup to the network namespace"};
  return lookup;
}

ListenerLookup::~ListenerLookup() {
  if (link_) bpf_link__destroy(link_);
  listener_lookup__destroy(skel_);
}

}  // namespace sockrelay
