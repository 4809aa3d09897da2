#!/usr/bin/env bash
# Install what is missing, build (warnings as errors), run every test, then run
# the suite again under AddressSanitizer + UndefinedBehaviorSanitizer, then a
# short libFuzzer smoke run of every parser (clang, build-fuzz/).
# Usage: deploy/check.sh [--no-sanitize] [--no-fuzz]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc 2>/dev/null || echo 2)

bash deploy/install-deps.sh

echo "== build (Release, -Werror) in build/"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLB_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
echo "== tests"
(cd build && ctest --output-on-failure -j "$jobs")

no_sanitize=0 no_fuzz=0
for a in "$@"; do
  case $a in
  --no-sanitize) no_sanitize=1 ;;
  --no-fuzz) no_fuzz=1 ;;
  *) echo "usage: deploy/check.sh [--no-sanitize] [--no-fuzz]" >&2; exit 2 ;;
  esac
done

if [ $no_sanitize = 0 ]; then
  echo "== build (ASan+UBSan, -Werror) in build-asan/"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLB_WERROR=ON \
        -DLB_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j "$jobs"
  echo "== tests under ASan+UBSan"
  # OpenBLAS/OpenMP thread pools are not leaks of ours.
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     ctest --output-on-failure -j "$jobs" -LE slow)
fi
if [ $no_fuzz = 0 ]; then
  # Only the fuzz targets and the libraries they link are built here. -Werror
  # stays off: clang warns (-Wdouble-promotion, vectorizer remarks) where gcc,
  # the compiler of the two builds above, does not.
  echo "== libFuzzer smoke runs (clang, ASan+UBSan) in build-fuzz/"
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLB_FUZZ=ON \
        -DLB_SANITIZE=address,undefined >/dev/null
  cmake --build build-fuzz -j "$jobs" --target fuzz_all
  (cd build-fuzz && ctest --output-on-failure -R '^fuzz_smoke_')
fi
echo "== all checks passed"
