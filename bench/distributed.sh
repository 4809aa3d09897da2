#!/usr/bin/env bash
# bench/distributed.sh: embedded `lowbit quantize` against the distributed run
# (`lowbit coordinator` + N `lowbit worker`s on a private Redis) on a synthetic
# LLaMA-shaped model, with the same total thread count. Prints JSON lines.
#
#   bench/distributed.sh BUILD_DIR [--preset llama-7b] [--layers 2] [--method gptq]
#        [--bits 3] [--nsamples 4] [--ctx 512] [--threads 2] [--configs "1x2 2x1"]
#        [--collect-chunks K] [--curve]
#
# --curve: the artifact port talks CURVE (keys made with `lowbit keygen` in the
#          scratch dir, LOWBIT_CURVE_DIR exported to the coordinator and the
#          workers; docs/data-plane.md); the JSON lines say "curve":true.
# --configs: distributed runs as WORKERSxTHREADS[sSLOTS][:K]: each worker gets
#            THREADS and `--slots SLOTS` (without sSLOTS the worker's default, one
#            slot per thread); :K gives that run --collect-chunks K. The embedded
#            run uses --threads (default 2 = this machine's cores).
#            E.g. "1x2s1 1x2 2x1 2x1s2" or "2x1:1 2x1:2 2x1:4".
# Per run: wall time, whether model.safetensors equals the embedded bytes, the
# seconds spent per job type (from the workers' "ran" events), the wall time of
# the quantize-linear phase (per block, first start to last end, summed over
# blocks: the part that spreads over workers), artifact bytes written (new files
# seen in OUT/.lowbit/artifacts, polled every 0.1 s; an artifact created and
# deleted between two polls is missed), and bytes_fetched / bytes_published
# from the job record when the data plane records them. --collect-chunks K goes
# to the coordinator (default: its own, 2); forward_wall_s is the wall time of
# the collect/reduce and propagate phases (per block and phase, first start to
# last end, summed), the part chunked collection spreads over workers.
# Scratch goes to ${LB_BENCH_TMP:-/tmp}/lowbit-dist-$$ and is removed at the end.
# LB_BENCH_KEEP=DIR: first copy the run logs there (emb.json: the embedded
# `quantize --json` job lines; w*-CFG.json: the workers' "ran" lines; s-CFG.json:
# status with events), the input of bench/simulate.py.
set -euo pipefail
BUILD=${1:?usage: bench/distributed.sh BUILD_DIR [options]}
shift
PRESET=llama-7b LAYERS=2 METHOD=gptq BITS=3 NSAMPLES=4 CTX=512 THREADS=2 CONFIGS="1x2 2x1" CHUNKS=
CURVE=false
while [[ $# -gt 0 ]]; do
    case $1 in
    --curve) CURVE=true; shift; continue ;;
    --preset) PRESET=$2 ;;
    --layers) LAYERS=$2 ;;
    --method) METHOD=$2 ;;
    --bits) BITS=$2 ;;
    --nsamples) NSAMPLES=$2 ;;
    --ctx) CTX=$2 ;;
    --threads) THREADS=$2 ;;
    --configs) CONFIGS=$2 ;;
    --collect-chunks) CHUNKS=$2 ;;
    *) echo "bench/distributed.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
