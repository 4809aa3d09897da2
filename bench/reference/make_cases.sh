#!/bin/sh
# bench/reference/make_cases.sh REFS_DIR WORK_DIR [CASE...]
# Regenerates the (W, H) cases of bench/reference/cases.jsonl into WORK_DIR and runs
# the papers' code on each (bench/reference/run.sh), appending one JSON line per
# (case, method, config) to WORK_DIR/cases.jsonl; review it, then copy the lines
# into bench/reference/cases.jsonl. REFS_DIR holds the clones, named owner+name
# (IST-DASLab+gptq, fayuge+CLAQ, hahnyuan+PB-LLM, Aaronhuang-778+BiLLM).
# CASE: synth:ROWSxCOLS:SEED (bench_refcase_gen) or stories260K:LAYER:LINEAR
# (bench_export_wh over ../shared/data/stories260K-calib.u32, seq-len 256, all
# sequences; also copied to bench/reference/cases/ since they are small).
# Default cases: the ones recorded. A benchmark: slow (4096-wide: tens of minutes
# on 2 cores); never run by ctest.
set -eu
[ $# -ge 2 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
REFS=$1; WORK=$2; shift 2
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SHARED=${LOWBIT_SHARED:-$ROOT/../shared}
mkdir -p "$WORK"
[ $# -gt 0 ] || set -- stories260K:0:q stories260K:2:up stories260K:4:o \
    synth:1024x1024:1 synth:512x4096:4 synth:4096x4096:5
RS="$HERE/run.sh"
one() { # case method config args...
    c=$1; m=$2; cfg=$3; shift 3
    case $m in
        rtn|gptq) repo=$REFS/IST-DASLab+gptq ;;
        claq) repo=$REFS/fayuge+CLAQ ;;
        pbllm) repo=$REFS/hahnyuan+PB-LLM ;;
        billm) repo=$REFS/Aaronhuang-778+BiLLM ;;
    esac
    if line=$("$RS" "$repo" "$m" "$WF" "$HF" --config "$cfg" "$@" 2>>"$WORK/ref.log"); then
        printf '%s\n' "$line" | /usr/bin/python3 -c "
import json, sys
d = json.loads(sys.stdin.read()); d['case'] = sys.argv[1]
d.pop('weight'); d.pop('hessian'); print(json.dumps(d))" "$c" >> "$WORK/cases.jsonl"
    else
        echo "make_cases: $c $m $cfg failed (see $WORK/ref.log)" >&2
    fi
}
for c in "$@"; do
    case $c in
        synth:*)
            spec=${c#synth:}; shape=${spec%%:*}; seed=${spec#*:}
            rows=${shape%x*}; cols=${shape#*x}
            pre=$WORK/synth-${rows}x${cols}-s$seed
            [ -f "$pre.hessian.safetensors" ] ||
                "$BUILD/bench_refcase_gen" --rows "$rows" --cols "$cols" --seed "$seed" --out "$pre" >&2
            WF=$pre.weight.safetensors; HF=$pre.hessian.safetensors ;;
        stories260K:*)
            spec=${c#stories260K:}; layer=${spec%%:*}; lin=${spec#*:}
            f=$HERE/cases/stories260K-L$layer-$lin.safetensors
            mkdir -p "$HERE/cases"
            [ -f "$f" ] || "$BUILD/bench_export_wh" --model "$SHARED/models/stories260K" \
                --tokens "$SHARED/data/stories260K-calib.u32" --layer "$layer" --linear "$lin" \
                --out "$f" >&2
            WF=$f:W; HF=$f:H ;;
        *) echo "make_cases: unknown case $c" >&2; exit 2 ;;
    esac
    one "$c" rtn w3 --bits 3
    one "$c" gptq w2 --bits 2
    one "$c" gptq w3 --bits 3
    one "$c" gptq w3-act --bits 3 --act-order
    one "$c" pbllm s0.1 --salient 0.1
    one "$c" pbllm s0.2 --salient 0.2
    one "$c" billm default
    one "$c" claq w2 --bits 2
    one "$c" claq ap2.1 --bits 2 --outlierorder 2.1
    one "$c" claq ap2.05+or --bits 2 --outlierorder 2.05 --outlier-col-dynamic
done
