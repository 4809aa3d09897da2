/* lb_worker_data: the worker's side of the ZeroMQ data plane (docs/data-plane.md).
 *
 * A worker keeps a local artifact store, its cache (lb_store_open(cache_dir):
 * CACHE/.lowbit/artifacts). Before a job runs, its inputs are fetched by id
 * from the coordinator's artifact server (the job record's "artifacts"
 * endpoint) unless the cache already holds a verified copy; the job runs
 * against the cache; its outputs are published back (skipped when the server
 * already holds them, e.g. when the cache IS the coordinator's output
 * directory), and only then is the item acked. Every copy is checked against
 * its SHA-256 before it is used (lb_xfer_store.h). */
#ifndef LB_WORKER_DATA_H
#define LB_WORKER_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_artifact.h"
#include "lb_err.h"
#include "lb_job.h"
#include "lb_redis.h"
#include "lb_xfer.h"

typedef struct lb_wdata lb_wdata;

/* Transfer settings: timeout_ms per reply (> 0), retries on a fresh socket
 * (>= 0). OUT: *out (lb_wdata_free). Returns 0, LB_EINVAL or LB_ENOMEM. */
int lb_wdata_new(int timeout_ms, int retries, lb_wdata **out, lb_err *err);
/* NULL-safe; sets *w = NULL. */
void lb_wdata_free(lb_wdata **w);

/* CURVE keys for every later client (borrowed: must outlive w; NULL or off:
 * plain TCP). */
void lb_wdata_set_curve(lb_wdata *w, const lb_xfer_curve *curve);

/* The lease claim sent with later publishes ("job=NAME entry=ID worker=ID";
 * NULL: none). Copied. */
void lb_wdata_set_claim(lb_wdata *w, const char *claim);

/* Makes every input of job present and verified in store, fetching from the
 * artifact server at endpoint (a new client when the endpoint changed, e.g.
 * after a coordinator restart, or after a failed transfer; a new client first
 * checks with one TCP connect of at most 3 s that the server is there, so a
 * refused endpoint fails at once). Adds the bytes
 * received to *bytes. Returns 0, LB_ENET (no answer from endpoint: the item
 * should be retried), LB_ENOTFOUND or LB_EFORMAT (the server lacks the input
 * or its copy is invalid: see lb_wdata_input_lost), or another LB_E*. */
int lb_wdata_fetch(lb_wdata *w, const char *endpoint, const lb_store *store, const lb_job *job,
                   uint64_t *bytes, lb_err *err);

/* Publishes every output of job from store to the server last used by
 * lb_wdata_fetch (the same endpoint). Adds the bytes sent to *bytes. Returns 0
 * or the first error (LB_ENET: no answer). */
int lb_wdata_publish(lb_wdata *w, const lb_store *store, const lb_job *job, uint64_t *bytes,
                     lb_err *err);

/* lb_wdata_publish to the server at endpoint (e.g. re-read from the job record
 * after a failed transfer). */
int lb_wdata_publish_to(lb_wdata *w, const char *endpoint, const lb_store *store,
                        const lb_job *job, uint64_t *bytes, lb_err *err);

/* Drops from the cache at cache_dir every artifact the coordinator of job
 * released since the last call for that job (lb_redis_released.h), so the
 * cache does not grow by every artifact this worker touched. A worker that
 * switches jobs starts over from the list's beginning (removing an absent file
 * is fine). Adds the number of files removed to *removed (may be NULL).
 * Returns 0 or LB_E* (Redis or the cache directory). */
int lb_wdata_prune(lb_wdata *w, lb_redis *r, const char *job, const char *cache_dir,
                   int64_t *removed, lb_err *err);

/* True when a fetch error means "the coordinator does not hold a valid copy of
 * an input": its producing job must run again, not this item. */
bool lb_wdata_input_lost(int rc);

/* The default cache directory for worker id: ${TMPDIR:-/tmp}/lowbit-<uid>/<id>
 * (the parent is created mode 0700). OUT: buf. Returns 0, LB_EINVAL (id not
 * usable as a file name or buf too small) or LB_EIO. */
int lb_wdata_default_cache(const char *worker_id, char *buf, size_t size, lb_err *err);

/* Removes a cache made by lb_store_open(dir): the artifact files (and their
 * .tmp leftovers) in DIR/.lowbit/artifacts, that directory, DIR/.lowbit and
 * DIR, each only if then empty. Returns 0 or LB_EIO naming what stayed. */
int lb_wdata_remove_cache(const char *dir, lb_err *err);

#endif
