#!/usr/bin/env bash
# A/B of two relay builds: udp_bench.sh and stream_bench.sh run for each,
# interleaved (round 1: A then B, round 2: A then B, ...), so that a slow
# minute of a shared machine falls on both builds rather than on one; then
# every figure's median per build and the after/before ratio.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: tests/bench/ab.sh --before DIR --after DIR [options]        (as root)

DIR: a built CMake build directory (relay/sockrelay in it). Both builds'
relays are measured against the same load tools, sinks and baselines
(direct, bare, socat, proxyd) of the --tools build (default: --after's):
each bench runs with --no-build --build-dir TOOLS --relay DIR/relay/sockrelay.
Build both first, e.g. for the targets
  sockrelay sockrelay_udp_load sockrelay_bare_redirect sockrelay_stream_load

Each round runs udp_bench.sh for A then B, then stream_bench.sh (--rounds 1)
for A then B. The table gives, for every figure of the relay's rows, the
median over the rounds per build, the after/before ratio, the range of the
rounds per build, and a verdict: "same" when after's median lies within
before's range (the run's own spread), "better" or "WORSE" when beyond it
(higher is better for rates, GiB/s and ratios to direct/proxyd rates; lower
for CPU, latency and loss). Same-run ratios (relay vs direct) are in it too:
they cancel most of a shared machine's noise.

options:
  --before DIR    the "A" build (e.g. the base of a change)
  --after DIR     the "B" build (e.g. the change)
  --tools DIR     the build whose load tools the benches use (default: --after)
  --rounds N      rounds (default 3; medians want 3 or more)
  --quick         the benches' --quick (2 s runs, fewer round trips): a smoke
                  test of the runner, not a measurement
  --only B        udp or stream: run only that bench
  --udp-args S    more words for udp_bench.sh (e.g. "--rps 2 --pin-sender 0")
  --stream-args S more words for stream_bench.sh
  --out DIR       keep every run's output there (default: a new /tmp dir)
  --report DIR    run nothing: the table of an earlier run's outputs in DIR
                  (its --out), e.g. after an interrupted run
  --no-lock       do not take /tmp/vm-tests.lock (the caller holds it)
  -h, --help      this text

Takes /tmp/vm-tests.lock (flock) for the whole run, as the benches and
vm-tests/run do, so that no other measurement runs in between. Time on a
2-core machine: a full round (udp ~70 s, stream ~130 s, per build) ~7
minutes, so the default 3 rounds ~20 minutes; a --quick round ~4 minutes.

Output: progress on stderr; on stdout a markdown table and one line per
figure: "AB bench=... row=... figure=... before=... after=... ratio=...
verdict=...".
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
before='' after='' tools='' out=''
rounds=3
quick=()
benches=(udp stream)
udp_args=() stream_args=()
lock=1
report_only=0

while (($#)); do
  case $1 in
    --before) before=$(realpath "$2"); shift 2 ;;
    --after) after=$(realpath "$2"); shift 2 ;;
    --tools) tools=$(realpath "$2"); shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    --only)
      [[ $2 == udp || $2 == stream ]] || { log "--only wants udp or stream"; exit 2; }
      benches=("$2"); shift 2 ;;
    --udp-args) read -ra udp_args <<<"$2"; shift 2 ;;
    --stream-args) read -ra stream_args <<<"$2"; shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --no-lock) lock=0; shift ;;
    --report) out=$(realpath "$2"); report_only=1; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) log "unknown option $1 (see --help)"; exit 2 ;;
  esac
done

# What each build is: its source tree's revision, where CMake knows it.
describe_build() {
  local src
  src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$1/CMakeCache.txt" 2>/dev/null || true)
  echo "$1 (source ${src:-?}, $(git -C "${src:-/nonexistent}" describe --always --dirty 2>/dev/null ||
    echo "no git revision"), relay built $(date -u -r "$1/relay/sockrelay" +%Y-%m-%dT%H:%MZ))"
}

if ((report_only)); then
  [[ -f $out/builds ]] || { log "--report: $out holds no ab.sh run (no $out/builds)"; exit 2; }
