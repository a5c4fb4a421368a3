#!/usr/bin/env bash
# Installs every Debian 12 package the build, the demo and the tests use.
# Idempotent: only missing packages are installed.
set -euo pipefail

packages=(
  # build
  cmake make g++ pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  libsystemd-dev libtomlplusplus-dev libspdlog-dev libgtest-dev
  # demo, tests and benchmarks
  iproute2 socat systemd procps shellcheck clang-format
  # lint: the size rule (tests/lint/size_check.sh)
  clang-tidy
  # fuzzing: libFuzzer and clang's sanitizer runtimes (tests/fuzz/run.sh)
  libclang-rt-14-dev
  # man pages (scdoc renders, mandoc lints) and the Debian package
  scdoc mandoc debhelper lintian
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# promtool (the Cli.StatusPrometheusPassesPromtool test), unpacked from
# Debian's prometheus package into a cache directory, not installed.
"$(dirname "$0")/install-promtool.sh" >/dev/null
