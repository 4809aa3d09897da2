#!/usr/bin/env bash
# bench/faults.sh: seeded random faults on a real distributed run. Prints one
# JSON line per trial and a summary line.
#
#   bench/faults.sh BUILD_DIR [--trials 20] [--seed 1] [--model synth:small]
#        [--calib FILE] [--nsamples 32] [--ctx 512] [--method gptq] [--bits 3]
#        [--workers 2] [--threads 1] [--lease-ms MS] [--heartbeat-ttl S]
#        [--worker-args "..."] [--coordinator-args "..."] [--faults LIST]
#        [--down-s 1] [--clean-runs 2] [--trial-timeout 900] [--replace-killed]
#        [--keep-logs DIR]
#
# Setup: a private redis-server (AOF on, appendfsync everysec as in
# deploy/redis.conf) on a free loopback port; the embedded `lowbit quantize`
# checkpoint as the reference; --clean-runs fault-free distributed runs whose
# median wall time is clean_wall_s. Each trial then starts --workers `lowbit
# worker`s and the coordinator on a new job, waits a random time drawn
# uniformly in [0.05, 0.85] x clean_wall_s, injects one fault, waits for the
# coordinator to finish and compares model.safetensors with the reference:
#   worker-kill9  kill -9 of a random worker (no replacement unless
#                 --replace-killed: the other worker(s) must take its item over)
#   worker-term   SIGTERM of a random worker, a replacement starts at once
#   coord-kill9   kill -9 of the coordinator, rerun with the same options after
#                 --down-s seconds
#   redis-kill9   kill -9 of redis-server, restarted from its AOF on the same
#                 port after --down-s seconds
# The fault of each trial comes from a seeded shuffle of a round robin over
# --faults (comma-separated, default all four), so every kind gets its share;
# the same --seed gives the same faults and times.
#
# --model: synth:PRESET (lowbit synth, seed 0, random calibration tokens; the
#   default synth:small with --nsamples 32 --ctx 512 took 6.8 s embedded
#   on the 2 cores at load ~3), stories260K ($LOWBIT_SHARED, else ../shared, with
#   data/stories260K-calib.u32), or a model directory with --calib FILE.
# --lease-ms / --heartbeat-ttl are passed to every worker; --worker-args and
#   --coordinator-args are appended as they are (e.g. --worker-args "--slots 2"
#   once the worker has it), so the script runs against any version.
# Fields: trial, seed, fault, at_s (fault time after the coordinator started),
#   wall_s, clean_wall_s, extra_s = wall_s - clean_wall_s, identical (cmp with
#   the embedded checkpoint); the summary has the median and max of extra_s.
# --keep-logs DIR: copy each trial's coordinator.log and w*.log to DIR/TRIAL/.
# Everything (processes, the Redis port, the scratch directory
# ${LB_BENCH_TMP:-/tmp}/lowbit-faults-PID) is removed at the end, also on Ctrl-C.
set -euo pipefail
BUILD=${1:?usage: bench/faults.sh BUILD_DIR [options]; see the header of bench/faults.sh}
shift
TRIALS=20 SEED=1 MODEL=synth:small CALIB='' NSAMPLES=32 CTX=512 METHOD=gptq BITS=3
WORKERS=2 THREADS=1 LEASE_MS='' HB_TTL='' WORKER_ARGS='' COORD_ARGS='' DOWN_S=1 CLEAN_RUNS=2
TRIAL_TIMEOUT=900 REPLACE_KILLED=0 KEEP_LOGS='' FAULTS=worker-kill9,worker-term,coord-kill9,redis-kill9
while [[ $# -gt 0 ]]; do
    case $1 in
    --trials) TRIALS=$2 ;;
    --seed) SEED=$2 ;;
    --model) MODEL=$2 ;;
    --calib) CALIB=$2 ;;
    --nsamples) NSAMPLES=$2 ;;
    --ctx) CTX=$2 ;;
    --method) METHOD=$2 ;;
    --bits) BITS=$2 ;;
    --workers) WORKERS=$2 ;;
    --threads) THREADS=$2 ;;
    --lease-ms) LEASE_MS=$2 ;;
    --heartbeat-ttl) HB_TTL=$2 ;;
    --worker-args) WORKER_ARGS=$2 ;;
    --coordinator-args) COORD_ARGS=$2 ;;
    --faults) FAULTS=$2 ;;
    --down-s) DOWN_S=$2 ;;
    --clean-runs) CLEAN_RUNS=$2 ;;
    --trial-timeout) TRIAL_TIMEOUT=$2 ;;
    --keep-logs) KEEP_LOGS=$2 ;;
    --replace-killed) REPLACE_KILLED=1; shift; continue ;;
    -h|--help) sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/faults.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    [[ $# -ge 2 ]] || { echo "bench/faults.sh: $1 needs a value" >&2; exit 2; }
    shift 2
done
for k in ${FAULTS//,/ }; do
    case $k in worker-kill9|worker-term|coord-kill9|redis-kill9) ;;
    *) echo "bench/faults.sh: unknown fault '$k' in --faults" >&2; exit 2 ;; esac
done
[[ -x $BUILD/lowbit ]] || { echo "bench/faults.sh: no $BUILD/lowbit; build first" >&2; exit 2; }
LOWBIT=$(cd "$BUILD" && pwd)/lowbit
for c in redis-server redis-cli python3 cmp; do
    command -v $c >/dev/null || { echo "bench/faults.sh: $c not on PATH (deploy/install-deps.sh)" >&2; exit 2; }
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${LOWBIT_SHARED:-$ROOT/../shared}

TMP=${LB_BENCH_TMP:-/tmp}/lowbit-faults-$$
mkdir -p "$TMP"
REDIS_PID='' COORD_PID=''
WPIDS=()   # every worker ever started (dead ones are skipped by kill)
# Stops everything this script started (SIGTERM, then SIGKILL after 5 s) and
# removes the scratch directory. Runs on every exit, Ctrl-C included.
stop_pids() {
    local p alive
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive = 0 ]] && break
        sleep 0.1
    done
    for p in "$@"; do { kill -KILL "$p"; wait "$p"; } 2>/dev/null || true; done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids ${COORD_PID:+"$COORD_PID"} "${WPIDS[@]}"
    [[ -n $REDIS_PID ]] && stop_pids "$REDIS_PID"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
