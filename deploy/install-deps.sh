#!/usr/bin/env bash
# Install the Debian 12 packages lowbit needs. Does nothing when all are present.
# Works as root or through sudo. Usage: deploy/install-deps.sh [--check]
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libopenblas-dev liblapacke-dev
  libzmq3-dev libmsgpack-dev libhiredis-dev
  libopenmpi-dev openmpi-bin
  redis-server redis-tools
  libcmocka-dev libjansson-dev
  python3-numpy nodejs
)

# Pinned npm test references (package.json + package-lock.json committed), installed
# into ignored node_modules/ here, never at test time. node-llama-cpp ships prebuilt
# llama.cpp binaries; its postinstall (download/build) is skipped.
npm_refs() {
  local dir
  for dir in tests/llama-cpp-ref; do
    local root
    root=$(cd "$(dirname "$0")/.." && pwd)
    [ -d "$root/$dir/node_modules" ] && continue
    if [ "${1:-}" = "--check" ]; then
      echo "install-deps: missing: $dir/node_modules" >&2
      return 1
    fi
    if ! command -v npm >/dev/null 2>&1; then
      echo "install-deps: npm missing; cannot install $dir (install Debian's npm)" >&2
      return 1
    fi
    echo "install-deps: npm ci in $dir"
    (cd "$root/$dir" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true \
       npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  done
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 20 ]; then
    echo "install-deps: node-llama-cpp 3.21.1 needs Node.js >= 20, found $(node --version" \
         "2>/dev/null); the GGUF client test will fail until a newer nodejs is installed" >&2
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  npm_refs "${1:-}"
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
npm_refs
echo "install-deps: done"
