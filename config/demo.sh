#!/usr/bin/env bash
# The relay's main job on the shipped default config (config/sockrelay.toml),
# from a fresh Debian 12 machine, as root: builds, starts a UDP echo server
# at 127.0.0.1:5301, runs `sockrelay run` (UDP 127.0.0.1:5300 -> the echo
# server, in-kernel redirect), sends datagrams through it, shows the replies
# and `sockrelay status`, then stops the relay with SIGTERM.
# Everything runs in a private network namespace: nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

if [ "${SOCKRELAY_DEMO_IN_NETNS:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "run as root (BPF sockmap, network namespace)" >&2; exit 1; }
  tests/install-deps.sh
  cmake -S "$top" -B "$top/build" >/dev/null
  cmake --build "$top/build" -j "$(nproc)" --target sockrelay
  exec unshare --net env SOCKRELAY_DEMO_IN_NETNS=1 "$0" "$@"
fi

ip link set lo up
relay="$top/build/relay/sockrelay"
config="$top/config/sockrelay.toml"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "== the config"
"$relay" check --config "$config"

echo "== echo server on 127.0.0.1:5301"
socat UDP4-RECVFROM:5301,bind=127.0.0.1,fork SYSTEM:cat &
pids+=($!)

echo "== sockrelay run --config $config"
"$relay" run --config "$config" &
relay_pid=$!
pids+=("$relay_pid")
for _ in $(seq 50); do "$relay" status --config "$config" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== three clients, each sends 100 datagrams to 127.0.0.1:5300 and counts the replies"
for client in 1 2 3; do
  # One connected UDP socket per client (bash's /dev/udp). Its first
  # datagram opens the client's flow in the relay; what arrives while the
  # flow is being set up is moved by user space, everything after that
  # (and the replies) by the kernel: `status` shows the split.
  exec 3<>/dev/udp/127.0.0.1/5300
  for i in $(seq 100); do printf 'client %s datagram %s\n' "$client" "$i" >&3; done
  replies=$(timeout 2 cat <&3 || true)
  exec 3<&-
  echo "  client $client: sent 100, got $(grep -c "^client $client " <<<"$replies") replies," \
    "first \"$(head -n 1 <<<"$replies")\", last \"$(tail -n 1 <<<"$replies")\""
done

echo "== sockrelay status"
"$relay" status --config "$config"

echo "== SIGTERM"
kill -TERM "$relay_pid"
wait "$relay_pid" && echo "relay exited 0"
