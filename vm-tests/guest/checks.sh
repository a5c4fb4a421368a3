#!/bin/sh
# The commands guest tests run: `sh checks.sh FUNCTION ARGS...` (see
# tests.sh). Exit 0 = PASS, 77 = SKIP, else FAIL; the last line printed is
# the test's one-line detail. `VMOUT <test> <text>` lines are kept on the host
# in vm-tests/out/results/<kernel>/<test>.txt.
# Environment (from init): RELAY, TESTS (binaries), KERNEL (6.12, 6.1),
# VMTEST_NAME, VMTEST_LOG (this test's output file).

vmout() { echo "VMOUT $VMTEST_NAME $*"; }

# load_modules: the modules vm-tests/run put in /modules, dependencies first.
load_modules() {
  while read -r module; do
    insmod "/modules/$module" || return 1
  done </modules/order
  echo "loaded $(tr '\n' ' ' </modules/order)on $(uname -r)"
}

# gtest FILTER: the integration tests matching FILTER. Their output goes
# straight to the test's log, so a timeout still shows where it hung.
gtest() {
  start_line=$(($(wc -l <"$VMTEST_LOG") + 1))
  "$TESTS" --gtest_filter="$1" --gtest_color=no 2>&1
  rc=$?
  out=/tmp/gtest.$VMTEST_NAME.out
  tail -n "+$start_line" "$VMTEST_LOG" >"$out"
  # One line per finished test: "[  STATUS  ] Suite.Name[, where ...] (N ms)".
  grep -E '^\[ +(OK|FAILED|SKIPPED) +\] [^ ]+\.[^ ]+.* \([0-9]+ ms\)$' "$out" >"$out.done"
  sed -E 's/, where GetParam\(\) = .* (\([0-9]+ ms\))$/ \1/' "$out.done" | while read -r line; do vmout "$line"; done
  n_pass=$(grep -c '^\[       OK \]' "$out.done")
  n_fail=$(grep -c '^\[  FAILED  \]' "$out.done")
  n_skip=$(grep -c '^\[  SKIPPED \]' "$out.done")
  failed_names=$(grep '^\[  FAILED  \]' "$out.done" | sed -E 's/^[^]]*\] ([^ ,]+).*/\1/' | tr '\n' ' ')
  echo "gtest '$1': $n_pass passed, $n_fail failed, $n_skip skipped (exit $rc)${failed_names:+; failed: $failed_names}"
  [ "$rc" -eq 0 ] && [ "$n_pass" -gt 0 ]
}

# gtest_skips FILTER: every test FILTER selects skips (a kernel that lacks
# the feature): SKIP with the first test's reason; FAIL if one ran.
gtest_skips() {
  out=/tmp/gtest.$VMTEST_NAME.skips
  "$TESTS" --gtest_filter="$1" --gtest_color=no >"$out" 2>&1
  n_run=$(grep -Ec '^\[ +(OK|FAILED) +\]' "$out")
  reason=$(grep -m 1 -A 1 'Skipped' "$out" | tail -n 1)
  if [ "$n_run" -ne 0 ]; then
    echo "gtest '$1': $n_run tests ran where all should skip"
    return 1
  fi
  echo "gtest '$1' skipped: $reason"
  return 77
}

