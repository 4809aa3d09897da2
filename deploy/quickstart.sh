#!/usr/bin/env bash
# The main job end to end on one machine (embedded mode, no servers):
# install what is missing, build, quantize a model with calibration data,
# then evaluate the packed checkpoint against the full-precision model.
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

bash deploy/install-deps.sh
echo "== build (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
lowbit=build/lowbit

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
"$lowbit" quantize --model "$model" --calib "$calib" --ctx "$ctx" --out "$out" \
  --method "$method" --bits "$bits" --force ${EXTRA:-}
echo "== verify checksums"
"$lowbit" verify --model "$out"
echo "== evaluate the packed checkpoint against the fp model"
"$lowbit" eval --model "$out" --tokens "$evaltok" --ctx "$ctx" --ref "$model"
