// A UDP listener of a kernel route receives every datagram to its address
// that no connected socket takes: bpf/listener_lookup.bpf.c, an SK_LOOKUP
// program attached to the calling thread's network namespace, one instance
// per listener, detached when destroyed. It keeps a new client's flow
// socket, bound and not yet connected, from catching other clients'
// datagrams (ARCHITECTURE.md "How a datagram travels").
#pragma once

#include <memory>

#include "common/result.h"

struct listener_lookup;  // the generated skeleton
struct bpf_link;

namespace sockrelay {

class ListenerLookup {
 public:
  // `listener`: a bound UDP socket (borrowed; it must outlive the instance).
  static Result<std::unique_ptr<ListenerLookup>> attach(int listener);
  ~ListenerLookup();
  ListenerLookup(const ListenerLookup&) = delete;
  ListenerLookup& operator=(const ListenerLookup&) = delete;

 private:
  explicit ListenerLookup(struct listener_lookup* skel) : skel_(skel) {}
  struct listener_lookup* skel_;
  struct bpf_link* link_ = nullptr;
};

}  // namespace sockrelay
