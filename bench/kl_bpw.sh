#!/usr/bin/env bash
# bench/kl_bpw.sh: KL / ppl / top-1 against honest bpw on stories260K, one JSON line
# per configuration of a config file (default bench/kl_bpw.configs; format there).
#
#   bench/kl_bpw.sh BUILD_DIR [CONFIGS] > docs/kl-bpw-stories260K.jsonl
#   bench/kl_bpw_plot.sh docs/kl-bpw-stories260K.jsonl      # the PNG (gnuplot)
#
# Each run: `lowbit quantize --model stories260K --calib stories260K-calib.u32 --ctx 256`
# (all 128 windows) + the flags, then `lowbit eval --model PACKED --ref stories260K
# --tokens stories260K-eval.u32 --ctx 256` (64 windows, 16320 scored tokens). bpw is
# 8 * quantized.bytes / quantized.weights of the packed manifest.json: every stored
# byte of the quantized linears, rotation seed/kind included (docs/bit-accounting.md).
# The last line is the fp32 source. KL is deterministic, so the numbers do not depend
# on the machine's load; THREADS (default 1) does not change them either.
# Scratch: ${LB_BENCH_TMP:-/tmp}/lowbit-klbpw-$$, removed at the end.
set -euo pipefail
BUILD=${1:?usage: bench/kl_bpw.sh BUILD_DIR [CONFIGS]}
SRC=$(cd "$(dirname "$0")/.." && pwd)
CONFIGS=${2:-$SRC/bench/kl_bpw.configs}
SHARED=${LOWBIT_SHARED:-$SRC/../shared}
LOWBIT=$BUILD/lowbit
MODEL=$SHARED/models/stories260K
CALIB=$SHARED/data/stories260K-calib.u32
EVAL=$SHARED/data/stories260K-eval.u32
THREADS=${THREADS:-1}
for f in "$LOWBIT" "$MODEL/config.json" "$CALIB" "$EVAL" "$CONFIGS"; do
    [[ -e $f ]] || { echo "kl_bpw: $f not found (build lowbit first; fixtures: set LOWBIT_SHARED)" >&2; exit 1; }
done
TMP=${LB_BENCH_TMP:-/tmp}/lowbit-klbpw-$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

emit() { # the JSON line: family label rotate seed args [quantize-json eval-json | error]
    python3 - "$@" <<'PY'
import json, sys
fam, label, rot, seed, args = sys.argv[1:6]
d = dict(bench="kl_bpw", model="stories260K", family=fam, config=label, rotate=rot,
         seed=int(seed), args=args)
if len(sys.argv) == 7:
    d["error"] = sys.argv[6]
else:
    man = json.load(open(sys.argv[6]))["quantized"]
    q, e = json.loads(sys.argv[7]), json.loads(sys.argv[8])
    d.update(bpw=8.0 * man["bytes"] / man["weights"], quantized_bytes=man["bytes"],
             weights=man["weights"], kl=e["kl"], ppl=e["ppl"], top1=e["top1"])
    if abs(d["bpw"] - q["bpw"]) > 1e-9:
        d["error"] = "manifest bpw %.6f != quantize summary %.6f" % (d["bpw"], q["bpw"])
print(json.dumps(d))
PY
}

run() { # family label rotate seed flags...
    local fam=$1 label=$2 rot=$3 seed=$4
    shift 4
    local extra=()
    [[ $rot == hadamard ]] && extra=(--rotate hadamard --seed "$seed")
    [[ $rot == none ]] && extra=(--rotate none)
    rot=${rot#flags:} # a config's own --rotate: recorded as given, nothing added
    local rc=0
    "$LOWBIT" quantize --model "$MODEL" --calib "$CALIB" --ctx 256 --out "$TMP/q" \
        --threads "$THREADS" --json "$@" "${extra[@]}" >"$TMP/q.log" 2>"$TMP/q.err" || rc=$?
    if ((rc != 0)); then # a signal leaves no message: say which exit status instead
        emit "$fam" "$label" "$rot" "$seed" "$*" "quantize: exit status $rc: $(tail -1 "$TMP/q.err")"
        rm -rf "$TMP/q"
        return 0
    fi
    local ev
    if ! ev=$("$LOWBIT" eval --model "$TMP/q" --ref "$MODEL" --tokens "$EVAL" --ctx 256 \
        --threads "$THREADS" --json 2>"$TMP/e.err"); then
        emit "$fam" "$label" "$rot" "$seed" "$*" "eval: $(tail -1 "$TMP/e.err")"
    else
        emit "$fam" "$label" "$rot" "$seed" "$*" "$TMP/q/manifest.json" "$(tail -1 "$TMP/q.log")" "$ev"
    fi
    rm -rf "$TMP/q"
}

trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; printf '%s' "${s%"${s##*[![:space:]]}"}"; }

while IFS='|' read -r fam label flags seeds; do
    fam=$(trim "$fam")
    [[ -z $fam || $fam == \#* ]] && continue
    label=$(trim "$label") flags=$(trim "$flags") seeds=$(trim "${seeds:-}")
    # shellcheck disable=SC2086
    if [[ " $flags " == *" --rotate "* ]]; then
        r=${flags##*--rotate } s=0
        [[ " $flags " == *" --seed "* ]] && s=${flags##*--seed } && s=${s%% *}
        run "$fam" "$label" "flags:${r%% *}" "$s" $flags
        continue
    fi
    # shellcheck disable=SC2086
    run "$fam" "$label" none 0 $flags
    # shellcheck disable=SC2086
    for s in 0 $seeds; do run "$fam" "$label" hadamard "$s" $flags; done
done <"$CONFIGS"

ev=$("$LOWBIT" eval --model "$MODEL" --tokens "$EVAL" --ctx 256 --threads "$THREADS" --json)
python3 -c "
import json,sys
e=json.loads(sys.argv[1])
print(json.dumps(dict(bench='kl_bpw', model='stories260K', family='fp32', config='fp32',
  rotate='none', seed=0, args='(source)', bpw=32.0, kl=0.0, ppl=e['ppl'], top1=1.0)))" "$ev"
