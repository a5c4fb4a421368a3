#!/usr/bin/env bash
# The size rule of the house (issue 13): no file under relay/ over 600 lines,
# no function in relay/ over 80 body lines. Generated code (the BPF skeletons
# in the build directory) is not counted.
#
#   tests/lint/size_check.sh BUILD_DIR
#
# BUILD_DIR is a configured and built CMake build directory of this tree: the
# function sizes come from clang-tidy's readability-function-size (threshold
# in the root .clang-tidy) over every relay/ .cpp file in its
# compile_commands.json, with relay/ headers included through the header
# filter; the skeleton headers those files include must have been generated.
# Prints one line per violation,
#   FILE:LINE: function NAME has N lines (limit 80)     (LINE: its name)
#   FILE:LINE: file has N lines (limit 600)     (LINE: the first line over)
# and exits 1 if there is any, 2 if it could not check (a file clang-tidy
# cannot parse counts as that: its functions would go unchecked).
set -euo pipefail

max_file_lines=600

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  usage
  exit 0
fi
if (($# != 1)); then
  usage >&2
  exit 2
fi
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build_dir=$(realpath "$1")
db=$build_dir/compile_commands.json
[[ -f $db ]] || { echo "size_check: no $db (configure the build first: CMAKE_EXPORT_COMPILE_COMMANDS is on)" >&2; exit 2; }
command -v clang-tidy >/dev/null || { echo "size_check: clang-tidy missing (tests/install-deps.sh installs it)" >&2; exit 2; }

# The function limit is .clang-tidy's LineThreshold minus one (see there).
threshold=$(sed -n "/readability-function-size.LineThreshold/{n;s/.*value: *'\{0,1\}\([0-9]*\).*/\1/p}" "$top/.clang-tidy")
[[ -n $threshold ]] || { echo "size_check: no readability-function-size.LineThreshold in $top/.clang-tidy" >&2; exit 2; }
max_function_lines=$((threshold - 1))

work=$(mktemp -d /tmp/sockrelay-size-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

violations=0

# File lengths: every file under relay/, tracked or new (not ignored ones).
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git -C "$top" ls-files --cached --others --exclude-standard -- relay/)
else
  mapfile -t files < <(cd "$top" && find relay -type f | sort)
fi
for file in "${files[@]}"; do
  [[ -f $top/$file ]] || continue # deleted in the work tree, not yet in the index
  lines=$(wc -l <"$top/$file")
  if ((lines > max_file_lines)); then
    echo "$file:$((max_file_lines + 1)): file has $lines lines (limit $max_file_lines)"
    violations=$((violations + 1))
  fi
done

# Function lengths. CMake writes one '"file": "PATH",' line per entry.
mapfile -t sources < <(sed -n 's/^ *"file": "\(.*\)",\{0,1\}$/\1/p' "$db" | grep "^$top/relay/.*\.cpp$" | sort -u)
if ((${#sources[@]} == 0)); then
  echo "size_check: $db lists no file under $top/relay/ (a build directory of another tree?)" >&2
  exit 2
fi

# One clang-tidy per source file, as many at once as there are CPUs; each
# writes its own report file, so that parallel outputs do not interleave.
tidy_one() {
  local out
  out=$2/$(tr / _ <<<"$5").txt
  clang-tidy -p "$1" --quiet --config-file="$3/.clang-tidy" --checks='-*,readability-function-size' \
    --header-filter="^$4" "$5" >"$out" 2>&1 || echo "exit status $?" >>"$out"
}
export -f tidy_one
printf '%s\0' "${sources[@]}" |
  xargs -0 -n 1 -P "$(nproc)" bash -c 'tidy_one "$@"' _ "$build_dir" "$work" "$top" "$top/relay/"

# "FILE:L:C: warning: function 'NAME' exceeds ..." is followed by its notes,
# one of them "FILE:L:C: note: N lines including whitespace and comments
# (threshold T)". N counts from the opening to the closing brace's line: the
# body has N - 1 lines. A header's functions appear once per file including it.
cat "$work"/*.txt | awk -v top="$top/" '
  / warning: function .* exceeds recommended size/ {
    split($0, q, "\047"); name = q[2]
    split($0, loc, ":"); where = loc[1] ":" loc[2]
  }
  / note: [0-9]+ lines including whitespace and comments \(threshold [0-9]+\)/ && name != "" {
    match($0, /note: [0-9]+ lines/); n = substr($0, RSTART + 6, RLENGTH - 12)
    match($0, /threshold [0-9]+/); t = substr($0, RSTART + 10, RLENGTH - 10)
    sub("^" top, "", where)
    printf "%s: function %s has %d lines (limit %d)\n", where, name, n - 1, t - 1
  }
  / note: / && !/ lines including whitespace/ { next }
  / warning: / && !/ exceeds recommended size/ { name = "" }
' | sort -t: -k1,1 -k2,2n -u >"$work/functions"
cat "$work/functions"
violations=$((violations + $(wc -l <"$work/functions")))

# Anything clang-tidy could not parse hides its functions: not a pass.
if grep -h -e ' error: ' -e '^exit status ' "$work"/*.txt >"$work/errors"; then
  echo "size_check: clang-tidy failed (the functions of these files went unchecked):" >&2
  sort -u "$work/errors" | head -n 40 >&2
  exit 2
fi

if ((violations)); then
  echo "size_check: $violations violation(s) of the size rule (files <= $max_file_lines lines, functions <= $max_function_lines body lines; see .clang-tidy)" >&2
  exit 1
fi
echo "size_check: ${#files[@]} files and the functions of ${#sources[@]} translation units within the limits" >&2
