/* Fault tests of the distributed quantize (coordinator + workers + Redis), each
 * ending in the same checkpoint bytes as the embedded `lowbit quantize`:
 *   - Redis killed (-9) and restarted from its AOF while a worker holds a lease;
 *   - two jobs on one Redis served by the same two workers, without mixing;
 *   - a worker killed (-9) in the middle of a claq / qbb item: lease reclaimed;
 *   - Redis restarted empty: the coordinator stops (bounded) instead of waiting.
 * Every process is a child of this test (lb_test_proc) and every wait has a
 * timeout, so a regression fails the test instead of hanging it. */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "lb_redis.h"
#include "lb_test_proc.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"
#include "lb_time.h"

#define PROC_TIMEOUT_S 120.0 /* any one coordinator or worker */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

typedef struct {
    char model[4096], calib[4096];
    const char *bin;
    char *dir;
} fixture;

/* Fixture paths, the lowbit binary and a fresh temp dir. */
static void fixture_open(fixture *f, const char *model, const char *calib)
{
    memset(f, 0, sizeof *f);
    snprintf(f->model, sizeof f->model, "%s", model);
    snprintf(f->calib, sizeof f->calib, "%s", calib);
    f->bin = lb_test_lowbit_bin();
    f->dir = lb_test_mkdtemp();
    assert_non_null(f->dir);
}

static char *path_in(const fixture *f, const char *rel)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", f->dir, rel) < 0)
        fail_msg("out of memory");
    return p;
}

/* `lowbit quantize` into DIR/sub with the method and bits given. */
static void embedded(const fixture *f, const char *sub, const char *method, const char *bits)
{
    char *out = NULL;
    int rc = lb_test_run(&out,
                         "'%s' quantize --model '%s' --calib '%s' --out '%s/%s' --ctx 128 "
                         "--nsamples 8 --threads 1 --method %s --bits %s",
                         f->bin, f->model, f->calib, f->dir, sub, method, bits);
    if (rc)
        fail_msg("embedded %s: %s", method, out ? out : "");
    free(out);
}

static pid_t spawn_coordinator(const fixture *f, const char *url, const char *job, const char *sub,
                               const char *method, const char *bits)
{
    char *outp = path_in(f, sub);
    char log[4200];
    snprintf(log, sizeof log, "%s/%s.log", f->dir, job);
    const char *argv[] = {f->bin,    "coordinator", "--redis",   url,     "--job",     job,
                          "--model", f->model,      "--calib",   f->calib, "--out",    outp,
                          "--ctx",   "128",         "--nsamples", "8",    "--threads", "1",
                          "--method", method,       "--bits",    bits,    "--redis-wait", "60",
                          NULL};
    pid_t p = lb_test_spawn(log, argv);
    free(outp);
    assert_true(p > 0);
    return p;
}

static pid_t spawn_worker(const fixture *f, const char *url, const char *id, const char *lease_ms,
                          const char *idle_exit)
{
    char log[4200], cache[4200];
    snprintf(log, sizeof log, "%s/%s.log", f->dir, id);
    /* the cache inside the test's directory: a worker killed with -9 leaves it */
    snprintf(cache, sizeof cache, "%s/cache-%s", f->dir, id);
    const char *argv[] = {f->bin,       "worker",   "--redis",       url,    "--id", id,
                          "--threads",  "1",        "--lease-ms",    lease_ms,
                          "--idle-exit", idle_exit, "--redis-wait",  "60",   "--json",
                          "--cache",    cache,      NULL};
    pid_t p = lb_test_spawn(log, argv);
    assert_true(p > 0);
    return p;
}

/* Fails unless DIR/a/model.safetensors and DIR/b/model.safetensors are the same bytes. */
static void same_checkpoint(const fixture *f, const char *a, const char *b)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "cmp '%s/%s/model.safetensors' '%s/%s/model.safetensors'", f->dir,
                         a, f->dir, b);
    if (rc)
        fail_msg("checkpoints %s and %s differ: %s", a, b, out ? out : "");
    free(out);
}

/* Leased-but-unacked items of job name (0 when Redis does not answer). */
static int64_t pending(const char *url, const char *name)
{
    lb_redis *s = NULL;
    lb_err err = {0};
    lb_redis_queue_counts c = {0};
    lb_redis_opts o = lb_redis_opts_default();
    o.retries = 0;
    if (lb_redis_connect(url, &o, &s, &err) == 0)
        lb_redis_queue_stats(s, name, &c, &err);
    lb_redis_free(&s);
    return c.pending;
}

