#!/usr/bin/env bash
# A single-machine lowbit cluster: redis-server (AOF, loopback, random password)
# on a free port in a temporary directory, then, when this lowbit has them, the
# coordinator and `mpirun -np N lowbit worker`. Everything started here is
# stopped and the directory removed on exit (Ctrl-C, error or normal end).
#
# usage: deploy/local-cluster.sh [--job NAME] [--workers N] [--lowbit PATH]
#                                [--keep-dir] [-- QUANTIZE OPTIONS...]
#   with no quantize options: only Redis runs; the script prints its URL and
#   waits (Ctrl-C stops it). Export LOWBIT_REDIS=<url> in other shells.
#   e.g. deploy/local-cluster.sh --job demo -- --model M --calib C --out O --method gptq --bits 4
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
job=local
workers=2
lowbit="$root/build/lowbit"
keep_dir=0
quantize=()
while [ $# -gt 0 ]; do
  case "$1" in
    --job) job=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --lowbit) lowbit=$2; shift 2 ;;
    --keep-dir) keep_dir=1; shift ;;
    --) shift; quantize=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-cluster: unknown option '$1'; see --help" >&2; exit 2 ;;
  esac
done

command -v redis-server >/dev/null || { echo "local-cluster: redis-server not found; run deploy/install-deps.sh" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "local-cluster: redis-cli not found; run deploy/install-deps.sh" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/lowbit-cluster.XXXXXX")
pids=()
redis_pid=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  if [ "$keep_dir" = 1 ]; then echo "local-cluster: kept $dir" >&2; else rm -rf "$dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
started=0
for _ in 1 2 3 4 5 6 7 8; do
  port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  { cat "$here/redis.conf"; printf 'port %d\ndir %s\nrequirepass %s\nlogfile %s/redis.log\n' \
      "$port" "$dir" "$password" "$dir"; } > "$dir/redis.conf"
  chmod 600 "$dir/redis.conf"
  redis-server "$dir/redis.conf" &
  redis_pid=$!
  for _ in $(seq 50); do
    if REDISCLI_AUTH=$password redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      started=1; break
    fi
    kill -0 "$redis_pid" 2>/dev/null || break   # exited: port taken, try another
    sleep 0.1
  done
  [ "$started" = 1 ] && break
  kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; redis_pid=
done
[ "$started" = 1 ] || { echo "local-cluster: redis-server did not start (see $dir/redis.log)" >&2; keep_dir=1; exit 1; }

url="redis://:$password@127.0.0.1:$port/0"
echo "local-cluster: Redis (AOF in $dir) at $url"
echo "local-cluster: export LOWBIT_REDIS='$url'   # then: lowbit status $job"

has_cmd() { [ -x "$lowbit" ] && "$lowbit" --help 2>/dev/null | grep -qE "^  $1 "; }

if [ ${#quantize[@]} -eq 0 ]; then
  echo "local-cluster: no quantize options given: only Redis runs. Ctrl-C stops it."
  wait "$redis_pid"
  exit 0
fi
if ! has_cmd coordinator || ! has_cmd worker; then
  echo "local-cluster: $lowbit has no 'coordinator'/'worker' commands yet (the distributed" >&2
  echo "local-cluster: runner is not built in this version); Redis only. Ctrl-C stops it." >&2
  wait "$redis_pid"
  exit 0
fi

export LOWBIT_REDIS=$url
# share the cores between the workers
cores=$(nproc 2>/dev/null || echo 2)
per=$(( cores / workers )); [ "$per" -ge 1 ] || per=1
# the URL comes from LOWBIT_REDIS (exported above): no password in `ps`
"$lowbit" coordinator --job "$job" --resume "${quantize[@]}" &
coord=$!
pids+=("$coord")
worker_pids=()
if command -v mpirun >/dev/null; then
  # The ranks form ONE worker (docs/distributed.md): rank 0 talks to Redis, all
  # ranks compute. As root, Open MPI needs --allow-run-as-root (or
  # OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1).
  # shellcheck disable=SC2086  # LOWBIT_MPIRUN_ARGS: e.g. --allow-run-as-root
  mpirun --oversubscribe ${LOWBIT_MPIRUN_ARGS:-} -x LOWBIT_REDIS -np "$workers" "$lowbit" worker --threads "$per" &
  worker_pids+=("$!")
else
  echo "local-cluster: mpirun not found; starting $workers plain workers" >&2
  for _ in $(seq "$workers"); do "$lowbit" worker --threads "$per" & worker_pids+=("$!"); done
fi
pids+=("${worker_pids[@]}")
# Wait for the coordinator, but not forever when every worker is gone (mpirun
# refused to start, a rank crashed): nothing would run the queued jobs.
while kill -0 "$coord" 2>/dev/null; do
  alive=0
  for p in "${worker_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  if [ "$alive" = 0 ]; then
    echo "local-cluster: every worker exited before the coordinator finished (see the messages" >&2
    echo "local-cluster: above; as root, set LOWBIT_MPIRUN_ARGS=--allow-run-as-root)" >&2
    exit 1
  fi
  sleep 0.5
done
wait "$coord"
