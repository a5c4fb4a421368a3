// allow-sources for a udp listener, in the kernel: bpf/source_filter.bpf.c
// attached to the listener as a socket filter (SO_ATTACH_BPF), so a
// datagram from outside the route's networks is dropped and counted before
// it is queued. One instance per listener; detached when destroyed (a
// listener systemd passed outlives the route).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/result.h"
#include "config/model.h"

struct source_filter;  // the generated skeleton

namespace sockrelay {

class SourceFilter {
 public:
  // Loads an instance holding `networks` and attaches it to `listener`.
  static Result<std::unique_ptr<SourceFilter>> attach(int listener,
                                                      const std::vector<SourceNetwork>& networks);
  ~SourceFilter();
  SourceFilter(const SourceFilter&) = delete;
  SourceFilter& operator=(const SourceFilter&) = delete;

  uint64_t drops() const;  // datagrams dropped: source not allowed

 private:
  SourceFilter(struct source_filter* skel, int listener) : skel_(skel), listener_(listener) {}
  struct source_filter* skel_;
  int listener_;  // borrowed: the route owns it
};

}  // namespace sockrelay
