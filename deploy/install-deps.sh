#!/usr/bin/env bash
# Install the Debian 12 packages lowbit needs (clang and libFuzzer: the fuzz
# smoke runs of deploy/check.sh). Does nothing when all are present.
# Works as root or through sudo. Usage: deploy/install-deps.sh [--check]
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libopenblas-dev liblapacke-dev
  libzmq3-dev libmsgpack-dev libhiredis-dev
  libopenmpi-dev openmpi-bin
  redis-server redis-tools
  libcmocka-dev libjansson-dev
  clang libfuzzer-14-dev libclang-rt-14-dev libomp-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present, nothing to do"
  exit 0
fi

if [ "${1:-}" = "--check" ]; then
  echo "install-deps: missing: ${missing[*]}" >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "install-deps: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
