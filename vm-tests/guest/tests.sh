# The guest tests, sourced by the guest's /init. One line per test:
#   vmtest KERNELS NAME COMMAND [ARGS...]
# KERNELS: comma-separated kernel labels from vm-tests/run (6.12, 6.1) or
# "all". COMMAND is a function in checks.sh (or any program in the guest);
# exit 0 = PASS, 77 = SKIP, else FAIL; its last output line is the detail.
# Tests run in this order, as root, in the guest's initial network namespace;
# the integration tests make their own.
# shellcheck shell=sh

# kernels     name              command and arguments
vmtest 6.12   matrix-probe      matrix_probe vsock-sockmap
vmtest 6.1    matrix-probe      matrix_probe no-vsock-sockmap
vmtest 6.12   gtest-probe       gtest 'Probe*'
vmtest 6.12   gtest-datagram    --timeout 150 gtest 'Datagram*:*AllFour*'
vmtest 6.1    gtest-datagram    --timeout 150 gtest 'BpfRelay*:Datagram*:*AllFour*'

# The target-buffer bound (bpf/target_bound.h): needs 6.2+ kfuncs, so the
# 6.1 guest must skip it with the reason. (No route redirects into a VSOCK
# socket in the kernel in this version: VSOCK targets are reached through
# the user-space path, bounded by its send queues.)
vmtest 6.12   target-bound      --timeout 180 gtest '*TargetBound*'
vmtest 6.1    target-bound      --timeout 180 gtest_skips '*TargetBound*'

# The relay with VSOCK endpoints (user-space path on both kernels: the
# stream kernel path carries tcp only), over vsock loopback, CID 1.
vmtest all    relay-vsock       --timeout 240 gtest 'Vsock*'

# The VSOCK benchmark (numbers in the results file; PASS = no byte lost).
vmtest 6.12   bench-vsock       --timeout 150 bench_vsock

# A real host <-> guest VSOCK pair: this guest boots a second-level guest
# with vhost-vsock (vm-tests/run --nested only: TCG inside TCG takes
# minutes; see README.md, "Nested").
if [ -e /nested/l2.cpio ]; then
  vmtest 6.12 nested-vsock      --timeout 1200 nested_vsock
fi
