#!/usr/bin/env bash
# bench/pipeline.sh: whole-model `lowbit quantize` time and peak RSS, and the
# stories260K quality table (exact bpw, KL vs fp, ppl). Prints JSON lines.
#
#   bench/pipeline.sh BUILD_DIR [speed|quality|synth7b|all]
#
# speed:   stories260K, gptq 3-bit, the shared calibration (128 x 256 tokens)
# synth7b: `lowbit synth --preset llama-7b --layers 2` and SYNTH_SEQS x 2048
#          random calibration ids (fixed seed; default 128 x 2048 as in the
#          issue; that needs ~4 GiB per activation artifact and hours of CPU on a
#          small machine, so lower SYNTH_SEQS there and say so)
# quality: the table written to docs/results.md by bench/results_table.py
# Scratch goes to ${LB_BENCH_TMP:-/tmp}/lowbit-bench-$$ and is removed at the end.
set -euo pipefail
BUILD=${1:?usage: bench/pipeline.sh BUILD_DIR [speed|quality|synth7b|all]}
WHAT=${2:-all}
SRC=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${LOWBIT_SHARED:-$SRC/../shared}
LOWBIT=$BUILD/lowbit
MODEL=$SHARED/models/stories260K
CALIB=$SHARED/data/stories260K-calib.u32
EVAL=$SHARED/data/stories260K-eval.u32
THREADS=${THREADS:-2}
TMP=${LB_BENCH_TMP:-/tmp}/lowbit-bench-$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

# Runs quantize with --json; prints the summary line with the configuration added.
quantize_line() { # name out args...
    local name=$1 out=$2
    shift 2
    local t0 t1
    t0=$(date +%s.%N)
    "$LOWBIT" quantize --out "$out" --threads "$THREADS" --json "$@" >"$TMP/q.log" 2>"$TMP/q.err" || {
        echo "{\"bench\":\"pipeline\",\"config\":\"$name\",\"error\":$(tail -1 "$TMP/q.err" | python3 -c 'import json,sys;print(json.dumps(sys.stdin.read().strip()))')}"
        return 1
    }
    t1=$(date +%s.%N)
    tail -1 "$TMP/q.log" | python3 -c "
import json,sys
d=json.loads(sys.stdin.read()); d.update(bench='pipeline', config='$name', wall_s=round($t1-$t0,3))
print(json.dumps(d))"
}

if [[ $WHAT == speed || $WHAT == all ]]; then
    quantize_line stories260K-gptq3-shared-calib "$TMP/s" --model "$MODEL" --calib "$CALIB" \
        --ctx 256 --method gptq --bits 3
    rm -rf "$TMP/s"
fi

if [[ $WHAT == synth7b || $WHAT == all ]]; then
    SEQS=${SYNTH_SEQS:-128}
    "$LOWBIT" synth --preset llama-7b --layers 2 --out "$TMP/synth" >/dev/null
    python3 - "$TMP/synth-calib.u32" "$SEQS" <<'PY'
import random, struct, sys
random.seed(1234)
n = int(sys.argv[2]) * 2048
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<%dI" % n, *(random.randrange(32000) for _ in range(n))))
PY
    quantize_line "synth-llama7b-2layers-gptq3-${SEQS}x2048" "$TMP/s7" --model "$TMP/synth" \
        --calib "$TMP/synth-calib.u32" --ctx 2048 --method gptq --bits 3
    rm -rf "$TMP/s7" "$TMP/synth"
fi

if [[ $WHAT == quality || $WHAT == all ]]; then
    # name|method args (g128 > the 64 input columns of stories260K: group 32 instead)
    while IFS='|' read -r name args; do
        [[ -z $name ]] && continue
        # shellcheck disable=SC2086
        if line=$(quantize_line "$name" "$TMP/q" --model "$MODEL" --calib "$CALIB" --ctx 256 $args); then
            ev=$("$LOWBIT" eval --model "$TMP/q" --ref "$MODEL" --tokens "$EVAL" --ctx 256 \
                --threads "$THREADS" --json)
            python3 -c "
import json,sys
q=json.loads(sys.argv[1]); e=json.loads(sys.argv[2])
print(json.dumps(dict(bench='quality', config=q['config'], args=sys.argv[3], bpw=q['bpw'],
  file_bytes=q['file_bytes'], kl=e['kl'], ppl=e['ppl'], top1=e['top1'], quantize_s=q['seconds'])))" \
                "$line" "$ev" "$args"
        else
            echo "$line"
        fi
        rm -rf "$TMP/q"
    done <<'CONFIGS'
RTN 2|--method rtn --bits 2
RTN 3|--method rtn --bits 3
RTN 4|--method rtn --bits 4
RTN 2 g32|--method rtn --bits 2 --group-size 32
GPTQ 2|--method gptq --bits 2
GPTQ 3|--method gptq --bits 3
GPTQ 4|--method gptq --bits 4
GPTQ 2 g32|--method gptq --bits 2 --group-size 32
CLAQ 2|--method claq --bits 2
CLAQ 2.1|--method claq --bits 2.1
CLAQ 2.2|--method claq --bits 2.2
CLAQ 3|--method claq --bits 3
CLAQ 3.1|--method claq --bits 3.1
PB-LLM 10%|--method pbllm --bits 1 --salient 0.1
PB-LLM 20%|--method pbllm --bits 1 --salient 0.2
BiLLM|--method billm --bits 1
QBB N=2|--method qbb --bits 1 --bases 2
QBB N=3|--method qbb --bits 1 --bases 3
QBB N=4|--method qbb --bits 1 --bases 4
CONFIGS
    ev=$("$LOWBIT" eval --model "$MODEL" --tokens "$EVAL" --ctx 256 --threads "$THREADS" --json)
    python3 -c "
import json,sys
e=json.loads(sys.argv[1]); print(json.dumps(dict(bench='quality', config='fp32', bpw=32.0, kl=0.0, ppl=e['ppl'], top1=1.0)))" "$ev"
fi
