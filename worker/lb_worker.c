/* lb_worker: the distributed worker loop (lb_worker.h). Slot threads lease and
 * run items; a heartbeat thread keeps the worker's liveness key and every
 * lease fresh; lb_worker_run watches the stop flag and gives back what is
 * still running when it is set. */
#include "lb_worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_artifact.h"
#include "lb_blas.h"
#include "lb_exec.h"
#include "lb_job.h"
#include "lb_model.h"
#include "lb_mpi_group.h"
#include "lb_packed.h"
#include "lb_redis.h"
#include "lb_redis_url.h"
#include "lb_worker_data.h"
#include "lb_time.h"

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

static _Thread_local int tl_slot; /* the calling slot's index, for the "ran" event */

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
static void emit(lb_worker *w, json_t *o)
{
    (void)w;
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (t) {
        printf("%s\n", t);
        fflush(stdout);
    }
    free(t);
    json_decref(o);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void cache_clear(exec_cache *c)
{
    lb_model_free(&c->model);
    lb_store_free(&c->store);
    memset(c, 0, sizeof *c);
}

static int cache_get(exec_cache *c, const char *model_dir, const char *out_dir, lb_err *err)
{
    if (!c->model || strcmp(c->model_dir, model_dir)) {
        lb_model_free(&c->model);
        c->model_dir[0] = 0;
        int rc = lb_packed_model_open(&c->model, model_dir, err);
        if (!rc)
            rc = lb_exec_model_fingerprint(c->model, c->model_fp, err);
        if (rc) {
            lb_model_free(&c->model);
            return rc;
        }
        snprintf(c->model_dir, sizeof c->model_dir, "%s", model_dir);
    }
    if (!c->store || strcmp(c->out_dir, out_dir)) {
        lb_store_free(&c->store);
        c->out_dir[0] = 0;
        int rc = lb_store_open(out_dir, &c->store, err);
        if (rc)
            return rc;
        snprintf(c->out_dir, sizeof c->out_dir, "%s", out_dir);
    }
    return 0;
}

/* Posts an item's result (lb_redis_complete). A result lost to a Redis outage
 * is posted again once Redis is back, for up to redis_wait_s: dropped, the item
 * would stay leased to this worker until another one's --lease-ms ran out.
 * Posting twice is harmless: the coordinator takes an item's first result only. */
static int post_result(lb_redis *r, const char *worker, const char *name, const lb_redis_msg *msg,
                       const uint8_t *buf, size_t len, double redis_wait_s, lb_err *err)
{
    double lost_since = lb_now_s();
    for (;;) {
        int rc = lb_redis_complete(r, name, msg, buf, len, err);
        if (rc != LB_ENET || lb_now_s() - lost_since >= redis_wait_s)
            return rc;
        fprintf(stderr, "lowbit worker %s: posting %.12s: %s; retrying\n", worker, msg->id,
                err->msg);
        sleep_ms(1000);
    }
}

/* Reports a finished item: acks it with its result, or counts a failure
 * (re-queue or dead-letter); event and log line. Returns 0 unless Redis failed. */
static int finish_item(lb_redis *r, lb_worker *w, const char *name,
                       const lb_redis_msg *msg, const lb_job *job, int rc,
                       const lb_job_result *res, const lb_err *jerr, double secs,
                       const lb_mpi_stats *ms, uint64_t fetched, uint64_t published,
                       int max_failures, double redis_wait_s, lb_err *err)
{
    int out = 0;
    char ev[512];
    if (rc == 0) {
        uint8_t *buf = NULL;
        size_t len = 0;
        out = lb_job_result_encode(res, &buf, &len, err);
        if (!out)
            out = post_result(r, w->id, name, msg, buf, len, redis_wait_s, err);
        free(buf);
        int n = snprintf(ev, sizeof ev, "%s ran %s %.12s (block %d) in %.1f s, fetched %llu B, "
                         "published %llu B", w->id, lb_job_type_name(job->type), job->id,
                         (int)job->block, secs, (unsigned long long)fetched,
                         (unsigned long long)published);
        if (w->group && ms->chunks && n > 0 && (size_t)n < sizeof ev)
            snprintf(ev + n, sizeof ev - (size_t)n, " on %d MPI ranks (%d of %d chunks remote, "
                     "%lld bytes over MPI)", (int)ms->ranks_used, (int)ms->chunks_remote,
                     (int)ms->chunks, (long long)ms->mpi_bytes);
        if (!out) { /* the log line is best-effort: the result is in */
            lb_err e2 = {0};
            if (lb_redis_event(r, name, ev, &e2))
                fprintf(stderr, "lowbit worker %s: event not logged: %s\n", w->id, e2.msg);
        }
        if (!out && w->group)
            out = lb_redis_job_incr(r, name, "mpi_bytes", ms->mpi_bytes, NULL, err);
        if (w->spec.json)
            emit(w, json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:i, s:f, s:I, s:I, s:I, s:i, s:i, s:i}",
                           "event", "ran", "worker", w->id, "slot", tl_slot, "job", name, "item", job->id, "type",
                           lb_job_type_name(job->type), "block", (int)job->block, "seconds", secs,
                           "bytes_fetched", (json_int_t)fetched, "bytes_published",
                           (json_int_t)published, "mpi_bytes", (json_int_t)ms->mpi_bytes,
                           "mpi_ranks", (int)ms->ranks_used, "mpi_chunks", (int)ms->chunks,
                           "mpi_chunks_remote", (int)ms->chunks_remote));
        else
            fprintf(stderr, "lowbit worker: %s: %s\n", name, ev);
    } else {
        bool dead = false;
        int64_t fails = 0;
        out = lb_redis_fail(r, name, msg, jerr->msg, max_failures, &dead, &fails, err);
        if (w->spec.json)
            emit(w, json_pack("{s:s, s:s, s:s, s:s, s:I, s:i, s:b, s:s}", "event", "failed", "worker",
                           w->id, "job", name, "item", msg->id, "fails", (json_int_t)fails,
                           "max_failures", max_failures, "dead", dead, "error", jerr->msg));
        else
            fprintf(stderr, "lowbit worker: %s: item %.12s failed (%lld of %d%s): %s\n", name,
                    msg->id, (long long)fails, max_failures, dead ? ", dead-lettered" : "",
                    jerr->msg);
    }
    return out;
}

