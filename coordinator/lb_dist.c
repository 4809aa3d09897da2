#include "lb_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lb_job.h"
#include "lb_redis.h"
#include "lb_redis_released.h"
#include "lb_dist_lease.h"
#include "lb_xfer.h"
#include "lb_time.h"

/* Where a job stands on this side. PARKED: an input was lost; it waits until
 * the producer ran again. */
enum { JOB_IDLE = 0, JOB_OUT = 1, JOB_FED = 2, JOB_TO_QUEUE = 3, JOB_PARKED = 4 };
/* PLAN_DONE: the plan counts the job finished (fed, or its outputs were present
 * at start), so a rerun's result is not fed again. PLAIN: queue with a plain
 * XADD (lb_redis_enqueue_once would skip an id queued before). */
enum { F_PLAN_DONE = 1, F_PLAIN = 2 };

#define REDIS_WAIT_S 300.0 /* default of lb_dist_opts.redis_wait_s */
#define LB_DIST_MAX_FAILURES 3 /* as lowbit worker's default --max-failures */
#define MAX_REDO 4         /* reruns of one job after lost artifacts before giving up */

typedef struct {
    lb_plan *plan;
    const lb_store *store;
    const lb_dist_opts *o;
    lb_redis *r;
    lb_xfer_server *srv;
    lb_dist_lease lease; /* the server thread's lease check */
    uint8_t *st, *flags, *redos;
    int32_t n;
    uint64_t base_fetched, base_published; /* totals of earlier coordinators (resume) */
    bool fatal;
    char first_error[512];
} dist;

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

/* The job whose outputs include artifact id, or -1 (the calibration artifact). */
static int32_t find_producer(const lb_plan *plan, const char *id)
{
    for (int32_t i = 0; i < lb_plan_job_count(plan); i++) {
        const lb_job *j = lb_plan_job(plan, i);
        for (int32_t k = 0; k < j->n_outputs; k++)
            if (!strcmp(j->outputs[k].hex, id))
                return i;
    }
    return -1;
}

static bool all_verify(const lb_store *s, const lb_artifact_id *ids, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (!lb_store_has(s, ids[i].hex, NULL))
            return false;
    return true;
}

/* Records the first fatal error (the run stops and the record says "failed"). */
static void set_fatal(dist *d, const char *fmt, const char *a, const char *b)
{
    if (!d->first_error[0])
        snprintf(d->first_error, sizeof d->first_error, fmt, a, b);
    d->fatal = true;
}

static void event(dist *d, const char *msg)
{
    lb_err e2 = {0};
    lb_redis_event(d->r, d->o->job_name, msg, &e2);
    fprintf(stderr, "lowbit coordinator: %s\n", msg);
}

/* Job j cannot run: an input is absent or invalid in this store (a worker said
 * so, or the merge found it). Invalid copies are removed, their producers
 * queued again and j parked until they verify (the calibration windows, made
 * by no job, are written again here); when nothing needs to run first (a
 * transfer problem, or only the calibration was lost), j is queued again. */
static void recover_lost(dist *d, int32_t j)
{
    const lb_job *job = lb_plan_job(d->plan, j);
    if (++d->redos[j] > MAX_REDO) {
        set_fatal(d, "%s %s: its inputs were lost too many times; check the coordinator's disk",
                  lb_job_type_name(job->type), job->id);
        return;
    }
    bool waiting = false; /* on a producer that runs again */
    for (int32_t i = 0; i < job->n_inputs && !d->fatal; i++) {
        const char *id = job->inputs[i].hex;
        if (lb_store_has(d->store, id, NULL))
            continue;
        lb_err e2 = {0};
        lb_store_remove(d->store, id, &e2); /* never served again */
        int32_t p = find_producer(d->plan, id);
        if (p < 0 && d->o->calib && !strcmp(id, lb_plan_calib_id(d->plan))) {
            lb_err e3 = {0};
            if (lb_store_put(d->store, id, "calib", d->o->calib, 1, NULL, 0, &e3) == 0) {
                event(d, "calibration artifact missing or invalid; written again");
                continue;
            }
        }
        if (p < 0) {
            set_fatal(d, "artifact %s (%s) is lost and no job makes it; rerun the coordinator "
                         "with the same options to write it again",
                      id, "calibration");
            return;
        }
        waiting = true;
        if (d->st[p] == JOB_OUT || d->st[p] == JOB_TO_QUEUE || d->st[p] == JOB_PARKED)
            continue; /* already being made again */
        d->st[p] = JOB_TO_QUEUE;
        d->flags[p] |= F_PLAN_DONE | F_PLAIN;
        char ev[400];
        snprintf(ev, sizeof ev, "artifact %.16s (input of %s %.12s) missing or invalid in %s; "
                 "rerunning %s %.12s", id, lb_job_type_name(job->type), job->id,
                 lb_store_dir(d->store), lb_job_type_name(lb_plan_job(d->plan, p)->type),
                 lb_plan_job(d->plan, p)->id);
        event(d, ev);
    }
    if (d->fatal)
        return;
    d->st[j] = waiting ? JOB_PARKED : JOB_TO_QUEUE;
    d->flags[j] |= F_PLAIN;
}

