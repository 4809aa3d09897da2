#!/usr/bin/env bash
# bench/rotate.sh: stories260K quality with and without --rotate hadamard, one JSON
# line per configuration (honest bpw, KL vs fp on the eval tokens, ppl, top-1).
#
#   bench/rotate.sh BUILD_DIR [SEEDS]
#
# Every configuration runs plain and rotated (seed 0); GPTQ 2/3 rotated also run
# with the extra rotation seeds in SEEDS (default "1 2") to show the seed spread.
# Scratch goes to ${LB_BENCH_TMP:-/tmp}/lowbit-rotate-$$ and is removed at the end.
set -euo pipefail
BUILD=${1:?usage: bench/rotate.sh BUILD_DIR [SEEDS]}
SEEDS=${2:-1 2}
SRC=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${LOWBIT_SHARED:-$SRC/../shared}
LOWBIT=$BUILD/lowbit
MODEL=$SHARED/models/stories260K
CALIB=$SHARED/data/stories260K-calib.u32
EVAL=$SHARED/data/stories260K-eval.u32
THREADS=${THREADS:-2}
TMP=${LB_BENCH_TMP:-/tmp}/lowbit-rotate-$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

run() { # name rotate seed args...
    local name=$1 rot=$2 seed=$3
    shift 3
    local extra=()
    [[ $rot == hadamard ]] && extra=(--rotate hadamard --seed "$seed")
    if ! "$LOWBIT" quantize --model "$MODEL" --calib "$CALIB" --ctx 256 --out "$TMP/q" \
        --threads "$THREADS" --json "$@" "${extra[@]}" >"$TMP/q.log" 2>"$TMP/q.err"; then
        python3 -c 'import json,sys; print(json.dumps(dict(bench="rotate", config=sys.argv[1], rotate=sys.argv[2], error=sys.argv[3])))' \
            "$name" "$rot" "$(tail -1 "$TMP/q.err")"
        rm -rf "$TMP/q"
        return 0
    fi
    local ev
    ev=$("$LOWBIT" eval --model "$TMP/q" --ref "$MODEL" --tokens "$EVAL" --ctx 256 \
        --threads "$THREADS" --json)
    python3 -c "
import json,sys
q=json.loads(sys.argv[1]); e=json.loads(sys.argv[2])
print(json.dumps(dict(bench='rotate', config=sys.argv[3], rotate=sys.argv[4], seed=int(sys.argv[5]),
  args=sys.argv[6], bpw=q['bpw'], quantized_bytes=q['quantized_bytes'], kl=e['kl'], ppl=e['ppl'],
  top1=e['top1'])))" "$(tail -1 "$TMP/q.log")" "$ev" "$name" "$rot" "$seed" "$*"
    rm -rf "$TMP/q"
}

while IFS='|' read -r name args; do
    [[ -z $name ]] && continue
    # shellcheck disable=SC2086
    run "$name" none 0 $args
    # shellcheck disable=SC2086
    run "$name" hadamard 0 $args
    if [[ $name == "GPTQ 2" || $name == "GPTQ 3" ]]; then
        for s in $SEEDS; do
            # shellcheck disable=SC2086
            run "$name" hadamard "$s" $args
        done
    fi
done <<'CONFIGS'
RTN 2|--method rtn --bits 2
GPTQ 2|--method gptq --bits 2
GPTQ 3|--method gptq --bits 3
GPTQ 2 g32|--method gptq --bits 2 --group-size 32
CLAQ 2.1|--method claq --bits 2.1
PB-LLM 10%|--method pbllm --bits 1 --salient 0.1
BiLLM|--method billm --bits 1
QBB N=2|--method qbb --bits 1 --bases 2
CONFIGS
