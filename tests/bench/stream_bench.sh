#!/usr/bin/env bash
# Stream benchmark: tcp -> tcp and unix-stream -> unix-stream, direct, through
# sockrelay (kernel sockmap path and user-space splice path), socat and
# systemd-socket-proxyd, all in one run, inside a private network namespace
# (loopback only). See tests/bench/README.md for what each number means.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: tests/bench/stream_bench.sh [options]        (as root)

Measures, for tcp and for unix-stream, through each path
  direct        client -> server, nothing in between
  relay-kernel  sockrelay, datapath "kernel" = sockmap verdict program (tcp only)
  relay-user    sockrelay, datapath "auto" = user space: splice() through a
                pipe (what "auto" picks for every stream route)
  socat         socat ...-LISTEN:...,fork ...-CONNECT/TCP:... (one child per
                connection)
  proxyd        systemd-socket-activate -l FRONT systemd-socket-proxyd UPSTREAM
in one run:
  throughput    one connection, the source writing 64 KiB buffers flat out for
                --duration seconds, the sink reading them; GiB/s = bytes the
                sink received / time from its first byte to its last
  CPU per GiB   busy CPU-seconds per GiB moved during that run: of the whole
                machine (/proc/stat, all CPUs: user+nice+system+irq+softirq,
                so the kernel's workers, softirqs and both ends count; steal,
                time the hypervisor gave to other guests, is shown apart), of
                the middlebox process (utime+stime, with reaped children), and
                of the kernel workers (kworker/ksoftirqd threads), and "own":
                source + sink + middlebox + kernel workers, what the machine
                figure would be without other users' processes
  ping-pong     round trips of a 64-byte message on one connection: p50, p90,
                p99, max in µs (tcp: sockperf ping-pong --full-rtt, 3 s of
                which 0.4 s warm-up; unix-stream: sockrelay_stream_load
                pingpong, --count round trips after 1000 warm-up ones)
Every middlebox runs for the whole benchmark; --rounds times, each path is
measured in turn (throughput, then ping-pong), and each table row shows the
path's median round (by GiB/s, by p50) with the range of all rounds, so that
a slow minute on a shared machine moves one round, not one path. The targets
of the issue are checked against this run's proxyd and direct numbers: relay
GiB/s >= proxyd's, relay machine CPU-s/GiB <= proxyd's, relay p50 <= 1.3 x
direct's, and every byte delivered (a stall: the sink saw neither a byte nor
an end of stream for 3 s). With an even --rounds the lower middle round is
shown.

options:
  --duration S    seconds per throughput run (default 5)
  --rounds N      measure every path N times, interleaved (default 3)
  --count N       ping-pong round trips of the unix-stream client (default 20000)
  --quick         --duration 2 --rounds 1 --count 5000, sockperf 2 s (a smoke
                  run, ~45 s; the default run takes ~4 minutes)
  --build-dir D   CMake build directory (default: <repo>/build)
  --no-build      do not run cmake --build
  --relay PATH    the sockrelay binary to measure (default: the build's; it is
                  copied first, so a rebuild during the run changes nothing)
  --plot FILE     also draw the three measures as bar charts into FILE (PNG,
                  gnuplot; installs gnuplot-nox with apt-get if missing)
  -h, --help      this text

Installs what it uses with apt-get when missing: socat, systemd (for
systemd-socket-proxyd and systemd-socket-activate), sockperf (without it, tcp
ping-pong falls back to sockrelay_stream_load), gnuplot-nox (--plot only).

Output: markdown tables on stdout, plus one machine-readable line per result
starting with "RESULT " (key=value pairs) and "RATIO " lines.
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
duration=5
rounds=3
sockperf_s=3
count=20000
warmup=1000
msg_size=64
write_size=65536
build_dir=$repo/build
build=1
relay_bin=
plot_file=
orig_args=("$@")

