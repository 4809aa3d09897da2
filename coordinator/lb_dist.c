#include "lb_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lb_job.h"
#include "lb_redis.h"

enum { JOB_IDLE = 0, JOB_OUT = 1, JOB_FED = 2, JOB_TO_QUEUE = 3 };

#define REDIS_WAIT_S 300.0 /* default of lb_dist_opts.redis_wait_s */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int32_t find_job(const lb_plan *plan, const char *id)
{
    for (int32_t i = 0; i < lb_plan_job_count(plan); i++)
        if (!strcmp(lb_plan_job(plan, i)->id, id))
            return i;
    return -1;
}

/* After a Redis outage: the job record must still be ours (a server restarted
 * without persistence lost it, and no worker would ever see the queue), and the
 * consumer group is re-created if it was lost (XGROUP CREATE is idempotent). */
static int check_after_outage(lb_redis *r, const char *name, const char *fingerprint, lb_err *err)
{
    lb_redis_map m;
    int rc = lb_redis_job_get(r, name, &m, err);
    const char *fp = rc ? NULL : lb_redis_map_get(&m, "fingerprint");
    if (rc == 0 && !fp) { /* only fields our own retried writes put back: lost too */
        lb_redis_map_clear(&m);
        rc = LB_ENOTFOUND;
    }
    if (rc == LB_ENOTFOUND)
        return lb_err_set(err, LB_ESTATE,
                          "job '%s' vanished from %s during an outage (Redis restarted without "
                          "its AOF/RDB?); rerun the same coordinator command: it resumes from "
                          "the artifacts written so far",
                          name, lb_redis_peer(r));
    if (rc)
        return rc;
    bool same = !strcmp(fp, fingerprint);
    lb_redis_map_clear(&m);
    if (!same)
        return lb_err_set(err, LB_ESTATE,
                          "job '%s' on %s has another fingerprint after an outage; something "
                          "else reused the name, stopping",
                          name, lb_redis_peer(r));
    return lb_redis_queue_init(r, name, err);
}

/* Writes the counters, blocks done and ETA into the job record. */
static int update_record(lb_redis *r, const char *name, const lb_plan *plan, const uint8_t *st,
                         int32_t n_blocks, int32_t done, int32_t failed, double t0, lb_err *err)
{
    int32_t n = lb_plan_job_count(plan), total = lb_plan_needed_count(plan);
    int32_t blocks_done = 0;
    for (int32_t b = 0; b < n_blocks; b++) {
        bool all = true;
        for (int32_t i = 0; i < n && all; i++)
            if (lb_plan_job(plan, i)->block == b && lb_plan_job_needed(plan, i))
                all = st[i] == JOB_FED;
        blocks_done += all;
    }
    double el = now_s() - t0;
    double eta = done > 0 ? el * (double)(total - done) / (double)done : -1.0;
    char v[6][32];
    snprintf(v[0], 32, "%d", (int)done);
    snprintf(v[1], 32, "%d", (int)failed);
    snprintf(v[2], 32, "%d", (int)lb_plan_running(plan));
    snprintf(v[3], 32, "%d", (int)blocks_done);
    snprintf(v[4], 32, "%d", (int)total);
    snprintf(v[5], 32, "%.0f", eta);
    const char *f[] = {"jobs_done", "jobs_failed", "jobs_in_flight", "blocks_done", "jobs_total",
                       "eta_s"};
    const char *vals[] = {v[0], v[1], v[2], v[3], v[4], v[5]};
    return lb_redis_job_set(r, name, eta < 0 ? 5 : 6, f, vals, err);
}

