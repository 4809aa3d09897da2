#!/usr/bin/env bash
# bench/fixture_sha.sh BUILD_DIR OUTFILE: quantizes the shared stories260K fixture with
# every method (embedded) plus --rotate hadamard and --override/--true-sequential runs,
# and prints "name sha256(model.safetensors) sha256(manifest.json)" per run.
# Issue 15 used it to show byte-identical checkpoints before and after the layout
# refactor (prints the first 16 hex digits of each sha256); run it before and after a
# change that must not change output bytes, and diff the two files.
set -euo pipefail
B=$(cd "${1:?build dir}" && pwd); OUTF=${2:?outfile}
S=${LOWBIT_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}; M=$S/models/stories260K; C=$S/data/stories260K-calib.u32
T=$(mktemp -d /tmp/fixsha-XXXXXX); trap 'rm -rf "$T"' EXIT
run() { local n=$1; shift; "$B/lowbit" quantize --model "$M" --calib "$C" --ctx 64 --nsamples 16 --threads 2 --out "$T/$n" "$@" >/dev/null 2>&1 || { echo "$n FAILED" ; return; }
  echo "$n $(sha256sum < "$T/$n/model.safetensors" | cut -c1-16) $(sha256sum < "$T/$n/manifest.json" | cut -c1-16)"; }
{
run rtn4 --method rtn --bits 4 --group-size 32
run gptq3 --method gptq --bits 3 --group-size 32
run gptq2act --method gptq --bits 2 --act-order --sym
run claq25 --method claq --bits 2.5
run pbllm --method pbllm --bits 1
run billm --method billm
run qbb --method qbb --bases 2 --refine-iters 5
run gptq3rot --method gptq --bits 3 --rotate hadamard
run override --method gptq --bits 2 --override '.*down_proj.*=gptq:bits=4' --true-sequential
run chunks --method gptq --bits 4 --collect-chunks 2
} > "$OUTF"
cat "$OUTF"