/* Parked jobs whose inputs all verify again go back to the queue. */
static void unpark(dist *d)
{
    for (int32_t j = 0; j < d->n; j++) {
        const lb_job *job = lb_plan_job(d->plan, j);
        if (d->st[j] == JOB_PARKED && all_verify(d->store, job->inputs, job->n_inputs))
            d->st[j] = JOB_TO_QUEUE;
    }
}

/* Items leased by dead workers (heartbeat gone): counted into the record's
 * "stalled" (with "stalled_since", unix seconds of the oldest one's last sign
 * of life), then re-queued at once, each counted as a failure of its item
 * (lb_redis_requeue_dead). Live workers take such items over too; whoever
 * comes first. Redis errors are left to the next poll. */
static void reap_dead(dist *d, int32_t *stalled, int64_t *since)
{
    lb_redis_lease_rec *l = NULL;
    int32_t n = 0, n_dead = 0;
    lb_err e = {0};
    *stalled = 0;
    *since = 0;
    if (lb_redis_leases(d->r, d->o->job_name, 1000, &l, &n, &n_dead, &e) || !n_dead) {
        free(l);
        return;
    }
    int64_t now = (int64_t)time(NULL), oldest = now;
    for (int32_t i = 0; i < n; i++)
        if (l[i].dead && now - l[i].idle_ms / 1000 < oldest)
            oldest = now - l[i].idle_ms / 1000;
    free(l);
    *stalled = n_dead;
    *since = oldest;
    int32_t requeued = 0;
    if (lb_redis_requeue_dead(d->r, d->o->job_name, "coordinator", LB_DIST_MAX_FAILURES,
                              &requeued, &e))
        fprintf(stderr, "lowbit coordinator: %s\n", e.msg);
    else if (requeued)
        fprintf(stderr, "lowbit coordinator: re-queued %d item%s of dead workers\n",
                (int)requeued, requeued > 1 ? "s" : "");
}

/* Writes the counters, blocks done, ETA and bytes moved into the job record;
 * "stalled" counts the items found leased by dead workers at this poll. */