/* MPI group, independent job (quantize-linear, distill, merge, embed): claims
 * up to size - 1 more items of `name` and runs them side by side, one per
 * rank (job0 on rank 0: its result in *res0, the batch's MPI figures in *ms0).
 * The extra items are finished here. A claimed item that cannot join the
 * batch (data-parallel, undecodable, another model) is returned in *deferred
 * (*has_deferred) for the caller to run next. Returns 0 unless Redis failed;
 * a broken group shows as res0->err_code == LB_ENET. */
static int run_batch(lb_redis *r, lb_worker *w, const char *name, const char *dir,
                     const lb_redis_msg *msg0, const lb_job *job0, const lb_exec_ctx *ctx,
                     lb_job_result *res0, lb_mpi_stats *ms0, int max_failures,
                     double redis_wait_s, lb_redis_msg *deferred, bool *has_deferred,
                     lb_err *err)
{
    const int size = lb_mpi_group_size(w->group);
    lb_redis_msg *xm = calloc((size_t)size, sizeof *xm);
    lb_job *xj = calloc((size_t)size, sizeof *xj);
    const lb_job **jobs = calloc((size_t)size, sizeof *jobs);
    const uint8_t **pl = calloc((size_t)size, sizeof *pl);
    size_t *lens = calloc((size_t)size, sizeof *lens);
    lb_job_result *res = calloc((size_t)size, sizeof *res);
    int n = 1, out = 0;
    *has_deferred = false;
    if (!xm || !xj || !jobs || !pl || !lens || !res) {
        free(xm), free(xj), free(jobs), free(pl), free(lens), free(res);
        memset(ms0, 0, sizeof *ms0);
        lb_exec_run(job0, ctx, res0); /* no memory for a batch: this job alone */
        return 0;
    }
    jobs[0] = job0;
    pl[0] = msg0->payload;
    lens[0] = msg0->len;
    while (n < size) {
        bool got = false;
        lb_redis_msg m;
        lb_err ce = {0};
        if (lb_redis_claim(r, name, w->id, 0, &m, &got, &ce) || !got)
            break; /* nothing more now (or Redis hiccup: the main loop sees it) */
        lb_job_init(&xj[n]);
        lb_err je = {0};
        if (lb_job_decode(m.payload, m.len, &xj[n], &je) || strcmp(xj[n].id, m.id) ||
            lb_exec_is_data_parallel(&xj[n]) || strcmp(xj[n].model_dir, job0->model_dir) ||
            strcmp(xj[n].out_dir, job0->out_dir)) {
            lb_job_clear(&xj[n]);
            *deferred = m;
            *has_deferred = true;
            break;
        }
        xm[n] = m;
        jobs[n] = &xj[n];
        pl[n] = m.payload;
        lens[n] = m.len;
        n++;
    }
    lb_err be = {0};
    if (lb_mpi_group_run_batch(w->group, n, jobs, pl, lens, dir, ctx, res, ms0, &be)) {
        for (int i = 0; i < n; i++) {
            memset(&res[i], 0, sizeof res[i]);
            res[i].status = LB_JOB_FAILED;
            res[i].err_code = LB_ENET;
            snprintf(res[i].error, sizeof res[i].error, "%s", be.msg);
        }
    }
    *res0 = res[0];
    for (int i = 1; i < n; i++) {
        lb_err je = {0};
        int rc = res[i].status == LB_JOB_OK ? 0 : (res[i].err_code ? res[i].err_code : LB_EINVAL);
        snprintf(je.msg, sizeof je.msg, "%s", res[i].error);
        lb_mpi_stats none;
        memset(&none, 0, sizeof none);
        none.ranks_used = 1;
        int o = finish_item(r, w, name, &xm[i], &xj[i], rc, &res[i], &je, res[i].seconds, &none,
                            0, 0, max_failures, redis_wait_s, err);
        if (o && !out)
            out = o;
        lb_redis_msg_clear(&xm[i]);
        lb_job_clear(&xj[i]);
    }
    free(xm), free(xj), free(jobs), free(pl), free(lens), free(res);
    return out;
}

/* Ranks > 0 of an MPI group: the context of a job rank 0 sent. */
typedef struct {
    exec_cache *cache;
    int threads;
} group_user;

static int group_ctx(void *user, const lb_job *job, const char *out_dir, lb_exec_ctx *ctx,
                     lb_err *err)
{
    group_user *u = user;
    int rc = cache_get(u->cache, job->model_dir, job->out_dir[0] ? job->out_dir : out_dir, err);
    if (rc)
        return rc;
    ctx->model = u->cache->model;
    ctx->model_fp = u->cache->model_fp;
    ctx->store = u->cache->store;
    ctx->omp_threads = u->threads;
    return 0;
}


