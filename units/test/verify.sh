#!/usr/bin/env bash
# units/test/verify.sh — `systemd-analyze verify` on every unit in units/.
#
# verify refuses an ExecStart= whose binary does not exist, so the units are
# copied to a temporary directory with /usr/bin/sockrelay replaced by
# the built binary; templates are checked through an instance ("verify").
# Any message from systemd-analyze counts as a failure. No root needed.
#
# Usage: units/test/verify.sh [--relay PATH]   (default build/relay/sockrelay
#        or $SOCKRELAY)
# Prints one line per unit and "N passed, M failed"; exit 1 on a failure.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
units=$(cd "$here/.." && pwd)
relay=${SOCKRELAY:-$units/../build/relay/sockrelay}
if [ "${1:-}" = --relay ]; then relay=$2; shift 2; fi
relay=$(readlink -f "$relay")
[ -x "$relay" ] || { echo "verify.sh: no relay binary at $relay (--relay PATH)" >&2; exit 2; }
command -v systemd-analyze >/dev/null || { echo "verify.sh: needs systemd-analyze" >&2; exit 2; }

tmp=$(mktemp -d /tmp/sockrelay-verify.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for f in "$units"/*.service "$units"/*.socket "$units"/*.timer; do
  sed "s|/usr/bin/sockrelay|$relay|g" "$f" >"$tmp/$(basename "$f")"
done

passed=0 failed=0
check() {  # $1: unit name to verify (a template is verified as instance "verify")
  local name=$1 out
  # --recursive-errors=no: only this unit, not systemd's own units it names
  out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --recursive-errors=no --man=no "$tmp/$name" 2>&1)
  local rc=$?
  if [ "$rc" = 0 ] && [ -z "$out" ]; then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name (exit $rc)"
    while IFS= read -r l; do echo "      $l"; done <<<"$out"
    failed=$((failed + 1))
  fi
}
for f in "$tmp"/*.service "$tmp"/*.socket "$tmp"/*.timer; do
  name=$(basename "$f")
  case $name in
    *@.*) check "${name/@./@verify.}" ;;
    *) check "$name" ;;
  esac
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