while (($#)); do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --quick) duration=2; rounds=1; sockperf_s=2; count=5000; warmup=200; shift ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --relay) relay_bin=$(realpath "$2"); shift 2 ;;
    --plot) plot_file=$(realpath -m "$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "stream_bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

[[ $duration =~ ^[0-9]+$ && $duration -ge 2 ]] || { echo "stream_bench: --duration wants whole seconds >= 2" >&2; exit 2; }
[[ $count =~ ^[0-9]+$ ]] || { echo "stream_bench: --count wants a number" >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "stream_bench: --rounds wants a number >= 1" >&2; exit 2; }

relay_bin=${relay_bin:-$build_dir/relay/sockrelay}
load_bin=$build_dir/tests/bench/sockrelay_stream_load
proxyd_bin=/lib/systemd/systemd-socket-proxyd

# ---------------------------------------------------------------------------
# Outside the namespace: privileges, build, packages (apt needs the network).
if [[ -z ${SOCKRELAY_BENCH_IN_NETNS:-} ]]; then
  require_root
  ((build)) && build_bench "$repo" "$build_dir" sockrelay sockrelay_stream_load
  require_executables "$relay_bin" "$load_bin"
  apt_install socat socat || log "no socat: its rows will be skipped"
  apt_install "$proxyd_bin" systemd || log "no systemd-socket-proxyd: its rows will be skipped"
  apt_install systemd-socket-activate systemd || true
  apt_install sockperf sockperf || log "no sockperf: tcp ping-pong uses sockrelay_stream_load"
  if [[ -n $plot_file ]]; then
    apt_install gnuplot gnuplot-nox || { log "no gnuplot, cannot --plot"; exit 1; }
  fi
  exec_in_netns --net
fi

# ---------------------------------------------------------------------------
# Inside a private network namespace: only loopback exists.
ip link set lo up

work=$(mktemp -d /tmp/sockrelay-stream-bench.XXXXXX)
started=() # PIDs of the processes this script started and has not reaped

# Every relay row runs the same binary even if the build directory is
# rebuilt while the benchmark runs.
relay_built=$(date -u -r "$relay_bin" +%Y-%m-%dT%H:%M:%SZ)
cp "$relay_bin" "$work/sockrelay"
relay_src=$relay_bin
relay_bin=$work/sockrelay

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# Paths and addresses. The sink and the echo server of a transport are shared
# by its paths; each path has its own pair of front addresses (data, echo).
transports=(tcp unix)
declare -A paths_of=([tcp]="direct relay-kernel relay-user" [unix]="direct relay-user")
have_socat=0 have_proxyd=0
if command -v socat >/dev/null; then have_socat=1; else log "socat not found: skipping its rows"; fi
if [[ -x $proxyd_bin ]] && command -v systemd-socket-activate >/dev/null; then
  have_proxyd=1
else
  log "systemd-socket-proxyd or systemd-socket-activate not found: skipping its rows"
fi
for transport in "${transports[@]}"; do
  ((have_socat)) && paths_of[$transport]+=" socat"
  ((have_proxyd)) && paths_of[$transport]+=" proxyd"
done
tcp_pingpong_tool=stream_load
command -v sockperf >/dev/null && tcp_pingpong_tool=sockperf

declare -A sink_addr=([tcp]=127.0.0.1:7001 [unix]=$work/sink.sock)
declare -A echo_addr=([tcp]=127.0.0.1:7002 [unix]=$work/echo.sock)
declare -A front_data=([tcp.direct]=${sink_addr[tcp]} [unix.direct]=${sink_addr[unix]})
declare -A front_echo=([tcp.direct]=${echo_addr[tcp]} [unix.direct]=${echo_addr[unix]})
port=7100
for path in relay-kernel relay-user socat proxyd; do
  front_data[tcp.$path]=127.0.0.1:$((port + 1))
  front_echo[tcp.$path]=127.0.0.1:$((port + 2))
  front_data[unix.$path]=$work/$path-data.sock
  front_echo[unix.$path]=$work/$path-echo.sock
  port=$((port + 100))
done

# ---------------------------------------------------------------------------
# CPU accounting: a middlebox's process tree, with what its reaped children
# (socat's per-connection ones) used.
tree_ticks() {
  local pid total=0
  for pid in $(proc_tree "$1"); do total=$((total + $(proc_ticks "$pid" with-children))); done
  echo "$total"
}

# ---------------------------------------------------------------------------
# Middleboxes. All of them run for the whole benchmark, each on its own pair
# of fronts, so that the rounds can take the paths in turn; one that carries
# no connection costs nothing.

declare -A middle_pid=() # transport.path -> the process that serves the data front
middle_all=()            # every middlebox PID
relay_rows=()            # transport.path of every relay

relay_status() { # transport path
  "$relay_bin" status --json --control "$work/control-$1-$2.sock" 2>/dev/null
}

write_relay_config() {
  local transport=$1 path=$2 type datapath
  type=$([[ $transport == tcp ]] && echo tcp || echo unix-stream)
  # tcp: the kernel row asks for the sockmap by name ("auto" carries tcp in
  # user space); unix-stream: "auto" (user space, the only path it has).
  datapath=$([[ $transport.$path == tcp.relay-kernel ]] && echo kernel || echo auto)
  write_pair_config "$work/relay-$transport-$path.toml" "$type" "$work/control-$transport-$path.sock" "$datapath" \
    "${front_data[$transport.$path]}" "${sink_addr[$transport]}" "${front_echo[$transport.$path]}" \
    "${echo_addr[$transport]}"
}

# The data route's counters (the first route in the JSON; they count from
# the relay's start, so a run reports the difference): bytes the verdict
# program redirected, bytes user space moved, sessions that failed.
relay_counter_names=('kernel_bytes "kernel":{"packets":[0-9]*,"bytes":[0-9]*'
  'user_bytes "user-bytes":[0-9]*' 'sessions_failed "sessions-failed":[0-9]*')
relay_counters() {
  local status route0 entry value
  status=$(cat)
  route0=${status#*\"routes\":\[}
  route0=${route0%%\"id\":1,*}
  for entry in "${relay_counter_names[@]}"; do
    value=$(grep -o "${entry#* }" <<<"$route0" | head -1 | grep -o '[0-9]*$')
    printf '%s ' "${value:-0}"
  done
}

# Starts the middlebox of $1.$2: one listener for the data front and one for
# the echo front.
start_middle() {
  local transport=$1 path=$2 front upstream pid
  case $path in
    relay-*)
      write_relay_config "$transport" "$path"
      start_relay "$work/relay-$transport-$path.toml" "$work/relay-$transport-$path.log" \
        relay_status "$transport" "$path"
      middle_all+=("$relay_pid")
      middle_pid[$transport.$path]=$relay_pid
      relay_rows+=("$transport.$path")
      expect_datapath "$([[ $path == relay-kernel ]] && echo kernel || echo userspace)" \
        "$transport $path (see $work/relay-$transport-$path.log)" relay_status "$transport" "$path"
      ;;
    socat | proxyd)
      for front in "${front_data[$transport.$path]}=${sink_addr[$transport]}" \
        "${front_echo[$transport.$path]}=${echo_addr[$transport]}"; do
        upstream=${front#*=}
        front=${front%=*}
        if [[ $path == socat && $transport == tcp ]]; then
          # The common invocation: a forked child per connection.
          socat "TCP4-LISTEN:${front##*:},bind=127.0.0.1,reuseaddr,fork" "TCP4:$upstream" 2>>"$work/socat.log" &
        elif [[ $path == socat ]]; then
          socat "UNIX-LISTEN:$front,fork" "UNIX-CONNECT:$upstream" 2>>"$work/socat.log" &
        else
          # proxyd only takes sockets from socket activation; without
          # --accept, systemd-socket-activate execs it on the first
          # connection, in the same process.
          systemd-socket-activate -l "$front" "$proxyd_bin" "$upstream" 2>>"$work/proxyd.log" &
        fi
        pid=$!
        started+=("$pid")
        middle_all+=("$pid")
        [[ -n ${middle_pid[$transport.$path]:-} ]] || middle_pid[$transport.$path]=$pid
        wait_listening "$front"
      done
      ;;
  esac
}

# Stops every middlebox; a relay must exit 0 on SIGTERM.
stop_middles() {
  local row
  for row in "${relay_rows[@]}"; do
    stop_relay "${middle_pid[$row]}" "$work/relay-${row/./-}.log" "${row/./ }"
  done
  stop_pids "${middle_all[@]}"
  middle_all=()
}

# ---------------------------------------------------------------------------
# Runs.

declare -A results=() # transport.path.test.round.key -> value, then transport.path.test.key
record() {
  local prefix=$1 line=$2 kv
  echo "$line"
  for kv in ${line#RESULT }; do results[$prefix.${kv%%=*}]=${kv#*=}; done
}

# One connection through $1.$2 for --duration seconds, flat out; round $3.
throughput() {
  local transport=$1 path=$2 round=$3 sink_pid source_pid mpid=${middle_pid[$1.$2]:-0}
  "$load_bin" sink --listen "${sink_addr[$transport]}" --idle-s 3 >"$work/sink.out" &
  sink_pid=$!
  started+=("$sink_pid")
  wait_listening "${sink_addr[$transport]}"

  local m0 p0=0 hz counters0=
  hz=$(getconf CLK_TCK)
  [[ $path == relay-* ]] && counters0=$(relay_status "$transport" "$path" | relay_counters)
  ((mpid)) && p0=$(tree_ticks "$mpid")
  kernel_worker_ticks >"$work/kworkers.before"
  m0=$(machine_ticks)

  # timeout: a path that stalls with full buffers would block the source's
  # write() for ever.
  timeout $((duration + 40)) "$load_bin" source --to "${front_data[$transport.$path]}" --duration "$duration" \
    --write-size "$write_size" >"$work/source.out" &
  source_pid=$!
  started+=("$source_pid")
  wait "$source_pid" || log "warning: $transport $path: the source failed"
  wait "$sink_pid" || log "warning: $transport $path: the sink failed"
  stop_pids "$source_pid" "$sink_pid"

  local m1 kw p1=0
  m1=$(machine_ticks)
  kernel_worker_ticks >"$work/kworkers.after"
  kw=$(kernel_worker_delta "$work/kworkers.before" "$work/kworkers.after")
  ((mpid)) && p1=$(tree_ticks "$mpid")

  local sink_out source_out bytes sent window gib busy0 busy1 steal0 steal1 total0 total1 wall
  sink_out=$(grep '^sink ' "$work/sink.out" || true)
  source_out=$(grep '^source ' "$work/source.out" || true)
  bytes=$(field bytes "$sink_out")
  sent=$(field bytes "$source_out")
  window=$(field window_s "$sink_out")
  gib=$(calc "${bytes:-0} / 1073741824" 6)
  read -r busy0 total0 steal0 _ <<<"$m0"
  read -r busy1 total1 steal1 _ <<<"$m1"
  wall=$(calc "($total1 - $total0) / $(nproc)" 3) # ticks of one CPU over the run

  local line
  line="RESULT transport=$transport path=$path test=throughput round=$round write_size=$write_size"
  line+=" bytes=${bytes:-0} lost_bytes=$((${sent:-0} - ${bytes:-0})) complete=$(field complete "$sink_out")"
  line+=" source_eof=$(field eof "$source_out") window_s=${window:-0}"
  line+=" gib_per_s=$(calc "${window:-0} > 0 ? $gib / $window : 0" 3)"
  line+=" machine_busy_pct=$(calc "$wall > 0 ? 100 * ($busy1 - $busy0) / $wall : 0")"
  line+=" steal_pct=$(calc "$wall > 0 ? 100 * ($steal1 - $steal0) / $wall : 0")"
  line+=" machine_cpu_s_per_gib=$(calc "$gib > 0 ? ($busy1 - $busy0) / $hz / $gib : 0" 3)"
  line+=" middlebox_cpu_s_per_gib=$(calc "$gib > 0 ? ($p1 - $p0) / $hz / $gib : 0" 3)"
  line+=" kernel_workers_cpu_s_per_gib=$(calc "$gib > 0 ? $kw / $hz / $gib : 0" 3)"
  local own
  own=$(calc "$(field cpu_s "$sink_out") + $(field cpu_s "$source_out") + ($p1 - $p0 + $kw) / $hz" 3)
  line+=" own_cpu_s_per_gib=$(calc "$gib > 0 ? $own / $gib : 0" 3)"
  if [[ $path == relay-* ]]; then
    local status k c0 c1 name
    status=$(relay_status "$transport" "$path")
    read -ra c1 <<<"$(relay_counters <<<"$status")"
    read -ra c0 <<<"$counters0"
    for k in 0 1 2; do
      name=${relay_counter_names[k]}
      line+=" relay_${name%% *}=$((${c1[k]:-0} - ${c0[k]:-0}))"
    done
    log "relay status after the $transport $path run: $status"
  fi
  record "$transport.$path.tp.$round" "$line"
  [[ ${sent:-0} == "${bytes:-0}" && -n $bytes ]] ||
    log "warning: $transport $path: the source wrote ${sent:-?} bytes, the sink received ${bytes:-?}$(
      [[ $(field complete "$sink_out") == 1 ]] || echo " and no EOF: stalled, gave up after 3 s without a byte")"
}

# Round trips through $1.$2, round $3: sockperf for tcp when installed (its
# server is the tcp echo server), sockrelay_stream_load otherwise.
pingpong() {
  local transport=$1 path=$2 round=$3 front=${front_echo[$1.$2]} out line
  if [[ $transport == tcp && $tcp_pingpong_tool == sockperf ]]; then
    timeout $((sockperf_s + 30)) sockperf ping-pong --tcp -i "${front%:*}" -p "${front##*:}" -t "$sockperf_s" \
      -m "$msg_size" --full-rtt >"$work/pingpong.out" 2>&1 || log "warning: $transport $path: sockperf failed"
    out=$(sed 's/\x1b\[[0-9;]*m//g' "$work/pingpong.out")
    line="RESULT transport=$transport path=$path test=pingpong round=$round tool=sockperf size=$msg_size"
    line+=" rounds=$(sed -n 's/.*Total \([0-9]*\) observations.*/\1/p' <<<"$out")"
    local key pct value
    for key in p50:50.000 p90:90.000 p99:99.000 max:MAX; do
      pct=${key#*:}
      if [[ $pct == MAX ]]; then
        value=$(sed -n 's/.*<MAX> observation = *\([0-9.]*\).*/\1/p' <<<"$out")
      else
        value=$(sed -n "s/.*percentile $pct = *\([0-9.]*\).*/\1/p" <<<"$out")
      fi
      line+=" ${key%%:*}_us=$([[ -n $value ]] && calc "$value" 1)"
    done
  else
    timeout $((duration + 60)) "$load_bin" pingpong --to "$front" --count "$count" --warmup "$warmup" \
      --size "$msg_size" >"$work/pingpong.out" || log "warning: $transport $path: the ping-pong client failed"
    out=$(grep '^pingpong ' "$work/pingpong.out" || true)
    line="RESULT transport=$transport path=$path test=pingpong round=$round tool=stream_load size=$msg_size"
    line+=" ${out#pingpong }"
  fi
  record "$transport.$path.pp.$round" "$line"
}

# $1.min_$2 and $1.max_$2: the smallest and largest $2 over the rounds.
min_max() {
  local prefix=$1 key=$2 round values=()
  for ((round = 1; round <= rounds; round++)); do values+=("${results[$prefix.$round.$key]:-0}"); done
  mapfile -t values < <(printf '%s\n' "${values[@]}" | sort -g)
  results[$prefix.min_$key]=${values[0]}
  results[$prefix.max_$key]=${values[-1]}
}

# Of the rounds of $1 (transport.path.test), picks the one with the median
# $2 and copies its results to $1.KEY: a row shows one real round, not a mix
# of rounds. A round that stalled is picked only if all did (its CPU figures
# include the seconds the sink waited); the bytes not delivered are summed
# over all rounds and a stall in any marks the row.
take_median_round() {
  local prefix=$1 key=$2 round values=() stalled=() median key_round k lost=0 complete=1
  for ((round = 1; round <= rounds; round++)); do
    if [[ ${results[$prefix.$round.complete]:-1} == 1 ]]; then
      values+=("${results[$prefix.$round.$key]:-0} $round")
    else
      stalled+=("${results[$prefix.$round.$key]:-0} $round")
      complete=0
    fi
    lost=$((lost + ${results[$prefix.$round.lost_bytes]:-0}))
  done
  ((${#values[@]})) || values=("${stalled[@]}")
  mapfile -t values < <(printf '%s\n' "${values[@]}" | sort -g)
  median=${values[$(((${#values[@]} - 1) / 2))]}
  key_round=${median#* }
  for k in "${!results[@]}"; do
    [[ $k == "$prefix.$key_round."* ]] && results[$prefix.${k#"$prefix.$key_round."}]=${results[$k]}
  done
  results[$prefix.median_round]=$key_round
  if [[ $prefix == *.tp ]]; then
    results[$prefix.lost_bytes]=$lost
    results[$prefix.complete]=$complete
  fi
}

# The echo servers behind every path.
if [[ $tcp_pingpong_tool == sockperf ]]; then
  sockperf server --tcp -i "${echo_addr[tcp]%:*}" -p "${echo_addr[tcp]##*:}" >"$work/sockperf-server.log" 2>&1 &
else
  "$load_bin" echo --listen "${echo_addr[tcp]}" >"$work/echo-tcp.out" &
fi
started+=("$!")
"$load_bin" echo --listen "${echo_addr[unix]}" >"$work/echo-unix.out" &
started+=("$!")
wait_listening "${echo_addr[tcp]}"
wait_listening "${echo_addr[unix]}"
for transport in "${transports[@]}"; do
  for path in ${paths_of[$transport]}; do
    [[ $path == direct ]] || start_middle "$transport" "$path"
  done
done

run_date=$(date -u +%Y-%m-%dT%H:%MZ)
log_machine "$repo" "$relay_src, built $relay_built; run $run_date"
for ((round = 1; round <= rounds; round++)); do
  for transport in "${transports[@]}"; do
    log "round $round/$rounds, $transport: ${duration} s throughput per path, then ping-pong: ${paths_of[$transport]}"
    for path in ${paths_of[$transport]}; do
      throughput "$transport" "$path" "$round"
    done
    for path in ${paths_of[$transport]}; do
      pingpong "$transport" "$path" "$round"
    done
  done
done
stop_middles
for transport in "${transports[@]}"; do
  for path in ${paths_of[$transport]}; do
    take_median_round "$transport.$path.tp" gib_per_s
    take_median_round "$transport.$path.pp" p50_us
    min_max "$transport.$path.tp" gib_per_s
    min_max "$transport.$path.tp" machine_cpu_s_per_gib
    min_max "$transport.$path.pp" p50_us
  done
done

# ---------------------------------------------------------------------------
vs() { # a ratio with its sign, or "-"
  local r
  r=$(ratio "$1" "$2")
  [[ $r == - ]] && echo - || echo "$r×"
}
spread() { # min–max of $1.KEY over the rounds, "-" with one round
  ((rounds > 1)) || { echo -; return; }
  echo "${results[$1.min_$2]}–${results[$1.max_$2]}"
}
label() { [[ $1 == tcp ]] && echo tcp || echo unix-stream; }

echo "RUN revision=$revision relay_built=$relay_built date=$run_date kernel=$(uname -r) cpus=$(nproc) load1_before=$load1 rounds=$rounds duration_s=$duration write_size=$write_size msg_size=$msg_size"
echo
echo "### Throughput, one connection, ${write_size}-byte writes for ${duration} s (median of $rounds rounds)"
echo
echo "| transport | path | GiB/s | rounds' range | vs direct | vs proxyd | machine busy % | steal % | machine CPU-s/GiB | own CPU-s/GiB | middlebox CPU-s/GiB | kernel workers CPU-s/GiB | bytes not delivered |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for transport in "${transports[@]}"; do
  for path in ${paths_of[$transport]}; do
    r=$transport.$path.tp
    stall_note=$([[ ${results[$r.complete]} == 1 ]] || echo " (stalled)")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$transport")" "$path" \
      "${results[$r.gib_per_s]}" "$(spread "$r" gib_per_s)" "$(vs "$r.gib_per_s" "$transport.direct.tp.gib_per_s")" \
      "$(vs "$r.gib_per_s" "$transport.proxyd.tp.gib_per_s")" "${results[$r.machine_busy_pct]}" \
      "${results[$r.steal_pct]}" "${results[$r.machine_cpu_s_per_gib]}" "${results[$r.own_cpu_s_per_gib]}" \
      "$([[ $path == direct ]] && echo - || echo "${results[$r.middlebox_cpu_s_per_gib]}")" \
      "${results[$r.kernel_workers_cpu_s_per_gib]}" "${results[$r.lost_bytes]}$stall_note"
  done
done
echo
echo "### Ping-pong, one connection, ${msg_size}-byte messages (median of $rounds rounds)"
echo
echo "| transport | path | tool | round trips | p50 µs | rounds' p50 range | p90 µs | p99 µs | max µs | p50 vs direct |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
for transport in "${transports[@]}"; do
  for path in ${paths_of[$transport]}; do
    r=$transport.$path.pp
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$transport")" "$path" \
      "${results[$r.tool]}" "${results[$r.rounds]:-}" "${results[$r.p50_us]:-}" "$(spread "$r" p50_us)" \
      "${results[$r.p90_us]:-}" "${results[$r.p99_us]:-}" "${results[$r.max_us]:-}" \
      "$(vs "$r.p50_us" "$transport.direct.pp.p50_us")"
  done
done

# The issue's targets, from this run's numbers.
targets=()
for row in "${relay_rows[@]}"; do
  transport=${row%%.*}
  path=${row#*.}
  tp=$(ratio "$row.tp.gib_per_s" "$transport.proxyd.tp.gib_per_s")
  cpu=$(ratio "$row.tp.machine_cpu_s_per_gib" "$transport.proxyd.tp.machine_cpu_s_per_gib")
  own=$(ratio "$row.tp.own_cpu_s_per_gib" "$transport.proxyd.tp.own_cpu_s_per_gib")
  p50=$(ratio "$row.pp.p50_us" "$transport.direct.pp.p50_us")
  echo "RATIO transport=$transport path=$path throughput_vs_proxyd=$tp cpu_per_gib_vs_proxyd=$cpu own_cpu_per_gib_vs_proxyd=$own p50_vs_direct=$p50 throughput_vs_direct=$(ratio "$row.tp.gib_per_s" "$transport.direct.tp.gib_per_s")"
  targets+=("$(label "$transport") $path: GiB/s vs proxyd|$tp|>=|1.0")
  targets+=("$(label "$transport") $path: machine CPU-s/GiB vs proxyd|$cpu|<=|1.0")
  targets+=("$(label "$transport") $path: own CPU-s/GiB vs proxyd (other users' load left out)|$own|<=|1.0")
  targets+=("$(label "$transport") $path: ping-pong p50 vs direct|$p50|<=|1.3")
  targets+=("$(label "$transport") $path: every byte delivered, no stall|${results[$row.tp.lost_bytes]}|<=|0")
done
echo
echo "### Targets, relay measured against this run's proxyd and direct"
echo
echo "| target | measured | wanted | verdict |"
echo "|---|---:|---:|---|"
for t in "${targets[@]}"; do
  IFS='|' read -r name value op limit <<<"$t"
  check_target "$name" "$value" "$op" "$limit"
done

# ---------------------------------------------------------------------------
# Plot: one bar chart per measure, the paths on the x axis, tcp and
# unix-stream side by side ("-" = not measured: relay-kernel for unix-stream);
# the error bars span the rounds.
if [[ -n $plot_file ]]; then
  {
    echo "# path, then for tcp and unix-stream: value min max of GiB/s, of machine CPU-s/GiB, of p50 µs"
    for path in direct relay-kernel relay-user socat proxyd; do
      printf '%s' "$path"
      for key in tp.gib_per_s tp.machine_cpu_s_per_gib pp.p50_us; do
        for transport in tcp unix; do
          r=$transport.$path.${key%%.*}
          k=${key#*.}
          if [[ -n ${results[$r.$k]:-} ]]; then
            printf ' %s %s %s' "${results[$r.$k]}" "${results[$r.min_$k]}" "${results[$r.max_$k]}"
          else
            printf ' - - -'
          fi
        done
      done
      echo
    done
  } >"$work/plot.dat"
  gnuplot <<EOF 2>"$work/gnuplot.log" || log "warning: gnuplot failed: $(<"$work/gnuplot.log")"
set terminal pngcairo size 1600,560 font ",11" noenhanced
set output "$plot_file"
set datafile missing "-"
set style data histograms
set style histogram errorbars gap 1 lw 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set yrange [0:*]
set key below horizontal
set xtics scale 0 rotate by 20 right
set multiplot layout 1,3 title "sockrelay stream benchmark, $revision, $run_date, load $load1 before the run, $(nproc) CPUs, median of $rounds rounds (bars: their range)"
set title "throughput, one connection, ${write_size}-byte writes (higher is better)"
set ylabel "GiB/s"
plot "$work/plot.dat" using 2:3:4:xtic(1) title "tcp", "" using 5:6:7 title "unix-stream"
set title "whole-machine busy CPU per GiB moved (lower is better)"
set ylabel "CPU-seconds / GiB"
plot "$work/plot.dat" using 8:9:10:xtic(1) title "tcp", "" using 11:12:13 title "unix-stream"
set title "ping-pong p50 round trip, ${msg_size} bytes (lower is better)"
set ylabel "µs (log scale: one slow round must not flatten the rest)"
set logscale y
set yrange [1:*]
plot "$work/plot.dat" using 14:15:16:xtic(1) title "tcp ($tcp_pingpong_tool)", "" using 17:18:19 title "unix-stream (stream_load)"
unset multiplot
EOF
  [[ -s $plot_file ]] && log "plot: $plot_file"
fi
