/* lb_dist: the distributed driver of an lb_plan. Where lb_runner feeds an
 * in-process pool, lb_dist feeds Redis (lb_redis.h): runnable jobs go to the
 * job's stream queue as msgpack (lb_job_encode), `lowbit worker` processes run
 * them with lb_exec_run and post results, and this loop feeds the results back
 * into the plan, deletes released artifacts and keeps the job record (state,
 * counters, ETA) and events current. It holds no state Redis and the artifacts
 * do not: a restarted coordinator rebuilds the plan from the present artifacts,
 * re-reads the results stream from the start and never queues an item twice.
 *
 * Artifacts (docs/data-plane.md): lb_dist serves the store over ZeroMQ
 * (lb_xfer server, endpoint in the job record's "artifacts" field); workers
 * fetch inputs into their own caches and publish outputs back before they
 * ack. A success counts only once the job's outputs verify in this store. An
 * input a worker reports lost (absent or invalid here) is removed and its
 * producing job queued again; the consumer waits ("parked") until the inputs
 * verify, then is queued again. The merge job runs here, in-process, where
 * the artifacts and the output directory are. The totals of bytes served and
 * received go to the record's bytes_fetched / bytes_published. */
#ifndef LB_DIST_H
#define LB_DIST_H

#include "lb_artifact.h"
#include "lb_exec.h"
#include "lb_plan.h"
#include "lb_runner.h"
#include "lb_xfer.h"

typedef struct lb_dist_opts {
    const char *redis_url;   /* lb_redis_url syntax */
    const char *job_name;    /* [A-Za-z0-9._-]{1,64} */
    const char *fingerprint; /* run id: same options -> same value (lb_redis_job_create) */
    const char *method;      /* for the job record */
    double bits;
    const char *model_dir, *out_dir; /* recorded for workers */
    int32_t n_blocks;        /* transformer blocks (blocks_total) */
    double redis_wait_s;     /* how long an unreachable Redis is waited for; <= 0: 300 */
    lb_runner_progress_fn progress; /* may be NULL; called per finished job */
    void *user;
    const lb_exec_ctx *local;      /* runs the merge job here (model, fingerprint, store) */
    const lb_artifact_tensor *calib; /* the calibration windows, written again when that
                                        artifact is lost (NULL: the run fails instead) */
    const char *artifact_bind;     /* NULL: "tcp://127.0.0.1:*" */
    const char *artifact_endpoint; /* what workers are told; NULL: the bound endpoint, with
                                      a wildcard host (0.0.0.0, *) replaced by the hostname */
    const lb_xfer_curve *curve;    /* CURVE server keys + allowlist (NULL/off: plain TCP) */
    bool insecure;                 /* allow a non-loopback bind without CURVE */
} lb_dist_opts;

/* Runs every needed job of plan (lb_plan_start called) through Redis.
 * Returns 0 when all finished (state "done"), LB_ESTATE when the job was
 * cancelled (state stays "cancelled"), or the first failure (a dead-lettered
 * item, or a Redis error) with err naming it (state "failed" + error). */
int lb_dist_run(lb_plan *plan, const lb_store *artifacts, const lb_dist_opts *o, lb_err *err);

#endif
