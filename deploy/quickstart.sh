#!/usr/bin/env bash
# The main job end to end on one machine (embedded mode, no servers):
# install what is missing, build, quantize a model with calibration data,
# then evaluate the packed checkpoint against the full-precision model and
# print one table: fp ppl, quantized ppl, KL, bits per weight, file sizes.
#
# Usage: deploy/quickstart.sh [OUT_DIR]
# Environment: LOWBIT_SHARED (fixtures, default ../shared), METHOD (gptq),
#              BITS (4), EXTRA (more `lowbit quantize` options).
# Without the shared fixtures it synthesizes a tiny model and samples its
# calibration data from the model itself (gen-calib).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-out/quickstart}
method=${METHOD:-gptq}
bits=${BITS:-4}
shared=${LOWBIT_SHARED:-$root/../shared}

bash deploy/install-deps.sh --no-npm
echo "== build (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target lowbit >/dev/null
lowbit=build/lowbit
# a fresh clone has no out/ yet
mkdir -p out "$(dirname "$out")"

if [ -f "$shared/models/stories260K/config.json" ]; then
  model=$shared/models/stories260K
  calib=$shared/data/stories260K-calib.u32
  evaltok=$shared/data/stories260K-eval.u32
  ctx=256
else
  echo "== no fixtures at $shared: synthesizing a tiny model"
  model=out/quickstart-model
  "$lowbit" synth --out "$model" --preset tiny --seed 1 --force
  "$lowbit" gen-calib --model "$model" --out out/quickstart-calib.u32 --n 32 --len 128 --seed 1
  "$lowbit" gen-calib --model "$model" --out out/quickstart-eval.u32 --n 16 --len 128 --seed 2
  calib=out/quickstart-calib.u32
  evaltok=out/quickstart-eval.u32
  ctx=128
fi

echo "== quantize $model with $method at $bits bits -> $out"
# shellcheck disable=SC2086
summary=$("$lowbit" quantize --model "$model" --calib "$calib" --ctx "$ctx" --out "$out" \
  --method "$method" --bits "$bits" --force --json ${EXTRA:-} | tail -n 1)
echo "== verify checksums"
"$lowbit" verify --model "$out"
echo "== evaluate the fp model and the packed checkpoint (KL against the fp model)"
fp=$("$lowbit" eval --model "$model" --tokens "$evaltok" --ctx "$ctx" --json)
q=$("$lowbit" eval --model "$out" --tokens "$evaltok" --ctx "$ctx" --ref "$model" --json)

# one number from a one-line JSON object
jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([-0-9.eE+]*\).*/\1/p" <<<"$2"; }
bytes() { local s=0 f; for f in "$1"/*.safetensors; do s=$((s + $(stat -c %s "$f"))); done; echo "$s"; }
fp_bytes=$(bytes "$model")
q_bytes=$(bytes "$out")
fp_dtype=$(sed -n 's/.*"torch_dtype":[[:space:]]*"\([a-z0-9]*\)".*/\1/p' "$model/config.json" | head -n 1)
case "$fp_dtype" in
  float32) fp_bits=32 ;; bfloat16 | float16) fp_bits=16 ;; *) fp_bits="?" ;;
esac
echo
echo "== result: $method $bits-bit on $(basename "$model"), $(jnum tokens_scored "$q") tokens scored (ctx $ctx)"
printf '| %-22s | %10s | %12s | %14s | %14s |\n' model ppl "KL vs fp" "bits/weight" "weights file"
printf '|%s|%s|%s|%s|%s|\n' ------------------------ ------------ -------------- ---------------- ----------------
printf '| %-22s | %10.4f | %12s | %14s | %12s B |\n' "fp (${fp_dtype:-?})" "$(jnum ppl "$fp")" - \
  "$fp_bits" "$fp_bytes"
printf '| %-22s | %10.4f | %12.6f | %14.4f | %12s B |\n' "$method $bits-bit packed" "$(jnum ppl "$q")" \
  "$(jnum kl "$q")" "$(jnum bpw "$summary")" "$q_bytes"
echo "bits/weight: every stored bit of the $(jnum quantized_linears "$summary") quantized linears (codes, scales,"
echo "zeros, ...) per weight; embeddings, norms and lm_head stay full precision and are in the file size."
