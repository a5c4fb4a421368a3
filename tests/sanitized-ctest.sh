#!/usr/bin/env bash
# tests/sanitized-ctest.sh ASAN_BUILD PLAIN_BUILD [ctest args for the integration tests]
#
# The tests against the ASan/UBSan build (-DSOCKRELAY_SANITIZE=ON) of the
# relay:
#   - ASAN_BUILD's unit tests and fuzz corpus replay (ctest -L unit), which
#     are themselves sanitized;
#   - PLAIN_BUILD's integration tests with SOCKRELAY_TEST_RELAY pointing at
#     ASAN_BUILD's `sockrelay`: every relay they start is the sanitized one,
#     under real traffic. The test binary itself needs no sanitizer (it only
#     drives sockets), so ASAN_BUILD builds these targets, not the whole tree:
#       cmake --build ASAN_BUILD --target sockrelay sockrelay_unit_tests \
#         sockrelay_fuzz_replay_config sockrelay_fuzz_replay_address \
#         sockrelay_fuzz_replay_control_request
#
# Options for a daemon: a sanitizer report aborts the process (the test that
# drove it then fails: the relay is gone) and is also written to
# ASAN_BUILD/sanitizer-logs/KIND.PID, which this script prints and counts as
# a failure even if no test noticed. LeakSanitizer runs when a process exits
# (a relay stopped with SIGTERM, each test binary). Extra arguments go to the
# integration ctest (e.g. -R Stream, -E ManyClients).
set -euo pipefail
asan=$(readlink -f "${1:?usage: tests/sanitized-ctest.sh ASAN_BUILD PLAIN_BUILD [ctest args]}")
plain=$(readlink -f "${2:?usage: tests/sanitized-ctest.sh ASAN_BUILD PLAIN_BUILD [ctest args]}")
shift 2
relay=$asan/relay/sockrelay
if [ ! -x "$relay" ] || ! nm "$relay" 2>/dev/null | grep __asan_init >/dev/null; then
  echo "sanitized-ctest: $relay is not an ASan build (configure ASAN_BUILD with -DSOCKRELAY_SANITIZE=ON and build target sockrelay)" >&2
  exit 2
fi
logs=$asan/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:log_path=$logs/asan:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
export LSAN_OPTIONS="log_path=$logs/lsan"
rc=0
echo "== sanitized unit tests and fuzz replay ($asan)"
# man.*: the man pages' lint, not built there and nothing to sanitize.
(cd "$asan" && ctest --output-on-failure -j 1 -L unit -E '^man[.]') || rc=1
echo "== integration tests ($plain) against the sanitized relay $relay"
(cd "$plain" && SOCKRELAY_TEST_RELAY=$relay ctest --output-on-failure -j 1 -L integration "$@") || rc=1
mapfile -t reports < <(find "$logs" -type f -size +0)
if ((${#reports[@]})); then
  for r in "${reports[@]}"; do
    echo "== sanitizer report $r"
    head -n 60 "$r"
  done
  echo "sanitized-ctest: ${#reports[@]} sanitizer report(s) in $logs"
  rc=1
fi
exit "$rc"
