#!/usr/bin/env bash
# UDP benchmark: 64-byte datagrams direct, through a bare sockmap redirect
# (the kernel primitive alone), through sockrelay (in-kernel sockmap
# redirect) and through socat, all in one run, inside a private network
# namespace (loopback only). See tests/bench/README.md for what each number
# means.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: tests/bench/udp_bench.sh [options]        (as root)

Measures, for direct (sender -> sink), bare (the least a sockmap redirect
does for one flow: tests/bench/bare_redirect.bpf.c), sockrelay and socat,
in one run:
  throughput  one sender blasting datagrams for --duration seconds (sendmmsg),
              one sink counting them (recvmmsg, 64 MiB SO_RCVBUF);
  fixed rate  the same, paced at --rate datagrams/s (default: 0.6 x what
              direct delivered in this run, the issue's target);
  ping-pong   one client, a UDP echo server behind the path, --count rounds;
  CPU         the middlebox process (utime+stime), the kernel workers
              (kworker/ksoftirqd: egress redirects are sent from there) and
              the whole machine (/proc/stat), each as % of one core.

options:
  --duration S    seconds per throughput run (default 5)
  --size N        datagram payload bytes (default 64)
  --count N       ping-pong round trips (default 20000)
  --rate R|auto|0 fixed-rate pass: datagrams/s, auto (0.6 x direct), 0 = skip
  --quick         --duration 2 --count 5000 (a smoke run, ~20 s)
  --build-dir D   CMake build directory (default: <repo>/build)
  --no-build      do not run cmake --build
  --relay PATH    the sockrelay binary to measure (default: the build's), to
                  compare two builds of the relay against the same baseline
  --rps MASK      steer the bench namespace's loopback receive processing to
                  the CPUs in MASK (hex, as in rps_cpus: 1 = CPU 0, 2 = CPU 1)
                  for every path of the run. On a real NIC the receive
                  softirq (and so the verdict and the psock worker it
                  queues) runs on the IRQ's CPU, not the sender's; plain
                  loopback (the default, no RPS) runs it on the sender's CPU,
                  the pessimistic case. Sets only the namespace's own lo.
  --pin-sender C  run the sender and the ping client on CPU list C (taskset
                  -c), every path; with --rps, a CPU outside the mask keeps
                  the sending CPU apart from the receive softirq, as with a
                  remote sender. Default: not pinned (the scheduler moves it)
  --pause-relay   diagnostic: SIGSTOP the relay once its flows run in the
                  kernel, to measure the bare sockmap path without the
                  relay process's wake-ups (status counters still read)
  --perf-record F diagnostic: perf record -a -g into F during the relay's
                  full-speed run, and into F.bare during the bare path's
                  (needs perf: Debian's linux-perf)
  -h, --help      this text

Output: markdown tables on stdout, plus one machine-readable line per result
starting with "RESULT " (key=value pairs) and "RATIO " lines.
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
duration=5
size=64
count=20000
warmup=2000
rate=auto
build_dir=$repo/build
build=1
pause_relay=0
perf_file=
relay_bin=
rps_mask= # empty: plain loopback, receive softirq on the sender's CPU
pin_sender= # empty: the sender and ping client are not pinned
orig_args=("$@")

while (($#)); do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --quick) duration=2; count=5000; warmup=200; shift ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --pause-relay) pause_relay=1; shift ;;
    --relay) relay_bin=$(realpath "$2"); shift 2 ;;
    --perf-record) perf_file=$(realpath -m "$2"); shift 2 ;;
    --pin-sender) pin_sender=$2; shift 2 ;;
    --rps)
      [[ -n $2 ]] || { echo "udp_bench: --rps wants a hex CPU mask" >&2; exit 2; }
      rps_mask=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "udp_bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for n in "$duration" "$size" "$count"; do
  [[ $n =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "udp_bench: not a number: $n" >&2; exit 2; }
done
# With --pause-relay the relay is stopped during the warm-up: make it long
# enough to outlast the status polling.
((pause_relay && warmup < 20000)) && warmup=20000
[[ $rate == auto || $rate =~ ^[0-9]+$ ]] || { echo "udp_bench: --rate wants a number or auto" >&2; exit 2; }

# The CPUs of an online-CPU list such as "0-3,6", one a line.
cpu_list_members() {
  local range
  for range in ${1//,/ }; do
    if [[ $range == *-* ]]; then seq "${range%-*}" "${range#*-}"; else echo "$range"; fi
  done
}

# --rps: a non-zero hex mask naming only online CPUs. rps_cpus_list is the
# mask as a CPU list, for the report.
rps_cpus_list=
if [[ -n $rps_mask ]]; then
  rps_mask=${rps_mask#0x}
  [[ $rps_mask =~ ^[0-9a-fA-F]{1,15}$ ]] ||
    { echo "udp_bench: --rps wants a hex CPU mask such as 1, 2 or 3 (got ${rps_mask@Q})" >&2; exit 2; }
  rps_bits=$((16#$rps_mask))
  ((rps_bits)) || { echo "udp_bench: --rps 0 would turn RPS off: leave --rps out for plain loopback" >&2; exit 2; }
  rps_online=0
  for cpu in $(cpu_list_members "$(</sys/devices/system/cpu/online)"); do
    ((cpu < 60)) && rps_online=$((rps_online | 1 << cpu))
  done
  ((rps_bits & ~rps_online)) &&
    { echo "udp_bench: --rps $rps_mask names CPUs that are not online (online: $(</sys/devices/system/cpu/online))" >&2; exit 2; }
  for ((cpu = 0; cpu < 60; cpu++)); do
    ((rps_bits >> cpu & 1)) && rps_cpus_list+=${rps_cpus_list:+,}$cpu
  done
fi
rps_report=${rps_mask:-off} # for the RUN/RESULT/RATIO lines

# --pin-sender: the command prefix for the sender and the ping client.
pin=()
if [[ -n $pin_sender ]]; then
  if ! [[ $pin_sender =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || ! taskset -c "$pin_sender" true 2>/dev/null; then
    echo "udp_bench: --pin-sender wants a list of online CPUs such as 0 or 0-1 (got ${pin_sender@Q})" >&2
    exit 2
  fi
  pin=(taskset -c "$pin_sender")
fi

relay_bin=${relay_bin:-$build_dir/relay/sockrelay}
load_bin=$build_dir/tests/bench/sockrelay_udp_load
bare_bin=$build_dir/tests/bench/sockrelay_bare_redirect

# ---------------------------------------------------------------------------
# Outside the namespace: privileges, build, socat (apt needs the network).
if [[ -z ${SOCKRELAY_BENCH_IN_NETNS:-} ]]; then
  require_root
  ((build)) && build_bench "$repo" "$build_dir" sockrelay sockrelay_udp_load sockrelay_bare_redirect
  require_executables "$relay_bin" "$load_bin" "$bare_bin"
  apt_install socat socat || log "no socat: its rows will be skipped"
  SOCKRELAY_BENCH_OUTER_NETNS=$(readlink /proc/self/ns/net)
  export SOCKRELAY_BENCH_OUTER_NETNS
  # --rps writes the namespace's lo through a sysfs mounted inside it (the
  # host's /sys shows the host's devices): a private mount namespace keeps
  # that mount from the host.
  netns=(--net)
  [[ -n $rps_mask ]] && netns+=(--mount --propagation private)
  exec_in_netns "${netns[@]}"
fi

# ---------------------------------------------------------------------------
# Inside a private network namespace: only loopback exists.
ip link set lo up

# --rps: set rps_cpus of this namespace's lo, before anything is measured, so
# every path of the run gets the same receive steering. A sysfs mounted here
# shows this namespace's devices; it is unmounted once the mask is written
# (the setting stays with the device, which goes with the namespace).
set_rps() {
  local sysfs file written
  # Only in the namespaces this script made: the outer run records the
  # network namespace it started in (the host's), and that must not be this
  # one. (/proc/1/ns is not always readable, so it cannot be the reference.)
  local here
  here=$(readlink /proc/self/ns/net)
  if [[ -z ${SOCKRELAY_BENCH_OUTER_NETNS:-} || -z $here || $here == "$SOCKRELAY_BENCH_OUTER_NETNS" ]]; then
    echo "udp_bench: --rps: not in a network namespace this script made (run it without SOCKRELAY_BENCH_IN_NETNS): refusing to touch this namespace's lo" >&2
    exit 1
  fi
  sysfs=$(mktemp -d /tmp/sockrelay-bench-sysfs.XXXXXX)
  if ! mount -t sysfs sysfs "$sysfs"; then
    rmdir "$sysfs"
    echo "udp_bench: --rps: cannot mount a sysfs for the bench namespace, so cannot set its lo's rps_cpus" >&2
    exit 1
  fi
  file=$sysfs/class/net/lo/queues/rx-0/rps_cpus
  if ! { echo "$rps_mask" >"$file"; } 2>"$sysfs.err"; then
    umount "$sysfs"
    rmdir "$sysfs"
    echo "udp_bench: --rps: the kernel refused rps_cpus=$rps_mask for lo: $(<"$sysfs.err") (a kernel without CONFIG_RPS, or CPUs it may not use)" >&2
    rm -f "$sysfs.err"
    exit 1
  fi
  written=$(<"$file")
  umount "$sysfs"
  rmdir "$sysfs"
  rm -f "$sysfs.err"
  if (($((16#${written//,/})) != rps_bits)); then
    echo "udp_bench: --rps: wrote $rps_mask to lo's rps_cpus, it reads back $written" >&2
    exit 1
  fi
}
[[ -n $rps_mask ]] && set_rps

work=$(mktemp -d /tmp/sockrelay-bench.XXXXXX)
started=() # PIDs of the processes this script started and has not reaped

trap cleanup EXIT
trap 'exit 130' INT TERM

# Addresses. Sink and echo server are shared by all three paths; each path
# has its own front address.
sink_addr=127.0.0.1:7001
echo_addr=127.0.0.1:7002
declare -A front_data=([direct]=$sink_addr [bare]=127.0.0.1:7301 [relay]=127.0.0.1:7101 [socat]=127.0.0.1:7201)
declare -A front_echo=([direct]=$echo_addr [bare]=127.0.0.1:7302 [relay]=127.0.0.1:7102 [socat]=127.0.0.1:7202)
# The bare path's front sockets are connected to their client before it
# sends (as the relay's flow sockets are once set up): its sender and ping
# client bind these. Other paths use ephemeral ports.
declare -A client_from=([bare.data]=127.0.0.1:7401 [bare.echo]=127.0.0.1:7402)

paths=(direct bare relay)
if command -v socat >/dev/null; then
  paths+=(socat)
else
  log "socat not found: skipping its rows"
fi

relay_status() {
  "$relay_bin" status --json --control "$work/control.sock" 2>/dev/null
}

middle_pid=0 # the relay, or the socat that carries the throughput runs
middle_pids=()

# Starts the path's middlebox (none for direct).
start_middle() {
  local path=$1 front client upstream
  middle_pid=0
  middle_pids=()
  case $path in
    relay)
      write_pair_config "$work/relay.toml" udp "$work/control.sock" auto \
        "${front_data[relay]}" "$sink_addr" "${front_echo[relay]}" "$echo_addr"
      start_relay "$work/relay.toml" "$work/relay.log" relay_status
      middle_pid=$relay_pid
      middle_pids=("$middle_pid")
      expect_datapath kernel "udp (see $work/relay.log)" relay_status
      ;;
    bare)
      local pair
      for pair in "${front_data[bare]}=${client_from[bare.data]}=$sink_addr" \
        "${front_echo[bare]}=${client_from[bare.echo]}=$echo_addr"; do
        IFS='=' read -r front client upstream <<<"$pair"
        "$bare_bin" --listen "$front" --client "$client" --target "$upstream" \
          >"$work/bare.$front.out" 2>>"$work/bare.log" &
        middle_pids+=("$!")
        started+=("$!")
        wait_until grep -q ready "$work/bare.$front.out" ||
          log "warning: bare redirect on $front not ready: $(<"$work/bare.log")"
      done
      middle_pid=${middle_pids[0]}
      ;;
    socat)
      # The common invocation (socat's man page, most how-tos): one forked
      # child per UDP peer, connected to the upstream; -T reaps idle children.
      for front in "${front_data[socat]}=$sink_addr" "${front_echo[socat]}=$echo_addr"; do
        upstream=${front#*=}
        front=${front%=*}
        socat -T 30 "UDP4-LISTEN:${front##*:},bind=127.0.0.1,reuseaddr,fork" "UDP4:$upstream" \
          2>>"$work/socat.log" &
        middle_pids+=("$!")
        started+=("$!")
        wait_listening "$front" udp
      done
      middle_pid=${middle_pids[0]}
      ;;
  esac
}

stop_middle() {
  ((${#middle_pids[@]})) || return 0
  [[ $1 == relay ]] && stop_relay "$middle_pid" "$work/relay.log"
  stop_pids "${middle_pids[@]}"
  middle_pid=0
  middle_pids=()
}

# One throughput run through $1 at rate $2 (0 = flat out). Prints a RESULT
# line and records it in results[path.kind.key].
declare -A results=()
throughput() {
  local path=$1 offered=$2 kind sink_out send_out
  kind=$([[ $offered == 0 ]] && echo full || echo rate)
  local sink_pid
  "$load_bin" sink --bind "$sink_addr" --idle-ms 500 --max-s "$(calc "$duration + 60" 0)" >"$work/sink.out" &
  sink_pid=$!
  started+=("$sink_pid")
  wait_listening "$sink_addr" udp

  local -A before_proc=()
  local pid tree=()
  if ((middle_pid)); then
    mapfile -t tree < <(proc_tree "$middle_pid")
    for pid in "${tree[@]}"; do before_proc[$pid]=$(proc_ticks "$pid"); done
  fi
  local m0 rb0 ctx0=0
  kernel_worker_ticks >"$work/kworkers.before"
  m0=$(machine_ticks)
  rb0=$(rcvbuf_errors)
  ((middle_pid)) && ctx0=$(voluntary_switches "${tree[@]}")

  local from=()
  [[ -n ${client_from[$path.data]:-} ]] && from=(--from "${client_from[$path.data]}")
  "${pin[@]}" "$load_bin" send --to "${front_data[$path]}" --duration "$duration" --size "$size" --rate "$offered" \
    "${from[@]}" >"$work/send.out" &
  local send_pid=$!
  started+=("$send_pid")
  [[ $path == relay ]] && ((pause_relay)) && pause_relay_once_wired 0
  local perf_pid=0
  local perf_out=$perf_file
  [[ $path == bare ]] && perf_out=$perf_file.bare
  if [[ $path == @(relay|bare) && $kind == full && -n $perf_file ]]; then
    perf record -a -g -o "$perf_out" -- sleep "$(calc "$duration * 0.8")" >/dev/null 2>"$work/perf.log" &
    perf_pid=$!
    started+=("$perf_pid")
  fi
  wait "$send_pid" || log "warning: the sender failed"
  stop_pids "$send_pid"
  if ((perf_pid)); then
    wait "$perf_pid" || log "warning: perf record failed: $(<"$work/perf.log")"
    stop_pids "$perf_pid"
    log "perf profile of the $path run: $perf_out (perf report -i $perf_out)"
  fi
  resume_relay
  send_out=$(grep '^send ' "$work/send.out")

  local m1 kw rb1 ctx1=0 proc=0
  m1=$(machine_ticks)
  kernel_worker_ticks >"$work/kworkers.after"
  kw=$(kernel_worker_delta "$work/kworkers.before" "$work/kworkers.after")
  rb1=$(rcvbuf_errors)
  if ((middle_pid)); then
    mapfile -t tree < <(proc_tree "$middle_pid")
    ctx1=$(voluntary_switches "${tree[@]}")
    for pid in "${tree[@]}"; do proc=$((proc + $(proc_ticks "$pid") - ${before_proc[$pid]:-0})); done
  fi
  wait "$sink_pid" || log "warning: the sink failed"
  sink_out=$(grep '^sink ' "$work/sink.out")

  local sent delivered elapsed hz ncpu wall busy0 busy1 total0 total1
  sent=$(field sent "$send_out")
  elapsed=$(field elapsed_s "$send_out")
  delivered=$(field datagrams "$sink_out")
  hz=$(getconf CLK_TCK)
  ncpu=$(nproc)
  read -r busy0 total0 _ <<<"$m0"
  read -r busy1 total1 _ <<<"$m1"
  wall=$(calc "($total1 - $total0) / $ncpu" 3) # ticks of one CPU over the run

  local line
  line="RESULT path=$path test=throughput offered=$([[ $offered == 0 ]] && echo full || echo "$offered")"
  line+=" rps=$rps_report pin_sender=${pin_sender:-off} size=$size duration_s=$elapsed sent=$sent delivered=$delivered"
  line+=" sent_per_s=$(calc "$sent / $elapsed" 0) delivered_per_s=$(calc "$delivered / $elapsed" 0)"
  line+=" loss_pct=$(calc "$sent > 0 && $sent > $delivered ? 100 * ($sent - $delivered) / $sent : 0" 2)"
  line+=" rcvbuf_errors=$((rb1 - rb0))"
  line+=" middlebox_cpu_pct=$(calc "$wall > 0 ? 100 * $proc / $wall : 0")"
  line+=" middlebox_wakeups_per_s=$(calc "($ctx1 - $ctx0) / $elapsed" 0)"
  line+=" kernel_workers_cpu_pct=$(calc "$wall > 0 ? 100 * $kw / $wall : 0")"
  line+=" machine_busy_pct=$(calc "$wall > 0 ? 100 * ($busy1 - $busy0) / $wall : 0")"
  line+=" machine_us_per_datagram=$(calc "$delivered > 0 ? 1e6 * ($busy1 - $busy0) / $hz / $delivered : 0" 2)"
  if [[ $path == relay ]]; then
    local status
    status=$(relay_status)
    line+=" relay_kernel_packets=$(grep -o '"kernel":{"packets":[0-9]*' <<<"$status" | head -1 | grep -o '[0-9]*$')"
    line+=" relay_user_packets=$(grep -o '"user":{"packets":[0-9]*' <<<"$status" | head -1 | grep -o '[0-9]*$')"
    line+=" relay_sessions_failed=$(grep -o '"sessions-failed":[0-9]*' <<<"$status" | head -1 | grep -o '[0-9]*$')"
    log "relay status after the run: $status"
  fi
  echo "$line"
  local kv
  for kv in ${line#RESULT }; do results[$path.$kind.${kv%%=*}]=${kv#*=}; done
  stop_pids "$sink_pid"
}

# --pause-relay: once route $1 carries datagrams in the kernel, SIGSTOP the
# relay process, so the run measures the bare in-kernel path without the
# relay's own wake-ups. A diagnostic, not how the relay runs.
relay_paused=0
pause_relay_once_wired() {
  local i packets
  for ((i = 0; i < 200; i++)); do
    packets=$(relay_status | grep -o '"kernel":{"packets":[0-9]*' | sed -n "$(($1 + 1))p" | grep -o '[0-9]*$')
    ((${packets:-0} > 0)) && break
    sleep 0.01
  done
  kill -STOP "$middle_pid" && relay_paused=1
}

resume_relay() {
  ((relay_paused)) || return 0
  kill -CONT "$middle_pid"
  relay_paused=0
}

pingpong() {
  local path=$1 out line kv
  local from=()
  [[ -n ${client_from[$path.echo]:-} ]] && from=(--from "${client_from[$path.echo]}")
  "${pin[@]}" "$load_bin" ping --to "${front_echo[$path]}" --count "$count" --warmup "$warmup" --size "$size" \
    "${from[@]}" >"$work/ping.out" &
  local ping_pid=$!
  started+=("$ping_pid")
  [[ $path == relay ]] && ((pause_relay)) && pause_relay_once_wired 1
  wait "$ping_pid" || log "warning: the ping-pong client failed"
  stop_pids "$ping_pid"
  resume_relay
  out=$(grep '^ping ' "$work/ping.out")
  line="RESULT path=$path test=pingpong rps=$rps_report pin_sender=${pin_sender:-off} size=$size ${out#ping }"
  echo "$line"
  for kv in ${line#RESULT }; do results[$path.ping.${kv%%=*}]=${kv#*=}; done
}

"$load_bin" echo --bind "$echo_addr" >"$work/echo.out" &
started+=("$!")
wait_listening "$echo_addr" udp

log_machine "$repo"
if [[ -n $rps_mask ]]; then
  log "receive: RPS, lo's receive softirq steered to CPU(s) $rps_cpus_list (rps_cpus=$rps_mask)"
else
  log "receive: plain loopback (no RPS): the receive softirq runs on the sending CPU"
fi
log "sender and ping client: $([[ -n $pin_sender ]] && echo "pinned to CPU(s) $pin_sender" || echo "not pinned"); sink, echo server and middlebox: not pinned"
log "pass 1: full speed ${duration}s + ping-pong $count rounds per path: ${paths[*]}"
for path in "${paths[@]}"; do
  start_middle "$path"
  throughput "$path" 0
  pingpong "$path"
  stop_middle "$path"
done

fixed_rate=$rate
if [[ $rate == auto ]]; then
  fixed_rate=$(calc "0.6 * ${results[direct.full.delivered_per_s]}" 0)
fi
if ((fixed_rate > 0)); then
  log "pass 2: fixed rate $fixed_rate datagrams/s for ${duration}s per path"
  for path in "${paths[@]}"; do
    start_middle "$path"
    throughput "$path" "$fixed_rate"
    stop_middle "$path"
  done
fi

# ---------------------------------------------------------------------------

echo "RUN revision=$revision kernel=$(uname -r) cpus=$(nproc) load1_before=$load1 duration_s=$duration size=$size rps=$rps_report pin_sender=${pin_sender:-off}"
echo
if [[ -n $rps_mask ]]; then
  echo -n "Receive: RPS mask $rps_mask on the bench namespace's lo (softirq on CPU(s) $rps_cpus_list), every path."
else
  echo -n "Receive: plain loopback, no RPS (softirq on the sender's CPU), every path."
fi
echo " Sender and ping client: $([[ -n $pin_sender ]] && echo "pinned to CPU(s) $pin_sender" || echo "not pinned")."
echo
echo "### Throughput, ${size}-byte datagrams, one sender flat out for ${duration} s"
echo
echo "| path | sent/s | delivered/s | loss % | delivered vs direct | middlebox process CPU % | kernel workers CPU % | machine busy % | machine µs/datagram |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for path in "${paths[@]}"; do
  r=$path.full
  printf '| %s | %s | %s | %s | %s× | %s | %s | %s | %s |\n' "$path" "${results[$r.sent_per_s]}" \
    "${results[$r.delivered_per_s]}" "${results[$r.loss_pct]}" "$(ratio "$r.delivered_per_s" direct.full.delivered_per_s)" \
    "$([[ $path == direct ]] && echo - || echo "${results[$r.middlebox_cpu_pct]}")" \
    "${results[$r.kernel_workers_cpu_pct]}" "${results[$r.machine_busy_pct]}" "${results[$r.machine_us_per_datagram]}"
done
if ((fixed_rate > 0)); then
  echo
  echo "### Fixed rate: $fixed_rate datagrams/s offered for ${duration} s"
  echo
  echo "| path | sent/s | delivered/s | loss % | middlebox process CPU % | kernel workers CPU % | machine busy % |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for path in "${paths[@]}"; do
    r=$path.rate
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$path" "${results[$r.sent_per_s]}" "${results[$r.delivered_per_s]}" \
      "${results[$r.loss_pct]}" "$([[ $path == direct ]] && echo - || echo "${results[$r.middlebox_cpu_pct]}")" \
      "${results[$r.kernel_workers_cpu_pct]}" "${results[$r.machine_busy_pct]}"
  done
fi
echo
echo "### Ping-pong, one client, $count round trips of ${size} bytes"
echo
echo "| path | p50 µs | p90 µs | p99 µs | max µs | lost | p50 vs direct |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for path in "${paths[@]}"; do
  r=$path.ping
  printf '| %s | %s | %s | %s | %s | %s | %s× |\n' "$path" "${results[$r.p50_us]}" "${results[$r.p90_us]}" \
    "${results[$r.p99_us]}" "${results[$r.max_us]}" "${results[$r.lost]}" "$(ratio "$r.p50_us" direct.ping.p50_us)"
done

# The issue's targets, from this run's numbers.
d_ratio=$(ratio relay.full.delivered_per_s direct.full.delivered_per_s)
s_ratio=$(ratio relay.full.delivered_per_s socat.full.delivered_per_s)
p_ratio=$(ratio relay.ping.p50_us direct.ping.p50_us)
b_ratio=$(ratio relay.full.delivered_per_s bare.full.delivered_per_s)
bd_ratio=$(ratio bare.full.delivered_per_s direct.full.delivered_per_s)
bp_ratio=$(ratio relay.ping.p50_us bare.ping.p50_us)
bdp_ratio=$(ratio bare.ping.p50_us direct.ping.p50_us)
echo "RATIO rps=$rps_report pin_sender=${pin_sender:-off} relay_vs_direct_delivered=$d_ratio relay_vs_socat_delivered=$s_ratio relay_vs_direct_p50=$p_ratio" \
  "relay_vs_bare_delivered=$b_ratio bare_vs_direct_delivered=$bd_ratio relay_vs_bare_p50=$bp_ratio" \
  "bare_vs_direct_p50=$bdp_ratio"
echo
echo "### Targets (issue 2), relay measured against this run's direct and socat ($([[ -n $rps_mask ]] && echo "RPS mask $rps_mask" || echo "plain loopback")$([[ -n $pin_sender ]] && echo ", sender on CPU $pin_sender"))"
echo
echo "| target | measured | wanted | verdict |"
echo "|---|---:|---:|---|"
check_target "delivered/s vs direct" "$d_ratio" ">=" 0.6
check_target "delivered/s vs socat" "$s_ratio" ">=" 3
check_target "loss % at full speed" "${results[relay.full.loss_pct]}" "<=" 1
check_target "ping-pong p50 vs direct" "$p_ratio" "<=" 1.3
check_target "relay process CPU % of a core" "${results[relay.full.middlebox_cpu_pct]}" "<=" 5

echo
echo "### The relay against the bare sockmap redirect (the kernel primitive alone), same run"
echo
echo "| | relay / bare | bare / direct | relay / direct |"
echo "|---|---:|---:|---:|"
echo "| delivered/s | $b_ratio | $bd_ratio | $d_ratio |"
echo "| ping-pong p50 | $bp_ratio | $bdp_ratio | $p_ratio |"