/* Stops (SIGSTOP) worker pid at a moment it holds a lease of job name, the only
 * worker running: polls XPENDING, stops it, and keeps it stopped only when the
 * lease is still there 50 ms later (no completion was in flight). Returns true
 * with the worker stopped mid-item, false after timeout_s. */
static bool freeze_mid_item(const char *url, const char *name, pid_t pid, double timeout_s)
{
    double t0 = lb_now_s();
    while (lb_now_s() - t0 < timeout_s) {
        if (pending(url, name) >= 1) {
            lb_test_signal(pid, SIGSTOP);
            sleep_ms(50);
            if (pending(url, name) >= 1)
                return true;
            lb_test_signal(pid, SIGCONT);
        }
        sleep_ms(1);
    }
    return false;
}

/* The job record's field as an integer (-1 when absent). */
static long job_field(const char *url, const char *name, const char *field)
{
    lb_redis *s = NULL;
    lb_err err = {0};
    lb_redis_map m = {0};
    long v = -1;
    if (lb_redis_connect(url, NULL, &s, &err) == 0 && lb_redis_job_get(s, name, &m, &err) == 0) {
        const char *x = lb_redis_map_get(&m, field);
        v = x ? strtol(x, NULL, 10) : -1;
    }
    lb_redis_map_clear(&m);
    lb_redis_free(&s);
    return v;
}

/* 1 when an event of job name contains both needles (b may be NULL). */
static bool has_event(const char *url, const char *name, const char *a, const char *b)
{
    lb_redis *s = NULL;
    lb_err err = {0};
    lb_redis_event_rec *ev = NULL;
    int32_t n = 0;
    bool hit = false;
    if (lb_redis_connect(url, NULL, &s, &err) == 0 &&
        lb_redis_events_recent(s, name, 1000, &ev, &n, &err) == 0)
        for (int32_t i = 0; i < n && !hit; i++)
            hit = strstr(ev[i].msg, a) && (!b || strstr(ev[i].msg, b));
    lb_redis_events_free(&ev, n);
    lb_redis_free(&s);
    return hit;
}

/* Kill -9 of Redis while the only worker holds a lease (stopped with SIGSTOP
 * so the completion cannot slip out first), restart from the AOF on the same
 * port, let the worker go on: its completion reaches the restarted server, the
 * coordinator notices the reconnect, checks the job and the run completes with
 * the embedded bytes. Before the fix the completion went out on the dead
 * socket and was dropped, and the coordinator waited for the 10 min lease. */
static void test_redis_restart_mid_item(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    fixture f;
    fixture_open(&f, model, calib);
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start_aof(&srv), 0);
    embedded(&f, "emb", "gptq", "3");
    pid_t co = spawn_coordinator(&f, srv.url, "x1", "dist", "gptq", "3");
    pid_t w = spawn_worker(&f, srv.url, "wX", "600000", "4");
    /* a few items done first, so the restart lands mid-run */
    double t0 = lb_now_s();
    while (job_field(srv.url, "x1", "jobs_done") < 3 && lb_now_s() - t0 < 60)
        sleep_ms(20);
    bool frozen = freeze_mid_item(srv.url, "x1", w, 30);
    int restarted = -1;
    if (frozen) {
        lb_test_redis_crash(&srv);
        sleep_ms(1000);
        restarted = lb_test_redis_restart(&srv, NULL);
    }
    lb_test_signal(w, SIGCONT);
    int co_rc = lb_test_wait(co, PROC_TIMEOUT_S);
    int w_rc = lb_test_wait(w, 30);
    char *out = NULL;
    lb_test_run(&out, "tail -n 5 '%s/x1.log' '%s/wX.log'", f.dir, f.dir);
    bool reconnected = has_event(srv.url, "x1", "coordinator reconnected", NULL);
    long done = job_field(srv.url, "x1", "jobs_done"), total = job_field(srv.url, "x1", "jobs_total");
    bool aof_kept = job_field(srv.url, "x1", "blocks_total") > 0;
    lb_test_redis_stop(&srv);
    assert_true(frozen);
    assert_int_equal(restarted, 0);
    if (co_rc != 0 || w_rc != 0)
        fail_msg("coordinator exit %d, worker exit %d (-1: timed out, killed):\n%s", co_rc, w_rc,
                 out ? out : "");
    free(out);
    assert_true(aof_kept);
    assert_true(reconnected);
    assert_true(done > 3 && done == total);
    same_checkpoint(&f, "emb", "dist");
    lb_test_rmdir(&f.dir);
}