int lb_dist_run(lb_plan *plan, const lb_store *artifacts, const lb_dist_opts *o, lb_err *err)
{
    lb_redis *r = NULL;
    uint8_t *st = NULL;
    lb_redis_result *res = NULL;
    int32_t n_res = 0;
    const char *name = o->job_name;
    lb_redis_opts ro = lb_redis_opts_default();
    ro.retries = 8; /* ~20 s of reconnect attempts per command */
    ro.backoff_ms = 200;
    int rc = lb_redis_connect(o->redis_url, &ro, &r, err);
    if (rc)
        return rc;
    int32_t n = lb_plan_job_count(plan);
    st = calloc((size_t)n + 1, 1);
    if (!st) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    bool existed = false;
    if ((rc = lb_redis_job_create(r, name, o->fingerprint, &existed, err)) ||
        (rc = lb_redis_queue_init(r, name, err)))
        goto done;
    bool cancelled = false;
    if ((rc = lb_redis_is_cancelled(r, name, &cancelled, err)))
        goto done;
    if (cancelled) {
        rc = lb_err_set(err, LB_ESTATE, "job '%s' on %s was cancelled; pick another --job name",
                        name, lb_redis_peer(r));
        goto done;
    }
    {
        char host[128] = "?", who[200], bits[32], blocks[32], now[32];
        gethostname(host, sizeof host - 1);
        snprintf(who, sizeof who, "%s:%ld", host, (long)getpid());
        snprintf(bits, sizeof bits, "%g", o->bits);
        snprintf(blocks, sizeof blocks, "%d", (int)o->n_blocks);
        snprintf(now, sizeof now, "%lld", (long long)time(NULL));
        const char *f[] = {"state", "method", "bits", "blocks_total", "model", "out",
                           "coordinator", "started"};
        const char *v[] = {"running", o->method, bits, blocks, o->model_dir, o->out_dir, who, now};
        lb_redis_map m;
        int has_started = 0;
        if (existed && lb_redis_job_get(r, name, &m, err) == 0) {
            has_started = lb_redis_map_get(&m, "started") != NULL;
            lb_redis_map_clear(&m);
        }
        if ((rc = lb_redis_job_set(r, name, has_started ? 7 : 8, f, v, err)))
            goto done;
        char ev[400];
        snprintf(ev, sizeof ev, "coordinator %s %s: %d jobs to run", who,
                 existed ? "resumed" : "started", (int)lb_plan_needed_count(plan));
        if ((rc = lb_redis_event(r, name, ev, err)))
            goto done;
    }

    double t0 = now_s();
    char cursor[48] = "0";
    int32_t done_count = 0, failed = 0;
    char first_error[512] = "";
    double ok_since = now_s();
    double wait_s = o->redis_wait_s > 0 ? o->redis_wait_s : REDIS_WAIT_S;
    bool outage = false;
    int64_t connects = lb_redis_connects(r);
    for (;;) {
        /* A lost Redis (restart, failover) is waited for, up to wait_s: every
         * call below is idempotent, so the loop just goes round again. */
        if (rc == LB_ENET) {
            if (now_s() - ok_since > wait_s) {
                lb_err_prefix(err, "gave up after %.0f s without Redis (--redis-wait)", wait_s);
                goto done;
            }
            fprintf(stderr, "lowbit coordinator: %s; retrying\n", err ? err->msg : "Redis lost");
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
            outage = true;
        } else {
            ok_since = now_s();
        }
        rc = 0;
        if ((rc = lb_redis_is_cancelled(r, name, &cancelled, err))) {
            if (rc == LB_ENET)
                continue;
            goto done;
        }
        /* reconnected (a short blip is ridden out inside lb_redis, a long one
         * here): check that Redis still holds the job before waiting on it */
        if (outage || lb_redis_connects(r) != connects) {
            if ((rc = check_after_outage(r, name, o->fingerprint, err))) {
                if (rc == LB_ENET)
                    continue;
                goto done;
            }
            outage = false;
            connects = lb_redis_connects(r);
            /* queue again what is out: a server that lost its last writes
             * (appendfsync everysec) may have lost the items; lb_redis_enqueue_once
             * skips those it still has */
            for (int32_t j = 0; j < n; j++)
                if (st[j] == JOB_OUT)
                    st[j] = JOB_TO_QUEUE;
            lb_err e2 = {0};
            lb_redis_event(r, name, "coordinator reconnected to Redis; job record and queue checked",
                           &e2);
            fprintf(stderr, "lowbit coordinator: reconnected to %s; job '%s' is intact\n",
                    lb_redis_peer(r), name);
        }
        if (cancelled) {
            rc = lb_err_set(err, LB_ESTATE, "job '%s' was cancelled (lowbit cancel)", name);
            goto done;
        }
        lb_action acts[64];
        int na;
        while ((na = lb_plan_poll(plan, acts, 64)) > 0) {
            for (int k = 0; k < na; k++) {
                if (acts[k].type == LB_ACT_DELETE) {
                    if ((rc = lb_store_remove(artifacts, acts[k].artifact, err)))
                        goto done;
                    continue;
                }
                st[acts[k].job] = JOB_TO_QUEUE;
            }
        }
        for (int32_t j = 0; j < n && !rc; j++) {
            if (st[j] != JOB_TO_QUEUE)
                continue;
            const lb_job *job = lb_plan_job(plan, j);
            uint8_t *buf = NULL;
            size_t len = 0;
            bool added = false;
            if ((rc = lb_job_encode(job, &buf, &len, err)))
                goto done;
            rc = lb_redis_enqueue_once(r, name, job->id, buf, len, &added, err);
            free(buf);
            if (!rc)
                st[j] = JOB_OUT;
        }
        if (rc == LB_ENET)
            continue;
        if (rc)
            goto done;
        if (lb_plan_done(plan) || (lb_plan_failed(plan) && lb_plan_running(plan) == 0))
            break;
        if ((rc = lb_redis_results_read(r, name, cursor, 64, 1000, &res, &n_res, err))) {
            if (rc == LB_ENET)
                continue;
            goto done;
        }
        for (int32_t i = 0; i < n_res; i++) {
            int32_t j = find_job(plan, res[i].id);
            if (j < 0 || st[j] != JOB_OUT)
                continue; /* an earlier run's result, or a duplicate */
            lb_job_result jr;
            memset(&jr, 0, sizeof jr);
            bool ok = false;
            if (res[i].error) {
                snprintf(jr.error, sizeof jr.error, "%s", res[i].error);
            } else {
                lb_err e2 = {0};
                if (lb_job_result_decode(res[i].result, res[i].len, &jr, &e2))
                    snprintf(jr.error, sizeof jr.error, "bad result: %.200s", e2.msg);
                else
                    ok = jr.status == LB_JOB_OK;
            }
            st[j] = JOB_FED;
            if (ok) {
                lb_plan_feed_done(plan, j);
                done_count++;
                if (o->progress)
                    o->progress(o->user, plan, j, &jr, done_count, lb_plan_needed_count(plan));
            } else {
                lb_plan_feed_failed(plan, j);
                failed++;
                if (!first_error[0])
                    snprintf(first_error, sizeof first_error, "%s %s: %.300s",
                             lb_job_type_name(lb_plan_job(plan, j)->type), res[i].id, jr.error);
            }
        }
        lb_redis_results_free(&res, n_res);
        n_res = 0;
        if ((rc = update_record(r, name, plan, st, o->n_blocks, done_count, failed, t0, err)) &&
            rc != LB_ENET)
            goto done;
    }
    if ((rc = update_record(r, name, plan, st, o->n_blocks, done_count, failed, t0, err)))
        goto done;
    if (lb_plan_failed(plan)) {
        rc = lb_err_set(err, LB_ESTATE, "job '%s' failed: %s", name, first_error);
        const char *f[] = {"state", "error"}, *v[] = {"failed", first_error};
        lb_err e2 = {0};
        lb_redis_job_set(r, name, 2, f, v, &e2);
        lb_redis_event(r, name, err->msg, &e2);
        goto done;
    }
    {
        const char *f[] = {"state", "eta_s"}, *v[] = {"done", "0"};
        if ((rc = lb_redis_job_set(r, name, 2, f, v, err)) ||
            (rc = lb_redis_event(r, name, "all jobs done; checkpoint written", err)))
            goto done;
    }
done:
    lb_redis_results_free(&res, n_res);
    free(st);
    lb_redis_free(&r);
    return rc;
}
