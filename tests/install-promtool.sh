#!/usr/bin/env bash
# Unpacks promtool from Debian's `prometheus` package into a cache directory,
# for the tests that check `sockrelay status --format prometheus` with
# `promtool check metrics`. The package is downloaded (apt-get download) and
# unpacked (dpkg -x), never installed: no Prometheus server is set up or
# started. Idempotent; prints the path of promtool.
#
# Usage: tests/install-promtool.sh [DIR]   (default $SOCKRELAY_TOOLS_DIR or
#        /var/cache/sockrelay/test-tools; the tests look there)
set -euo pipefail

dir=${1:-${SOCKRELAY_TOOLS_DIR:-/var/cache/sockrelay/test-tools}}
promtool=$dir/usr/bin/promtool
if [[ ! -x $promtool ]]; then
  mkdir -p "$dir/deb"
  # apt-get download writes to the current directory; _apt cannot write
  # into a root-only one, so apt warns and downloads as root: harmless.
  (cd "$dir/deb" && { apt-get download prometheus 2>/dev/null ||
    { apt-get update -qq && apt-get download prometheus; }; } >&2)
  debs=("$dir"/deb/prometheus_*.deb)
  dpkg -x "${debs[0]}" "$dir"
  rm -rf "$dir/deb"
fi
"$promtool" --version >/dev/null
echo "$promtool"
