#!/usr/bin/env bash
# unix_source.sh: a unix-dgram -> udp route on each data path, the numbers
# behind matrix rule 9 (relay/matrix/matrix.cpp: a unix-dgram source takes
# user space unless datapath = "kernel"). --senders unix-dgram clients, each
# its own process (sockrelay_udp_load send --to PATH), send 64-byte
# datagrams flat out for --duration seconds into one relay; a UDP sink
# counts what arrives.
#
#   kernel     datapath = "kernel": the listener's verdict program steers
#              each sender's flow (after the hold of a new flow)
#   userspace  datapath = "auto" (user space for this source since rule 9)
#
# Each path runs twice: senders that flood from their first datagram, and
# senders that send one datagram, pause --settle-ms (their flow is set up)
# and then flood. The report is datagrams/s delivered, and how many of them
# status counted on the kernel path and in user space.
#
# Usage: sudo tests/bench/unix_source.sh [--senders N] [--duration S]
#        [--settle-ms MS] [--build-dir DIR] [--no-build] [--relay BIN]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"

senders=3
duration=3
settle_ms=300
build_dir=$repo/build
build=1
relay_bin=
orig_args=("$@")
while (($#)); do
  case $1 in
    --senders) senders=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --settle-ms) settle_ms=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --relay) relay_bin=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unix_source: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $duration =~ ^[0-9]+$ && $senders =~ ^[0-9]+$ ]] ||
  { echo "unix_source: --duration and --senders want whole numbers" >&2; exit 2; }

require_root
if [[ -z ${SOCKRELAY_BENCH_IN_NETNS:-} ]]; then
  ((build)) && build_bench "$repo" "$build_dir" sockrelay sockrelay_udp_load
  [[ -n $relay_bin ]] || relay_bin=$build_dir/relay/sockrelay
  exec_in_netns --net
fi
load_bin=$build_dir/tests/bench/sockrelay_udp_load
require_executables "$relay_bin" "$load_bin"
ip link set lo up

started=()
work=$(mktemp -d /tmp/sockrelay-unix-source.XXXXXX)
trap cleanup EXIT

# run DATAPATH SETTLE_MS: one relay, one sink, the senders.
run() {
  local datapath=$1 settle=$2 sink status delivered sent kernel user i
  "$load_bin" sink --bind 127.0.0.1:5501 --idle-ms 1000 >"$work/sink.out" &
  sink=$!
  started+=("$sink")
  {
    relay_config_header "$work/control.sock"
    config_endpoint front unix-dgram listen "$work/front.sock"
    config_endpoint back udp connect 127.0.0.1:5501
    printf '\n[[routes]]\nfrom = "front"\nto = "back"\ndatapath = "%s"\n' "$datapath"
  } >"$work/relay.toml"
  start_relay "$work/relay.toml" "$work/relay.log" "$relay_bin" status --control "$work/control.sock"
  local pids=()
  for ((i = 0; i < senders; i++)); do
    "$load_bin" send --to "$work/front.sock" --duration "$duration" --size 64 --settle-ms "$settle" \
      >"$work/send$i.out" &
    pids+=($!)
  done
  wait "${pids[@]}"
  wait "$sink" || true
  status=$("$relay_bin" status --json --control "$work/control.sock")
  sent=$(cat "$work"/send*.out | grep -o ' sent=[0-9]*' | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
  delivered=$(grep -o 'datagrams=[0-9]*' "$work/sink.out" | cut -d= -f2)
  kernel=$(grep -o '"kernel":{"packets":[0-9]*' <<<"$status" | head -n 1 | grep -o '[0-9]*$')
  user=$(grep -o '"user":{"packets":[0-9]*' <<<"$status" | head -n 1 | grep -o '[0-9]*$')
  printf '| %s | %s | %d | %d | %d | %s | %s |\n' "$datapath" "$( ((settle)) && echo "${settle} ms" || echo no)" \
    "$sent" "$delivered" $((delivered / duration)) "${kernel:-?}" "${user:-?}"
  stop_relay "$relay_pid" "$work/relay.log" "$datapath"
  rm -f "$work/front.sock"
}

echo "unix-dgram -> udp, $senders senders x ${duration}s flat out, 64-byte datagrams, $(nproc) CPUs, $(uname -r)"
echo
echo "| datapath | pause after the first datagram | sent | delivered | delivered/s | kernel packets | user packets |"
echo "|---|---|---:|---:|---:|---:|---:|"
for settle in 0 "$settle_ms"; do
  run kernel "$settle"
  run auto "$settle"
done
