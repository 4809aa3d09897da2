/* lowbit worker: takes pipeline jobs from Redis, runs them with lb_exec_run,
 * posts results. Heartbeats (SET EX) and lease renewal run on a second
 * connection in a thread; SIGTERM/SIGINT finish the current job, then exit. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <omp.h>

#include "lb_artifact.h"
#include "lb_blas.h"
#include "lb_cli.h"
#include "lb_exec.h"
#include "lb_job.h"
#include "lb_model.h"
#include "lb_mpi_group.h"
#include "lb_redis.h"
#include "lb_redis_url.h"
#include "lb_worker_data.h"

static volatile sig_atomic_t g_stop;
static bool g_json; /* --json: one JSON object per line on stdout */
static lb_mpi_group *g_group; /* rank 0 of an MPI worker group, else NULL */

/* Prints o as one JSON line on stdout and releases it. */
static void emit(json_t *o)
{
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (t) {
        printf("%s\n", t);
        fflush(stdout);
    }
    free(t);
    json_decref(o);
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit worker [--redis URL] [--threads N] [--id ID] [--lease-ms MS]\n"
            "                     [--max-failures K] [--heartbeat-ttl S] [--idle-exit S] [--json]\n"
            "                     [--cache DIR] [--xfer-timeout-ms MS] [--max-jobs N]\n"
            "                     [--mpi | --no-mpi]\n"
            "\n"
            "Runs the jobs of every running distributed job on the Redis server: leases an\n"
            "item (XREADGROUP), runs it, posts its result and acks it. Items whose lease\n"
            "is idle longer than --lease-ms are taken over (XAUTOCLAIM); an item failing\n"
            "--max-failures times is dead-lettered. SIGTERM/SIGINT: finish the current item,\n"
            "deregister, exit 0. Artifacts move over ZeroMQ: a job's inputs are fetched by id\n"
            "from the coordinator's artifact server (job record field \"artifacts\") into the\n"
            "cache unless a verified copy is there, its outputs are published back before the\n"
            "ack. The source model is opened from the job's model path (shared or copied).\n"
            "\n"
            "  --redis URL         default $LOWBIT_REDIS, else %s\n"
            "  --threads N         OpenMP threads per job (default: all cores)\n"
            "  --id ID             worker id (default HOST-PID)\n"
            "  --lease-ms MS       stale-lease timeout (default 600000); the running lease\n"
            "                      is renewed every heartbeat\n"
            "  --max-failures K    failures before dead-lettering (default 3)\n"
            "  --heartbeat-ttl S   heartbeat key TTL, refreshed every S/3 (default 30)\n"
            "  --idle-exit S       exit after S seconds without work (default 0: never)\n"
            "  --redis-wait S      keep retrying an unreachable Redis for S seconds (default 300)\n"
            "  --cache DIR         local artifact store DIR/.lowbit/artifacts (default:\n"
            "                      ${TMPDIR:-/tmp}/lowbit-UID/ID, removed at exit); the\n"
            "                      coordinator's --out here means: same filesystem, nothing moves\n"
            "  --xfer-timeout-ms MS  wait per artifact transfer reply (default 120000, 2 retries)\n"
            "  --max-jobs N        exit after taking N items (default 0: no limit)\n"
            "  --json              JSON lines on stdout: start, ran, failed, exit/error\n"
            "  --mpi / --no-mpi    form one worker of all MPI ranks (default: when started\n"
            "                      by mpirun/srun with more than one rank); rank 0 talks\n"
            "                      to Redis, every rank computes; a group works in the job's\n"
            "                      output directory (shared filesystem, no --cache)\n"
            "                      (docs/distributed.md)\n",
            LB_REDIS_DEFAULT_URL);
}

