/* lb_worker: the distributed worker loop (`lowbit worker`). Takes the items of
 * every running distributed job from Redis (proto/lb_redis.h), runs them with
 * lb_exec_run, posts results.
 *
 * Slots: up to `slots` items run side by side, each slot a thread with its own
 * Redis connection, data-plane client and model handle; the artifact cache is
 * shared (writes are unique-tmp + rename, so two slots fetching one artifact
 * cannot corrupt it). BLAS stays at one thread (process-global, changes the
 * rounding: lb_runner.h), so the outputs are the embedded run's bytes.
 *
 * Recovery: one heartbeat thread refreshes lowbit:worker:ID (TTL
 * heartbeat_ttl_s, every TTL/3) and touches every lease held. Before claiming,
 * a slot takes over items leased by dead workers (heartbeat gone:
 * lb_redis_reclaim_dead), then items idle past lease_ms (a live but hung
 * worker), then new items. A failed transfer re-reads the job's `artifacts`
 * field before retrying; after fetch_give_up_s the item fails (re-queued,
 * counted). When *stop becomes set, idle slots stop, and items still being
 * fetched or run are given back (lb_redis_release: re-queued at once, not a
 * failure); lb_worker_run then returns within ~3 s, leaving those runs
 * abandoned (lb_worker_abandoned: the caller should end the process). */
#ifndef LB_WORKER_H
#define LB_WORKER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_xfer.h"

typedef struct {
    const char *redis_url;    /* NULL: $LOWBIT_REDIS, else LB_REDIS_DEFAULT_URL */
    const char *id;           /* NULL: HOST-PID */
    const char *cache_dir;    /* NULL: ${TMPDIR:-/tmp}/lowbit-UID/ID, removed at the end */
    int threads;              /* OpenMP threads in all (0: all cores) */
    int slots;                /* items at once (0: one per thread, capped by the budget) */
    double memory_budget_gib; /* 0: none; else new items start only while the estimated
                                 memory of the running ones fits */
    int64_t lease_ms;         /* stale-lease backstop (default 600000) */
    int max_failures;         /* default 3 */
    int heartbeat_ttl_s;      /* default 6 (refreshed every 2 s) */
    int64_t idle_exit_s;      /* 0: never */
    int64_t redis_wait_s;     /* default 300 */
    int xfer_timeout_ms;      /* per transfer reply (default 120000) */
    int fetch_give_up_s;      /* failing transfers of one item give up after (default 10) */
    int64_t max_jobs;         /* 0: no limit */
    int mpi_mode;             /* 1 --mpi, -1 --no-mpi, 0 auto */
    bool json;                /* JSON lines on stdout */
    int *argc;                /* for MPI_Init (may be NULL) */
    char ***argv;
    volatile sig_atomic_t *stop; /* set by the caller's signal handler (may be NULL) */
    const lb_xfer_curve *curve;  /* CURVE client keys (borrowed; NULL/off: plain TCP). With
                                    CURVE the id is NAME@HOST-PID by default, and an id not
                                    NAME or NAME@... becomes NAME@ID: the server checks
                                    leases against the key's name */
} lb_worker_spec;

typedef struct lb_worker lb_worker;

/* The defaults above. */
void lb_worker_spec_default(lb_worker_spec *spec);

/* Checks spec and prepares the worker (joins the MPI group when asked). Nothing
 * touches Redis yet. OUT: *out (lb_worker_free). Returns 0 or LB_E*. */
int lb_worker_new(const lb_worker_spec *spec, lb_worker **out, lb_err *err);

/* Serves until *stop, --idle-exit, --max-jobs, or a fatal error. MPI ranks > 0
 * serve rank 0 instead. Returns 0 (a clean end) or LB_E* with err. */
int lb_worker_run(lb_worker *w, lb_err *err);

/* True when lb_worker_run returned while some slot was still inside a fetch or
 * a run it gave back: the process should end now (_exit) rather than wait. */
bool lb_worker_abandoned(const lb_worker *w);

/* NULL-safe; sets *w = NULL. With abandoned slots, their memory is left to the
 * process's end (their threads still use it). */
void lb_worker_free(lb_worker **w);

/* The slots a worker runs by default: threads, capped by memory_budget_gib
 * over the per-item estimate est_item_bytes (0: unknown, no cap); >= 1. */
int lb_worker_default_slots(int threads, double memory_budget_gib, int64_t est_item_bytes);

#endif
