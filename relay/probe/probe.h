// Measures the matrix on the running kernel: for each cell, one payload is
// sent through a real sockmap redirect (the relay's own BPF program, loaded
// once) and looked for where the matrix says it should land. Version numbers
// lie because of backports; this does not.
//
// Runs in the caller's network namespace and needs what the relay needs
// (root, or CAP_BPF + CAP_NET_ADMIN). Every cell gets fresh sockets on
// loopback; its map entries are deleted and its sockets closed before the
// next cell starts. VSOCK cells are probed only through the loopback
// transport (CID 1): no other CID is ever connected to.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "config/model.h"
#include "matrix/matrix.h"
#include "matrix/probe_result.h"

namespace sockrelay {

class BpfRelay;

// How long a cell waits for its payload.
inline constexpr int kProbeTimeoutMs = 1000;
// The route id probe flows count under (kept apart from config routes).
inline constexpr uint32_t kProbeRouteId = 255;

// Whether VSOCK cells can be probed here: an AF_VSOCK stream socket binds to
// VMADDR_CID_LOCAL and listens (the vsock_loopback transport is loaded).
// Nothing is connected. On failure `why` says what is missing.
bool vsock_loopback_usable(std::string* why = nullptr);

// Holds the loaded BPF program across cells.
class Prober {
 public:
  static Result<Prober> create();  // loads the relay's BPF program
  Prober(Prober&&) noexcept;
  Prober& operator=(Prober&&) noexcept;
  ~Prober();

  ProbeResult probe_cell(EndpointKind source, EndpointKind target, Mode mode);
  // Every cell, in matrix_cells() order.
  std::vector<ProbeResult> probe_matrix();
  // Why the loaded verdict program does not bound the kernel backlog toward
  // a target (BpfRelay::target_bound_unavailable); empty: it does.
  const std::string& target_bound_unavailable() const;

 private:
  explicit Prober(std::unique_ptr<BpfRelay> bpf);

  std::unique_ptr<BpfRelay> bpf_;
  int vsock_usable_ = -1;  // -1 not checked yet, else 0/1
  std::string vsock_why_;
};

// One-shot helpers: load, probe, unload. If the BPF program cannot be
// loaded, every result is Error with the reason (e.g. missing privilege).
std::vector<ProbeResult> probe_matrix();
ProbeResult probe_cell(EndpointKind source, EndpointKind target, Mode mode);

}  // namespace sockrelay