static bool stop_asked(const lb_worker *w) { return w->spec.stop && *w->spec.stop; }

/* True when slots should leave their loop. */
static bool stopping(lb_worker *w)
{
    if (stop_asked(w))
        return true;
    pthread_mutex_lock(&w->mu);
    bool q = w->quit || w->done || w->failed;
    pthread_mutex_unlock(&w->mu);
    return q;
}

static void sleep_unless_stopping(lb_worker *w, int ms)
{
    for (int t = 0; t < ms && !stopping(w); t += 50)
        sleep_ms(ms - t < 50 ? ms - t : 50);
}

/* A fatal error of a slot ends the worker (first one kept). */
static void set_failed(lb_worker *w, const lb_err *err)
{
    pthread_mutex_lock(&w->mu);
    if (!w->failed) {
        w->failed = true;
        w->fail_err = *err;
    }
    pthread_mutex_unlock(&w->mu);
}

/* Rough peak memory of one item of a model: three fp32 copies of its largest
 * linear (weight, work, quantized) and a float64 Hessian of its widest input. */
static int64_t item_estimate(const lb_model *m)
{
    if (!m)
        return 0;
    const lb_config *c = lb_model_config(m);
    int64_t h = c->hidden_size, i = c->intermediate_size > h ? c->intermediate_size : h;
    return 12 * h * i + 8 * i * i;
}

int lb_worker_default_slots(int threads, double memory_budget_gib, int64_t est_item_bytes)
{
    int n = threads > 0 ? threads : 1;
    if (memory_budget_gib > 0 && est_item_bytes > 0) {
        double fit = memory_budget_gib * 1073741824.0 / (double)est_item_bytes;
        if (fit < n)
            n = fit >= 1 ? (int)fit : 1;
    }
    return n;
}

/* Reserves the right to take one more item: under --max-jobs and, with a
 * memory budget, while the running items' estimate leaves room (one item is
 * always allowed). Undo with unreserve when nothing was taken. */