# matrix_probe EXPECT: `sockrelay matrix --probe --json`, every cell judged.
#   vsock-sockmap     every cell agrees with the matrix and the VSOCK cells
#                     were really probed (over vsock loopback, CID 1)
#   no-vsock-sockmap  an older kernel: VSOCK sockets cannot enter a sockmap
#                     at all (where the matrix says a cell works, its
#                     min-kernel must be above this kernel); every other cell
#                     agrees with the matrix
# While the `matrix` command is still a placeholder, the same cells come from
# the Probe.EveryTestableCellAgreesWithTheMatrix integration test's table.
matrix_probe() {
  expect=$1
  cells=/tmp/cells.txt  # "source target mode support outcome agrees", one cell a line
  source_of_cells="sockrelay matrix --probe --json"
  "$RELAY" matrix --probe --json >/tmp/matrix.json 2>/tmp/matrix.err
  matrix_rc=$?
  cat /tmp/matrix.err
  # Its exit status may say "disagreements": the cells are judged below.
  if jq -e 'type == "array" and length > 0' /tmp/matrix.json >/dev/null 2>&1; then
    echo "sockrelay matrix --probe --json: exit $matrix_rc"
    jq -r '.[] | "\(.source) \(.target) \(.mode) \(.support) \(.probe.outcome // "none") \(.probe.agrees // false) \(.["min-kernel"] // "-")"' \
      /tmp/matrix.json >"$cells"
    jq -c '.[]' /tmp/matrix.json | while read -r line; do vmout "json $line"; done
  else
    echo "sockrelay matrix --probe --json gave no matrix (exit $matrix_rc): $(head -c 300 /tmp/matrix.json)"
    source_of_cells="Probe.EveryTestableCellAgreesWithTheMatrix (matrix CLI not usable yet)"
    "$TESTS" --gtest_filter='Probe.EveryTestableCellAgreesWithTheMatrix' --gtest_color=no >/tmp/probe.out 2>&1
    cat /tmp/probe.out
    # "  udp -> tcp (egress)   caveat   delivered   detail..." ; agrees as in probe_agrees()
    awk '$2 == "->" && $3 ~ /^[a-z-]+$/ && $4 ~ /^\((egress|ingress)\)$/ {
           mode = substr($4, 2, length($4) - 2); support = $5; outcome = $6
           if (outcome == "not-testable-here") agrees = "true"
           else if (outcome == "error") agrees = "false"
           else if (outcome == "delivered") agrees = (support != "unsupported") ? "true" : "false"
           else agrees = (support == "unsupported") ? "true" : "false"
           print $1, $3, mode, support, outcome, agrees, "-" }' /tmp/probe.out >"$cells"
  fi
  while read -r line; do vmout "$line"; done <"$cells"

  total=$(wc -l <"$cells")
  if [ "$total" -eq 0 ]; then
    echo "no probe results from $source_of_cells"
    return 1
  fi
  # Judge every cell; print the ones that break the expectation.
  running=$(uname -r | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
  bad=$(awk -v expect="$expect" -v running="$running" '
    function vsock(k) { return k ~ /^vsock-/ }
    # a > b for "MAJOR.MINOR" versions
    function newer(a, b,   x, y) {
      split(a, x, "."); split(b, y, ".")
      return x[1] + 0 > y[1] + 0 || (x[1] + 0 == y[1] + 0 && x[2] + 0 > y[2] + 0)
    }
    {
      is_vsock = vsock($1) || vsock($2)
      if ($5 == "error" || $5 == "none") { print "  probe failed: " $0; next }
      if (is_vsock && $5 == "not-testable-here") { print "  VSOCK not probed: " $0; next }
      if (expect == "no-vsock-sockmap" && is_vsock) {
        if ($5 != "cannot-enter-map") print "  VSOCK entered a sockmap: " $0
        # The matrix must say why this kernel differs: a min-kernel above it.
        else if ($6 != "true" && $7 != "-" && !newer($7, running))
          print "  matrix min-kernel " $7 " <= " running " but no VSOCK sockmap here: " $0
        next
      }
      if ($6 != "true") print "  disagrees with the matrix: " $0
    }' "$cells")
  digest=$(awk '$1 ~ /^vsock-/ || $2 ~ /^vsock-/ { n[$3 " " $5]++ }
               END { for (k in n) printf "%s%s=%d", (s++ ? ", " : ""), k, n[k] }' "$cells")
  others=$(awk '$1 !~ /^vsock-/ && $2 !~ /^vsock-/ { n[$5]++ }
               END { for (k in n) printf "%s%s=%d", (s++ ? ", " : ""), k, n[k] }' "$cells")
  echo "cells from: $source_of_cells"
  if [ -n "$bad" ]; then
    echo "$bad"
    echo "$(echo "$bad" | wc -l) of $total cells break '$expect' on $(uname -r); VSOCK cells: $digest"
    return 1
  fi
  echo "$total cells as expected ($expect, $(uname -r)); VSOCK: $digest; others: $others"
}

# bench_vsock: VSOCK stream -> UNIX stream through sockrelay and socat, and
# both direct, in one run inside the guest (under TCG absolute numbers mean
# little; the ratios do). One connection pushes 64 KiB writes for 3 s
# (throughput), then 2000 round trips of 64 bytes (latency). sockrelay's
# kernel path is refused for VSOCK streams (README.md, "How a stream
# moves"), so the relay row is its user-space path; the kernel row is
# sockrelay_kernel_pair (tests/bench/kernel_pair.cpp): the relay's verdict
# program wired around the same pairing without the relay's exactness
# rules, to show what the kernel path would give. Its source writes for 1 s
# only: its psock backlog takes whatever the source sends, unbounded.
# PASS = every path delivered every byte; the numbers go to the results file.
bench_vsock() {
  dir=/tmp/bench-vsock
  mkdir -p "$dir"
  {
    echo '[relay]'
    echo 'log-level = "warn"'
    echo "control = \"$dir/control.sock\""
    echo '[endpoints.from-vsock]'
    echo 'type = "vsock-stream"'
    echo 'listen = "any:7101"'
    echo '[endpoints.to-sink]'
    echo 'type = "unix-stream"'
    echo "connect = \"$dir/sink.sock\""
    echo '[[routes]]'
    echo 'from = "from-vsock"'
    echo 'to = "to-sink"'
    echo '[endpoints.from-vsock-echo]'
    echo 'type = "vsock-stream"'
    echo 'listen = "any:7111"'
    echo '[endpoints.to-echo]'
    echo 'type = "unix-stream"'
    echo "connect = \"$dir/echo.sock\""
    echo '[[routes]]'
    echo 'from = "from-vsock-echo"'
    echo 'to = "to-echo"'
  } >"$dir/relay.toml"
  "$RELAY" run --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
  pids=$!
  socat VSOCK-LISTEN:7102,fork "UNIX-CONNECT:$dir/sink.sock" 2>"$dir/socat.log" &
  pids="$pids $!"
  socat VSOCK-LISTEN:7112,fork "UNIX-CONNECT:$dir/echo.sock" 2>"$dir/socat-echo.log" &
  pids="$pids $!"
  "$LOAD" echo --listen "$dir/echo.sock" >/dev/null 2>&1 &
  pids="$pids $!"
  "$LOAD" echo --listen vsock:any:7110 >/dev/null 2>&1 &
  pids="$pids $!"
  "$PAIR" --listen vsock:any:7103 --connect "$dir/sink.sock" >"$dir/pair.out" 2>&1 &
  pair_pids=$!
  "$PAIR" --listen vsock:any:7113 --connect "$dir/echo.sock" >"$dir/pair-echo.out" 2>&1 &
  pair_pids="$pair_pids $!"
  sleep 2
  ok=0
  report=""
  # path, where the sink listens, where the source connects, seconds
  for run in "direct-unix $dir/sink.sock $dir/sink.sock 3" "direct-vsock vsock:any:7100 vsock:1:7100 3" \
    "relay-user $dir/sink.sock vsock:1:7101 3" "socat $dir/sink.sock vsock:1:7102 3" \
    "kernel $dir/sink.sock vsock:1:7103 1"; do
    # shellcheck disable=SC2086 # split the run into its four words
    set -- $run
    "$LOAD" sink --listen "$2" --idle-s 10 >"$dir/sink.out" 2>&1 &
    sink_pid=$!
    sleep 0.5
    "$LOAD" source --to "$3" --duration "$4" >"$dir/source.out" 2>&1
    wait "$sink_pid"
    sent=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' "$dir/source.out")
    got=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' "$dir/sink.out")
    window=$(sed -n 's/.* window_s=\([0-9.]*\).*/\1/p' "$dir/sink.out")
    mibs=$(awk -v b="${got:-0}" -v w="${window:-0}" 'BEGIN { if (w > 0) printf "%.1f", b / w / 1048576; else print "0" }')
    vmout "throughput $1 sent=${sent:-0} received=${got:-0} MiB/s=$mibs"
    if [ -z "$sent" ] || [ "$sent" != "$got" ] || [ "$sent" -eq 0 ]; then
      ok=1
      echo "$1: sent ${sent:-?} received ${got:-?}"
    fi
    report="$report $1=${mibs}MiB/s"
  done
  for run in "direct-unix $dir/echo.sock" "direct-vsock vsock:1:7110" "relay-user vsock:1:7111" "socat vsock:1:7112" \
    "kernel vsock:1:7113"; do
    # shellcheck disable=SC2086
    set -- $run
    if "$LOAD" pingpong --to "$2" --count 2000 --warmup 200 >"$dir/pp.out" 2>&1; then
      p50=$(sed -n 's/.* p50_us=\([0-9.]*\).*/\1/p' "$dir/pp.out")
      p99=$(sed -n 's/.* p99_us=\([0-9.]*\).*/\1/p' "$dir/pp.out")
      vmout "pingpong $1 p50_us=$p50 p99_us=$p99"
      report="$report $1:p50=${p50}us"
    else
      ok=1
      echo "$1 ping-pong failed: $(tail -n 1 "$dir/pp.out")"
    fi
  done
  # shellcheck disable=SC2086
  kill $pair_pids 2>/dev/null
  # shellcheck disable=SC2086
  wait $pair_pids 2>/dev/null
  # What the kernel row's pairs redirected, and how much lagged behind
  # (bytes queued before the sockets entered the map, read at EOF).
  grep -h '^PAIR' "$dir/pair.out" "$dir/pair-echo.out" | while read -r line; do vmout "kernel-pair ${line#PAIR }"; done
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null
  wait 2>/dev/null
  echo "VSOCK -> UNIX stream:$report"
  return $ok
}

# nested_vsock: a real host <-> guest VSOCK pair (vm-tests/run --nested).
# This guest plays the VM host: it loads vhost_vsock and boots a
# second-level guest (same kernel, /nested/l2.cpio, /init =
# nested-guest.sh) under its own qemu (TCG) with a vhost-vsock-pci device,
# guest CID 3. Here: a unix-stream echo service and sockrelay with a
# vsock-stream listener routed to it, allow-cids = [3] (a connection that
# came over vsock_loopback would be CID 1 and refused). There: sockrelay
# with a unix-stream listener routed to vsock-stream "host:PORT", and a
# client whose checksummed bytes must all come back. PASS = the nested
# guest says so and this relay counted the session from CID 3.
nested_vsock() {
  dir=/tmp/nested
  port=5300
  bytes=$((1024 * 1024))
  guest_cid=3
  mkdir -p "$dir"
  [ -e /nested/l2.cpio ] || { echo "no nested guest in this initramfs (vm-tests/run --nested)"; return 77; }
  while read -r module; do
    # vsock and the virtio transport core are loaded already (load_modules).
    grep -q "^${module%.ko} " /proc/modules && continue
    insmod "/nested/host-modules/$module" || { echo "insmod $module failed"; return 1; }
  done </nested/host-modules/order
  [ -c /dev/vhost-vsock ] || { echo "no /dev/vhost-vsock after loading vhost_vsock"; return 1; }
  {
    echo '[relay]'
    echo 'log-level = "info"'
    echo "control = \"$dir/control.sock\""
    echo '[endpoints.from-guests]'
    echo 'type = "vsock-stream"'
    echo "listen = \"any:$port\""
    echo '[endpoints.service]'
    echo 'type = "unix-stream"'
    echo "connect = \"$dir/echo.sock\""
    echo '[[routes]]'
    echo 'from = "from-guests"'
    echo 'to = "service"'
    echo "allow-cids = [$guest_cid]"
  } >"$dir/relay.toml"
  "$LOAD" echo --listen "$dir/echo.sock" >"$dir/echo.log" 2>&1 &
  echo_pid=$!
  "$RELAY" run --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
  relay_pid=$!
  tries=0
  until "$RELAY" status --control "$dir/control.sock" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
      cat "$dir/relay.log"
      kill "$echo_pid" "$relay_pid" 2>/dev/null
      echo "the host-side relay did not come up"
      return 1
    fi
    sleep 0.2
  done

  start=$(date +%s)
  # The second-level guest. -cx16: with cmpxchg16b (SLUB's per-CPU
  # freelist) its kernel died early in boot in 2 of 4 runs with a double
  # fault at that instruction, TCG inside TCG; without it the kernel takes
  # its lock-based path. +rdrand: its crng is ready at once (without it the
  # relay waited 110 s for it). The default machine, nothing but a serial port
  # and the vhost-vsock device (-nodefaults); one vCPU, as a second thread
  # of TCG inside TCG only competes with the first.
  # A kernel that dies before L2's init has said anything is that emulation
  # flake, not the relay: booted once more, and the first attempt's console
  # is kept in the log. A test that started and failed is not retried.
  for attempt in 1 2; do
    qemu-system-x86_64 -accel tcg -cpu qemu64,+rdrand,-cx16 -m 512 -smp 1 -nodefaults -no-user-config \
      -display none -monitor none -serial "file:$dir/l2-console.log" -no-reboot \
      -device "vhost-vsock-pci,guest-cid=$guest_cid" \
      -kernel /nested/vmlinuz -initrd /nested/l2.cpio \
      -append "console=ttyS0 panic=-1 mitigations=off nested.port=$port nested.bytes=$bytes" \
      </dev/null >"$dir/qemu.log" 2>&1
    qemu_rc=$?
    grep -aq '^L2 ' "$dir/l2-console.log" && break
    [ "$attempt" = 2 ] && break
    tr -d '\r' <"$dir/l2-console.log" | tail -n 20 | sed 's/^/L2 console (attempt 1): /'
    vmout "the second-level guest's kernel died before its init ran (qemu exit $qemu_rc); booting it again"
  done
  took=$(($(date +%s) - start))
  "$RELAY" status --json --control "$dir/control.sock" >"$dir/status.json" 2>&1
  kill "$relay_pid" "$echo_pid" 2>/dev/null
  wait "$relay_pid" "$echo_pid" 2>/dev/null
  sed 's/^/qemu: /' "$dir/qemu.log"
  tr -d '\r' <"$dir/l2-console.log" >"$dir/l2-console.txt"
  grep -a '^L2 ' "$dir/l2-console.txt" >"$dir/l2.txt"
  # Its kernel's own lines too (quiet: only warnings and worse), for a
  # guest that stopped before saying anything.
  grep -av '^L2 ' "$dir/l2-console.txt" | sed 's/^/L2 console: /'
  cat "$dir/l2.txt"
  sed 's/^/host relay: /' "$dir/relay.log"
  sed 's/^/host relay status: /' "$dir/status.json"
  vmout "second-level guest ran ${took}s (qemu exit $qemu_rc)"
  sed -n 's/^L2 AT \([^ ]*\) \([^ ]*\)$/\1 at \2s of its uptime/p' "$dir/l2.txt" | while read -r line; do vmout "$line"; done
  sed -n 's/^L2 OUT //p' "$dir/l2.txt" | while read -r line; do vmout "$line"; done
  result=$(sed -n 's/^L2 RESULT //p' "$dir/l2.txt" | tail -n 1)
  case "$result" in
    PASS*) ;;
    "") echo "the second-level guest gave no result (qemu exit $qemu_rc, ${took}s)"; return 1 ;;
    *) echo "second-level guest: ${result#FAIL }"; return 1 ;;
  esac
  if ! grep -q "CID $guest_cid\|cid $guest_cid\|\"cid\": *$guest_cid" "$dir/relay.log" "$dir/status.json"; then
    echo "note: the host-side relay's log and status do not name CID $guest_cid"
  fi
  echo "${result#PASS } (second-level guest: ${took}s in all)"
}



"$@"