LOWBIT=$(cd "$BUILD" && pwd)/lowbit
[[ -x $LOWBIT ]] || { echo "bench/distributed.sh: no $LOWBIT; build first" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "bench/distributed.sh: redis-server not on PATH (deploy/install-deps.sh)" >&2; exit 2; }
TMP=${LB_BENCH_TMP:-/tmp}/lowbit-dist-$$
mkdir -p "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n ${LB_BENCH_KEEP:-} ]]; then
        mkdir -p "$LB_BENCH_KEEP"
        cp "$TMP"/*.json "$LB_BENCH_KEEP"/ 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

if [[ $CURVE == true ]]; then
    "$LOWBIT" keygen --out "$TMP/keys" >/dev/null
    "$LOWBIT" keygen --out "$TMP/keys" --name worker >/dev/null
    mkdir "$TMP/keys/clients" && cp "$TMP/keys/worker.pub" "$TMP/keys/clients/"
    export LOWBIT_CURVE_DIR=$TMP/keys
else
    unset LOWBIT_CURVE_DIR
fi
"$LOWBIT" synth --preset "$PRESET" --layers "$LAYERS" --out "$TMP/model" >/dev/null
python3 - "$TMP/model/config.json" "$TMP/calib.u32" "$NSAMPLES" "$CTX" <<'PY'
import json, random, struct, sys
vocab = json.load(open(sys.argv[1]))["vocab_size"]
random.seed(1234)
n = int(sys.argv[3]) * int(sys.argv[4])
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<%dI" % n, *(random.randrange(vocab) for _ in range(n))))
PY
Q=(--model "$TMP/model" --calib "$TMP/calib.u32" --ctx "$CTX" --nsamples "$NSAMPLES"
   --method "$METHOD" --bits "$BITS")
CONF="\"preset\":\"$PRESET\",\"layers\":$LAYERS,\"method\":\"$METHOD\",\"bits\":$BITS,\"nsamples\":$NSAMPLES,\"ctx\":$CTX,\"curve\":$CURVE"

# Polls OUT/.lowbit/artifacts until $TMP/stop-sampler exists; writes "name size" lines.
sample_artifacts() { # out_dir result_file
    local dir=$1/.lowbit/artifacts res=$2
    : >"$res"
    # stops with the script too (kill -0 $$: the parent shell)
    while [[ ! -e $TMP/stop-sampler && -d $TMP ]] && kill -0 $$ 2>/dev/null; do
        if [[ -d $dir ]]; then
            find "$dir" -maxdepth 1 -type f -name '*.safetensors' -printf '%f %s\n' >>"$res" 2>/dev/null || true
        fi
        sleep 0.1
    done
}
artifact_bytes() { # result_file -> total bytes of distinct artifacts (largest size seen)
    sort -k1,1 -k2,2n "$1" | awk '{m[$1]=$2} END {s=0; for (k in m) s+=m[k]; printf "%.0f\n", s}'
}

# ---- embedded ----
rm -f "$TMP/stop-sampler"
sample_artifacts "$TMP/emb" "$TMP/emb.art" &
SAMPLER=$!
t0=$(date +%s.%N)
"$LOWBIT" quantize "${Q[@]}" --out "$TMP/emb" --threads "$THREADS" --json >"$TMP/emb.json" 2>"$TMP/emb.err" || {
    echo "{\"bench\":\"distributed\",\"config\":\"embedded\",\"error\":\"quantize failed: $(tail -1 "$TMP/emb.err" | tr -d '"\\')\"}"
    exit 1
}
t1=$(date +%s.%N)
touch "$TMP/stop-sampler"
wait "$SAMPLER"
EMB_WALL=$(python3 -c "print(round($t1-$t0,3))")
echo "{\"bench\":\"distributed\",\"config\":\"embedded\",$CONF,\"threads\":$THREADS,\"wall_s\":$EMB_WALL,\"artifact_bytes_written\":$(artifact_bytes "$TMP/emb.art"),\"machine_cores\":$(nproc)}"

# ---- private Redis ----
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
    --logfile "$TMP/redis.log" --daemonize no >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$PORT" PING 2>/dev/null | grep -q PONG && break; sleep 0.05; done
URL=redis://127.0.0.1:$PORT/0

for spec in $CONFIGS; do
    cfg=${spec//:/k} # 2x1:2 -> 2x1k2 (worker ids, file names)
    K=$CHUNKS
    if [[ $spec == *:* ]]; then K=${spec#*:}; fi
    W=${spec%%x*} T=${spec#*x} S=
    T=${T%%:*}
    if [[ $T == *s* ]]; then S=${T#*s} T=${T%%s*}; fi
    SLOTS=(); [[ -n $S ]] && SLOTS=(--slots "$S")
    JOB=bench-$cfg-$$
    OUT=$TMP/d-$cfg
    rm -f "$TMP/stop-sampler"
    sample_artifacts "$OUT" "$TMP/$cfg.art" &
    SAMPLER=$!
    WP=()
    for i in $(seq "$W"); do
        # a cache of its own: the default ($TMPDIR/lowbit-UID/ID) is shared with
        # any other run using the same worker id, and removed when one exits
        "$LOWBIT" worker --redis "$URL" --threads "$T" "${SLOTS[@]}" --id "w$i-$cfg" --json \
            --cache "$TMP/cache-w$i-$cfg" \
            >"$TMP/w$i-$cfg.json" 2>"$TMP/w$i-$cfg.err" &
        WP+=($!)
    done
    t0=$(date +%s.%N)
    rc=0
    CK=()
    [[ -n $K ]] && CK=(--collect-chunks "$K")
    "$LOWBIT" coordinator --redis "$URL" --job "$JOB" "${Q[@]}" "${CK[@]}" --out "$OUT" \
        --threads "$T" >"$TMP/c-$cfg.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    touch "$TMP/stop-sampler"
    wait "$SAMPLER"
    # SIGTERM: a worker gives back any item (none left), deregisters, exits 0
    for p in "${WP[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${WP[@]}"; do wait "$p" || true; done
    if [[ $rc -ne 0 ]]; then
        echo "{\"bench\":\"distributed\",\"config\":\"$cfg\",\"error\":\"coordinator exit $rc: $(tail -1 "$TMP/c-$cfg.log" | tr -d '"\\')\"}"
        continue
    fi
    if [[ $CURVE == true ]] && ! grep -q '^lowbit coordinator: artifact server .* (CURVE)' "$TMP/c-$cfg.log"; then
        echo "{\"bench\":\"distributed\",\"config\":\"$cfg\",\"error\":\"--curve, but the coordinator did not serve with CURVE\"}"
        continue
    fi
    same=false
    cmp -s "$TMP/emb/model.safetensors" "$OUT/model.safetensors" && same=true
    "$LOWBIT" status "$JOB" --redis "$URL" --json --events 1000 >"$TMP/s-$cfg.json"
    cat "$TMP"/w*-"$cfg".json >"$TMP/ran-$cfg.json"
    python3 - "$TMP/s-$cfg.json" "$cfg" "$W" "$T" \
        "$(python3 -c "print(round($t1-$t0,3))")" "$same" "$(artifact_bytes "$TMP/$cfg.art")" \
        "$EMB_WALL" "$LAYERS" "{$CONF}" "$TMP/ran-$cfg.json" "${K:-default}" <<'PY'
import json, re, sys
st = json.load(open(sys.argv[1]))
cfg, W, T, wall, same, art, emb, layers = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6] == "true", int(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
conf = json.loads(sys.argv[10])
secs, ran, slots = {}, 0, None
for line in open(sys.argv[11]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "start":
        slots = e.get("slots")
    if e.get("event") == "ran":
        ran += 1
        secs[e["type"]] = round(secs.get(e["type"], 0.0) + e["seconds"], 3)
# per block, quantize-linear phase: first start to last end (events: t = end ms, "in X s")
spans = {}
for ev in st.get("events", []):
    m = re.search(r" ran quantize-linear \S+ \(block (\d+)\) in ([0-9.]+) s", ev["msg"])
    if m:
        b, d, end = int(m.group(1)), float(m.group(2)), ev["t_ms"] / 1000.0
        lo, hi = spans.get(b, (end - d, end))
        spans[b] = (min(lo, end - d), max(hi, end))
# collect (+ reduce) and propagate phases, per block: first start to last end
fwd = {}
for ev in st.get("events", []):
    m = re.search(r" ran (collect-hessian|reduce-hessian|propagate) \S+ \(block (-?\d+)\) "
                  r"in ([0-9.]+) s", ev["msg"])
    if m:
        key = ("propagate" if m.group(1) == "propagate" else "collect", int(m.group(2)))
        d, end = float(m.group(3)), ev["t_ms"] / 1000.0
        lo, hi = fwd.get(key, (end - d, end))
        fwd[key] = (min(lo, end - d), max(hi, end))
rec = st.get("record", {})
out = dict(bench="distributed", config=cfg, workers=W, threads_per_worker=T,
           slots_per_worker=slots, **conf,
           collect_chunks=sys.argv[12],
           forward_wall_s=round(sum(h - l for l, h in fwd.values()), 2),
           wall_s=wall, speedup_vs_embedded=round(emb / wall, 3) if wall > 0 else None,
           identical_to_embedded=same, jobs_ran=ran, job_seconds=secs,
           quantize_linear_wall_s=round(sum(h - l for l, h in spans.values()), 2),
           artifact_bytes_written=art, artifact_bytes_per_block=art // max(layers, 1))
for k in ("bytes_fetched", "bytes_published"):
    if k in rec:
        out[k] = int(rec[k])
        out[k + "_per_block"] = int(rec[k]) // max(layers, 1)
print(json.dumps(out))
PY
done
