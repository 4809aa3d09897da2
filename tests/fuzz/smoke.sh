#!/usr/bin/env bash
# Smoke run of one libFuzzer target (ctest fuzz_smoke_*): RUNS inputs from a
# fixed seed, starting from the checked-in corpus, which stays untouched (new
# inputs go to a temp directory that is removed). Fails on any crash, leak,
# timeout or allocation over 512 MB.  Usage: smoke.sh FUZZ_BINARY CORPUS_DIR RUNS
set -euo pipefail
# one thread per target: OpenMP workers spinning beside the fuzzer only cost time
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive
bin=$1 corpus=$2 runs=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/lowbit-fuzz-smoke-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"   # crash-* / leak-* files land here (and are printed on failure)
set +e
"$bin" -runs="$runs" -seed=1 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
  -max_total_time=120 -print_final_stats=1 "$work" "$corpus" > log 2>&1
rc=$?
set -e
tail -n 25 log
for f in crash-* leak-* timeout-* oom-*; do
  [ -e "$f" ] && { echo "finding: $f"; od -An -c "$f" | head -n 8; }
done
exit $rc
