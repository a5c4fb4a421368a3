#!/usr/bin/env bash
# What control clients cost the data path: the first reply of new UDP
# clients through a udp->udp route, first with no control client, then with
# --silent clients connected to the control socket that send nothing, in one
# run, inside a private network namespace (loopback only). Run it against two
# builds (--relay) to compare them; tests/integration/control_socket_test.cpp
# holds the pass/fail version.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: tests/bench/control_stall.sh [options]        (as root)

options:
  --silent N      silent control clients (default 20)
  --samples N     new UDP clients measured per phase, one after another
                  (default 10; keep the phase short: see measure())
  --build-dir D   CMake build directory (default: <repo>/build)
  --relay PATH    the sockrelay binary (default: the build's)
  --load PATH     sockrelay_udp_load (default: the build's)
  -h, --help      this text

Output: per phase the median and max first-reply time in ms, and one
"RESULT silent=N median_ms=.. max_ms=.. lost=.." line each.
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
silent=20
samples=10
build_dir=$repo/build
relay_bin=
load_bin=
orig_args=("$@")

while (($#)); do
  case $1 in
    --silent) silent=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --build-dir) build_dir=$(realpath "$2"); shift 2 ;;
    --relay) relay_bin=$(realpath "$2"); shift 2 ;;
    --load) load_bin=$(realpath "$2"); shift 2 ;;
    --in-netns) in_netns=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "control_stall: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$silent" "$samples"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "control_stall: not a number: $n" >&2; exit 2; }
done
relay_bin=${relay_bin:-$build_dir/relay/sockrelay}
load_bin=${load_bin:-$build_dir/tests/bench/sockrelay_udp_load}
for bin in "$relay_bin" "$load_bin"; do
  [[ -x $bin ]] || { echo "control_stall: $bin missing (build it, or pass --relay/--load)" >&2; exit 1; }
done
command -v socat >/dev/null || { echo "control_stall: socat missing" >&2; exit 1; }

if [[ -z ${in_netns:-} ]]; then
  ((EUID == 0)) || { echo "control_stall: run as root (it enters a network namespace)" >&2; exit 1; }
  exec unshare --net -- "$0" "${orig_args[@]}" --in-netns --relay "$relay_bin" --load "$load_bin"
fi
ip link set lo up

work=$(mktemp -d /tmp/control-stall-XXXXXX)
started=()
trap cleanup EXIT

cat >"$work/relay.toml" <<EOF
[relay]
control = "$work/control.sock"
[endpoints.front]
type = "udp"
listen = "127.0.0.1:5300"
[endpoints.back]
type = "udp"
connect = "127.0.0.1:5301"
[[routes]]
from = "front"
to = "back"
EOF

"$load_bin" echo --bind 127.0.0.1:5301 >"$work/echo.out" &
started+=($!)
"$relay_bin" run --config "$work/relay.toml" 2>"$work/relay.log" &
started+=($!)
for _ in $(seq 100); do
  "$relay_bin" status --control "$work/control.sock" >/dev/null 2>&1 && break
  sleep 0.05
done
"$relay_bin" status --control "$work/control.sock" >/dev/null || { cat "$work/relay.log" >&2; exit 1; }

# `samples` new clients, one after another: each is a new flow, whose first
# datagram the relay's loop sets up. The phase's length is printed too: the
# relay closes silent clients (after 2 s each at once; before issue 16, after
# 1 s each, one at a time), so only a short phase measures them all present.
measure() {
  local i line us=() lost=0 start=$EPOCHREALTIME phase_s
  # The pings first, the parsing after: the phase stays short.
  for ((i = 0; i < samples; ++i)); do
    "$load_bin" ping --to 127.0.0.1:5300 --count 1 --warmup 0 --timeout-ms 5000
  done >"$work/ping.out"
  phase_s=$(calc "$EPOCHREALTIME - $start" 2)
  while read -r line; do
    if [[ $(field rounds "$line") == 1 ]]; then us+=("$(field max_us "$line")"); else lost=$((lost + 1)); fi
  done <"$work/ping.out"
  local sorted median=- max=-
  if ((${#us[@]})); then
    sorted=$(printf '%s\n' "${us[@]}" | sort -g)
    median=$(calc "$(sed -n "$(((${#us[@]} + 1) / 2))p" <<<"$sorted") / 1000" 2)
    max=$(calc "$(tail -n1 <<<"$sorted") / 1000" 2)
  fi
  printf '%-28s median %8s ms   max %8s ms   lost %d of %d   (phase %s s)\n' "$1" "$median" "$max" "$lost" \
    "$samples" "$phase_s"
  echo "RESULT silent=$2 median_ms=$median max_ms=$max lost=$lost samples=$samples phase_s=$phase_s"
}

measure "no control client:" 0
# Blocking connects, in the background: where the listen queue is full they
# wait for the relay to accept, as a client in the queue would.
for ((i = 0; i < silent; ++i)); do
  socat -u EXEC:"sleep 600" UNIX-CONNECT:"$work/control.sock" 2>/dev/null &
  started+=($!)
done
sleep 0.2
measure "$silent silent control clients:" "$silent"
