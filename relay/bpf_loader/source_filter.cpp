#include "bpf_loader/source_filter.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "relay_shared.h"
#include "source_filter.skel.h"

namespace sockrelay {

namespace {

// The trie key of a network: IPv4 as v4-mapped IPv6 (source_filter.bpf.c).
relay_source_network trie_key(const SourceNetwork& n) {
  relay_source_network key{};
  if (n.family == AF_INET) {
    key.prefixlen = static_cast<uint32_t>(96 + n.prefix);
    key.address[10] = 0xff;
    key.address[11] = 0xff;
    std::memcpy(&key.address[12], n.address, 4);
  } else {
    key.prefixlen = static_cast<uint32_t>(n.prefix);
    std::memcpy(key.address, n.address, 16);
  }
  return key;
}

}  // namespace

Result<std::unique_ptr<SourceFilter>> SourceFilter::attach(int listener,
                                                           const std::vector<SourceNetwork>& networks) {
  if (networks.size() > RELAY_MAX_SOURCE_NETWORKS)
    return plain_error("allow-sources: at most " + std::to_string(RELAY_MAX_SOURCE_NETWORKS) + " networks");
  struct source_filter* skel = source_filter__open_and_load();
  if (!skel) return Error{errno, "load BPF socket filter source_filter (allow-sources)"};
  std::unique_ptr<SourceFilter> filter(new SourceFilter(skel, listener));
  uint8_t present = 1;
  for (const auto& n : networks) {
    relay_source_network key = trie_key(n);
    if (bpf_map_update_elem(bpf_map__fd(skel->maps.allowed), &key, &present, BPF_ANY) != 0)
      return Error{errno, "allow-sources: add " + n.text + " to the filter"};
  }
  int prog = bpf_program__fd(skel->progs.source_filter);
  if (setsockopt(listener, SOL_SOCKET, SO_ATTACH_BPF, &prog, sizeof(prog)) != 0)
    return Error{errno, "allow-sources: attach the socket filter (SO_ATTACH_BPF)"};
  return filter;
}

SourceFilter::~SourceFilter() {
  int unused = 0;
  setsockopt(listener_, SOL_SOCKET, SO_DETACH_BPF, &unused, sizeof(unused));
  source_filter__destroy(skel_);
}

uint64_t SourceFilter::drops() const {
  std::vector<uint64_t> per_cpu(static_cast<size_t>(libbpf_num_possible_cpus()));
  uint32_t zero = 0;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.filter_drops), &zero, per_cpu.data()) != 0) return 0;
  uint64_t sum = 0;
  for (uint64_t v : per_cpu) sum += v;
  return sum;
}

}  // namespace sockrelay
