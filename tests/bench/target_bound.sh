#!/usr/bin/env bash
# target_bound.sh: kernel memory behind a stalled target, with and without
# the target-buffer bound (bpf/target_bound.h). One udp -> unix-dgram route
# on the kernel path; the unix-dgram server never reads; one client floods
# 1000-byte datagrams (sockrelay_udp_load send, as fast as it can) for
# --duration seconds. Kernel memory is sampled every 0.25 s as unreclaimable
# slab (/proc/meminfo SUnreclaim: skb heads and linear data) plus socket
# pages (/proc/net/sockstat "mem"); the report is the peak growth and the
# growth per second, and what status counted as target-full.
#
#   bounded    the relay as root: the verdict program bounds the backlog
#              (route key target-buffer, default 4MiB)
#   unbounded  the same relay without CAP_PERFMON/CAP_SYS_ADMIN in its
#              bounding set: it loads the verdict program without the bound
#              (status: "target-buffer NOT enforced")
#
# The unbounded run takes several hundred MiB of kernel memory per second
# until the relay stops (it is freed then): --duration stays short.
#
# Usage: sudo tests/bench/target_bound.sh [--duration S] [--buffer SIZE]
#        [--build-dir DIR] [--no-build] [--relay BIN]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"

duration=3
buffer=4MiB
build_dir=$repo/build
build=1
relay_bin=
orig_args=("$@")
while (($#)); do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --buffer) buffer=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --relay) relay_bin=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "target_bound: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $duration =~ ^[0-9]+$ ]] || { echo "target_bound: --duration wants whole seconds" >&2; exit 2; }

require_root
if [[ -z ${SOCKRELAY_BENCH_IN_NETNS:-} ]]; then
  ((build)) && build_bench "$repo" "$build_dir" sockrelay sockrelay_udp_load
  [[ -n $relay_bin ]] || relay_bin=$build_dir/relay/sockrelay
  exec_in_netns --net
fi
load_bin=$build_dir/tests/bench/sockrelay_udp_load
require_executables "$relay_bin" "$load_bin"
command -v python3 >/dev/null || { log "python3 missing (the non-reading unix-dgram server)"; exit 1; }
ip link set lo up

started=()
work=$(mktemp -d /tmp/sockrelay-target-bound.XXXXXX)
trap cleanup EXIT

# Bytes of kernel memory an skb backlog occupies (see the header).
kernel_bytes() {
  local slab pages
  slab=$(awk '/^SUnreclaim:/ {print $2 * 1024}' /proc/meminfo)
  pages=$(awk '{for (i = 1; i < NF; i++) if ($i == "mem") s += $(i + 1)} END {print s + 0}' /proc/net/sockstat)
  echo $((slab + pages * $(getconf PAGESIZE)))
}

# run LABEL RELAY_PREFIX...: one flood against a fresh relay and server.
run() {
  local label=$1 before peak now sent status full enforced
  shift
  python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
time.sleep(3600)' "$work/back.sock" &
  local server=$!
  started+=("$server")
  wait_listening "$work/back.sock"
  {
    relay_config_header "$work/control.sock"
    config_endpoint front udp listen 127.0.0.1:5300
    config_endpoint back unix-dgram connect "$work/back.sock"
    printf '\n[[routes]]\nfrom = "front"\nto = "back"\ndatapath = "kernel"\ntarget-buffer = "%s"\n' "$buffer"
  } >"$work/relay.toml"
  "$@" "$relay_bin" run --config "$work/relay.toml" 2>>"$work/relay.log" &
  relay_pid=$!
  started+=("$relay_pid")
  wait_until "$relay_bin" status --control "$work/control.sock"
  enforced=$("$relay_bin" status --json --control "$work/control.sock" | grep -o '"target-buffer-enforced":[a-z]*' | cut -d: -f2)
  before=$(kernel_bytes)
  peak=$before
  "$load_bin" send --to 127.0.0.1:5300 --duration "$duration" --size 1000 >"$work/send.out" &
  local sender=$!
  while kill -0 "$sender" 2>/dev/null; do
    now=$(kernel_bytes)
    ((now > peak)) && peak=$now
    sleep 0.25
  done
  wait "$sender" || true
  sent=$(grep -o 'sent=[0-9]*' "$work/send.out" | cut -d= -f2)
  status=$("$relay_bin" status --json --control "$work/control.sock")
  full=$(grep -o '"target-full":[0-9]*' <<<"$status" | head -n 1 | cut -d: -f2)
  printf '%-9s enforced=%-5s sent=%s datagrams in %ss, kernel memory +%d MiB at peak (%d MiB/s), target-full %s\n' \
    "$label" "$enforced" "${sent:-?}" "$duration" $(((peak - before) >> 20)) $(((peak - before) / duration >> 20)) "${full:-?}"
  stop_relay "$relay_pid" "$work/relay.log" "$label"
  stop_pids "$server"
  rm -f "$work/back.sock"
}

echo "udp -> unix-dgram, server not reading, 1000-byte datagrams, target-buffer $buffer, $(nproc) CPUs, $(uname -r)"
run bounded
run unbounded setpriv --bounding-set -perfmon,-sys_admin --inh-caps -perfmon,-sys_admin