/* Counts `"event":"ran"` lines of job name in a worker's --json log. */
static int ran_for_job(const fixture *f, const char *worker, const char *name)
{
    char *out = NULL;
    lb_test_run(&out, "grep -c '\"event\":\"ran\".*\"job\":\"%s\"' '%s/%s.log'", name, f->dir,
                worker);
    int n = out ? atoi(out) : -1;
    free(out);
    return n;
}

/* `lowbit status NAME --json` parsed; fails the test on error. */
static json_t *status_json(const fixture *f, const char *url, const char *name)
{
    char *out = NULL;
    if (lb_test_run(&out, "'%s' status %s --redis %s --json --events 1000", f->bin, name, url))
        fail_msg("lowbit status %s: %s", name, out ? out : "");
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    if (!o)
        fail_msg("status %s: not JSON (%s): %s", name, je.text, out);
    free(out);
    return o;
}

static long rec_long(json_t *st, const char *field)
{
    const char *v = json_string_value(json_object_get(json_object_get(st, "record"), field));
    return v ? strtol(v, NULL, 10) : -1;
}

/* Events of a status object logged by the workers wA/wB for an item they ran. */
static int worker_ran_events(json_t *st)
{
    json_t *ev;
    size_t i;
    int n = 0;
    json_array_foreach(json_object_get(st, "events"), i, ev) {
        const char *m = json_string_value(json_object_get(ev, "msg"));
        n += m && (!strncmp(m, "wA ran ", 7) || !strncmp(m, "wB ran ", 7));
    }
    return n;
}

/* Two coordinators (gptq 3-bit and rtn 4-bit) on one Redis, two workers serving
 * both: each checkpoint equals its embedded run, and each job's status counts
 * exactly the items the workers ran for it. */
static void test_two_jobs_one_redis(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    fixture f;
    fixture_open(&f, model, calib);
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start(&srv, NULL), 0);
    embedded(&f, "emb-g", "gptq", "3");
    embedded(&f, "emb-r", "rtn", "4");
    pid_t wa = spawn_worker(&f, srv.url, "wA", "600000", "3");
    pid_t wb = spawn_worker(&f, srv.url, "wB", "600000", "3");
    pid_t c1 = spawn_coordinator(&f, srv.url, "jg", "dist-g", "gptq", "3");
    pid_t c2 = spawn_coordinator(&f, srv.url, "jr", "dist-r", "rtn", "4");
    int rc1 = lb_test_wait(c1, PROC_TIMEOUT_S), rc2 = lb_test_wait(c2, PROC_TIMEOUT_S);
    int rwa = lb_test_wait(wa, 30), rwb = lb_test_wait(wb, 30);
    json_t *sg = status_json(&f, srv.url, "jg"), *sr = status_json(&f, srv.url, "jr");
    lb_test_redis_stop(&srv);
    if (rc1 || rc2 || rwa || rwb) {
        char *out = NULL;
        lb_test_run(&out, "tail -n 3 '%s'/*.log", f.dir);
        fail_msg("exits: coordinators %d %d, workers %d %d:\n%s", rc1, rc2, rwa, rwb, out);
    }
    same_checkpoint(&f, "emb-g", "dist-g");
    same_checkpoint(&f, "emb-r", "dist-r");
    /* each status: its own method, done, and counts that are its own */
    const char *mg = json_string_value(json_object_get(json_object_get(sg, "record"), "method"));
    const char *mr = json_string_value(json_object_get(json_object_get(sr, "record"), "method"));
    assert_string_equal(mg, "gptq");
    assert_string_equal(mr, "rtn");
    long dg = rec_long(sg, "jobs_done"), dr = rec_long(sr, "jobs_done");
    assert_true(dg > 0 && dg == rec_long(sg, "jobs_total"));
    assert_true(dr > 0 && dr == rec_long(sr, "jobs_total"));
    /* the items the workers ran for a job are that job's: all of its jobs but
     * at most the merge (which a coordinator with a data plane runs itself),
     * and each job's event stream logs exactly those runs */
    int rg = ran_for_job(&f, "wA", "jg") + ran_for_job(&f, "wB", "jg");
    int rr = ran_for_job(&f, "wA", "jr") + ran_for_job(&f, "wB", "jr");
    assert_true(rg <= dg && rg >= dg - 1);
    assert_true(rr <= dr && rr >= dr - 1);
    assert_int_equal(worker_ran_events(sg), rg);
    assert_int_equal(worker_ran_events(sr), rr);
    assert_int_equal(rec_long(sg, "jobs_failed"), 0);
    assert_int_equal(rec_long(sr, "jobs_failed"), 0);
    /* no event of one job names the other's items or method */
    json_t *ev;
    size_t i;
    json_array_foreach(json_object_get(sg, "events"), i, ev) {
        const char *m = json_string_value(json_object_get(ev, "msg"));
        assert_null(strstr(m, "jr"));
    }
    json_array_foreach(json_object_get(sr, "events"), i, ev) {
        const char *m = json_string_value(json_object_get(ev, "msg"));
        assert_null(strstr(m, "jg"));
    }
    /* both workers took part in the run */
    assert_true(ran_for_job(&f, "wA", "jg") + ran_for_job(&f, "wA", "jr") > 0);
    assert_true(ran_for_job(&f, "wB", "jg") + ran_for_job(&f, "wB", "jr") > 0);
    json_decref(sg);
    json_decref(sr);
    lb_test_rmdir(&f.dir);
}