static int update_record(dist *d, int32_t done, int32_t failed, double t0, lb_err *err)
{
    const lb_plan *plan = d->plan;
    int32_t n = d->n, total = lb_plan_needed_count(plan);
    int32_t blocks_done = 0;
    for (int32_t b = 0; b < d->o->n_blocks; b++) {
        bool all = true;
        for (int32_t i = 0; i < n && all; i++)
            if (lb_plan_job(plan, i)->block == b && lb_plan_job_needed(plan, i))
                all = d->st[i] == JOB_FED;
        blocks_done += all;
    }
    lb_xfer_stats xs;
    memset(&xs, 0, sizeof xs);
    if (d->srv)
        lb_xfer_server_stats(d->srv, &xs);
    double el = lb_now_s() - t0;
    int32_t stalled = 0;
    int64_t stalled_since = 0;
    reap_dead(d, &stalled, &stalled_since);
    /* a stalled item's work is lost: it runs again, and waits for the
     * heartbeat TTL first, so it counts as still to do plus that wait */
    double eta = done > 0 ? el * (double)(total - done) / (double)done : -1.0;
    if (eta >= 0 && stalled > 0)
        eta += (double)stalled * el / (double)done;
    char v[10][32];
    snprintf(v[0], 32, "%d", (int)done);
    snprintf(v[1], 32, "%d", (int)failed);
    snprintf(v[2], 32, "%d", (int)lb_plan_running(plan));
    snprintf(v[3], 32, "%d", (int)blocks_done);
    snprintf(v[4], 32, "%d", (int)total);
    snprintf(v[5], 32, "%llu", (unsigned long long)(d->base_fetched + xs.bytes_out));
    snprintf(v[6], 32, "%llu", (unsigned long long)(d->base_published + xs.bytes_in));
    snprintf(v[7], 32, "%d", (int)stalled);
    snprintf(v[8], 32, "%lld", (long long)stalled_since);
    snprintf(v[9], 32, "%.0f", eta);
    const char *f[] = {"jobs_done",     "jobs_failed",     "jobs_in_flight", "blocks_done",
                       "jobs_total",    "bytes_fetched",   "bytes_published", "stalled",
                       "stalled_since", "eta_s"};
    const char *vals[] = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]};
    return lb_redis_job_set(d->r, d->o->job_name, eta < 0 ? 9 : 10, f, vals, err);
}

static void server_log(void *user, const char *line)
{
    (void)user;
    fprintf(stderr, "lowbit coordinator: artifact server: %s\n", line);
}

/* The endpoint workers are told: o->artifact_endpoint, else the bound one with
 * a wildcard host replaced by this host's name. */
static void advertised(const dist *d, char *buf, size_t size)
{
    const char *ep = lb_xfer_server_endpoint(d->srv);
    if (d->o->artifact_endpoint) {
        snprintf(buf, size, "%s", d->o->artifact_endpoint);
        return;
    }
    const char *port = strrchr(ep, ':');
    if (port && (!strncmp(ep, "tcp://0.0.0.0:", 14) || !strncmp(ep, "tcp://*:", 8) ||
                 !strncmp(ep, "tcp://[::]:", 11))) {
        char host[128] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(buf, size, "tcp://%s%s", host, port);
        return;
    }
    snprintf(buf, size, "%s", ep);
}

/* Starts the artifact server and writes the record's start fields. */
static int start(dist *d, bool existed, lb_err *err)
{
    const lb_dist_opts *o = d->o;
    lb_xfer_server_opts so = {.dir = lb_store_dir(d->store),
                              .bind = o->artifact_bind,
                              .validate = lb_xfer_validate_artifact,
                              .log = server_log,
                              .curve = o->curve,
                              .insecure = o->insecure,
                              .authorize = lb_dist_lease_authorize,
                              .authorize_user = &d->lease};
    d->lease = (lb_dist_lease){.redis_url = o->redis_url, .job_name = o->job_name};
    int rc = lb_xfer_server_start(&so, &d->srv, err);
    if (rc)
        return rc;
    char host[128] = "?", who[200], bits[32], blocks[32], now[32], ep[300];
    gethostname(host, sizeof host - 1);
    snprintf(who, sizeof who, "%s:%ld", host, (long)getpid());
    snprintf(bits, sizeof bits, "%g", o->bits);
    snprintf(blocks, sizeof blocks, "%d", (int)o->n_blocks);
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    advertised(d, ep, sizeof ep);
    lb_redis_map m;
    bool has_started = false;
    if (existed && lb_redis_job_get(d->r, o->job_name, &m, err) == 0) {
        has_started = lb_redis_map_get(&m, "started") != NULL;
        const char *bf = lb_redis_map_get(&m, "bytes_fetched");
        const char *bp = lb_redis_map_get(&m, "bytes_published");
        d->base_fetched = bf ? strtoull(bf, NULL, 10) : 0;
        d->base_published = bp ? strtoull(bp, NULL, 10) : 0;
        lb_redis_map_clear(&m);
    }
    /* "started" last: it is only written once */
    const char *f[] = {"state", "method", "bits", "blocks_total", "model", "out", "coordinator",
                       "artifacts", "started"};
    const char *v[] = {"running", o->method, bits, blocks, o->model_dir, o->out_dir, who, ep, now};
    if ((rc = lb_redis_job_set(d->r, o->job_name, has_started ? 8 : 9, f, v, err)))
        return rc;
    char ev[600];
    snprintf(ev, sizeof ev, "coordinator %s %s: %d jobs to run; artifacts served at %s", who,
             existed ? "resumed" : "started", (int)lb_plan_needed_count(d->plan), ep);
    fprintf(stderr, "lowbit coordinator: artifact server %s%s (store %s)\n", ep,
            o->curve && o->curve->on ? " (CURVE)" : "",
            lb_store_dir(d->store));
    return lb_redis_event(d->r, o->job_name, ev, err);
}