static int parse_num(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* State shared with the heartbeat thread. */
typedef struct {
    pthread_mutex_t mu;
    const char *url;
    char id[LB_REDIS_ID_MAX + 1];
    char host[128];
    int ttl_s;
    bool quit;
    bool leased;
    char job[LB_REDIS_NAME_MAX + 1];
    lb_redis_msg lease; /* entry + id only (no payload) */
    char last_error[256];
} beat_state;

static void *beat_main(void *arg)
{
    beat_state *b = arg;
    lb_redis *r = NULL;
    int period_ms = b->ttl_s * 1000 / 3;
    if (period_ms < 100)
        period_ms = 100;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        bool quit = b->quit, leased = b->leased;
        char job[LB_REDIS_NAME_MAX + 1], info[512];
        lb_redis_msg lease = b->lease;
        snprintf(job, sizeof job, "%s", b->job);
        pthread_mutex_unlock(&b->mu);
        if (quit)
            break;
        lb_err err = {0};
        if (!r && lb_redis_connect(b->url, NULL, &r, &err))
            r = NULL;
        if (r) {
            snprintf(info, sizeof info, "host=%s pid=%ld job=%s item=%.16s", b->host,
                     (long)getpid(), leased ? job : "-", leased ? lease.id : "-");
            int rc = lb_redis_heartbeat(r, b->id, info, b->ttl_s, &err);
            if (!rc && leased)
                rc = lb_redis_lease_touch(r, job, b->id, &lease, &err);
            if (rc) {
                pthread_mutex_lock(&b->mu);
                snprintf(b->last_error, sizeof b->last_error, "%s", err.msg);
                pthread_mutex_unlock(&b->mu);
            }
        }
        for (int t = 0; t < period_ms; t += 50) {
            pthread_mutex_lock(&b->mu);
            quit = b->quit;
            pthread_mutex_unlock(&b->mu);
            if (quit)
                break;
            sleep_ms(50);
        }
    }
    lb_redis_free(&r);
    return NULL;
}

/* Cached source model and artifact store (jobs of one run share them). */
typedef struct {
    char model_dir[LB_JOB_PATH_MAX];
    char out_dir[LB_JOB_PATH_MAX]; /* where the store was opened: cache or job out dir */
    lb_model *model;
    char model_fp[LB_ID_HEX];
    lb_store *store;
} exec_cache;

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
        int rc = lb_model_open(&c->model, model_dir, err);
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
    double lost_since = now_s();
    for (;;) {
        int rc = lb_redis_complete(r, name, msg, buf, len, err);
        if (rc != LB_ENET || now_s() - lost_since >= redis_wait_s)
            return rc;
        fprintf(stderr, "lowbit worker %s: posting %.12s: %s; retrying\n", worker, msg->id,
                err->msg);
        sleep_ms(1000);
    }
}

/* Reports a finished item: acks it with its result, or counts a failure
 * (re-queue or dead-letter); event and log line. Returns 0 unless Redis failed. */