ms() { date +%s%3N; }
fsub() { python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))" "$1" "$2"; }
jstr() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# ---- model and calibration ----
case $MODEL in
synth:*)
    "$LOWBIT" synth --preset "${MODEL#synth:}" --out "$TMP/model" >/dev/null
    MODEL_DIR=$TMP/model
    if [[ -z $CALIB ]]; then
        CALIB=$TMP/calib.u32
        python3 - "$MODEL_DIR/config.json" "$CALIB" "$NSAMPLES" "$CTX" <<'PY'
import json, random, struct, sys
vocab = json.load(open(sys.argv[1]))["vocab_size"]
random.seed(1234)
n = int(sys.argv[3]) * int(sys.argv[4])
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<%dI" % n, *(random.randrange(vocab) for _ in range(n))))
PY
    fi ;;
stories260K)
    MODEL_DIR=$SHARED/models/stories260K
    CALIB=${CALIB:-$SHARED/data/stories260K-calib.u32}
    [[ -d $MODEL_DIR && -f $CALIB ]] || { echo "bench/faults.sh: no $MODEL_DIR or $CALIB (set LOWBIT_SHARED)" >&2; exit 2; } ;;
*)
    MODEL_DIR=$MODEL
    [[ -d $MODEL_DIR && -n $CALIB && -f $CALIB ]] || { echo "bench/faults.sh: --model DIR needs a directory and --calib FILE" >&2; exit 2; } ;;
esac
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)
CALIB=$(cd "$(dirname "$CALIB")" && pwd)/$(basename "$CALIB")
Q=(--model "$MODEL_DIR" --calib "$CALIB" --ctx "$CTX" --nsamples "$NSAMPLES" --method "$METHOD" --bits "$BITS")
WARGS=(--threads "$THREADS")
[[ -n $LEASE_MS ]] && WARGS+=(--lease-ms "$LEASE_MS")
[[ -n $HB_TTL ]] && WARGS+=(--heartbeat-ttl "$HB_TTL")
# shellcheck disable=SC2206  # word splitting of the pass-through options is intended
WARGS+=($WORKER_ARGS)
# shellcheck disable=SC2206
CARGS=($COORD_ARGS)

# ---- embedded reference ----
t0=$(now)
"$LOWBIT" quantize "${Q[@]}" --out "$TMP/emb" --threads $((WORKERS * THREADS)) >/dev/null 2>"$TMP/emb.err" || {
    echo "{\"bench\":\"faults\",\"error\":$(jstr "embedded quantize failed: $(tail -1 "$TMP/emb.err")")}"
    exit 1
}
EMB_WALL=$(fsub "$(now)" "$t0")

