#!/usr/bin/env bash
# bench/export_sizes.sh: file sizes of every export format for stories260K
# quantized with RTN/GPTQ (group 32, and per row), one JSON line per file.
#
#   bench/export_sizes.sh BUILD_DIR
#
# Sizes are of the single weights file (model.safetensors or the .gguf); the
# source is stories260K in f32 (1 044 984 bytes, mostly the 512 x 64 embedding).
# Scratch goes to ${LB_BENCH_TMP:-/tmp}/lowbit-export-$$ and is removed at the end.
set -euo pipefail
BUILD=${1:?usage: bench/export_sizes.sh BUILD_DIR}
SRC=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${LOWBIT_SHARED:-$SRC/../shared}
LOWBIT=$BUILD/lowbit
MODEL=$SHARED/models/stories260K
CALIB=$SHARED/data/stories260K-calib.u32
TMP=${LB_BENCH_TMP:-/tmp}/lowbit-export-$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

size() { stat -c %s "$1"; }
line() { # config format file
    printf '{"bench":"export_sizes","config":"%s","format":"%s","bytes":%s}\n' "$1" "$2" "$(size "$3")"
}

for cfg in "rtn 4 32 sym" "gptq 4 32 asym" "rtn 8 32 sym" "gptq 2 32 asym" "rtn 2 0 sym"; do
    set -- $cfg
    name="$1-w$2-g$3-$4"
    sym=(); [ "$4" = sym ] && sym=(--sym)
    q="$TMP/$name"
    "$LOWBIT" quantize --model "$MODEL" --calib "$CALIB" --out "$q" --method "$1" --bits "$2" \
        --group-size "$3" "${sym[@]}" --ctx 128 --nsamples 16 --threads 2 >/dev/null 2>&1
    line "$name" packed "$q/model.safetensors"
    "$LOWBIT" export --model "$q" --out "$q-dense" --dtype f16 >/dev/null
    line "$name" dense-f16 "$q-dense/model.safetensors"
    "$LOWBIT" export --format gguf --model "$q" --out "$q-f16.gguf" --dtype f16 >/dev/null
    line "$name" gguf-f16 "$q-f16.gguf"
    "$LOWBIT" export --format gguf --direct --model "$q" --out "$q-direct.gguf" --dtype f16 >/dev/null
    line "$name" gguf-direct-f16 "$q-direct.gguf"
    for f in gptq compressed-tensors; do
        "$LOWBIT" export --format $f --model "$q" --out "$q-$f" >/dev/null
        line "$name" "$f" "$q-$f/model.safetensors"
    done
done