/* Runs the merge job j here. */
static void run_merge(dist *d, int32_t j, int32_t *done_count, int32_t *failed)
{
    const lb_job *job = lb_plan_job(d->plan, j);
    if (!all_verify(d->store, job->inputs, job->n_inputs)) {
        recover_lost(d, j);
        return;
    }
    lb_job_result jr;
    int rc = lb_exec_run(job, d->o->local, &jr);
    d->st[j] = JOB_FED;
    d->flags[j] |= F_PLAN_DONE;
    if (rc == 0) {
        lb_plan_feed_done(d->plan, j);
        (*done_count)++;
        if (d->o->progress)
            d->o->progress(d->o->user, d->plan, j, &jr, *done_count,
                           lb_plan_needed_count(d->plan));
    } else {
        lb_plan_feed_failed(d->plan, j);
        (*failed)++;
        if (!d->first_error[0])
            snprintf(d->first_error, sizeof d->first_error, "merge %s: %.300s", job->id,
                     jr.error);
    }
}

/* Queues every job marked JOB_TO_QUEUE (the merge runs here instead). */
static int queue_ready(dist *d, int32_t *done_count, int32_t *failed, lb_err *err)
{
    for (int32_t j = 0; j < d->n && !d->fatal; j++) {
        if (d->st[j] != JOB_TO_QUEUE)
            continue;
        const lb_job *job = lb_plan_job(d->plan, j);
        if (job->type == LB_JOB_MERGE && d->o->local) {
            run_merge(d, j, done_count, failed);
            continue;
        }
        uint8_t *buf = NULL;
        size_t len = 0;
        bool added = false;
        int rc = lb_job_encode(job, &buf, &len, err);
        if (rc)
            return rc;
        if (d->flags[j] & F_PLAIN)
            rc = lb_redis_enqueue(d->r, d->o->job_name, job->id, buf, len, NULL, err);
        else
            rc = lb_redis_enqueue_once(d->r, d->o->job_name, job->id, buf, len, &added, err);
        free(buf);
        if (rc)
            return rc;
        d->st[j] = JOB_OUT;
    }
    return 0;
}

/* Feeds one result of the results stream. */
static void take_result(dist *d, const lb_redis_result *res, int32_t *done_count, int32_t *failed)
{
    int32_t j = find_job(d->plan, res->id);
    if (j < 0 || d->st[j] != JOB_OUT)
        return; /* an earlier run's result, or a duplicate */
    const lb_job *job = lb_plan_job(d->plan, j);
    lb_job_result jr;
    memset(&jr, 0, sizeof jr);
    bool ok = false, decoded = false;
    if (res->error) {
        snprintf(jr.error, sizeof jr.error, "%s", res->error);
    } else {
        lb_err e2 = {0};
        if (lb_job_result_decode(res->result, res->len, &jr, &e2))
            snprintf(jr.error, sizeof jr.error, "bad result: %.200s", e2.msg);
        else
            ok = jr.status == LB_JOB_OK, decoded = true;
    }
    if (decoded && !ok && jr.err_code == LB_ENOTFOUND) {
        recover_lost(d, j); /* a worker could not fetch an input */
        return;
    }
    if (ok && !all_verify(d->store, job->outputs, job->n_outputs)) {
        /* an earlier coordinator's result whose outputs are gone or corrupt now */
        char ev[300];
        snprintf(ev, sizeof ev, "%s %.12s reported done but its outputs do not verify in the "
                 "store; running it again", lb_job_type_name(job->type), job->id);
        event(d, ev);
        if (++d->redos[j] > MAX_REDO)
            set_fatal(d, "%s %s: outputs never verify; check the coordinator's disk",
                      lb_job_type_name(job->type), job->id);
        d->st[j] = JOB_TO_QUEUE;
        d->flags[j] |= F_PLAIN;
        return;
    }
    d->st[j] = JOB_FED;
    if (d->flags[j] & F_PLAN_DONE) { /* a rerun to replace lost artifacts */
        if (ok)
            unpark(d);
        else
            set_fatal(d, "%s %s: rerun failed", lb_job_type_name(job->type), job->id);
        return;
    }
    d->flags[j] |= F_PLAN_DONE;
    if (ok) {
        lb_plan_feed_done(d->plan, j);
        (*done_count)++;
        if (d->o->progress)
            d->o->progress(d->o->user, d->plan, j, &jr, *done_count,
                           lb_plan_needed_count(d->plan));
    } else {
        lb_plan_feed_failed(d->plan, j);
        (*failed)++;
        if (!d->first_error[0])
            snprintf(d->first_error, sizeof d->first_error, "%s %s: %.300s",
                     lb_job_type_name(job->type), res->id, jr.error);
    }
}

