# Shell helpers the shipped benchmarks share (udp_bench.sh, stream_bench.sh,
# fanout_bench.sh source it). They expect the caller's globals `started`
# (PIDs it started and has not reaped) and `work` (its scratch directory).
# shellcheck shell=bash

# The PIDs of a process's children (socat forks one per UDP peer).
children_of() {
  local file ids
  for file in /proc/"$1"/task/*/children; do
    ids=()
    { read -ra ids <"$file"; } 2>/dev/null || true
    ((${#ids[@]} == 0)) || printf '%s\n' "${ids[@]}"
  done
}

# Stops processes of ours by PID (with a forked socat's children), reaps them.
stop_pids() {
  local pid child keep=()
  for pid in "$@"; do
    for child in $(children_of "$pid"); do
      kill -TERM "$child" 2>/dev/null || true
    done
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    [[ " $* " == *" $pid "* ]] || keep+=("$pid")
  done
  started=("${keep[@]}")
  for pid in "$@"; do
    wait "$pid" 2>/dev/null || true
  done
}

cleanup() {
  stop_pids "${started[@]}"
  # shellcheck disable=SC2154 # the sourcing script sets work
  rm -rf "$work"
}

# awk does the arithmetic: bash has no floating point. The parentheses keep
# a ">" in the expression from being read as awk output redirection.
calc() { awk "BEGIN { printf \"%.${2:-1}f\", ($1) }"; }

# A process and its descendants.
proc_tree() {
  local pid=$1 child
  echo "$pid"
  for child in $(children_of "$pid"); do
    proc_tree "$child"
  done
}

# "PID ticks" (utime+stime) of every kworker and ksoftirqd thread: sockmap
# egress redirects are transmitted from a workqueue, not from the relay.
kernel_worker_ticks() {
  local stat line fields
  for stat in /proc/[0-9]*/stat; do
    { read -r line <"$stat"; } 2>/dev/null || continue
    case $line in
      *"(kworker/"* | *"(ksoftirqd/"*) ;;
      *) continue ;;
    esac
    read -ra fields <<<"${line##*) }"
    echo "${line%% *} $((fields[11] + fields[12]))"
  done
}

# key=value lookup in one result line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

# Report.
ratio() { # ratio of results $1 / $2, or "-" when a side is missing or zero
  local a=${results[$1]:-} b=${results[$2]:-}
  [[ -n $a && -n $b ]] || { echo -; return; }
  calc "$b > 0 ? $a / $b : 0" 2
}
