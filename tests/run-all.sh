#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine, as root:
#   1. installs the packages (tests/install-deps.sh)
#   2. lint: clang-format on C++, shellcheck on scripts
#   3. builds
#   4. builds the relay, unit tests and fuzz replay under ASan/UBSan and
#      runs them, and the integration tests against that relay
#      (tests/sanitized-ctest.sh); fuzzes each target 30 s; the size rule
#      (tests/lint/size_check.sh: files in relay/ at most 600 lines,
#      functions at most 80); a 45 s soak
#   5. units/test: systemd-analyze verify; the Debian package built and
#      linted (tests/package/build-deb.sh), installed into a container with
#      systemd as PID 1 (systemd-nspawn) and its units tested end to end
#   6. vm-tests/run --nested: VSOCK and other kernels inside qemu guests,
#      and a real host <-> guest VSOCK pair (a guest inside the 6.12 guest)
#   7. the unit tests and the load tests (ManyClients*, the kernel
#      round-robin spread) against the release build; every other
#      integration test ran against the sanitized relay in step 4
#      (integration needs root and the real kernel, each test in its own
#      network namespace)
# Exit status 0 only if everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
jobs=$(nproc)
failed=()
stage_times=()

tests/install-deps.sh

# Lint failures are reported at the end; the tests still run.
echo "== lint"
mapfile -t cxx < <(git ls-files '*.cpp' '*.h' | grep -v '^bpf/')
clang-format --dry-run --Werror "${cxx[@]}" || failed+=("clang-format")
mapfile -t scripts < <(git ls-files '*.sh' .ci/run vm-tests/run)
shellcheck "${scripts[@]}" || failed+=("shellcheck")

echo "== build"
t=$SECONDS
cmake -S "$top" -B "$top/build" >/dev/null
cmake --build "$top/build" -j "$jobs"
stage_times+=("build $((SECONDS - t))s")

echo "== ASan/UBSan: the relay, unit tests and fuzz replay built sanitized; the integration tests against that relay"
t=$SECONDS
cmake -S "$top" -B "$top/build-asan" -DSOCKRELAY_SANITIZE=ON >/dev/null
# Only what runs sanitized (tests/sanitized-ctest.sh): the integration test
# binary of the plain build drives the sanitized relay.
cmake --build "$top/build-asan" -j "$jobs" --target sockrelay sockrelay_unit_tests \
  sockrelay_fuzz_replay_config sockrelay_fuzz_replay_address sockrelay_fuzz_replay_control_request
# Every integration test runs once, against the sanitized relay, but the
# load tests: ManyClients.* (thousands of clients under a file limit) and
# Subscribers.KernelRoundRobin* (how the kernel spreads a flood) measure
# speed more than memory safety; under ASan they take minutes or miss their
# ratios, so they run against the release build, last.
load_tests='ManyClients|Subscribers.KernelRoundRobin'
tests/sanitized-ctest.sh "$top/build-asan" "$top/build" -E "$load_tests" ||
  failed+=("tests under ASan/UBSan")
stage_times+=("asan build+tests $((SECONDS - t))s")

echo "== fuzz: each target 30 s (tests/fuzz/run.sh)"
t=$SECONDS
tests/fuzz/run.sh 30 --build-dir "$top/build-fuzz" || failed+=("fuzz")
stage_times+=("fuzz $((SECONDS - t))s")

# Needs the build: clang-tidy reads its compile_commands.json and the
# generated skeleton headers. Reported at the end, like the other lint.
echo "== lint: size rule (relay/: files <= 600 lines, functions <= 80 lines)"
tests/lint/size_check.sh "$top/build" || failed+=("size check")

echo "== soak: 45 s of mixed traffic with killed targets, resets, a stalling target and reloads"
t=$SECONDS
tests/soak/soak.sh --duration 45 --build-dir "$top/build" || failed+=("soak")
stage_times+=("soak $((SECONDS - t))s")

echo "== systemd units: systemd-analyze verify, then end to end under systemd as PID 1 (nspawn)"
t=$SECONDS
units/test/verify.sh --relay "$top/build/relay/sockrelay" || failed+=("units verify")
echo "== Debian package: dpkg-buildpackage, lintian; then the units end to end from it"
if deb=$(tests/package/build-deb.sh --out "$top/tests/package/out" | tail -n 1); then
  units/test/e2e-nspawn.sh --deb "$deb" || failed+=("units end to end (package)")
else
  failed+=("Debian package")
fi
stage_times+=("units+package $((SECONDS - t))s")

if [ -x vm-tests/run ]; then
  echo "== vm-tests (qemu guests: VSOCK, kernel 6.12 and 6.1; nested host <-> guest VSOCK)"
  # Kept for the end: CI shows the tail of this run, and a guest failure
  # scrolls far above it.
  vm_log="$top/vm-tests/out/run-all.log"
  mkdir -p "$top/vm-tests/out"
  # The guests get the binaries built above (no third build).
  t=$SECONDS
  vm-tests/run --nested --build-dir "$top/build" 2>&1 | tee "$vm_log" || failed+=("vm-tests")
  stage_times+=("vm-tests $((SECONDS - t))s")
fi

echo "== unit tests, and the load tests, against the release build"
t=$SECONDS
(cd "$top/build" && ctest --output-on-failure -j 1 -L unit) || failed+=("unit tests")
(cd "$top/build" && ctest --output-on-failure -j 1 -L integration -R "$load_tests") || failed+=("load tests")
stage_times+=("ctest $((SECONDS - t))s")

echo "stage times: ${stage_times[*]}; total $((SECONDS / 60)) min"
if [ ${#failed[@]} -gt 0 ]; then
  if [[ " ${failed[*]} " == *" vm-tests "* ]]; then
    echo "== vm-tests failures (full output: $vm_log, consoles: vm-tests/out/logs/)"
    grep -E ' FAIL |ERROR|failed' "$vm_log" | tail -n 20 || true
  fi
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all test stages passed"
