#!/usr/bin/env bash
# bench/kquant.sh: lowbit's gptq --grid q2_k|q3_k|q4_k vs llama.cpp's own K-quant
# quantizer (ggml_quantize_chunk with imatrix = diag(H), the same H), end to end in
# llama.cpp itself (node-llama-cpp 3.21.1, tests/llama-cpp-ref/eval.mjs), on a
# synthetic model (`lowbit synth --preset k256 --seed 1`): one JSON line per GGUF
# with KL(F32 GGUF || quantized GGUF) and ppl, both as llama.cpp computes them.
#
#   bench/kquant.sh BUILD_DIR [NCAL NEVAL]      (defaults 32 32 windows of 128)
#
# Per type: `lowbit quantize --grid` + `export --direct` gives the tensor layout and
# lowbit's shipped GGUF ("lowbit_quantize": H through the quantized blocks, 16
# calibration windows); bench_kquant gguf then writes ggml_imatrix / lowbit_gptq
# GGUFs from the same fp-activation H. Exits 77 when node-llama-cpp is not installed.
# Scratch goes to ${LB_BENCH_TMP:-/tmp}/lowbit-kquant-$$ and is removed at the end.
set -euo pipefail
BUILD=${1:?usage: bench/kquant.sh BUILD_DIR [NCAL NEVAL]}
NCAL=${2:-32}
NEVAL=${3:-32}
SRC=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${LOWBIT_SHARED:-$SRC/../shared}
REF=$SRC/tests/llama-cpp-ref
LIB=$REF/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so
CALIB=$SHARED/data/stories260K-calib.u32
EVAL=$SHARED/data/stories260K-eval.u32
if [[ ! -e $LIB || ! -e $REF/node_modules/node-llama-cpp/package.json ]]; then
    echo "bench/kquant.sh: skipped: node-llama-cpp not installed (deploy/install-deps.sh)" >&2
    exit 77
fi
TMP=${LB_BENCH_TMP:-/tmp}/lowbit-kquant-$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
L=$BUILD/lowbit
"$L" synth --out "$TMP/m" --preset k256 --seed 1 --dtype f32 >/dev/null
"$L" export --format gguf --dtype f32 --model "$TMP/m" --out "$TMP/f32.gguf" >/dev/null
(cd "$REF" && node eval.mjs "$TMP/f32.gguf" "$EVAL" 128 "$NEVAL" "$TMP/f32.logp" >/dev/null)
for t in q2_k q3_k q4_k; do
    "$L" quantize --model "$TMP/m" --calib "$CALIB" --ctx 128 --nsamples 16 --threads 2 \
        --method gptq --grid "$t" --out "$TMP/$t" >/dev/null 2>&1
    "$L" export --format gguf --direct --model "$TMP/$t" --out "$TMP/$t-lowbit_quantize.gguf" \
        >/dev/null
    "$BUILD/bench_kquant" "$LIB" gguf "$TMP/m" "$CALIB" "$TMP/$t-lowbit_quantize.gguf" \
        "$TMP/$t" "$NCAL" 128 >/dev/null
    for v in ggml lowbit lowbit_quantize; do
        (cd "$REF" && node eval.mjs "$TMP/$t-$v.gguf" "$EVAL" 128 "$NEVAL" "$TMP/$t-$v.logp" \
            >/dev/null)
        "$BUILD/bench_kquant" - kl "$TMP/f32.logp" "$TMP/$t-$v.logp" "$EVAL" 128 "$NEVAL" |
            sed "s|\"model\":\"[^\"]*\"|\"model\":\"$t-$v\"|; s|\"ref\":\"[^\"]*\"|\"ref\":\"k256-f32\"|"
    done
done
