/* lb_worker_priv: the worker's state shared by lb_worker.c (lifecycle, slots,
 * heartbeat) and lb_worker_item.c (one item: fetch, run, publish, post);
 * not an API. */
#ifndef LB_WORKER_PRIV_H
#define LB_WORKER_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "lb_artifact.h"
#include "lb_exec.h"
#include "lb_job.h"
#include "lb_model.h"
#include "lb_mpi_group.h"
#include "lb_redis.h"
#include "lb_time.h"
#include "lb_worker.h"
#include "lb_worker_data.h"

#define STOP_GRACE_S 1.0 /* after a stop: idle slots leave within this */
#define POST_GRACE_S 3.0 /* a result being posted at the stop may finish within this */

/* Cached source model and artifact store (jobs of one run share them). */
typedef struct {
    char model_dir[LB_JOB_PATH_MAX];
    char out_dir[LB_JOB_PATH_MAX]; /* where the store was opened: cache or job out dir */
    lb_model *model;
    char model_fp[LB_ID_HEX];
    lb_store *store;
} exec_cache;

enum { SLOT_IDLE, SLOT_BUSY, SLOT_POSTING };

extern _Thread_local int lb_worker_tl_slot; /* the calling slot's index, for the "ran" event */

typedef struct {
    struct lb_worker *w;
    int idx;
    pthread_t th;
    bool started;
    lb_redis *r;
    lb_wdata *data;
    exec_cache cache;
    int64_t est_bytes; /* memory estimate of one item of the last model seen */
    /* under w->mu: */
    int state;
    bool exited, abandoned;
    char job[LB_REDIS_NAME_MAX + 1];
    const lb_redis_msg *lease; /* borrowed while BUSY or POSTING */
} slot;

struct lb_worker {
    lb_worker_spec spec;
    char url[1024], id[LB_REDIS_ID_MAX + 1], host[128], cache_dir[LB_JOB_PATH_MAX];
    int threads, nslots;
    lb_mpi_group *group; /* rank 0 of an MPI worker group (or rank > 0), else NULL */
    exec_cache group_cache; /* ranks > 0 */
    pthread_mutex_t mu;
    bool quit, done, failed, abandoned;
    bool own_cache; /* the default scratch cache: removed by lb_worker_free */
    const char *reason; /* why the loop ended: "signal", "idle", "max-jobs" */
    lb_err fail_err;
    int64_t taken; /* items taken or reserved (max_jobs) */
    int busy;
    int64_t busy_bytes;
    double last_work;
    slot *slots;
    pthread_t beat;
    bool beat_started;
};

/* Prints o as one JSON line on stdout and releases it. */
void lb_worker_emit(lb_worker *w, json_t *o);
void lb_worker_sleep_ms(int ms);
void lb_worker_cache_clear(exec_cache *c);
/* The stop flag is set or the worker is quitting. */
bool lb_worker_stopping(lb_worker *w);
void lb_worker_sleep_unless_stopping(lb_worker *w, int ms);
int64_t lb_worker_item_estimate(const lb_model *m);
/* One leased item: fetch, run, publish, post (lb_worker_item.c). */
int lb_worker_run_item(slot *s, const char *name, char *endpoint, size_t esize, const char *out_dir,
                       lb_redis_msg *msg, lb_err *err);

/* Ranks > 0 of an MPI group: the context of a job rank 0 sent (user: group_user). */
typedef struct {
    exec_cache *cache;
    int threads;
} group_user;
int lb_worker_group_ctx(void *user, const lb_job *job, const char *out_dir, lb_exec_ctx *ctx,
                        lb_err *err);

#endif
