#!/usr/bin/env bash
# units/test/caps.sh — which capabilities does the relay really need?
#
# Runs `sockrelay run` on a UDP -> UDP echo config (as config/sockrelay.toml),
# each case in its own network namespace (traffic stays on its loopback), with
#   - START: the capabilities the process starts with (bounding, inheritable,
#     ambient, effective), as root (uid 0) or as an unprivileged uid, and
#   - KEEP:  what is left after READY=1, dropped by the LD_PRELOAD shim
#     drop_caps_at_ready.c (the relay's own capability dropping is still to
#     come; this measures what it may drop),
# then sends datagrams from three new clients (each one makes the running
# relay create sockets and write BPF maps), checks every reply, that
# `sockrelay status` shows the route on the kernel path with kernel packets
# and no failed flow, and that SIGTERM exits 0 with no error logged.
#
# Usage: units/test/caps.sh [--relay PATH]   (root; default
#        /work/build-units/relay/sockrelay or $SOCKRELAY)
# Prints one line per case and "N passed, M failed"; exit 1 on a failure.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
relay=${SOCKRELAY:-$here/../../build/relay/sockrelay}
if [ "${1:-}" = --relay ]; then relay=$2; shift 2; fi
relay=$(readlink -f "$relay")
work=${CAPS_WORK:-$(mktemp -d /tmp/sockrelay-caps.XXXXXX)}
shim=$work/drop_caps_at_ready.so

# --- one case, inside its own netns -------------------------------------------
if [ "${CAPS_IN_NETNS:-}" = 1 ]; then
  # $1 user (root|nobody)  $2 start caps (setpriv syntax, e.g. +bpf,+net_admin)
  # $3 caps kept after READY (numbers, comma-separated)
  # $4 listen port, or "PORT/unix": the upstream is a UNIX datagram echo
  #    server (each of its flows gets a private verdict instance: a BPF
  #    program loaded and a map created while the relay runs)
  # $5 expected: kernel (every flow in the kernel), userspace (BPF not
  #    loaded: the route falls back to user space), flow-bind-denied (kernel
  #    route, but the per-client flow socket cannot bind the listener's port,
  #    so replies go through user space), flow-setup-fails (kernel route, but
  #    a new flow's private verdict instance cannot be loaded: user space
  #    carries that flow)
  user=$1 start=$2 keep=$3 port=${4%/unix} want=$5
  ip link set lo up
  dir=$work/case.$$
  mkdir -p "$dir/run"
  chmod 0777 "$dir" "$dir/run"
  if [ "$4" = "$port/unix" ]; then
    upstream_type=unix-dgram upstream=$dir/echo.sock
    (umask 000 && exec socat "UNIX-RECVFROM:$upstream,fork" SYSTEM:cat) &
  else
    upstream_type=udp upstream=127.0.0.1:5301
    socat UDP4-RECVFROM:5301,bind=127.0.0.1,fork SYSTEM:cat &
  fi
  echo_pid=$!
  cat >"$dir/relay.toml" <<TOML
[relay]
log-level = "debug"
control = "$dir/run/control.sock"
[endpoints.demo-in]
type = "udp"
listen = "127.0.0.1:$port"
[endpoints.demo-echo]
type = "$upstream_type"
connect = "$upstream"
[[routes]]
from = "demo-in"
to = "demo-echo"
TOML
  caps_arg=-all${start:+,$start}
  if [ "$user" = root ]; then
    ids=()
  else
    ids=(--reuid=65534 --regid=65534 --clear-groups --ambient-caps="$caps_arg")
  fi
  SOCKRELAY_TEST_KEEP_CAPS=$keep LD_PRELOAD=$shim \
    setpriv "${ids[@]}" --inh-caps="$caps_arg" --bounding-set="$caps_arg" \
    "$relay" run --config "$dir/relay.toml" >"$dir/log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 50); do
    grep -q "capabilities now\|ready:" "$dir/log" && grep -q "ready:" "$dir/log" && break
    sleep 0.1
  done
  eff=$(awk '/^CapEff/ {print $2}' "/proc/$relay_pid/status" 2>/dev/null)
  fail=()
  for client in 1 2 3; do
    reply=$(printf 'client %s\n' "$client" | timeout 3 socat -T1 - "UDP4:127.0.0.1:$port")
    [ "$reply" = "client $client" ] || fail+=("client $client got \"$reply\"")
  done
  # A second datagram on each new flow goes through the verdict program.
  reply=$(printf 'a\nb\n' | timeout 3 socat -T1 - "UDP4:127.0.0.1:$port")
  [ -n "$reply" ] || fail+=("no reply to a two-datagram client")
  status=$("$relay" status --control "$dir/run/control.sock" 2>&1)
  route_path=$want
  [ "$want" = flow-bind-denied ] || [ "$want" = flow-setup-fails ] && route_path=kernel
  grep -q "datapath  $route_path" <<<"$status" || fail+=("datapath is not $route_path: $(grep datapath <<<"$status")")
  if [ "$want" = kernel ]; then
    grep -Eq "kernel +packets [1-9]" <<<"$status" || fail+=("no kernel packets: $(grep 'kernel ' <<<"$status")")
  fi
  grep -Eq "[0-9]+ failed" <<<"$status" && ! grep -q " 0 failed" <<<"$status" && fail+=("failed flows: $(grep sessions <<<"$status")")
  grep -Eq "setup-failed [1-9]|send-error [1-9]" <<<"$status" && fail+=("drops: $(grep drops <<<"$status")")
  kill -TERM "$relay_pid"
  wait "$relay_pid"
  rc=$?
  kill "$echo_pid" 2>/dev/null
  wait "$echo_pid" 2>/dev/null
  [ "$rc" = 0 ] || fail+=("exit status $rc")
  grep -q "stopped cleanly" "$dir/log" || fail+=("no \"stopped cleanly\"")
  if grep -E " (error|critical) " "$dir/log" >/dev/null; then fail+=("error logged: $(grep -E ' (error|critical) ' "$dir/log" | head -n 2 | tr '\n' ' ')"); fi
  case $want in
    userspace) grep -q "BPF data path unavailable" "$dir/log" || fail+=("no \"BPF data path unavailable\" warning") ;;
    flow-setup-fails) grep -q "kernel path not set up (load private verdict instance" "$dir/log" || fail+=("flows were set up in the kernel") ;;
    *) if grep -v "^libbpf" "$dir/log" | grep -q warning; then fail+=("warning logged: $(grep warning "$dir/log" | head -n 1)"); fi ;;
  esac
  if [ "$want" = flow-bind-denied ]; then
    grep -q "UDP flow socket: bind.*Permission denied" "$dir/log" || fail+=("flow sockets were not refused")
  elif grep -q "UDP flow socket: bind" "$dir/log"; then
    fail+=("a flow socket could not bind: $(grep -m1 'UDP flow socket: bind' "$dir/log")")
  fi
  echo "CapEff-at-traffic=$eff"
  if [ "${#fail[@]}" = 0 ]; then echo RESULT=ok; else printf 'RESULT=%s\n' "${fail[*]}"; fi
  exit 0