static int finish_item(lb_redis *r, const beat_state *b, const char *name,
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
            out = post_result(r, b->id, name, msg, buf, len, redis_wait_s, err);
        free(buf);
        int n = snprintf(ev, sizeof ev, "%s ran %s %.12s (block %d) in %.1f s, fetched %llu B, "
                         "published %llu B", b->id, lb_job_type_name(job->type), job->id,
                         (int)job->block, secs, (unsigned long long)fetched,
                         (unsigned long long)published);
        if (g_group && ms->chunks && n > 0 && (size_t)n < sizeof ev)
            snprintf(ev + n, sizeof ev - (size_t)n, " on %d MPI ranks (%d of %d chunks remote, "
                     "%lld bytes over MPI)", (int)ms->ranks_used, (int)ms->chunks_remote,
                     (int)ms->chunks, (long long)ms->mpi_bytes);
        if (!out) { /* the log line is best-effort: the result is in */
            lb_err e2 = {0};
            if (lb_redis_event(r, name, ev, &e2))
                fprintf(stderr, "lowbit worker %s: event not logged: %s\n", b->id, e2.msg);
        }
        if (!out && g_group)
            out = lb_redis_job_incr(r, name, "mpi_bytes", ms->mpi_bytes, NULL, err);
        if (g_json)
            emit(json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:I, s:I, s:I, s:i, s:i, s:i}",
                           "event", "ran", "worker", b->id, "job", name, "item", job->id, "type",
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
        if (g_json)
            emit(json_pack("{s:s, s:s, s:s, s:s, s:I, s:i, s:b, s:s}", "event", "failed", "worker",
                           b->id, "job", name, "item", msg->id, "fails", (json_int_t)fails,
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
static int run_batch(lb_redis *r, const beat_state *b, const char *name, const char *dir,
                     const lb_redis_msg *msg0, const lb_job *job0, const lb_exec_ctx *ctx,
                     lb_job_result *res0, lb_mpi_stats *ms0, int max_failures,
                     double redis_wait_s, lb_redis_msg *deferred, bool *has_deferred,
                     lb_err *err)
{
    const int size = lb_mpi_group_size(g_group);
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
        if (lb_redis_claim(r, name, b->id, 0, &m, &got, &ce) || !got)
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
    if (lb_mpi_group_run_batch(g_group, n, jobs, pl, lens, dir, ctx, res, ms0, &be)) {
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
        int o = finish_item(r, b, name, &xm[i], &xj[i], rc, &res[i], &je, res[i].seconds, &none,
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

/* Runs one leased item of job `name`; acks, fails or dead-letters it. Returns 0
 * unless Redis itself failed. */
static int run_item(lb_redis *r, beat_state *b, exec_cache *cache, lb_wdata *data,
                    const char *cache_dir, const char *endpoint, const char *name,
                    const char *out_dir, lb_redis_msg *msg, int threads, int max_failures,
                    double redis_wait_s, lb_err *err)
{
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
    const bool xfer = endpoint[0] && !g_group;
    if (rc == 0)
        rc = cache_get(cache, job.model_dir,
                       xfer ? cache_dir : job.out_dir[0] ? job.out_dir : out_dir, &jerr);
    pthread_mutex_lock(&b->mu);
    b->leased = true;
    snprintf(b->job, sizeof b->job, "%s", name);
    b->lease = *msg;
    b->lease.payload = NULL;
    pthread_mutex_unlock(&b->mu);
    double t0 = now_s();
    lb_mpi_stats ms;
    memset(&ms, 0, sizeof ms);
    lb_redis_msg deferred;
    bool has_deferred = false;
    int batch_out = 0;
    if (rc == 0 && xfer) {
        rc = lb_wdata_fetch(data, endpoint, cache->store, &job, &fetched, &jerr);
        lost = rc && lb_wdata_input_lost(rc);
    }
    if (rc == 0) {
        lb_exec_ctx ctx = {cache->model, cache->model_fp, cache->store, threads};
        const char *dir = job.out_dir[0] ? job.out_dir : out_dir;
        if (g_group && !lb_exec_is_data_parallel(&job)) {
            batch_out = run_batch(r, b, name, dir, msg, &job, &ctx, &res, &ms, max_failures,
                                  redis_wait_s, &deferred, &has_deferred, err);
            rc = res.status == LB_JOB_OK ? 0 : (res.err_code ? res.err_code : LB_EINVAL);
        } else if (g_group) {
            rc = lb_mpi_group_run(g_group, &job, msg->payload, msg->len, dir, &ctx, &res, &ms);
        } else {
            rc = lb_exec_run(&job, &ctx, &res);
        }
        if (rc)
            snprintf(jerr.msg, sizeof jerr.msg, "%s", res.error);
    }
    if (rc == 0 && xfer)
        rc = lb_wdata_publish(data, cache->store, &job, &published, &jerr);
    pthread_mutex_lock(&b->mu);
    b->leased = false;
    pthread_mutex_unlock(&b->mu);
    double secs = now_s() - t0;
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
            out = post_result(r, b->id, name, msg, buf, len, redis_wait_s, err);
        free(buf);
        if (g_json)
            emit(json_pack("{s:s, s:s, s:s, s:s, s:s}", "event", "input-lost", "worker", b->id,
                           "job", name, "item", job.id, "error", jerr.msg));
        else
            fprintf(stderr, "lowbit worker: %s: item %.12s: %s (reported to the coordinator)\n",
                    name, job.id, jerr.msg);
    } else {
        out = finish_item(r, b, name, msg, &job, rc, &res, &jerr, secs, &ms, fetched, published,
                          max_failures, redis_wait_s, err);
    }
    lb_job_clear(&job);
    if (!out)
        out = batch_out;
    if (!out && g_group && res.err_code == LB_ENET)
        out = lb_err_set(err, LB_ENET, "%s", res.error); /* the MPI group broke: stop */
    if (has_deferred) {
        /* claimed while batching but not batchable: run it now (before any
         * error return, so its lease is not left to expire needlessly) */
        int o = out ? 0 : run_item(r, b, cache, data, cache_dir, endpoint, name, out_dir,
                                   &deferred, threads, max_failures, redis_wait_s, err);
        lb_redis_msg_clear(&deferred);
        if (!out)
            out = o;
    }
    return out;
}

int lb_cmd_worker(int argc, char **argv)
{
    const char *url = NULL, *id_arg = NULL, *cache_arg = NULL;
    long threads = 0, lease_ms = 600000, max_failures = 3, ttl = 30, idle_exit = 0;
    long xfer_timeout_ms = 120000, max_jobs = 0, jobs_taken = 0;
    long redis_wait = 300;
    int mpi_mode = 0; /* 1 --mpi, -1 --no-mpi, 0 auto */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            g_json = true;
            continue;
        } else if (!strcmp(a, "--mpi") || !strcmp(a, "--no-mpi")) {
            mpi_mode = a[2] == 'm' ? 1 : -1;
            continue;
        } else if (!strcmp(a, "--redis") && v) {
            url = v;
        } else if (!strcmp(a, "--id") && v) {
            id_arg = v;
        } else if (!strcmp(a, "--cache") && v) {
            cache_arg = v;
        } else if (!strcmp(a, "--xfer-timeout-ms") && v) {
            bad = parse_num(v, 10, 86400000L, &xfer_timeout_ms);
        } else if (!strcmp(a, "--max-jobs") && v) {
            bad = parse_num(v, 0, 1L << 40, &max_jobs);
        } else if (!strcmp(a, "--threads") && v) {
            bad = parse_num(v, 1, 1024, &threads);
        } else if (!strcmp(a, "--lease-ms") && v) {
            bad = parse_num(v, 10, 86400000L, &lease_ms);
        } else if (!strcmp(a, "--max-failures") && v) {
            bad = parse_num(v, 1, 1000, &max_failures);
        } else if (!strcmp(a, "--heartbeat-ttl") && v) {
            bad = parse_num(v, 1, 3600, &ttl);
        } else if (!strcmp(a, "--redis-wait") && v) {
            bad = parse_num(v, 0, 86400, &redis_wait);
        } else if (!strcmp(a, "--idle-exit") && v) {
            bad = parse_num(v, 0, 86400 * 365, &idle_exit);
        } else {
            fprintf(stderr, "lowbit worker: unknown or incomplete option '%s'; run `lowbit worker --help`\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "lowbit worker: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i++;
    }
    if (threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        threads = nc > 0 ? nc : 1;
    }
    /* one BLAS thread: products round the same at any worker count (lb_runner.h) */
    lb_blas_set_threads(1);

    beat_state b;
    memset(&b, 0, sizeof b);
    pthread_mutex_init(&b.mu, NULL);
    b.url = lb_redis_url_pick(url);
    b.ttl_s = (int)ttl;
    gethostname(b.host, sizeof b.host - 1);
    if (id_arg)
        snprintf(b.id, sizeof b.id, "%s", id_arg);
    else
        snprintf(b.id, sizeof b.id, "%.100s-%ld", b.host, (long)getpid());

    lb_err err = {0};
    lb_redis *r = NULL;
    exec_cache cache;
    memset(&cache, 0, sizeof cache);
    if (mpi_mode > 0 || (mpi_mode == 0 && lb_mpi_group_launched())) {
        /* mpirun forwards SIGTERM to every rank, maybe before they reach the
         * loop: catch it from the start (rank 0 stops the group; ranks > 0
         * wait for that) */
        struct sigaction si;
        memset(&si, 0, sizeof si);
        si.sa_handler = on_signal;
        sigaction(SIGTERM, &si, NULL);
        sigaction(SIGINT, &si, NULL);
        if (mpi_mode == 0 && !lb_mpi_group_available()) {
            fprintf(stderr, "lowbit worker: started by an MPI launcher, but this lowbit was "
                    "built without MPI: each rank is an independent worker\n");
        } else if (lb_mpi_group_open(&argc, &argv, &g_group, &err)) {
            fprintf(stderr, "lowbit worker: %s\n", err.msg);
            return 1;
        } else if (lb_mpi_group_rank(g_group) > 0) {
            const char *fc = getenv("LOWBIT_TEST_MPI_FAIL_CHUNK"); /* test hook */
            if (fc && *fc)
                lb_mpi_group_set_fail_chunk(g_group, !strcmp(fc, "open") ? LB_MPI_FAIL_OPEN
                                                                          : strtoll(fc, NULL, 10));
            /* serve rank 0 until it stops the group; never touch Redis here */
            group_user gu = {&cache, (int)threads};
            int rc = lb_mpi_group_serve(g_group, group_ctx, &gu, &err);
            if (rc)
                fprintf(stderr, "lowbit worker rank %d: %s\n", lb_mpi_group_rank(g_group),
                        err.msg);
            lb_mpi_group_close(&g_group, &err);
            cache_clear(&cache);
            return rc ? 1 : 0;
        } else if (lb_mpi_group_size(g_group) < 2) {
            lb_mpi_group_close(&g_group, &err); /* one rank: a plain worker */
        }
    }
    pthread_t beat;
    bool beat_started = false;
    int status = 1;
    char cache_dir[LB_JOB_PATH_MAX] = "";
    lb_wdata *data = NULL;
    if (cache_arg)
        snprintf(cache_dir, sizeof cache_dir, "%s", cache_arg);
    else if (!g_group && lb_wdata_default_cache(b.id, cache_dir, sizeof cache_dir, &err))
        goto fail; /* (a group works in the job's output directory: no cache) */
    if (lb_wdata_new((int)xfer_timeout_ms, 2, &data, &err))
        goto fail;
    lb_redis_opts ro = lb_redis_opts_default();
    ro.retries = 8; /* ~20 s of reconnect attempts per command: rides out a Redis restart */
    ro.backoff_ms = 200;
    if (lb_redis_connect(b.url, &ro, &r, &err) ||
        lb_redis_heartbeat(r, b.id, "starting", b.ttl_s, &err))
        goto fail;
    if (pthread_create(&beat, NULL, beat_main, &b) != 0) {
        lb_err_set(&err, LB_ENOMEM, "cannot start the heartbeat thread");
        goto fail;
    }
    beat_started = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (g_json)
        emit(json_pack("{s:s, s:s, s:s, s:i, s:i}", "event", "start", "worker", b.id, "redis",
                       lb_redis_peer(r), "threads", (int)threads, "mpi_ranks",
                       lb_mpi_group_size(g_group)));
    else
        fprintf(stderr, "lowbit worker %s: serving %s (%ld threads, %d MPI rank%s)\n", b.id,
                lb_redis_peer(r), threads, lb_mpi_group_size(g_group),
                lb_mpi_group_size(g_group) > 1 ? "s" : "");

    double idle_since = now_s(), ok_since = now_s();
    while (!g_stop) {
        char **names = NULL;
        int32_t n = 0;
        bool worked = false;
        if (lb_redis_job_list(r, &names, &n, &err)) {
            if (err.code != LB_ENET || now_s() - ok_since > (double)redis_wait)
                goto fail;
            fprintf(stderr, "lowbit worker %s: %s; retrying\n", b.id, err.msg);
            sleep_ms(1000);
            idle_since = now_s();
            continue;
        }
        ok_since = now_s();
        for (int32_t j = 0; j < n && !g_stop; j++) {
            lb_redis_map m;
            bool cancelled = false;
            if (lb_redis_job_get(r, names[j], &m, &err)) {
                if (err.code != LB_ENET)
                    continue; /* record deleted meanwhile */
                fprintf(stderr, "lowbit worker %s: %s; retrying\n", b.id, err.msg);
                idle_since = now_s(); /* an outage is not idleness */
                sleep_ms(500);
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
            if (!running || lb_redis_is_cancelled(r, names[j], &cancelled, &err) || cancelled)
                continue;
            lb_redis_msg msg;
            bool got = false;
            int rc = lb_redis_reclaim(r, names[j], b.id, lease_ms, (int)max_failures, &msg, &got,
                                      &err);
            /* one running job (the common case): wait on its queue, so a newly
             * queued item starts at once instead of at the next poll */
            if (!rc && !got)
                rc = lb_redis_claim(r, names[j], b.id, n == 1 ? 500 : 0, &msg, &got, &err);
            if (rc == LB_ENOTFOUND)
                continue; /* queue not created yet */
            if (rc == LB_ENET) {
                /* Redis went away: back to the outer loop, which waits for it;
                 * an outage is not idleness */
                fprintf(stderr, "lowbit worker %s: %s; retrying\n", b.id, err.msg);
                idle_since = now_s();
                sleep_ms(500);
                break;
            }
            if (rc) {
                for (int32_t k = 0; k < n; k++)
                    free(names[k]);
                free(names);
                goto fail;
            }
            if (got) {
                worked = true;
                jobs_taken++;
                if (endpoint[0] && !g_group) { /* keep the cache as small as the store */
                    lb_err pe = {0};
                    if (lb_wdata_prune(data, r, names[j], cache_dir, NULL, &pe))
                        fprintf(stderr, "lowbit worker %s: cache not pruned: %s\n", b.id, pe.msg);
                }
                rc = run_item(r, &b, &cache, data, cache_dir, endpoint, names[j], out_dir, &msg,
                              (int)threads, (int)max_failures, (double)redis_wait, &err);
                lb_redis_msg_clear(&msg);
                if (rc && rc != LB_ENET) {
                    for (int32_t k = 0; k < n; k++)
                        free(names[k]);
                    free(names);
                    goto fail;
                }
                if (rc) /* the result did not reach Redis: the lease expires and it re-runs */
                    fprintf(stderr, "lowbit worker %s: %s\n", b.id, err.msg);
                break; /* rescan from the first job: earlier jobs first */
            }
        }
        for (int32_t k = 0; k < n; k++)
            free(names[k]);
        free(names);
        if (max_jobs > 0 && jobs_taken >= max_jobs)
            break;
        if (worked) {
            idle_since = now_s();
            continue;
        }
        if (idle_exit > 0 && now_s() - idle_since >= (double)idle_exit)
            break;
        for (int t = 0; t < (n == 1 ? 1 : 10) && !g_stop; t++)
            sleep_ms(50);
    }
    status = 0;
fail:
    if (beat_started) {
        pthread_mutex_lock(&b.mu);
        b.quit = true;
        pthread_mutex_unlock(&b.mu);
        pthread_join(beat, NULL);
    }
    if (r) {
        lb_err e2 = {0};
        lb_redis_worker_remove(r, b.id, &e2);
    }
    if (status)
        fprintf(stderr, "lowbit worker %s: %s\n", b.id, err.msg);
    else
        fprintf(stderr, "lowbit worker %s: %s, exiting\n", b.id,
                g_stop                                   ? "signal received"
                : max_jobs > 0 && jobs_taken >= max_jobs ? "--max-jobs reached"
                                                         : "idle");
    if (g_json)
        emit(status ? json_pack("{s:s, s:s, s:s}", "event", "error", "worker", b.id, "error",
                                err.msg)
                    : json_pack("{s:s, s:s, s:s}", "event", "exit", "worker", b.id, "reason",
                                g_stop                                   ? "signal"
                                : max_jobs > 0 && jobs_taken >= max_jobs ? "max-jobs"
                                                                         : "idle"));
    cache_clear(&cache);
    lb_wdata_free(&data);
    if (!cache_arg && cache_dir[0]) { /* the default cache is scratch */
        lb_err e3 = {0};
        if (lb_wdata_remove_cache(cache_dir, &e3))
            fprintf(stderr, "lowbit worker %s: %s\n", b.id, e3.msg);
    }
    lb_redis_free(&r);
    pthread_mutex_destroy(&b.mu);
    if (g_group) {
        lb_err e3 = {0};
        if (lb_mpi_group_close(&g_group, &e3))
            fprintf(stderr, "lowbit worker %s: %s\n", b.id, e3.msg);
    }
    return status;
}
