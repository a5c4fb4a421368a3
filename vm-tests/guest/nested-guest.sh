#!/bin/sh
# PID 1 of the second-level guest of `vm-tests/run --nested` (busybox sh, as
# root). The first-level guest ("the host" here, CID 2) boots it with a
# vhost-vsock-pci device, so VSOCK between the two crosses the real virtio
# transport, not vsock_loopback. This guest runs the guest half of the
# bridge test started by checks.sh nested_vsock:
#   a local client -> unix-stream -> sockrelay -> vsock-stream "host:PORT"
#   -> (virtio) -> the host's sockrelay -> the host's unix-stream echo service
# and checks that every byte comes back. Everything the host reads is a line
# on this guest's serial console starting with "L2 ":
#   L2 AT <event> <uptime seconds>    how far the boot got, and when
#   L2 OUT <text>                     a measurement, kept in the results
#   L2 RESULT PASS|FAIL <detail>      the verdict (the last L2 line)
# Parameters come on the kernel command line: nested.port=PORT (where the
# host's relay listens), nested.bytes=N (bytes sent and echoed back).
# (The busybox applet links are in the initramfs already: vm-tests/run.)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
echo 1 >/proc/sys/kernel/printk
ip link set lo up

at() { echo "L2 AT $1 $(cut -d' ' -f1 /proc/uptime)"; }
out() { echo "L2 OUT $*"; }
finish() {
  echo "L2 RESULT $1 $2"
  dmesg | tail -n 30 | sed 's/^/L2 dmesg: /'
  sync
  poweroff -f
}
at init

# shellcheck source=/dev/null # written by vm-tests/run
. /nested/env
param() { sed -n "s/.*nested\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
port=$(param port)
bytes=$(param bytes)
if [ -z "$port" ] || [ -z "$bytes" ] || [ $((bytes % 4096)) -ne 0 ]; then
  finish FAIL "no nested.port or nested.bytes (a multiple of 4096) on the command line: $(cat /proc/cmdline)"
fi

while read -r module; do
  insmod "/modules/$module" || finish FAIL "insmod $module failed"
done </modules/order
at modules-loaded
# The virtio transport binds to the vhost-vsock-pci device: without it this
# guest would have no VSOCK peer at all, and the test would be meaningless.
bound=no
for device in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do
  [ -e "$device" ] && bound=yes
done
[ "$bound" = yes ] || finish FAIL "no virtio device bound to vmw_vsock_virtio_transport"

dir=/run/nested
mkdir -p "$dir"
cat >"$dir/relay.toml" <<EOF
[relay]
log-level = "info"
control = "$dir/control.sock"

[endpoints.local-apps]
type = "unix-stream"
listen = "$dir/to-host.sock"

[endpoints.host]
type = "vsock-stream"
connect = "host:$port"

[[routes]]
from = "local-apps"
to = "host"
EOF
"$RELAY" run --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
relay_pid=$!
# Wait for the listening socket, not with `sockrelay status`: every extra
# process that maps the relay's libraries costs seconds two levels down,
# and it competes with the relay's own start for the one vCPU.
tries=0
until [ -S "$dir/to-host.sock" ] && [ -S "$dir/control.sock" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 600 ] || ! kill -0 "$relay_pid" 2>/dev/null; then
    sed 's/^/L2 relay: /' "$dir/relay.log"
    finish FAIL "the relay did not come up"
  fi
  sleep 0.2
done
at relay-ready

# Checksummed both ways: the bytes go to the host's echo service and come
# back; socat half-closes after the last byte and waits (-t) for the echo's
# EOF, which the relays carry through.
dd if=/dev/urandom of="$dir/sent" bs=4096 count=$((bytes / 4096)) 2>/dev/null
start=$(cut -d' ' -f1 /proc/uptime)
socat -t 300 -T 300 - "UNIX-CONNECT:$dir/to-host.sock" <"$dir/sent" >"$dir/received" 2>"$dir/socat.err"
socat_rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
at echoed
sent_sum=$(sha256sum <"$dir/sent" | cut -d' ' -f1)
received_sum=$(sha256sum <"$dir/received" | cut -d' ' -f1)
received_bytes=$(wc -c <"$dir/received")
out "echo bytes=$bytes received=$received_bytes seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') sha256_match=$([ "$sent_sum" = "$received_sum" ] && echo yes || echo no)"

# Round trips of 64 bytes through both relays and the virtio transport.
if "$LOAD" pingpong --to "$dir/to-host.sock" --count 100 --warmup 10 >"$dir/pingpong.out" 2>&1; then
  out "$(cat "$dir/pingpong.out")"
else
  echo "L2 pingpong failed: $(tail -n 1 "$dir/pingpong.out")"
fi
at finished

"$RELAY" status --control "$dir/control.sock" 2>&1 | sed 's/^/L2 status: /'
kill "$relay_pid" 2>/dev/null
sed 's/^/L2 relay: /' "$dir/relay.log"
sed 's/^/L2 socat: /' "$dir/socat.err"
if [ "$socat_rc" -ne 0 ]; then
  finish FAIL "socat exit $socat_rc: $(tail -n 1 "$dir/socat.err")"
elif [ "$received_bytes" -ne "$bytes" ] || [ "$sent_sum" != "$received_sum" ]; then
  finish FAIL "sent $bytes bytes, $received_bytes came back, sha256 $([ "$sent_sum" = "$received_sum" ] && echo equal || echo differs)"
fi
finish PASS "$bytes bytes to the host's echo service and back over virtio VSOCK, sha256 equal"