/* After a reconnect: Redis must still hold the job; then everything out is
 * queued again. A server that lost its last writes (appendfsync everysec) may
 * have lost the items; lb_redis_enqueue_once skips those it still has (a rerun
 * after a lost artifact is queued with a plain XADD again: a lost one would be
 * waited for forever, a duplicate only runs twice and its second result is
 * ignored). */
static int recheck_job(dist *d, lb_err *err)
{
    const char *name = d->o->job_name;
    int rc = check_after_outage(d->r, name, d->o->fingerprint, err);
    if (rc)
        return rc;
    for (int32_t j = 0; j < d->n; j++)
        if (d->st[j] == JOB_OUT)
            d->st[j] = JOB_TO_QUEUE;
    lb_err e2 = {0};
    lb_redis_event(d->r, name, "coordinator reconnected to Redis; job record and queue checked",
                   &e2);
    fprintf(stderr, "lowbit coordinator: reconnected to %s; job '%s' is intact\n",
            lb_redis_peer(d->r), name);
    return 0;
}

/* The plan's pending actions: runnable jobs are marked for queueing, released
 * artifacts deleted here and announced to the workers. */
static int apply_actions(dist *d, lb_err *err)
{
    lb_action acts[64];
    int na, rc;
    while ((na = lb_plan_poll(d->plan, acts, 64)) > 0) {
        for (int k = 0; k < na; k++) {
            if (acts[k].type == LB_ACT_DELETE) {
                if ((rc = lb_store_remove(d->store, acts[k].artifact, err)))
                    return rc;
                /* workers drop it from their caches too; only hygiene, so a
                 * failure is reported and the run goes on */
                lb_err e2 = {0};
                if (lb_redis_released_add(d->r, d->o->job_name, acts[k].artifact, &e2))
                    fprintf(stderr, "lowbit coordinator: %s\n", e2.msg);
                continue;
            }
            d->st[acts[k].job] = JOB_TO_QUEUE;
        }
    }
    return 0;
}

