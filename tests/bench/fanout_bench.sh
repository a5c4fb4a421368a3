#!/usr/bin/env bash
# Fan-out benchmark: one UDP sender flat out, spread by sockrelay over 1, 2
# and 4 consumers (round-robin in the verdict program, broadcast in user
# space), against socat fanning to the same consumers, all in one run inside a
# private network namespace (loopback only). See tests/bench/fanout.md for
# what each number means and for the socat baseline.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: tests/bench/fanout_bench.sh [options]        (as root)

One sender blasts --size byte datagrams for --duration seconds; 1, 2 or 4
consumers (UDP ports 7601-7604, all drained by one sink process) count them.
Rows, run in this order so that each relay row sits next to its baseline:
  direct  1 target            the sender straight at the consumer (ceiling)
  relay   1 target            sockrelay, one `to` (no balance)
  socat   1 target            socat -u UDP4-RECV -> UDP4-SENDTO, 1:1
  relay   2 and 4 targets     balance = "round-robin" (verdict program picks a
                              target per datagram) and "broadcast" (user space
                              copies every datagram to every target)
  socat   2 and 4 targets     broadcast only: the sender sends to the loopback
                              broadcast address, the kernel gives each of N
                              socats a copy, each forwards to its consumer.
                              socat has no round-robin: see fanout.md

Columns (all per second of the sender's run, CPU as % of one core):
  sent/s          datagrams the sender's sendmmsg() accepted (offered load)
  delivered/s     datagrams all consumers received, summed (broadcast: every
                  copy counts)
  expected        sent x targets for broadcast, sent otherwise
  loss %          (expected - delivered) / expected
  per target min/max  delivered/s of the least and the most served consumer
                  (round-robin: how even the turns are)
  middlebox CPU % utime+stime of the relay process, or of all socats
  kernel workers CPU %  all kworker/ksoftirqd threads (sockmap egress
                  redirects are transmitted by a kworker, not the relay);
                  machine-wide: another sockmap workload's kworkers count too
  machine busy %  all CPUs, /proc/stat (200 % = both cores of a 2-core box),
                  sender and sink included
  other load %    machine busy minus this run's processes (sender, sink,
                  middlebox) and the kernel workers: someone else's work on a
                  shared machine; near 0 (+-10) when the machine is quiet
  µs/delivered    machine busy time per delivered datagram
Second table: each relay row's delivered/s over socat's for the same
deliveries (broadcast N: socat broadcast N; one target and round-robin, where
each datagram is delivered once: socat 1:1) and over direct's.
RESULT lines add: rcvbuf_errors (UDP RcvbufErrors in the namespace: drops at
a full receive queue), wake-ups/s of the middlebox, kworker vs ksoftirqd,
sender/sink CPU, irq+softirq, per-CPU busy, and the relay's status counters.

