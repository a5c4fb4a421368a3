#!/usr/bin/env bash
# tests/package/build-deb.sh — builds the Debian package from this tree and
# runs lintian on it.
#
# The tree's files (tracked, and new ones not ignored: what `git status`
# would commit) are copied to OUT/src, where `dpkg-buildpackage -b` builds
# (no build artefacts in the work tree); ccache is used when installed.
# lintian must report no error and no warning: each tag that stays is
# overridden in debian/sockrelay.lintian-overrides with its reason.
#
# Usage: tests/package/build-deb.sh [--out DIR]   (default tests/package/out)
# Prints the path of the .deb on its last line; exit 1 on a build or lintian
# failure. Installs debhelper, lintian and scdoc if missing (root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$here/out
while (($#)); do
  case "$1" in
    --out) out=$(readlink -f "$2"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
log() { echo "[build-deb] $*" >&2; }

missing=()
for p in debhelper lintian scdoc dpkg-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

src=$out/src
rm -rf "$src" "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src" 2>/dev/null) ||
  { log "copying the tree failed"; exit 1; }
# cmake >= 3.17 reads the launcher from the environment.
if command -v ccache >/dev/null; then
  export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=$src
fi
log "dpkg-buildpackage -b in $src (log: $out/build.log)"
t=$SECONDS
(cd "$src" && DEB_BUILD_OPTIONS="parallel=$(nproc)" dpkg-buildpackage -b -uc -us) >"$out/build.log" 2>&1 ||
  { tail -n 30 "$out/build.log" >&2; log "dpkg-buildpackage failed: see $out/build.log"; exit 1; }
log "built in $((SECONDS - t))s"
# dpkg-buildpackage writes next to the source directory, i.e. into OUT.
deb=$(ls "$out"/sockrelay_*.deb)
changes=$(ls "$out"/sockrelay_*.changes)
log "lintian $changes"
if ! lintian --fail-on error,warning --info "$changes" >"$out/lintian.txt" 2>&1; then
  cat "$out/lintian.txt" >&2
  log "lintian: errors or warnings above (justify a tag in debian/sockrelay.lintian-overrides, or fix it)"
  exit 1
fi
sed 's/^/  /' "$out/lintian.txt" >&2
log "lintian clean (info tags above, if any)"
echo "$deb"