int lb_dist_run(lb_plan *plan, const lb_store *artifacts, const lb_dist_opts *o, lb_err *err)
{
    dist d;
    memset(&d, 0, sizeof d);
    d.plan = plan;
    d.store = artifacts;
    d.o = o;
    lb_redis_result *res = NULL;
    int32_t n_res = 0;
    const char *name = o->job_name;
    lb_redis_opts ro = lb_redis_opts_default();
    ro.retries = 8; /* ~20 s of reconnect attempts per command */
    ro.backoff_ms = 200;
    int rc = lb_redis_connect(o->redis_url, &ro, &d.r, err);
    if (rc)
        return rc;
    d.n = lb_plan_job_count(plan);
    d.st = calloc((size_t)d.n + 1, 1);
    d.flags = calloc((size_t)d.n + 1, 1);
    d.redos = calloc((size_t)d.n + 1, 1);
    if (!d.st || !d.flags || !d.redos) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    bool existed = false;
    if ((rc = lb_redis_job_create(d.r, name, o->fingerprint, &existed, err)) ||
        (rc = lb_redis_queue_init(d.r, name, err)))
        goto done;
    bool cancelled = false;
    if ((rc = lb_redis_is_cancelled(d.r, name, &cancelled, err)))
        goto done;
    if (cancelled) {
        rc = lb_err_set(err, LB_ESTATE, "job '%s' on %s was cancelled; pick another --job name",
                        name, lb_redis_peer(d.r));
        goto done;
    }
    if ((rc = start(&d, existed, err)))
        goto done;

    double t0 = lb_now_s();
    char cursor[48] = "0";
    int32_t done_count = 0, failed = 0;
    double ok_since = lb_now_s();
    double wait_s = o->redis_wait_s > 0 ? o->redis_wait_s : REDIS_WAIT_S;
    bool outage = false;
    int64_t connects = lb_redis_connects(d.r);
    for (;;) {
        /* A lost Redis (restart, failover) is waited for, up to wait_s: every
         * call below is idempotent, so the loop just goes round again. */
        if (rc == LB_ENET) {
            if (lb_now_s() - ok_since > wait_s) {
                lb_err_prefix(err, "gave up after %.0f s without Redis (--redis-wait)", wait_s);
                goto done;
            }
            fprintf(stderr, "lowbit coordinator: %s; retrying\n", err ? err->msg : "Redis lost");
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
            outage = true;
        } else {
            ok_since = lb_now_s();
        }
        rc = 0;
        if ((rc = lb_redis_is_cancelled(d.r, name, &cancelled, err))) {
            if (rc == LB_ENET)
                continue;
            goto done;
        }
        /* reconnected (a short blip is ridden out inside lb_redis, a long one
         * here): check that Redis still holds the job before waiting on it */
        if (outage || lb_redis_connects(d.r) != connects) {
            if ((rc = recheck_job(&d, err))) {
                if (rc == LB_ENET)
                    continue;
                goto done;
            }
            outage = false;
            connects = lb_redis_connects(d.r);
        }
        if (cancelled) {
            rc = lb_err_set(err, LB_ESTATE, "job '%s' was cancelled (lowbit cancel)", name);
            goto done;
        }
        if ((rc = apply_actions(&d, err)))
            goto done;
        rc = queue_ready(&d, &done_count, &failed, err);
        if (rc == LB_ENET)
            continue;
        if (rc)
            goto done;
        if (d.fatal)
            break;
        if (lb_plan_done(plan) || (lb_plan_failed(plan) && lb_plan_running(plan) == 0))
            break;
        if ((rc = lb_redis_results_read(d.r, name, cursor, 64, 1000, &res, &n_res, err))) {
            if (rc == LB_ENET)
                continue;
            goto done;
        }
        for (int32_t i = 0; i < n_res && !d.fatal; i++)
            take_result(&d, &res[i], &done_count, &failed);
        lb_redis_results_free(&res, n_res);
        n_res = 0;
        if (d.fatal)
            break;
        if ((rc = update_record(&d, done_count, failed, t0, err)) && rc != LB_ENET)
            goto done;
    }
    if ((rc = update_record(&d, done_count, failed, t0, err)))
        goto done;
    if (lb_plan_failed(plan) || d.fatal) {
        rc = lb_err_set(err, LB_ESTATE, "job '%s' failed: %s", name, d.first_error);
        const char *f[] = {"state", "error"}, *v[] = {"failed", d.first_error};
        lb_err e2 = {0};
        lb_redis_job_set(d.r, name, 2, f, v, &e2);
        lb_redis_event(d.r, name, err->msg, &e2);
        goto done;
    }
    {
        const char *f[] = {"state", "eta_s"}, *v[] = {"done", "0"};
        if ((rc = lb_redis_job_set(d.r, name, 2, f, v, err)) ||
            (rc = lb_redis_event(d.r, name, "all jobs done; checkpoint written", err)))
            goto done;
    }
done:
    lb_xfer_server_stop(&d.srv);
    lb_dist_lease_clear(&d.lease);
    lb_redis_results_free(&res, n_res);
    free(d.st);
    free(d.flags);
    free(d.redos);
    lb_redis_free(&d.r);
    return rc;
}
