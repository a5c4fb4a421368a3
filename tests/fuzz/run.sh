#!/usr/bin/env bash
# tests/fuzz/run.sh — builds the libFuzzer targets (clang, ASan + UBSan,
# -DSOCKRELAY_FUZZ=ON) and runs each for SECONDS on its seed corpus
# (tests/fuzz/corpus/TARGET, plus config/*.toml for the config parser).
#
# Usage: tests/fuzz/run.sh [SECONDS] [--build-dir DIR] [--target NAME]... [--jobs N]
#   SECONDS          per target (default 30)
#   --build-dir DIR  the fuzz build (default build-fuzz/); configured if needed
#   --target NAME    config, address or control_request (default: all three)
# New inputs the fuzzer finds go to DIR/corpus/TARGET (not into the tree). A
# crash stops the run: its input is saved as DIR/crashes/TARGET/crash-*, the
# script exits 1 and prints how to keep it as a regression case (copy it to
# tests/fuzz/corpus/TARGET/ once fixed: ctest fuzz.replay.TARGET replays it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
seconds=30
build=$repo/build-fuzz
targets=()
while (($#)); do
  case "$1" in
    --build-dir) build=$(readlink -f "$2"); shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    [0-9]*) seconds=$1; shift ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=(config address control_request)

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S "$repo" -B "$build" -DSOCKRELAY_FUZZ=ON >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/sockrelay_fuzz_}"

# Fail on the first UBSan report too; no leak reports for a parser that
# finished (libFuzzer's own -detect_leaks stays on).
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=abort_on_error=1
failed=()
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  crashes=$build/crashes/$t
  mkdir -p "$corpus" "$crashes"
  seeds=("$here/corpus/$t")
  [ "$t" != config ] || seeds+=("$repo/config")
  echo "== fuzz $t for ${seconds}s (seeds: ${seeds[*]})"
  if ! "$build/tests/fuzz/sockrelay_fuzz_$t" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "${seeds[@]}" \
    >"$build/fuzz-$t.log" 2>&1; then
    tail -n 40 "$build/fuzz-$t.log"
    failed+=("$t")
    echo "FAIL $t: crash input in $crashes/ (full log $build/fuzz-$t.log); fix it, then copy the input to tests/fuzz/corpus/$t/"
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/fuzz-$t.log")
  cov=$(grep -o 'cov: [0-9]*' "$build/fuzz-$t.log" | tail -n 1)
  echo "ok   $t: $runs runs in ${seconds}s, $cov, 0 crashes (corpus $(find "$corpus" -type f | wc -l) files)"
done
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
