/* lb_worker: the distributed worker loop (lb_worker.h). Slot threads lease and
 * run items; a heartbeat thread keeps the worker's liveness key and every
 * lease fresh; lb_worker_run watches the stop flag and gives back what is
 * still running when it is set. */
#include "lb_worker.h"
#include "lb_worker_priv.h"

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
#include "lb_redis.h"
#include "lb_redis_url.h"
#include "lb_worker_data.h"

static bool stop_asked(const lb_worker *w) { return w->spec.stop && *w->spec.stop; }

/* True when slots should leave their loop. */
bool lb_worker_stopping(lb_worker *w)
{
    if (stop_asked(w))
        return true;
    pthread_mutex_lock(&w->mu);
    bool q = w->quit || w->done || w->failed;
    pthread_mutex_unlock(&w->mu);
    return q;
}

void lb_worker_sleep_unless_stopping(lb_worker *w, int ms)
{
    for (int t = 0; t < ms && !lb_worker_stopping(w); t += 50)
        lb_worker_sleep_ms(ms - t < 50 ? ms - t : 50);
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
int64_t lb_worker_item_estimate(const lb_model *m)
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
            lb_worker_sleep_ms(50);
        }
    }
    free(h);
    lb_redis_free(&r);
    return NULL;
}

/* The job record's artifacts endpoint, re-read (a restarted coordinator serves
 * on a new port). Keeps `endpoint` when Redis does not answer. */
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
    lb_worker_tl_slot = s->idx;
    bool leave = false;
    while (!leave && !lb_worker_stopping(w)) {
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
            lb_worker_sleep_unless_stopping(w, 1000);
            continue;
        }
        ok_since = lb_now_s();
        for (int32_t j = 0; j < n && !lb_worker_stopping(w); j++) {
            lb_redis_map m;
            bool cancelled = false;
            if (lb_redis_job_get(s->r, names[j], &m, &err)) {
                if (err.code != LB_ENET)
                    continue; /* record deleted meanwhile */
                fprintf(stderr, "lowbit worker %s: %s; retrying\n", w->id, err.msg);
                pthread_mutex_lock(&w->mu);
                w->last_work = lb_now_s();
                pthread_mutex_unlock(&w->mu);
                lb_worker_sleep_unless_stopping(w, 500);
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
                lb_worker_sleep_unless_stopping(w, 500);
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
                rc = lb_worker_run_item(s, names[j], endpoint, sizeof endpoint, out_dir, &msg, &err);
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
        lb_worker_sleep_unless_stopping(w, n == 1 ? 50 : 500);
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
    /* CURVE: the id names the key (KEY or KEY@...), since the artifact server
     * checks leases against the key's name; other ids become KEY@ID */
    const char *key = spec->curve && spec->curve->on ? spec->curve->client_name : NULL;
    size_t kl = key ? strlen(key) : 0;
    bool owned = key && spec->id && !strncmp(spec->id, key, kl) &&
                 (spec->id[kl] == 0 || spec->id[kl] == '@');
    if (spec->id && (!key || owned))
        snprintf(w->id, sizeof w->id, "%s", spec->id);
    else if (spec->id)
        snprintf(w->id, sizeof w->id, "%s@%.*s", key, (int)(LB_REDIS_ID_MAX - kl - 1), spec->id);
    else if (key)
        snprintf(w->id, sizeof w->id, "%s@%.50s-%ld", key, w->host, (long)getpid());
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
    int rc = lb_mpi_group_serve(w->group, lb_worker_group_ctx, &gu, err);
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
        lb_worker_sleep_ms(20);
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
            lb_worker_emit(w, json_pack("{s:s, s:s, s:s, s:s}", "event", "given-back", "worker", w->id,
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
        lb_worker_sleep_ms(20);
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
        lb_wdata_set_curve(s->data, w->spec.curve);
    }
    w->last_work = lb_now_s();
    if (pthread_create(&w->beat, NULL, beat_main, w) != 0) {
        rc = lb_err_set(err, LB_ENOMEM, "cannot start the heartbeat thread");
        goto fail;
    }
    w->beat_started = true;
    if (w->spec.json)
        lb_worker_emit(w, json_pack("{s:s, s:s, s:s, s:i, s:i, s:i}", "event", "start", "worker", w->id,
                          "redis", lb_redis_peer(r), "threads", w->threads, "slots", w->nslots,
                          "mpi_ranks", lb_mpi_group_size(w->group)));
    else
        fprintf(stderr, "lowbit worker %s: serving %s (%d threads, %d slot%s, %d MPI rank%s%s%s)\n",
                w->id, lb_redis_peer(r), w->threads, w->nslots, w->nslots > 1 ? "s" : "",
                lb_mpi_group_size(w->group), lb_mpi_group_size(w->group) > 1 ? "s" : "",
                w->spec.curve && w->spec.curve->on ? ", CURVE key " : "",
                w->spec.curve && w->spec.curve->on ? w->spec.curve->client_name : "");
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
        lb_worker_sleep_ms(50);
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
        lb_worker_emit(w, rc ? json_pack("{s:s, s:s, s:s}", "event", "error", "worker", w->id, "error",
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
        lb_worker_cache_clear(&w->slots[i].cache);
        lb_wdata_free(&w->slots[i].data);
        lb_redis_free(&w->slots[i].r);
    }
    free(w->slots);
    lb_worker_cache_clear(&w->group_cache);
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