options:
  --duration S    seconds per run (default 5)
  --size N        datagram payload bytes (default 64)
  --quick         --duration 2 (a smoke run, ~30 s)
  --build-dir D   CMake build directory (default: <repo>/build)
  --no-build      do not run cmake --build
  --relay PATH    the sockrelay binary to measure (default: the build's)
  -h, --help      this text

Output: markdown tables on stdout, one "RESULT " line per row (key=value
pairs), "RATIO " lines (relay against socat and direct, same run) and a "RUN "
line; progress on stderr.
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
duration=5
size=64
build_dir=$repo/build
build=1
relay_bin=
orig_args=("$@")

while (($#)); do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --quick) duration=2; shift ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --relay) relay_bin=$(realpath "$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fanout_bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for n in "$duration" "$size"; do
  [[ $n =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "fanout_bench: not a number: $n" >&2; exit 2; }
done

relay_bin=${relay_bin:-$build_dir/relay/sockrelay}
load_bin=$build_dir/tests/bench/sockrelay_udp_load

# ---------------------------------------------------------------------------
# Outside the namespace: privileges, build, socat (apt needs the network).
if [[ -z ${SOCKRELAY_BENCH_IN_NETNS:-} ]]; then
  require_root
  ((build)) && build_bench "$repo" "$build_dir" sockrelay sockrelay_udp_load
  require_executables "$relay_bin" "$load_bin"
  apt_install socat socat || log "no socat: its rows will be skipped"
  exec_in_netns --net
fi

# ---------------------------------------------------------------------------
# Inside a private network namespace: only loopback exists (and its
# broadcast address 127.255.255.255, which the socat baseline uses).
ip link set lo up

work=$(mktemp -d /tmp/sockrelay-fanout.XXXXXX)
started=() # PIDs of the processes this script started and has not reaped

trap cleanup EXIT
trap 'exit 130' INT TERM

# "cpuN busy total" for every CPU, same split as machine_ticks (lib.sh).
cpu_ticks() {
  awk '$1 ~ /^cpu[0-9]+$/ { print $1, $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

# Each CPU's busy % between two cpu_ticks samples: "cpu0:97.1,cpu1:54.0".
cpu_busy_delta() {
  awk 'NR == FNR { b[$1] = $2; t[$1] = $3; next }
    { pct = ($3 > t[$1]) ? 100 * ($2 - b[$1]) / ($3 - t[$1]) : 0
      printf "%s%s:%.1f", (n++ ? "," : ""), $1, pct }' "$1" "$2"
}

# ---------------------------------------------------------------------------
# Addresses: the relay's source endpoint, socat's front port, the consumers.
relay_front=127.0.0.1:7500
socat_port=7700
consumer_port() { echo $((7600 + $1)); } # target 1..4

# The consumers of an N-target row: "127.0.0.1:7601,127.0.0.1:7602,...".
consumer_list() {
  local n=$1 k list=
  for ((k = 1; k <= n; k++)); do list+=${list:+,}127.0.0.1:$(consumer_port "$k"); done
  echo "$list"
}

# The config/fan-out.toml shape, with UDP consumers: source "src", targets
# c1..cN; one target has no balance key.
write_relay_config() {
  local n=$1 balance=$2 k to=
  {
    relay_config_header "$work/control.sock"
    config_endpoint src udp listen "$relay_front"
    for ((k = 1; k <= n; k++)); do
      config_endpoint "c$k" udp connect "127.0.0.1:$(consumer_port "$k")"
      to+=${to:+, }\"c$k\"
    done
    printf '\n[[routes]]\nfrom = "src"\nto = [%s]\n' "$to"
    [[ $balance == - ]] || printf 'balance = "%s"\n' "$balance"
  } >"$work/relay.toml"
}

relay_status() {
  "$relay_bin" status --json --control "$work/control.sock" 2>/dev/null
}

# The first number after "KEY": in a status line, empty if absent.
status_number() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -1 | grep -o '[0-9]*$' || true; }

middle_pids=() # the relay, or the socats
front=         # where the sender sends

# Starts the row's middlebox (none for direct) and sets $front.
start_middle() {
  local path=$1 n=$2 balance=$3 i k
  middle_pids=()
  case $path in
    direct)
      front=127.0.0.1:$(consumer_port 1)
      ;;
    relay)
      front=$relay_front
      write_relay_config "$n" "$balance"
      start_relay "$work/relay.toml" "$work/relay.log" relay_status
      middle_pids=("$relay_pid")
      # A broadcast route reports "kernel" too: the targets' replies are
      # redirected in the kernel; user space copies each datagram to them.
      expect_datapath kernel "$n target(s), balance $balance (see $work/relay.log)" relay_status
      ;;
    socat)
      # socat forwards one datagram at a time and only ever to one peer: one
      # socat per consumer. With one target the sender sends to it directly;
      # with several, to the loopback broadcast address, where the kernel
      # hands a copy to every socket bound to it (SO_REUSEADDR), i.e. to
      # every socat. UDP4-RECV is one process for all peers (no fork).
      local bind=127.0.0.1
      ((n > 1)) && bind=127.255.255.255
      front=$bind:$socat_port
      for ((k = 1; k <= n; k++)); do
        socat -u "UDP4-RECV:$socat_port,bind=$bind,reuseaddr" "UDP4-SENDTO:127.0.0.1:$(consumer_port "$k")" \
          2>>"$work/socat.log" &
        middle_pids+=("$!")
        started+=("$!")
      done
      for ((i = 0; i < 100; i++)); do
        (($(ss -Hnul "sport = :$socat_port" | wc -l) >= n)) && break
        sleep 0.05
      done
      ((i < 100)) || log "warning: not all $n socats listen on $front"
      ;;
  esac
}

stop_middle() {
  ((${#middle_pids[@]})) || return 0
  [[ $1 == relay ]] && stop_relay "${middle_pids[0]}" "$work/relay.log"
  stop_pids "${middle_pids[@]}"
  middle_pids=()
}

# One row: path $1, $2 targets, balance $3 ("-" for one target). Prints a
# RESULT line and records it in results[row.key]; rows[] keeps the order.
declare -A results=()
rows=()
run_row() {
  local path=$1 n=$2 balance=$3 row
  row=$path.$n.$balance
  rows+=("$row")
  log "$path, $n target(s), balance $balance: ${duration}s"

  local consumers sink_pid
  consumers=$(consumer_list "$n")
  "$load_bin" sink --bind "$consumers" --idle-ms 500 --max-s "$(calc "$duration + 60" 0)" >"$work/sink.out" &
  sink_pid=$!
  started+=("$sink_pid")
  wait_listening "${consumers##*,}" udp
  start_middle "$path" "$n" "$balance"

  local -A before_proc=()
  local pid tree=() sub=()
  for pid in "${middle_pids[@]}"; do
    mapfile -t sub < <(proc_tree "$pid")
    tree+=("${sub[@]}")
  done
  for pid in "${tree[@]}"; do before_proc[$pid]=$(proc_ticks "$pid"); done
  local m0 rb0 ctx0=0
  kernel_worker_ticks >"$work/kworkers.before"
  cpu_ticks >"$work/cpus.before"
  m0=$(machine_ticks)
  rb0=$(rcvbuf_errors)
  ((${#tree[@]})) && ctx0=$(voluntary_switches "${tree[@]}")

  "$load_bin" send --to "$front" --duration "$duration" --size "$size" >"$work/send.out" &
  local send_pid=$!
  started+=("$send_pid")
  wait "$send_pid" || log "warning: the sender failed"
  stop_pids "$send_pid"

  local m1 kw kw_work rb1 ctx1=0 proc=0
  m1=$(machine_ticks)
  cpu_ticks >"$work/cpus.after"
  kernel_worker_ticks >"$work/kworkers.after"
  kw=$(kernel_worker_delta "$work/kworkers.before" "$work/kworkers.after")
  kw_work=$(kernel_worker_delta "$work/kworkers.before" "$work/kworkers.after" kworker)
  rb1=$(rcvbuf_errors)
  if ((${#tree[@]})); then
    ctx1=$(voluntary_switches "${tree[@]}")
    for pid in "${tree[@]}"; do proc=$((proc + $(proc_ticks "$pid") - ${before_proc[$pid]:-0})); done
  fi
  # The sink stops 500 ms after the last datagram: what the middlebox still
  # had queued when the sender stopped is counted.
  wait "$sink_pid" || log "warning: the sink failed"
  stop_pids "$sink_pid"
  local send_out sink_out
  send_out=$(grep '^send ' "$work/send.out")
  sink_out=$(grep '^sink ' "$work/sink.out")

  local sent delivered elapsed expected per_port min max hz ncpu wall busy0 busy1 total0 total1 irq0 irq1
  local ours other
  sent=$(field sent "$send_out")
  elapsed=$(field elapsed_s "$send_out")
  delivered=$(field datagrams "$sink_out")
  per_port=$(field per_port "$sink_out")
  expected=$sent
  [[ $balance == broadcast ]] && expected=$((sent * n))
  read -r min max < <(tr ',' '\n' <<<"$per_port" |
    awk -F: 'NR == 1 { lo = hi = $2 } { if ($2 < lo) lo = $2; if ($2 > hi) hi = $2 } END { print lo + 0, hi + 0 }')
  hz=$(getconf CLK_TCK)
  ncpu=$(nproc)
  read -r busy0 total0 _ irq0 <<<"$m0"
  read -r busy1 total1 _ irq1 <<<"$m1"
  wall=$(calc "($total1 - $total0) / $ncpu" 3) # ticks of one CPU over the run
  # What the machine was busy with that this run does not account for:
  # other people's work on a shared machine (kworkers they cause are in
  # kernel_workers, not here). Near 0 when the machine is otherwise idle.
  ours=$(calc "$proc + $kw + $irq_uncharged * ($irq1 - $irq0) + $hz * ($(field cpu_s "$send_out") + $(field cpu_s "$sink_out"))" 1)
  other=$(calc "$wall > 0 ? 100 * (($busy1 - $busy0) - $ours) / $wall : 0")

  local line
  line="RESULT path=$path test=fanout targets=$n balance=$balance size=$size duration_s=$elapsed"
  line+=" sent=$sent expected=$expected delivered=$delivered per_port=$per_port"
  line+=" sent_per_s=$(calc "$sent / $elapsed" 0) delivered_per_s=$(calc "$delivered / $elapsed" 0)"
  line+=" target_min_per_s=$(calc "$min / $elapsed" 0) target_max_per_s=$(calc "$max / $elapsed" 0)"
  line+=" loss_pct=$(calc "$expected > $delivered ? 100 * ($expected - $delivered) / $expected : 0" 2)"
  line+=" rcvbuf_errors=$((rb1 - rb0))"
  line+=" middlebox_cpu_pct=$(calc "$wall > 0 ? 100 * $proc / $wall : 0")"
  line+=" middlebox_wakeups_per_s=$(calc "($ctx1 - $ctx0) / $elapsed" 0)"
  line+=" kernel_workers_cpu_pct=$(calc "$wall > 0 ? 100 * $kw / $wall : 0")"
  line+=" kworker_cpu_pct=$(calc "$wall > 0 ? 100 * $kw_work / $wall : 0")"
  line+=" ksoftirqd_cpu_pct=$(calc "$wall > 0 ? 100 * ($kw - $kw_work) / $wall : 0")"
  line+=" sender_cpu_pct=$(calc "$wall > 0 ? 100 * $hz * $(field cpu_s "$send_out") / $wall : 0")"
  line+=" sink_cpu_pct=$(calc "$wall > 0 ? 100 * $hz * $(field cpu_s "$sink_out") / $wall : 0")"
  line+=" irq_softirq_cpu_pct=$(calc "$wall > 0 ? 100 * ($irq1 - $irq0) / $wall : 0")"
  line+=" machine_busy_pct=$(calc "$wall > 0 ? 100 * ($busy1 - $busy0) / $wall : 0")"
  line+=" other_load_pct=$other"
  line+=" cpu_busy_pct=$(cpu_busy_delta "$work/cpus.before" "$work/cpus.after")"
  line+=" machine_us_per_delivered=$(calc "$delivered > 0 ? 1e6 * ($busy1 - $busy0) / $hz / $delivered : 0" 2)"
  if [[ $path == relay ]]; then
    local status
    status=$(relay_status)
    line+=" relay_datapath=$(grep -o '"datapath":"[a-z-]*"' <<<"$status" | head -1 | cut -d'"' -f4)"
    line+=" relay_kernel_packets=$(grep -o '"kernel":{"packets":[0-9]*' <<<"$status" | head -1 | grep -o '[0-9]*$')"
    line+=" relay_user_packets=$(grep -o '"user":{"packets":[0-9]*' <<<"$status" | head -1 | grep -o '[0-9]*$')"
    line+=" relay_sessions_failed=$(status_number sessions-failed "$status")"
    line+=" relay_drop_target_full=$(status_number target-full "$status")"
    line+=" relay_drop_send_error=$(status_number send-error "$status")"
    log "relay status after the run: $status"
  fi
  echo "$line"
  local kv
  for kv in ${line#RESULT }; do results[$row.${kv%%=*}]=${kv#*=}; done
  stop_middle "$path"
}

# With tick-based CPU accounting (no CONFIG_IRQ_TIME_ACCOUNTING) a tick spent
# in irq/softirq is also charged to the task it interrupted, so it is already
# in the processes' times; with it, interrupt time belongs to no process.
irq_uncharged=0
if { zcat /proc/config.gz 2>/dev/null || cat "/boot/config-$(uname -r)" 2>/dev/null; } |
  grep '^CONFIG_IRQ_TIME_ACCOUNTING=y' >/dev/null; then
  irq_uncharged=1
fi

have_socat=1
command -v socat >/dev/null || { have_socat=0; log "socat not found: skipping its rows"; }

log_machine "$repo" "$relay_bin"

run_row direct 1 -
run_row relay 1 -
((have_socat)) && run_row socat 1 -
for n in 2 4; do
  run_row relay "$n" round-robin
  run_row relay "$n" broadcast
  ((have_socat)) && run_row socat "$n" broadcast
done

# ---------------------------------------------------------------------------

echo "RUN revision=$revision relay=$relay_bin kernel=$(uname -r) cpus=$(nproc) load1_before=$load1 duration_s=$duration size=$size"
echo
echo "### Fan-out, ${size}-byte datagrams, one sender flat out for ${duration} s"
echo
echo "| path | targets | balance | sent/s | delivered/s | loss % | per target min/s | per target max/s | middlebox CPU % | kernel workers CPU % | machine busy % | other load % | machine µs/delivered |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
  IFS=. read -r path n balance <<<"$row"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$path" "$n" "$balance" \
    "${results[$row.sent_per_s]}" "${results[$row.delivered_per_s]}" "${results[$row.loss_pct]}" \
    "${results[$row.target_min_per_s]}" "${results[$row.target_max_per_s]}" \
    "$([[ $path == direct ]] && echo - || echo "${results[$row.middlebox_cpu_pct]}")" \
    "${results[$row.kernel_workers_cpu_pct]}" "${results[$row.machine_busy_pct]}" \
    "${results[$row.other_load_pct]}" "${results[$row.machine_us_per_delivered]}"
done

# Each relay row against the socat row that delivers the same datagrams:
# broadcast N against socat's broadcast N; one target and round-robin (each
# datagram delivered once) against socat 1:1.
echo
echo "### Relay against this run's socat and direct (delivered/s)"
echo
echo "| relay row | socat baseline | relay delivered/s | socat delivered/s | relay vs socat | relay vs direct 1:1 |"
echo "|---|---|---:|---:|---:|---:|"
ratios=()
for row in "${rows[@]}"; do
  IFS=. read -r path n balance <<<"$row"
  [[ $path == relay ]] || continue
  base=socat.1.-
  base_label="1 target (1:1)"
  if [[ $balance == broadcast ]]; then
    base=socat.$n.broadcast
    base_label="$n targets, kernel broadcast + $n socats"
  fi
  vs_socat=$(ratio "$row.delivered_per_s" "$base.delivered_per_s")
  vs_direct=$(ratio "$row.delivered_per_s" direct.1.-.delivered_per_s)
  printf '| %s target(s), %s | %s | %s | %s | %s× | %s× |\n' "$n" "$balance" "$base_label" \
    "${results[$row.delivered_per_s]}" "${results[$base.delivered_per_s]:--}" "$vs_socat" "$vs_direct"
  name=relay_${n}_$([[ $balance == - ]] && echo single || echo "${balance//-/_}")
  ratios+=("${name}_vs_socat=$vs_socat ${name}_vs_direct=$vs_direct")
done
echo "RATIO ${ratios[*]}"