else
  [[ -n $before && -n $after ]] || { log "--before and --after are both needed (see --help)"; exit 2; }
  [[ $rounds =~ ^[1-9][0-9]*$ ]] || { log "--rounds wants a number >= 1"; exit 2; }
  tools=${tools:-$after}
  require_root
  require_executables "$before/relay/sockrelay" "$after/relay/sockrelay"
  out=${out:-$(mktemp -d /tmp/sockrelay-ab.XXXXXX)}
  mkdir -p "$out"
fi

# run_bench BENCH LABEL DIR ROUND: one run of BENCH with DIR's relay; its
# output goes to $out/BENCH.LABEL.ROUND.{out,err}. The lock's descriptor is
# not passed on: a process left behind must not hold the lock.
run_bench() {
  local bench=$1 label=$2 dir=$3 round=$4 args=() base
  base=$out/$bench.$label.$round
  case $bench in
    udp) args=("${quick[@]}" "${udp_args[@]}") ;;
    stream) args=("${quick[@]}" --rounds 1 "${stream_args[@]}") ;;
  esac
  log "round $round/$rounds: ${bench}_bench.sh, $label ($dir/relay/sockrelay)"
  local start=$SECONDS
  if ! "$repo/tests/bench/${bench}_bench.sh" --no-build --build-dir "$tools" --relay "$dir/relay/sockrelay" \
    "${args[@]}" >"$base.out" 2>"$base.err" {lock_fd}>&-; then
    log "warning: ${bench}_bench.sh failed for $label in round $round (see $base.err)"
  fi
  log "  $((SECONDS - start)) s"
}

# Every round, under the lock; what was run goes to $out/builds for the
# report's header.
run_rounds() {
  if ((lock)); then
    exec {lock_fd}>>/tmp/vm-tests.lock
    if ! flock -n "$lock_fd"; then
      log "waiting for /tmp/vm-tests.lock (another bench or vm-tests run holds it)"
      flock "$lock_fd"
    fi
  else
    exec {lock_fd}</dev/null # run_bench closes it either way
  fi
  local a b start=$SECONDS elapsed
  a=$(describe_build "$before")
  b=$(describe_build "$after")
  log "A = before: $a"
  log "B = after:  $b"
  log "load tools and baselines: $tools; outputs: $out"
  log_machine "$repo" "the bench scripts' tree"
  for ((round = 1; round <= rounds; round++)); do
    for bench in "${benches[@]}"; do
      run_bench "$bench" before "$before" "$round"
      run_bench "$bench" after "$after" "$round"
    done
  done
  exec {lock_fd}>&- # the lock, if taken: the report needs none
  elapsed=$((SECONDS - start))
  log "all runs: $((elapsed / 60)) min $((elapsed % 60)) s"
  {
    echo "A (before): $a  "
    echo "B (after): $b  "
    echo "$rounds round(s)${quick:+ of --quick (a smoke test, not a measurement)}, interleaved A B; load $load1" \
      "before the run, $(nproc) CPUs, kernel $(uname -r); all runs took $((elapsed / 60)) min $((elapsed % 60)) s"
  } >"$out/builds"
}

((report_only)) || run_rounds