# ---- Redis: AOF, loopback, a free port ----
PORT=
start_redis() { # [port]: (re)starts redis-server in $TMP/redis with its AOF
    local port=${1:-}
    for _ in 1 2 3 4 5 6 7 8; do
        [[ -n $port ]] || port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        mkdir -p "$TMP/redis"
        redis-server --port "$port" --bind 127.0.0.1 --dir "$TMP/redis" --appendonly yes \
            --appendfsync everysec --appendfilename lowbit.aof --save '' \
            --logfile "$TMP/redis/redis.log" --daemonize no >/dev/null 2>&1 &
        REDIS_PID=$!
        for _ in $(seq 100); do
            redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && { PORT=$port; return 0; }
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
        [[ -n ${1:-} ]] && return 1 # the same port is required (restart)
        port=
    done
    return 1
}
start_redis || { echo "{\"bench\":\"faults\",\"error\":\"redis-server did not start: $TMP/redis/redis.log\"}"; exit 1; }
URL=redis://127.0.0.1:$PORT/0

NW=0 # workers started in the current trial (ids)
start_worker() { # trial_dir
    NW=$((NW + 1))
    "$LOWBIT" worker --redis "$URL" --id "w$NW" --cache "$1/cache-w$NW" "${WARGS[@]}" \
        >>"$1/w$NW.log" 2>&1 &
    WPIDS+=($!)
    TRIAL_WPIDS+=($!)
}
start_coord() { # trial_dir job
    "$LOWBIT" coordinator --redis "$URL" --job "$2" "${Q[@]}" --out "$1/out" \
        --threads "$THREADS" "${CARGS[@]}" >>"$1/coordinator.log" 2>&1 &
    COORD_PID=$!
}
pick_worker() { # sets VICTIM to a random live worker of this trial (bash RANDOM, seeded)
    local live=() p
    VICTIM=
    for p in "${TRIAL_WPIDS[@]}"; do kill -0 "$p" 2>/dev/null && live+=("$p"); done
    if [[ ${#live[@]} -gt 0 ]]; then VICTIM=${live[RANDOM % ${#live[@]}]}; fi
}

# One distributed run; fault "none" or a kind at at_s. Sets R_WALL, R_RC, R_SAME, R_AT, R_NOTE.
run_trial() { # name fault at_s
    local name=$1 fault=$2 at=$3 dir=$TMP/$1 t0 t0ms tf deadline rc=0
    mkdir -p "$dir"
    TRIAL_WPIDS=()
    NW=0
    R_NOTE='' R_AT=null
    redis-cli -p "$PORT" FLUSHALL >/dev/null
    for _ in $(seq "$WORKERS"); do start_worker "$dir"; done
    t0=$(now)
    t0ms=$(ms)
    start_coord "$dir" "$name"
    deadline=$((t0ms + TRIAL_TIMEOUT * 1000))
    if [[ $fault != none ]]; then
        tf=$((t0ms + $(python3 -c "print(int(round($at * 1000)))")))
        while kill -0 "$COORD_PID" 2>/dev/null && [[ $(ms) -lt $tf ]]; do sleep 0.02; done
        if ! kill -0 "$COORD_PID" 2>/dev/null; then
            R_NOTE="the run ended before the fault time"
        else
            R_AT=$(fsub "$(now)" "$t0")
            case $fault in
            worker-kill9)
                pick_worker
                if [[ -n $VICTIM ]]; then { kill -KILL "$VICTIM"; wait "$VICTIM"; } 2>/dev/null || true; fi
                if [[ $REPLACE_KILLED = 1 ]]; then sleep "$DOWN_S"; start_worker "$dir"; fi ;;
            worker-term)
                pick_worker
                if [[ -n $VICTIM ]]; then kill -TERM "$VICTIM" 2>/dev/null || true; fi
                start_worker "$dir" ;;
            coord-kill9)
                { kill -KILL "$COORD_PID"; wait "$COORD_PID"; } 2>/dev/null || true
                sleep "$DOWN_S"
                start_coord "$dir" "$name" ;;
            redis-kill9)
                { kill -KILL "$REDIS_PID"; wait "$REDIS_PID"; } 2>/dev/null || true
                REDIS_PID=
                sleep "$DOWN_S"
                start_redis "$PORT" || { R_NOTE="redis did not restart on port $PORT"; } ;;
            esac
        fi
    fi
    while kill -0 "$COORD_PID" 2>/dev/null && [[ $(ms) -lt $deadline ]]; do sleep 0.05; done
    R_WALL=$(fsub "$(now)" "$t0")
    if kill -0 "$COORD_PID" 2>/dev/null; then
        R_NOTE="timed out after $TRIAL_TIMEOUT s"
        stop_pids "$COORD_PID"
        rc=124
    else
        wait "$COORD_PID" || rc=$?
    fi
    COORD_PID=
    R_RC=$rc
    [[ $rc = 0 || -n $R_NOTE ]] || R_NOTE="coordinator exit $rc: $(tail -1 "$dir/coordinator.log")"
    R_SAME=false
    cmp -s "$TMP/emb/model.safetensors" "$dir/out/model.safetensors" 2>/dev/null && R_SAME=true
    stop_pids "${TRIAL_WPIDS[@]}"
    [[ -n $REDIS_PID ]] || start_redis "$PORT" || start_redis # a failed restart: a new server
    URL=redis://127.0.0.1:$PORT/0
    if [[ -n $KEEP_LOGS ]]; then
        mkdir -p "$KEEP_LOGS/$name"
        cp "$dir"/*.log "$KEEP_LOGS/$name/" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

CONF="\"model\":$(jstr "$MODEL"),\"method\":\"$METHOD\",\"bits\":$BITS,\"nsamples\":$NSAMPLES,\"ctx\":$CTX,\"workers\":$WORKERS,\"threads\":$THREADS,\"worker_args\":$(jstr "${WARGS[*]}"),\"coordinator_args\":$(jstr "${CARGS[*]}")"
CLEAN=()
for i in $(seq "$CLEAN_RUNS"); do
    run_trial "clean$i-$$" none 0
    if [[ $R_RC != 0 || $R_SAME != true ]]; then
        echo "{\"bench\":\"faults\",\"error\":$(jstr "clean run $i failed: ${R_NOTE:-output differs from embedded}"),$CONF}"
        exit 1
    fi
    CLEAN+=("$R_WALL")
done
CLEAN_WALL=$(python3 -c "import statistics, sys; print(round(statistics.median(map(float, sys.argv[1:])), 3))" "${CLEAN[@]}")
echo "{\"bench\":\"faults\",\"setup\":true,$CONF,\"embedded_wall_s\":$EMB_WALL,\"clean_walls_s\":[$(IFS=,; echo "${CLEAN[*]}")],\"clean_wall_s\":$CLEAN_WALL,\"seed\":$SEED,\"machine_cores\":$(nproc)}"

# trial plan: "seed fault at_s" per line (seeded shuffle of a round robin)
mapfile -t PLAN < <(python3 - "$SEED" "$TRIALS" "$FAULTS" "$CLEAN_WALL" <<'PY'
import random, sys
seed, n, kinds, clean = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","), float(sys.argv[4])
rng = random.Random(seed)
faults = [kinds[i % len(kinds)] for i in range(n)]
rng.shuffle(faults)
for i, f in enumerate(faults):
    print(seed * 1000 + i + 1, f, round(rng.uniform(0.05, 0.85) * clean, 3))
PY
)
LINES=$TMP/trials.jsonl
: >"$LINES"
for i in $(seq "$TRIALS"); do
    read -r tseed fault at <<<"${PLAN[$((i - 1))]}"
    RANDOM=$tseed # which worker is hit
    run_trial "t$i-$$" "$fault" "$at"
    line="{\"bench\":\"faults\",\"trial\":$i,\"seed\":$tseed,\"fault\":\"$fault\",\"at_s\":$R_AT,\"planned_at_s\":$at,\"wall_s\":$R_WALL,\"clean_wall_s\":$CLEAN_WALL,\"extra_s\":$(fsub "$R_WALL" "$CLEAN_WALL"),\"identical\":$R_SAME,\"coordinator_rc\":$R_RC"
    [[ -n $R_NOTE ]] && line+=",\"note\":$(jstr "$R_NOTE")"
    echo "$line}" | tee -a "$LINES"
done
python3 - "$LINES" "$CLEAN_WALL" "$EMB_WALL" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ex = [r["extra_s"] for r in rows]
by = {}
for r in rows:
    by.setdefault(r["fault"], []).append(r["extra_s"])
print(json.dumps(dict(bench="faults", summary=True, trials=len(rows),
      all_identical=all(r["identical"] for r in rows),
      failed=sum(r["coordinator_rc"] != 0 for r in rows),
      missed=sum(r["at_s"] is None for r in rows),
      median_extra_s=round(statistics.median(ex), 3) if ex else None,
      max_extra_s=round(max(ex), 3) if ex else None,
      clean_wall_s=float(sys.argv[2]), embedded_wall_s=float(sys.argv[3]),
      by_fault={k: dict(n=len(v), median_extra_s=round(statistics.median(v), 3),
                        max_extra_s=round(max(v), 3)) for k, v in sorted(by.items())})))
PY
