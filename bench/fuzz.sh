#!/usr/bin/env bash
# bench/fuzz.sh: runs every libFuzzer target of tests/fuzz/ for MINUTES each,
# one after the other (never two fuzzers at once), starting from the checked-in
# corpus, and prints one JSON line per target:
#   {"bench":"fuzz","target":T,"seconds":S,"runs":N,"cov":C,"ft":F,"corpus":K,
#    "crashes":X,"leaks":L,"timeouts":O,"ooms":M,"execs_per_s":E}
# cov/ft are libFuzzer's edge coverage and feature counts at the end of the run.
# A crash, leak, timeout (> 10 s per input) or allocation over 512 MB stops that
# target; its input is kept in FINDINGS (default ${LB_BENCH_TMP:-/tmp}/lowbit-fuzz-findings)
# to be fixed and then added to tests/fuzz/corpus/<target>/ as finding-*.
# The checked-in corpus is never written; new inputs go to a scratch copy.
#
#   bench/fuzz.sh MINUTES [BUILD_DIR] [TARGET...]
#
# BUILD_DIR (default build-fuzz) must be configured with
#   CC=clang cmake -S . -B build-fuzz -DLB_FUZZ=ON -DLB_SANITIZE=address,undefined
# MINUTES may be fractional (0.5 = 30 s).
set -euo pipefail
# one thread per target: OpenMP workers spinning beside the fuzzer only cost time
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive
MIN=${1:?usage: bench/fuzz.sh MINUTES [BUILD_DIR] [TARGET...]}
BUILD=${2:-build-fuzz}
[ -d "$BUILD" ] && BUILD=$(cd "$BUILD" && pwd)
shift $(( $# >= 2 ? 2 : 1 ))
SRC=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(job result st_header st_index config tokens_u32 tokens_npy manifest xfer_frame
           redis_url override claim)
fi
SECS=$(awk -v m="$MIN" 'BEGIN { s = int(m * 60 + 0.5); print (s < 1 ? 1 : s) }')
FINDINGS=${FINDINGS:-${LB_BENCH_TMP:-/tmp}/lowbit-fuzz-findings}
mkdir -p "$FINDINGS"
SCRATCH=$(mktemp -d "${LB_BENCH_TMP:-/tmp}/lowbit-fuzz-bench-XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

for t in "${TARGETS[@]}"; do
  bin=$BUILD/fuzz_$t
  if [ ! -x "$bin" ]; then
    echo "bench/fuzz.sh: $bin missing; build with -DLB_FUZZ=ON (see the header of this script)" >&2
    exit 1
  fi
  work=$SCRATCH/$t
  mkdir -p "$work/corpus" "$work/out"
  cp "$SRC/tests/fuzz/corpus/$t/"* "$work/corpus/"
  set +e
  (cd "$work/out" && "$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
      -malloc_limit_mb=512 -print_final_stats=1 -artifact_prefix="$work/out/" \
      "$work/corpus" > "$work/log" 2>&1)
  set -e
  for f in "$work/out/"*; do
    [ -e "$f" ] && cp "$f" "$FINDINGS/$t-$(basename "$f")"
  done
  count() { find "$work/out" -name "$1-*" | wc -l; }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$work/log" | grep ' cov: ' | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<< "$last")
  printf '{"bench":"fuzz","target":"%s","seconds":%s,"runs":%s,"cov":%s,"ft":%s,"corpus":%s,' \
    "$t" "$SECS" "${runs:-0}" "${cov:-0}" "${ft:-0}" "${corp:-0}"
  printf '"crashes":%s,"leaks":%s,"timeouts":%s,"ooms":%s,"execs_per_s":%s}\n' \
    "$(count crash)" "$(count leak)" "$(count timeout)" "$(count oom)" "${eps:-0}"
  if grep -q 'ERROR: libFuzzer\|ERROR: AddressSanitizer\|runtime error' "$work/log"; then
    grep -m 3 -E 'ERROR|runtime error|SUMMARY' "$work/log" | sed "s|^|  $t: |" >&2
  fi
done
