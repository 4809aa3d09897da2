/* lb_worker_item: one leased item on a worker: fetch its inputs, run it,
 * publish its outputs, post its result (lb_worker.h, lb_worker_priv.h). */
#include "lb_worker.h"
#include "lb_worker_priv.h"
#include "lb_xfer.h"

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
#include "lb_packed.h"
#include "lb_mpi_group.h"
#include "lb_redis.h"
#include "lb_redis_url.h"
#include "lb_worker_data.h"


_Thread_local int lb_worker_tl_slot; /* the calling slot's index, for the "ran" event */

void lb_worker_emit(lb_worker *w, json_t *o)
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

void lb_worker_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void lb_worker_cache_clear(exec_cache *c)
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
        lb_worker_sleep_ms(1000);
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
            lb_worker_emit(w, json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:i, s:f, s:I, s:I, s:I, s:i, s:i, s:i}",
                           "event", "ran", "worker", w->id, "slot", lb_worker_tl_slot, "job", name, "item", job->id, "type",
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
            lb_worker_emit(w, json_pack("{s:s, s:s, s:s, s:s, s:I, s:i, s:b, s:s}", "event", "failed", "worker",
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

int lb_worker_group_ctx(void *user, const lb_job *job, const char *out_dir, lb_exec_ctx *ctx,
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
        if (lb_now_s() - t0 >= (double)w->spec.fetch_give_up_s || lb_worker_stopping(w)) {
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
            lb_worker_sleep_unless_stopping(w, 1000);
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
/* True when this worker no longer holds msg's lease (reclaimed by another
 * worker, re-queued or acked). A Redis error counts as "still held". */
static bool lease_lost(lb_redis *r, lb_worker *w, const char *name, const lb_redis_msg *msg)
{
    char holder[LB_REDIS_ID_MAX + 1];
    lb_redis_msg m;
    lb_err e = {0};
    if (lb_redis_lease_get(r, name, msg->entry, holder, &m, &e))
        return false;
    lb_redis_msg_clear(&m);
    return strcmp(holder, w->id) != 0;
}

int lb_worker_run_item(slot *s, const char *name, char *endpoint, size_t esize, const char *out_dir,
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
    if (rc == 0 && lb_worker_stopping(w))
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
    if (rc == 0 && xfer && lb_worker_stopping(w))
        rc = lb_err_set(&jerr, LB_ESTATE, "worker stopping");
    if (rc == 0 && xfer) {
        /* the server stores outputs only for the lease holder (lb_dist_lease.h) */
        char claim[LB_XFER_CLAIM_MAX + 1];
        snprintf(claim, sizeof claim, "job=%s entry=%s worker=%s", name, msg->entry, w->id);
        lb_wdata_set_claim(s->data, claim);
        rc = transfer(s, name, endpoint, esize, true, &job, &published, &jerr);
        lb_wdata_set_claim(s->data, NULL);
        if (rc && lease_lost(r, w, name, msg)) {
            /* reclaimed meanwhile: the server refused our outputs, and failing
             * or acking the item now would touch the new holder's lease */
            fprintf(stderr, "lowbit worker %s: %s: item %.12s: lease lost while it ran "
                            "(%s); its new holder publishes\n",
                    w->id, name, job.id, jerr.msg);
            lb_job_clear(&job);
            if (has_deferred) { /* not run: back to the queue, not a failure */
                lb_err e2 = {0};
                lb_redis_release(r, name, &deferred, "batch leader lost its lease", &e2);
                lb_redis_msg_clear(&deferred);
            }
            return 0;
        }
    }
    s->est_bytes = lb_worker_item_estimate(cache->model);
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
            lb_worker_emit(w, json_pack("{s:s, s:s, s:s, s:s, s:s}", "event", "input-lost", "worker", w->id,
                              "job", name, "item", job.id, "error", jerr.msg));
        else
            fprintf(stderr, "lowbit worker: %s: item %.12s: %s (reported to the coordinator)\n",
                    name, job.id, jerr.msg);
    } else if (rc && lb_worker_stopping(w)) {
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
        int o = out ? 0 : lb_worker_run_item(s, name, endpoint, esize, out_dir, &deferred, err);
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
