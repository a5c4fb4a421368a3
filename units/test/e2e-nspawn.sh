#!/usr/bin/env bash
# units/test/e2e-nspawn.sh — the units end to end under a real systemd as
# PID 1: a Debian 12 container (systemd-nspawn --boot) on a debootstrap
# rootfs cached in units/test/out/ (gitignored; the first run takes about a
# minute to build it).
#
# The Debian package (tests/package/build-deb.sh, or --deb FILE) is bound
# into the container read-only and installed there with dpkg by e2e-guest.sh,
# which runs as a oneshot service at boot and tests the installed files:
# nothing started by the install, socket activation by the first datagram,
# READY=1, `sockrelay status` on the kernel path, a clean stop, the template
# pair, ExecStartPre= refusing a bad config, `systemd-analyze security`, the
# man pages, then reinstall, remove and purge (no relay left running, no
# socket file left). The container has a private network
# (only its own loopback) and a volatile overlay root (the cached rootfs is
# never changed). BPF inside: --capability=CAP_BPF (nspawn's default set has
# neither it nor bpf() in its seccomp allow list) and
# --system-call-filter=bpf; CAP_NET_ADMIN comes with --private-network.
#
# Usage: units/test/e2e-nspawn.sh [--deb FILE] [--timeout SECS] [--rebuild-rootfs]
#   --deb FILE         the package to test (default: build it from this tree
#                      with tests/package/build-deb.sh --out units/test/out/deb)
#   --timeout SECS     limit for boot + tests (default 240)
#   --rebuild-rootfs   discard the cached rootfs
# Root. Prints one line per check, the timings and "N passed, M failed";
# exit 1 on a failure, 2 if it could not run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$here/out
deb=
timeout_secs=240
rebuild=0
while (($#)); do
  case "$1" in
    --deb) deb=$(readlink -f "$2"); shift 2 ;;
    --timeout) timeout_secs=$2; shift 2 ;;
    --rebuild-rootfs) rebuild=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

run_start=$SECONDS
log() { printf '[e2e-nspawn %4ds] %s\n' "$((SECONDS - run_start))" "$*"; }
die() { log "ERROR: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, systemd-nspawn, BPF)"
grep -qxF '/units/test/out/' "$repo/.gitignore" ||
  die "/units/test/out/ must be in .gitignore: the rootfs is never committed"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# --- 1. the rootfs (cached) -----------------------------------------------------
packages=systemd,systemd-sysv,dbus,iproute2,socat,libbpf1,libelf1,libsystemd0,libtomlplusplus3,libspdlog1.10,libfmt9,procps,man-db
rootfs=$out/rootfs
mkdir -p "$out"
if [ "$rebuild" = 1 ] || [ "$(cat "$out/rootfs.packages" 2>/dev/null)" != "$packages" ]; then
  rm -rf "$rootfs" "$rootfs.tmp"
fi
if [ ! -d "$rootfs" ]; then
  # The mirror apt already uses on this machine (deb822 or one-line format).
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1 || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "debootstrap bookworm from $mirror into $rootfs (once; cached)"
  t=$SECONDS
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs.tmp" "$mirror" \
    >"$out/debootstrap.log" 2>&1 || die "debootstrap failed: see $out/debootstrap.log"
  rm -rf "$rootfs.tmp/var/cache/apt/archives/"*.deb
  mv "$rootfs.tmp" "$rootfs"
  echo "$packages" >"$out/rootfs.packages"
  log "rootfs built in $((SECONDS - t))s"
else
  log "rootfs cached: $rootfs"
fi

# --- 2. stage: the install tree, the guest script, the test service ---------------
stage=$out/stage
results=$out/results
rm -rf "$stage" "$results"
mkdir -p "$stage" "$results"
if [ -z "$deb" ]; then
  log "building the package (tests/package/build-deb.sh)"
  deb=$("$repo/tests/package/build-deb.sh" --out "$out/deb" | tail -n 1) || die "the package did not build"
fi
[ -f "$deb" ] || die "no package $deb"
cp "$deb" "$stage/sockrelay.deb"
cp "$here/e2e-guest.sh" "$stage/"
# promtool (Debian's prometheus package, unpacked; no server runs) checks
# what `sockrelay status --format prometheus` prints inside the container.
cp "$("$repo/tests/install-promtool.sh")" "$stage/promtool"
cat >"$stage/sockrelay-e2e.service" <<'UNIT'
[Unit]
Description=sockrelay units end-to-end test
After=basic.target
[Service]
Type=oneshot
ExecStart=/stage/e2e-guest.sh
UNIT

# --- 3. boot ------------------------------------------------------------------------
log "booting the container (limit ${timeout_secs}s)"
t=$SECONDS
set +e
timeout --kill-after=10 "$timeout_secs" systemd-nspawn --quiet --register=no --keep-unit \
  --directory="$rootfs" --volatile=overlay --private-network \
  --capability=CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON --system-call-filter=bpf \
  --bind-ro="$stage:/stage" --bind="$results:/results" \
  --bind-ro="$stage/sockrelay-e2e.service:/etc/systemd/system/sockrelay-e2e.service" \
  --boot -- systemd.wants=sockrelay-e2e.service >"$out/console.log" 2>&1 </dev/null
rc=$?
set -e
container_secs=$((SECONDS - t))
log "container ran ${container_secs}s (nspawn exit $rc; console in $out/console.log)"

# --- 4. report ------------------------------------------------------------------------
[ -s "$results/log" ] || die "no results from the guest (see $out/console.log)"
cat "$results/log"
[ ! -f "$results/security.txt" ] || {
  log "systemd-analyze security (full table in $results/security.txt):"
  tail -n 1 "$results/security.txt"
}
summary=$(sed -n 's/^SUMMARY //p' "$results/log")
[ -n "$summary" ] || { echo "guest did not finish (timeout?)"; summary="? passed, 1 failed"; }
log "total ${SECONDS}s"
echo "$summary"
[ "$rc" = 0 ] && [[ $summary == *" 0 failed" ]]
