#!/usr/bin/env bash
# Install what is missing, build (warnings as errors), run every test, then run
# the suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Usage: deploy/check.sh [--no-sanitize]
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

if [ "${1:-}" != "--no-sanitize" ]; then
  echo "== build (ASan+UBSan, -Werror) in build-asan/"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLB_WERROR=ON \
        -DLB_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j "$jobs"
  echo "== tests under ASan+UBSan"
  # OpenBLAS/OpenMP thread pools are not leaks of ours.
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     LOWBIT_SANITIZED=1 ctest --output-on-failure -j "$jobs" -LE slow)
fi
echo "== all checks passed"
