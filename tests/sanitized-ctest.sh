#!/usr/bin/env bash
# tests/sanitized-ctest.sh BUILD — ctest in a -DSOCKRELAY_SANITIZE=ON build:
# the unit tests, the fuzz corpus replay and the integration tests, whose
# `sockrelay` is that build's ASan/UBSan relay, under real traffic.
#
# Options for a daemon: a sanitizer report aborts the process (the test that
# drove it then fails: the relay is gone) and is also written to
# BUILD/sanitizer-logs/KIND.PID, which this script prints and counts as a
# failure even if no test noticed. LeakSanitizer runs when a process exits
# (a relay stopped with SIGTERM, each test binary). Extra ctest arguments
# follow BUILD (e.g. -L integration, -R Stream).
set -euo pipefail
build=$(readlink -f "${1:?usage: tests/sanitized-ctest.sh BUILD [ctest args]}")
shift
logs=$build/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:log_path=$logs/asan:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
export LSAN_OPTIONS="log_path=$logs/lsan"
rc=0
(cd "$build" && ctest --output-on-failure -j 1 "$@") || rc=1
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