/* kill -9 of the only worker while it runs an item of `method`: a second
 * worker takes the lease over after --lease-ms and the checkpoint equals the
 * embedded one. */
static void kill9_worker_mid_item(const char *method, const char *bits)
{
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    fixture f;
    fixture_open(&f, model, calib);
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start(&srv, NULL), 0);
    embedded(&f, "emb", method, bits);
    pid_t co = spawn_coordinator(&f, srv.url, "k9", "dist", method, bits);
    pid_t victim = spawn_worker(&f, srv.url, "wV", "600000", "30");
    double t0 = lb_now_s();
    while (job_field(srv.url, "k9", "jobs_done") < 2 && lb_now_s() - t0 < 60)
        sleep_ms(10);
    bool frozen = freeze_mid_item(srv.url, "k9", victim, 30);
    lb_test_signal(victim, SIGKILL);
    int vrc = lb_test_wait(victim, 10);
    int64_t held = pending(srv.url, "k9"); /* the dead worker's lease */
    pid_t rescuer = spawn_worker(&f, srv.url, "wR", "300", "3");
    int co_rc = lb_test_wait(co, PROC_TIMEOUT_S);
    int r_rc = lb_test_wait(rescuer, 30);
    bool reclaimed = has_event(srv.url, "k9", "lease expired", "wR");
    long done = job_field(srv.url, "k9", "jobs_done"), total = job_field(srv.url, "k9", "jobs_total");
    lb_test_redis_stop(&srv);
    assert_true(frozen);
    assert_int_equal(vrc, 128 + SIGKILL);
    assert_int_equal(held, 1);
    if (co_rc || r_rc) {
        char *out = NULL;
        lb_test_run(&out, "tail -n 3 '%s'/*.log", f.dir);
        fail_msg("%s: coordinator exit %d, rescuer exit %d:\n%s", method, co_rc, r_rc, out);
    }
    assert_true(reclaimed);
    assert_true(done > 2 && done == total);
    same_checkpoint(&f, "emb", "dist");
    lb_test_rmdir(&f.dir);
}

static void test_kill9_worker_claq(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    kill9_worker_mid_item("claq", "3");
}

static void test_kill9_worker_qbb(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    kill9_worker_mid_item("qbb", "2");
}

/* Redis restarted without persistence while the coordinator waits: it does
 * not wait forever for items that no longer exist; it notices on reconnect
 * that the job is gone and stops with a message saying how to resume. */
static void test_redis_restart_empty_stops_coordinator(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    fixture f;
    fixture_open(&f, model, calib);
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start(&srv, NULL), 0); /* no AOF */
    pid_t co = spawn_coordinator(&f, srv.url, "e1", "dist", "rtn", "4");
    double t0 = lb_now_s();
    while (job_field(srv.url, "e1", "jobs_total") < 1 && lb_now_s() - t0 < 60)
        sleep_ms(20);
    lb_test_redis_crash(&srv);
    sleep_ms(500);
    int restarted = lb_test_redis_restart(&srv, NULL);
    int co_rc = lb_test_wait(co, 60);
    lb_test_redis_stop(&srv);
    char *out = NULL;
    lb_test_run(&out, "tail -n 3 '%s/e1.log'", f.dir);
    assert_int_equal(restarted, 0);
    if (co_rc != 1 || !strstr(out, "vanished") || !strstr(out, "rerun the same coordinator"))
        fail_msg("coordinator exit %d (-1: timed out):\n%s", co_rc, out ? out : "");
    free(out);
    lb_test_rmdir(&f.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_restart_mid_item),
        cmocka_unit_test(test_two_jobs_one_redis),
        cmocka_unit_test(test_kill9_worker_claq),
        cmocka_unit_test(test_kill9_worker_qbb),
        cmocka_unit_test(test_redis_restart_empty_stops_coordinator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