static bool reserve(slot *s)
{
    lb_worker *w = s->w;
    bool ok = true;
    pthread_mutex_lock(&w->mu);
    if (w->spec.max_jobs > 0 && w->taken >= w->spec.max_jobs)
        ok = false;
    if (ok && w->spec.memory_budget_gib > 0 && w->busy > 0 &&
        (double)(w->busy_bytes + s->est_bytes) > w->spec.memory_budget_gib * 1073741824.0)
        ok = false;
    if (ok)
        w->taken++;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

static void unreserve(lb_worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->taken--;
    pthread_mutex_unlock(&w->mu);
}

/* Heartbeat thread: SET EX of lowbit:worker:ID every TTL/3 and a touch of
 * every lease a slot holds, on its own connection. */
static void *beat_main(void *arg)
{
    lb_worker *w = arg;
    lb_redis *r = NULL;
    int period_ms = w->spec.heartbeat_ttl_s * 1000 / 3;
    if (period_ms < 100)
        period_ms = 100;
    typedef struct {
        char job[LB_REDIS_NAME_MAX + 1];
        lb_redis_msg lease; /* entry + id only */
    } held;
    held *h = calloc((size_t)w->nslots, sizeof *h);
    for (;;) {
        int nh = 0;
        pthread_mutex_lock(&w->mu);
        bool quit = w->quit;
        for (int i = 0; h && i < w->nslots; i++) {
            slot *s = &w->slots[i];
            if (s->lease && !s->abandoned) {
                snprintf(h[nh].job, sizeof h[nh].job, "%s", s->job);
                memset(&h[nh].lease, 0, sizeof h[nh].lease);
                snprintf(h[nh].lease.entry, sizeof h[nh].lease.entry, "%s", s->lease->entry);
                snprintf(h[nh].lease.id, sizeof h[nh].lease.id, "%s", s->lease->id);
                nh++;
            }
        }
        pthread_mutex_unlock(&w->mu);
        if (quit)
            break;
        lb_err err = {0};
        if (!r && lb_redis_connect(w->url, NULL, &r, &err))
            r = NULL;
        if (r) {
            char info[512];
            snprintf(info, sizeof info, "host=%s pid=%ld job=%s item=%.16s slots=%d busy=%d",
                     w->host, (long)getpid(), nh ? h[0].job : "-", nh ? h[0].lease.id : "-",
                     w->nslots, nh);
            int rc = lb_redis_heartbeat(r, w->id, info, w->spec.heartbeat_ttl_s, &err);
            for (int i = 0; !rc && i < nh; i++)
                rc = lb_redis_lease_touch(r, h[i].job, w->id, &h[i].lease, &err);
            if (rc)
                fprintf(stderr, "lowbit worker %s: heartbeat: %s\n", w->id, err.msg);
        }
        for (int t = 0; t < period_ms; t += 50) {
            pthread_mutex_lock(&w->mu);
            quit = w->quit;
            pthread_mutex_unlock(&w->mu);
            if (quit)
                break;
            sleep_ms(50);
        }
    }
    free(h);
    lb_redis_free(&r);
    return NULL;
}

/* The job record's artifacts endpoint, re-read (a restarted coordinator serves
 * on a new port). Keeps `endpoint` when Redis does not answer. */
static void reread_endpoint(slot *s, const char *name, char *endpoint, size_t size)
{
    lb_redis_map m;
    lb_err e = {0};
    if (lb_redis_job_get(s->r, name, &m, &e))
        return;
    const char *a = lb_redis_map_get(&m, "artifacts");
    if (a && a[0])
        snprintf(endpoint, size, "%s", a);
    lb_redis_map_clear(&m);
}

/* Fetch (publish: false) or publish (true) with recovery: a transfer that gets
 * no answer re-reads the endpoint and tries again (at once when it changed,
 * else after 1 s) until fetch_give_up_s, or the stop. */
static int transfer(slot *s, const char *name, char *endpoint, size_t esize, bool publish,
                    const lb_job *job, uint64_t *bytes, lb_err *err)
{
    lb_worker *w = s->w;
    double t0 = lb_now_s();
    for (int attempt = 1;; attempt++) {
        int rc = publish ? lb_wdata_publish_to(s->data, endpoint, s->cache.store, job, bytes, err)
                         : lb_wdata_fetch(s->data, endpoint, s->cache.store, job, bytes, err);
        if (rc != LB_ENET)
            return rc;
        if (lb_now_s() - t0 >= (double)w->spec.fetch_give_up_s || stopping(w)) {
            char last[sizeof err->msg]; /* err->msg cannot be its own format argument */
            snprintf(last, sizeof last, "%s", err->msg);
            return lb_err_set(err, LB_ENET, "%s (gave up after %d attempts in %.0f s)", last,
                              attempt, lb_now_s() - t0);
        }
        char was[256];
        snprintf(was, sizeof was, "%s", endpoint);
        reread_endpoint(s, name, endpoint, esize);
        bool moved = strcmp(was, endpoint) != 0;
        fprintf(stderr, "lowbit worker %s: %s: %s; %s\n", w->id, name, err->msg,
                moved ? "the job's artifact endpoint changed: retrying there" : "retrying");
        if (!moved)
            sleep_unless_stopping(w, 1000);
    }
}

/* Moves slot s from BUSY to POSTING unless the worker gave its item back. */
static bool begin_post(slot *s)
{
    pthread_mutex_lock(&s->w->mu);
    bool ok = !s->abandoned;
    if (ok)
        s->state = SLOT_POSTING;
    pthread_mutex_unlock(&s->w->mu);
    return ok;
}

/* Runs one leased item of job `name` on slot s; acks, fails or dead-letters
 * it. Returns 0 unless Redis itself failed (or the item was given back at a
 * stop: LB_ESTATE, nothing posted). */
static int run_item(slot *s, const char *name, char *endpoint, size_t esize, const char *out_dir,
                    lb_redis_msg *msg, lb_err *err)
{
    lb_worker *w = s->w;
    lb_redis *r = s->r;
    exec_cache *cache = &s->cache;
    const int max_failures = w->spec.max_failures;
    const double redis_wait_s = (double)w->spec.redis_wait_s;
    uint64_t fetched = 0, published = 0;
    bool lost = false; /* an input the coordinator lacks: reported, not retried */
    lb_job job;
    lb_job_init(&job);
    lb_job_result res;
    memset(&res, 0, sizeof res);
    lb_err jerr = {0};
    int rc = lb_job_decode(msg->payload, msg->len, &job, &jerr);
    if (rc == 0 && strcmp(job.id, msg->id))
        rc = lb_err_set(&jerr, LB_EFORMAT, "queue item %s carries job %s", msg->id, job.id);
    /* With an artifact server the store is this worker's cache; a coordinator
     * that announces none shares its output directory, and so does an MPI group
     * (its ranks open the job's output directory: a shared filesystem). */
    const bool xfer = endpoint[0] && !w->group;
    if (rc == 0)
        rc = cache_get(cache, job.model_dir,
                       xfer ? w->cache_dir : job.out_dir[0] ? job.out_dir : out_dir, &jerr);
    double t0 = lb_now_s();
    lb_mpi_stats ms;
    memset(&ms, 0, sizeof ms);
    lb_redis_msg deferred;
    bool has_deferred = false;
    int batch_out = 0;
    if (rc == 0 && xfer) {
        rc = transfer(s, name, endpoint, esize, false, &job, &fetched, &jerr);
        lost = rc && lb_wdata_input_lost(rc);
    }
    if (rc == 0 && stopping(w))
        rc = lb_err_set(&jerr, LB_ESTATE, "worker stopping");
    if (rc == 0) {
        /* as the embedded pool: quantize jobs share the cores, forward jobs
         * (one at a time in a block's chain) take them all */
        int omp = job.type == LB_JOB_QUANTIZE_LINEAR && w->nslots > 1
                      ? (w->threads / w->nslots > 0 ? w->threads / w->nslots : 1)
                      : w->threads;
        lb_exec_ctx ctx = {cache->model, cache->model_fp, cache->store, omp};
        const char *dir = job.out_dir[0] ? job.out_dir : out_dir;
        if (w->group && !lb_exec_is_data_parallel(&job)) {
            batch_out = run_batch(r, w, name, dir, msg, &job, &ctx, &res, &ms, max_failures,
                                  redis_wait_s, &deferred, &has_deferred, err);
            rc = res.status == LB_JOB_OK ? 0 : (res.err_code ? res.err_code : LB_EINVAL);
        } else if (w->group) {
            rc = lb_mpi_group_run(w->group, &job, msg->payload, msg->len, dir, &ctx, &res, &ms);
        } else {
            rc = lb_exec_run(&job, &ctx, &res);
        }
        if (rc)
            snprintf(jerr.msg, sizeof jerr.msg, "%s", res.error);
    }
    if (rc == 0 && xfer && stopping(w))
        rc = lb_err_set(&jerr, LB_ESTATE, "worker stopping");
    if (rc == 0 && xfer)
        rc = transfer(s, name, endpoint, esize, true, &job, &published, &jerr);
    s->est_bytes = item_estimate(cache->model);
    if (!begin_post(s)) { /* given back by lb_worker_run: post nothing */
        lb_job_clear(&job);
        if (has_deferred)
            lb_redis_msg_clear(&deferred);
        return lb_err_set(err, LB_ESTATE, "item %s given back", msg->id);
    }
    double secs = lb_now_s() - t0;
    int out = 0;
    if (lost) {
        /* Acked as a failed result: the coordinator checks its store and
         * recomputes the input's producer, then queues this item again. */
        memset(&res, 0, sizeof res);
        snprintf(res.job_id, sizeof res.job_id, "%s", job.id);
        res.status = LB_JOB_FAILED;
        res.err_code = LB_ENOTFOUND;
        snprintf(res.error, sizeof res.error, "input lost: %.230s", jerr.msg);
        uint8_t *buf = NULL;
        size_t len = 0;
        out = lb_job_result_encode(&res, &buf, &len, err);
        if (!out)
            out = post_result(r, w->id, name, msg, buf, len, redis_wait_s, err);
        free(buf);
        if (w->spec.json)
            emit(w, json_pack("{s:s, s:s, s:s, s:s, s:s}", "event", "input-lost", "worker", w->id,
                              "job", name, "item", job.id, "error", jerr.msg));
        else
            fprintf(stderr, "lowbit worker: %s: item %.12s: %s (reported to the coordinator)\n",
                    name, job.id, jerr.msg);
    } else if (rc && stopping(w)) {
        /* stopped between steps: give it back, not a failure */
        out = lb_redis_release(r, name, msg, "worker stopping", err);
    } else {
        out = finish_item(r, w, name, msg, &job, rc, &res, &jerr, secs, &ms, fetched, published,
                          max_failures, redis_wait_s, err);
    }
    lb_job_clear(&job);
    if (!out)
        out = batch_out;
    if (!out && w->group && res.err_code == LB_ENET)
        out = lb_err_set(err, LB_ENET, "%s", res.error); /* the MPI group broke: stop */
    if (has_deferred) {
        /* claimed while batching but not batchable: run it now (before any
         * error return, so its lease is not left to expire needlessly) */
        pthread_mutex_lock(&w->mu);
        s->lease = &deferred;
        s->state = SLOT_BUSY;
        pthread_mutex_unlock(&w->mu);
        int o = out ? 0 : run_item(s, name, endpoint, esize, out_dir, &deferred, err);
        pthread_mutex_lock(&w->mu);
        s->lease = NULL; /* deferred goes away here; msg was finished above */
        pthread_mutex_unlock(&w->mu);
        lb_redis_msg_clear(&deferred);
        if (!out)
            out = o;
    }
    return out;
}

/* Takes one item of job `name` if there is one: a dead worker's, a stale
 * lease, else a new one (block_ms: wait that long for one). */
static int take(slot *s, const char *name, int block_ms, lb_redis_msg *msg, bool *got,
                lb_err *err)
{
    lb_worker *w = s->w;
    int rc = lb_redis_reclaim_dead(s->r, name, w->id, w->spec.max_failures, msg, got, err);
    if (!rc && !*got)
        rc = lb_redis_reclaim(s->r, name, w->id, w->spec.lease_ms, w->spec.max_failures, msg,
                              got, err);
    if (!rc && !*got)
        rc = lb_redis_claim(s->r, name, w->id, block_ms, msg, got, err);
    return rc;
}

static void *slot_main(void *arg)
{
    slot *s = arg;
    lb_worker *w = s->w;
    lb_err err = {0};
    double ok_since = lb_now_s();
    tl_slot = s->idx;
    bool leave = false;
    while (!leave && !stopping(w)) {
        char **names = NULL;
        int32_t n = 0;
        bool worked = false;
        if (lb_redis_job_list(s->r, &names, &n, &err)) {
            if (err.code != LB_ENET || lb_now_s() - ok_since > (double)w->spec.redis_wait_s) {
                set_failed(w, &err);
                break;
            }
            fprintf(stderr, "lowbit worker %s: %s; retrying\n", w->id, err.msg);
            pthread_mutex_lock(&w->mu);
            w->last_work = lb_now_s(); /* an outage is not idleness */
            pthread_mutex_unlock(&w->mu);
            sleep_unless_stopping(w, 1000);
            continue;
        }
        ok_since = lb_now_s();
        for (int32_t j = 0; j < n && !stopping(w); j++) {
            lb_redis_map m;
            bool cancelled = false;
            if (lb_redis_job_get(s->r, names[j], &m, &err)) {
                if (err.code != LB_ENET)
                    continue; /* record deleted meanwhile */
                fprintf(stderr, "lowbit worker %s: %s; retrying\n", w->id, err.msg);
                pthread_mutex_lock(&w->mu);
                w->last_work = lb_now_s();
                pthread_mutex_unlock(&w->mu);
                sleep_unless_stopping(w, 500);
                break;
            }
            const char *state = lb_redis_map_get(&m, "state");
            const char *out = lb_redis_map_get(&m, "out");
            const char *arts = lb_redis_map_get(&m, "artifacts");
            char out_dir[LB_JOB_PATH_MAX], endpoint[256];
            snprintf(out_dir, sizeof out_dir, "%s", out ? out : "");
            /* re-read for every item: a restarted coordinator serves on a new port */
            snprintf(endpoint, sizeof endpoint, "%s", arts ? arts : "");
            bool running = state && !strcmp(state, "running") && out;
            lb_redis_map_clear(&m);
            if (!running || lb_redis_is_cancelled(s->r, names[j], &cancelled, &err) || cancelled)
                continue;
            if (!reserve(s))
                break; /* --max-jobs reached or the memory budget is full */
            lb_redis_msg msg;
            bool got = false;
            /* one running job: wait on its queue, so a newly queued item starts
             * at once instead of at the next poll */
            int rc = take(s, names[j], n == 1 ? 500 : 0, &msg, &got, &err);
            if (!got)
                unreserve(w);
            if (rc == LB_ENOTFOUND)
                continue; /* queue not created yet */
            if (rc == LB_ENET) {
                fprintf(stderr, "lowbit worker %s: %s; retrying\n", w->id, err.msg);
                pthread_mutex_lock(&w->mu);
                w->last_work = lb_now_s();
                pthread_mutex_unlock(&w->mu);
                sleep_unless_stopping(w, 500);
                break;
            }
            if (rc) {
                set_failed(w, &err);
                leave = true;
                break;
            }
            if (!got)
                continue;
            worked = true;
            pthread_mutex_lock(&w->mu);
            w->busy++;
            w->busy_bytes += s->est_bytes;
            int64_t held_bytes = s->est_bytes;
            /* claimed just as the stop came: this slot gives it back itself
             * (lb_worker_run only gives back BUSY slots' items) */
            bool late = w->quit || w->failed || stop_asked(w);
            if (!late) {
                s->state = SLOT_BUSY;
                s->lease = &msg;
                snprintf(s->job, sizeof s->job, "%s", names[j]);
            }
            pthread_mutex_unlock(&w->mu);
            if (late) {
                lb_err e2 = {0};
                if (lb_redis_release(s->r, names[j], &msg, "worker stopping", &e2))
                    fprintf(stderr, "lowbit worker %s: %s\n", w->id, e2.msg);
                rc = 0;
            } else {
                if (endpoint[0] && !w->group) { /* keep the cache as small as the store */
                    lb_err pe = {0};
                    if (lb_wdata_prune(s->data, s->r, names[j], w->cache_dir, NULL, &pe))
                        fprintf(stderr, "lowbit worker %s: cache not pruned: %s\n", w->id,
                                pe.msg);
                }
                rc = run_item(s, names[j], endpoint, sizeof endpoint, out_dir, &msg, &err);
            }
            pthread_mutex_lock(&w->mu);
            bool abandoned = s->abandoned;
            w->busy--;
            w->busy_bytes -= held_bytes;
            w->last_work = lb_now_s();
            s->state = SLOT_IDLE;
            s->lease = NULL;
            pthread_mutex_unlock(&w->mu);
            lb_redis_msg_clear(&msg);
            if (abandoned) {
                leave = true;
                break;
            }
            if (rc && rc != LB_ENET) {
                set_failed(w, &err);
                leave = true;
                break;
            }
            if (rc) /* the result did not reach Redis: the lease expires and it re-runs */
                fprintf(stderr, "lowbit worker %s: %s\n", w->id, err.msg);
            break; /* rescan from the first job: earlier jobs first */
        }
        for (int32_t k = 0; k < n; k++)
            free(names[k]);
        free(names);
        if (leave || worked)
            continue;
        pthread_mutex_lock(&w->mu);
        if (w->busy == 0 && w->spec.max_jobs > 0 && w->taken >= w->spec.max_jobs) {
            w->done = true;
            w->reason = "max-jobs";
        } else if (w->busy == 0 && w->spec.idle_exit_s > 0 &&
                   lb_now_s() - w->last_work >= (double)w->spec.idle_exit_s) {
            w->done = true;
            w->reason = "idle";
        }
        pthread_mutex_unlock(&w->mu);
        sleep_unless_stopping(w, n == 1 ? 50 : 500);
    }
    pthread_mutex_lock(&w->mu);
    s->exited = true;
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void lb_worker_spec_default(lb_worker_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->lease_ms = 600000;
    spec->max_failures = 3;
    spec->heartbeat_ttl_s = 6;
    spec->redis_wait_s = 300;
    spec->xfer_timeout_ms = 120000;
    spec->fetch_give_up_s = 10;
}

int lb_worker_new(const lb_worker_spec *spec, lb_worker **out, lb_err *err)
{
    *out = NULL;
    if (spec->threads < 0 || spec->slots < 0 || spec->memory_budget_gib < 0 ||
        spec->lease_ms < 10 || spec->max_failures < 1 || spec->heartbeat_ttl_s < 1 ||
        spec->idle_exit_s < 0 || spec->redis_wait_s < 0 || spec->xfer_timeout_ms < 10 ||
        spec->fetch_give_up_s < 0 || spec->max_jobs < 0)
        return lb_err_set(err, LB_EINVAL, "lowbit worker: a setting is out of range; see "
                          "`lowbit worker --help`");
    lb_worker *w = calloc(1, sizeof *w);
    if (!w)
        return lb_err_set(err, LB_ENOMEM, "lowbit worker: out of memory");
    w->spec = *spec;
    pthread_mutex_init(&w->mu, NULL);
    snprintf(w->url, sizeof w->url, "%s", lb_redis_url_pick(spec->redis_url));
    gethostname(w->host, sizeof w->host - 1);
    if (spec->id)
        snprintf(w->id, sizeof w->id, "%s", spec->id);
    else
        snprintf(w->id, sizeof w->id, "%.100s-%ld", w->host, (long)getpid());
    w->spec.redis_url = w->url;
    w->spec.id = w->id;
    w->threads = spec->threads;
    if (w->threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        w->threads = nc > 0 ? (int)nc : 1;
    }
    w->nslots = spec->slots > 0 ? spec->slots : lb_worker_default_slots(w->threads, 0, 0);
    if (spec->cache_dir)
        snprintf(w->cache_dir, sizeof w->cache_dir, "%s", spec->cache_dir);
    w->spec.cache_dir = NULL; /* the copy lives in w->cache_dir */
    int rc = 0;
    if (spec->mpi_mode > 0 || (spec->mpi_mode == 0 && lb_mpi_group_launched())) {
        if (spec->mpi_mode == 0 && !lb_mpi_group_available()) {
            fprintf(stderr, "lowbit worker: started by an MPI launcher, but this lowbit was "
                    "built without MPI: each rank is an independent worker\n");
        } else if ((rc = lb_mpi_group_open(spec->argc, spec->argv, &w->group, err))) {
            goto fail;
        } else if (lb_mpi_group_rank(w->group) == 0 && lb_mpi_group_size(w->group) < 2) {
            lb_mpi_group_close(&w->group, err); /* one rank: a plain worker */
        }
    }
    if (w->group)
        w->nslots = 1; /* a group runs one item (or one batch) at a time */
    if (!spec->cache_dir && !w->group) { /* (a group works in the job's output directory) */
        if ((rc = lb_wdata_default_cache(w->id, w->cache_dir, sizeof w->cache_dir, err)))
            goto fail;
        w->own_cache = true;
    }
    *out = w;
    return 0;
fail:
    lb_worker_free(&w);
    return rc;
}

bool lb_worker_abandoned(const lb_worker *w) { return w && w->abandoned; }

/* Ranks > 0 of an MPI group: serve rank 0 until it stops the group. */
static int serve_rank(lb_worker *w, lb_err *err)
{
    const char *fc = getenv("LOWBIT_TEST_MPI_FAIL_CHUNK"); /* test hook */
    if (fc && *fc)
        lb_mpi_group_set_fail_chunk(w->group, !strcmp(fc, "open") ? LB_MPI_FAIL_OPEN
                                                                  : strtoll(fc, NULL, 10));
    group_user gu = {&w->group_cache, w->threads};
    int rc = lb_mpi_group_serve(w->group, group_ctx, &gu, err);
    if (rc)
        fprintf(stderr, "lowbit worker rank %d: %s\n", lb_mpi_group_rank(w->group), err->msg);
    return rc;
}

/* Gives back the item of every slot still inside a fetch or a run (they are
 * abandoned) and waits a little for results being posted. r: the main
 * connection. */
static void give_back(lb_worker *w, lb_redis *r)
{
    double t0 = lb_now_s();
    for (;;) { /* idle slots leave at once; a finishing one may post */
        bool all = true;
        pthread_mutex_lock(&w->mu);
        for (int i = 0; i < w->nslots; i++)
            all = all && (!w->slots[i].started || w->slots[i].exited);
        pthread_mutex_unlock(&w->mu);
        if (all || lb_now_s() - t0 >= STOP_GRACE_S)
            break;
        sleep_ms(20);
    }
    for (int i = 0; i < w->nslots; i++) {
        slot *s = &w->slots[i];
        lb_redis_msg m;
        memset(&m, 0, sizeof m);
        char job[LB_REDIS_NAME_MAX + 1] = "";
        bool give = false;
        pthread_mutex_lock(&w->mu);
        if (s->started && !s->exited && s->state == SLOT_BUSY && s->lease && !w->group) {
            s->abandoned = true;
            give = true;
            m = *s->lease;
            m.payload = NULL;
            if (s->lease->len && (m.payload = malloc(s->lease->len)))
                memcpy(m.payload, s->lease->payload, s->lease->len);
            else
                m.len = 0;
            snprintf(job, sizeof job, "%s", s->job);
        }
        pthread_mutex_unlock(&w->mu);
        if (!give)
            continue;
        lb_err e = {0};
        char why[200];
        snprintf(why, sizeof why, "worker %s stopping", w->id);
        if (!r || lb_redis_release(r, job, &m, why, &e))
            fprintf(stderr, "lowbit worker %s: could not give %s back (%s): its lease expires "
                    "when the heartbeat does\n", w->id, m.id, r ? e.msg : "no Redis");
        else
            fprintf(stderr, "lowbit worker %s: %s: gave %.12s back\n", w->id, job, m.id);
        if (w->spec.json)
            emit(w, json_pack("{s:s, s:s, s:s, s:s}", "event", "given-back", "worker", w->id,
                              "job", job, "item", m.id));
        lb_redis_msg_clear(&m);
    }
    for (;;) { /* results already being posted */
        bool posting = false;
        pthread_mutex_lock(&w->mu);
        for (int i = 0; i < w->nslots; i++)
            posting = posting || (w->slots[i].started && !w->slots[i].exited &&
                                  !w->slots[i].abandoned);
        pthread_mutex_unlock(&w->mu);
        if (!posting || (!w->group && lb_now_s() - t0 >= STOP_GRACE_S + POST_GRACE_S))
            break;
        sleep_ms(20);
    }
}

int lb_worker_run(lb_worker *w, lb_err *err)
{
    if (w->group && lb_mpi_group_rank(w->group) > 0)
        return serve_rank(w, err);
    /* one BLAS thread: products round the same at any worker count (lb_runner.h) */
    lb_blas_set_threads(1);
    int rc = 0;
    lb_redis *r = NULL;
    lb_redis_opts ro = lb_redis_opts_default();
    ro.retries = 8; /* ~20 s of reconnect attempts per command: rides out a Redis restart */
    ro.backoff_ms = 200;
    if ((rc = lb_redis_connect(w->url, &ro, &r, err)) ||
        (rc = lb_redis_heartbeat(r, w->id, "starting", w->spec.heartbeat_ttl_s, err)))
        goto fail;
    if (!(w->slots = calloc((size_t)w->nslots, sizeof *w->slots))) {
        rc = lb_err_set(err, LB_ENOMEM, "lowbit worker: out of memory");
        goto fail;
    }
    for (int i = 0; i < w->nslots; i++) {
        slot *s = &w->slots[i];
        s->w = w;
        s->idx = i;
        if ((rc = lb_redis_connect(w->url, &ro, &s->r, err)) ||
            (rc = lb_wdata_new(w->spec.xfer_timeout_ms, 0, &s->data, err)))
            goto fail;
    }
    w->last_work = lb_now_s();
    if (pthread_create(&w->beat, NULL, beat_main, w) != 0) {
        rc = lb_err_set(err, LB_ENOMEM, "cannot start the heartbeat thread");
        goto fail;
    }
    w->beat_started = true;
    if (w->spec.json)
        emit(w, json_pack("{s:s, s:s, s:s, s:i, s:i, s:i}", "event", "start", "worker", w->id,
                          "redis", lb_redis_peer(r), "threads", w->threads, "slots", w->nslots,
                          "mpi_ranks", lb_mpi_group_size(w->group)));
    else
        fprintf(stderr, "lowbit worker %s: serving %s (%d threads, %d slot%s, %d MPI rank%s)\n",
                w->id, lb_redis_peer(r), w->threads, w->nslots, w->nslots > 1 ? "s" : "",
                lb_mpi_group_size(w->group), lb_mpi_group_size(w->group) > 1 ? "s" : "");
    for (int i = 0; i < w->nslots; i++) {
        if (pthread_create(&w->slots[i].th, NULL, slot_main, &w->slots[i]) != 0) {
            rc = lb_err_set(err, LB_ENOMEM, "cannot start slot thread %d", i);
            pthread_mutex_lock(&w->mu);
            w->quit = true;
            pthread_mutex_unlock(&w->mu);
            break;
        }
        w->slots[i].started = true;
    }
    for (;;) {
        bool all = true;
        pthread_mutex_lock(&w->mu);
        for (int i = 0; i < w->nslots; i++)
            all = all && (!w->slots[i].started || w->slots[i].exited);
        pthread_mutex_unlock(&w->mu);
        if (all || stop_asked(w))
            break;
        sleep_ms(50);
    }
    if (stop_asked(w)) {
        pthread_mutex_lock(&w->mu);
        w->quit = true;
        if (!w->reason)
            w->reason = "signal";
        pthread_mutex_unlock(&w->mu);
        give_back(w, r);
    }
    pthread_mutex_lock(&w->mu);
    w->quit = true;
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->nslots; i++) {
        slot *s = &w->slots[i];
        if (!s->started)
            continue;
        pthread_mutex_lock(&w->mu);
        bool gone = !s->exited;
        pthread_mutex_unlock(&w->mu);
        if (gone) {
            pthread_detach(s->th); /* still in a fetch, a run or a retry: left behind */
            w->abandoned = true;
        } else {
            pthread_join(s->th, NULL);
        }
        s->started = gone;
    }
    if (!rc && w->failed) {
        *err = w->fail_err;
        rc = err->code ? err->code : LB_EINVAL;
    }
fail:
    if (w->beat_started) {
        pthread_mutex_lock(&w->mu);
        w->quit = true;
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->beat, NULL);
        w->beat_started = false;
    }
    if (r) {
        lb_err e2 = {0};
        lb_redis_worker_remove(r, w->id, &e2);
    }
    const char *reason = w->reason ? w->reason : "idle";
    if (rc)
        fprintf(stderr, "lowbit worker %s: %s\n", w->id, err->msg);
    else
        fprintf(stderr, "lowbit worker %s: %s, exiting\n", w->id,
                !strcmp(reason, "signal")     ? "signal received"
                : !strcmp(reason, "max-jobs") ? "--max-jobs reached"
                                              : "idle");
    if (w->spec.json)
        emit(w, rc ? json_pack("{s:s, s:s, s:s}", "event", "error", "worker", w->id, "error",
                               err->msg)
                   : json_pack("{s:s, s:s, s:s}", "event", "exit", "worker", w->id, "reason",
                               reason));
    lb_redis_free(&r);
    return rc;
}

void lb_worker_free(lb_worker **wp)
{
    if (!wp || !*wp)
        return;
    lb_worker *w = *wp;
    *wp = NULL;
    if (w->abandoned)
        return; /* abandoned slot threads still use it; the process ends */
    for (int i = 0; w->slots && i < w->nslots; i++) {
        cache_clear(&w->slots[i].cache);
        lb_wdata_free(&w->slots[i].data);
        lb_redis_free(&w->slots[i].r);
    }
    free(w->slots);
    cache_clear(&w->group_cache);
    if (w->own_cache && w->cache_dir[0]) {
        lb_err e3 = {0};
        if (lb_wdata_remove_cache(w->cache_dir, &e3))
            fprintf(stderr, "lowbit worker %s: %s\n", w->id, e3.msg);
    }
    if (w->group) {
        lb_err e3 = {0};
        if (lb_mpi_group_close(&w->group, &e3))
            fprintf(stderr, "lowbit worker %s: %s\n", w->id, e3.msg);
    }
    pthread_mutex_destroy(&w->mu);
    free(w);
}