# ---------------------------------------------------------------------------
# The figures: the relay's rows of every RESULT line and the RATIO lines,
# one "bench label round row figure value" line each.
figures() {
  local file bench label round
  for file in "$out"/*.*.*.out; do
    [[ -e $file ]] || continue
    IFS=. read -r bench label round _ <<<"${file##*/}"
    awk -v bench="$bench" -v label="$label" -v round="$round" '
      function kv(   i, pair) {
        delete f
        for (i = 2; i <= NF; i++) { split($i, pair, "="); f[pair[1]] = pair[2] }
      }
      function emit(row, names,   n, k, list) {
        n = split(names, list, " ")
        for (k = 1; k <= n; k++)
          if (list[k] in f && f[list[k]] != "" && f[list[k]] != "-")
            print bench, label, round, row, list[k], f[list[k]]
      }
      $1 == "RESULT" && bench == "udp" {
        kv()
        if (f["path"] != "relay") next
        if (f["test"] == "pingpong") emit("relay.pingpong", "p50_us p90_us p99_us")
        else if (f["offered"] == "full")
          emit("relay.full", "delivered_per_s loss_pct middlebox_cpu_pct kernel_workers_cpu_pct machine_us_per_datagram")
        else emit("relay.fixed-rate", "delivered_per_s loss_pct middlebox_cpu_pct kernel_workers_cpu_pct machine_busy_pct")
      }
      $1 == "RATIO" && bench == "udp" {
        kv()
        emit("ratio", "relay_vs_direct_delivered relay_vs_direct_p50 relay_vs_bare_delivered relay_vs_socat_delivered")
      }
      $1 == "RESULT" && bench == "stream" {
        kv()
        if (f["path"] !~ /^relay-/) next
        row = f["transport"] "." f["path"] "." f["test"]
        if (f["test"] == "pingpong") emit(row, "p50_us p90_us p99_us")
        else emit(row, "gib_per_s machine_cpu_s_per_gib own_cpu_s_per_gib middlebox_cpu_s_per_gib kernel_workers_cpu_s_per_gib lost_bytes")
      }
      $1 == "RATIO" && bench == "stream" {
        kv()
        emit(f["transport"] "." f["path"] ".ratio", "throughput_vs_direct p50_vs_direct throughput_vs_proxyd cpu_per_gib_vs_proxyd")
      }' "$file"
  done
}

# Per bench, row and figure: median and range of each build, ratio, verdict.
figures | sort -k1,1 -k4,4 -k5,5 -k2,2 | awk -v table="$out/table.md" '
  function higher_is_better(name) {
    if (name ~ /cpu|busy|p50|p90|p99|loss|lost|_us$|us_per/) return 0
    return 1
  }
  function median(list, n,   sorted, i, j, t) {
    for (i = 1; i <= n; i++) sorted[i] = list[i] + 0
    for (i = 2; i <= n; i++) { t = sorted[i]; for (j = i - 1; j >= 1 && sorted[j] > t; j--) sorted[j + 1] = sorted[j]; sorted[j + 1] = t }
    lo[0] = sorted[1]; hi[0] = sorted[n]
    return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
  }
  function flush(   mb, ma, blo, bhi, alo, ahi, ratio, verdict, hb) {
    if (key == "") return
    if (nb == 0 || na == 0) { key = ""; nb = na = 0; return }
    mb = median(vb, nb); blo = lo[0]; bhi = hi[0]
    ma = median(va, na); alo = lo[0]; ahi = hi[0]
    ratio = mb != 0 ? sprintf("%.3f", ma / mb) : "-"
    hb = higher_is_better(fig)
    if (nb < 2) verdict = "-" # one round has no spread to judge by
    else if (ma >= blo && ma <= bhi) verdict = "same"
    else if ((ma > bhi) == hb) verdict = "better"
    else verdict = "WORSE"
    printf "| %s | %s | %s | %g | %g | %s | %g–%g | %g–%g | %s |\n", bench, row, fig, mb, ma, ratio, blo, bhi, alo, ahi, verdict >table
    printf "AB bench=%s row=%s figure=%s before=%g after=%g ratio=%s before_range=%g-%g after_range=%g-%g rounds=%d/%d verdict=%s\n", bench, row, fig, mb, ma, ratio, blo, bhi, alo, ahi, nb, na, verdict
    key = ""; nb = na = 0
  }
  {
    k = $1 " " $4 " " $5
    if (k != key) { flush(); key = k; bench = $1; row = $4; fig = $5 }
    if ($2 == "before") vb[++nb] = $6; else va[++na] = $6
  }
  END { flush() }' >"$out/ab.txt"

echo "### A/B: each figure's median over the rounds, per build"
echo
cat "$out/builds"
echo
echo "| bench | row | figure | before | after | after/before | before's range | after's range | verdict |"
echo "|---|---|---|---:|---:|---:|---:|---:|---|"
cat "$out/table.md"
echo
cat "$out/ab.txt"
worse=$(grep -c 'verdict=WORSE' "$out/ab.txt" || true)
log "$(wc -l <"$out/ab.txt") figures, $worse beyond before's range for the worse; every run's output: $out"