fi

# --- driver -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "caps.sh: run as root" >&2; exit 2; }
[ -x "$relay" ] || { echo "caps.sh: no relay binary at $relay (--relay PATH)" >&2; exit 2; }
for tool in setpriv socat unshare cc; do
  command -v "$tool" >/dev/null || { echo "caps.sh: needs $tool" >&2; exit 2; }
done
chmod 0755 "$work"
cc -shared -fPIC -O2 -Wall -o "$shim" "$here/drop_caps_at_ready.c" -ldl || exit 2

# capability numbers: NET_BIND_SERVICE 10, NET_ADMIN 12, SYS_ADMIN 21, BPF 39
# user | start caps | kept after READY | port | expected datapath | meaning
cases=(
  "root|+bpf,+net_admin,+net_bind_service|39,12,10|5300|kernel|unit's set, all kept"
  "nobody|+bpf,+net_admin,+net_bind_service|39,12,10|5300|kernel|unit's set as non-root (ambient), all kept"
  "nobody|+bpf,+net_admin|39,12|5300|kernel|CAP_BPF+CAP_NET_ADMIN only"
  "nobody|+sys_admin|21|5300|kernel|CAP_SYS_ADMIN alone (the pre-5.8 way) also loads"
  "nobody|+bpf|39|5300|userspace|CAP_BPF alone: prog load refused, falls back to user space"
  "nobody|+net_admin|12|5300|userspace|CAP_NET_ADMIN alone: falls back to user space"
  "nobody|+bpf,+net_admin|39|5300|kernel|after READY keep CAP_BPF only"
  "nobody|+bpf,+net_admin|12|5300|kernel|after READY keep CAP_NET_ADMIN only"
  "nobody|+bpf,+net_admin||5300|kernel|after READY keep nothing"
  "nobody|+bpf,+net_admin,+net_bind_service|39|53|flow-bind-denied|port 53, after READY keep CAP_BPF only: flow sockets refused"
  "nobody|+bpf,+net_admin,+net_bind_service|39,10|53|kernel|port 53, after READY keep CAP_BPF+CAP_NET_BIND_SERVICE"
  "nobody|+bpf,+net_admin|39,12|5300/unix|kernel|UNIX upstream, CAP_BPF+CAP_NET_ADMIN kept"
  "nobody|+bpf,+net_admin|39|5300/unix|flow-setup-fails|UNIX upstream, after READY keep CAP_BPF only"
  "nobody|+bpf,+net_admin||5300/unix|flow-setup-fails|UNIX upstream, after READY keep nothing"
)

passed=0 failed=0
for c in "${cases[@]}"; do
  IFS='|' read -r user start keep port want meaning <<<"$c"
  out=$(CAPS_IN_NETNS=1 CAPS_WORK=$work SOCKRELAY=$relay unshare --net "$0" "$user" "$start" "$keep" "$port" "$want" 2>&1)
  result=$(sed -n 's/^RESULT=//p' <<<"$out")
  eff=$(sed -n 's/^CapEff-at-traffic=//p' <<<"$out")
  line="user=$user start={$start} keep-after-ready={$keep} port=$port want=$want CapEff=$eff: $meaning"
  if [ "$result" = ok ]; then
    echo "ok    $line"
    passed=$((passed + 1))
  else
    echo "FAIL  $line"
    echo "      ${result:-$out}"
    failed=$((failed + 1))
  fi
done
[ -n "${CAPS_KEEP_WORK:-}" ] || rm -rf "$work"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
