/* Recovery and slots of `lowbit worker` (worker/lb_worker.h), each run ending
 * in the embedded checkpoint's bytes:
 *   - liveness reclaim: a worker killed (-9) while it holds an item, with a
 *     10-minute --lease-ms everywhere: its item is taken over seconds after its
 *     heartbeat expires;
 *   - stale endpoint: the job's artifacts field names a refused endpoint, then
 *     the right one again: the worker fails fast, re-reads it and goes on
 *     without failing the item;
 *   - SIGTERM mid-fetch (the endpoint accepts TCP but never answers): the
 *     worker exits within 5 s, the item is back in the queue uncounted, and
 *     another worker finishes it;
 *   - slots: one worker with --slots 2 on 2 threads.
 * Every process is a child of this test (lb_test_proc) with a timeout. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_redis.h"
#include "lb_test_proc.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"
#include "lb_time.h"

#define PROC_TIMEOUT_S 120.0

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

typedef struct {
    char model[4096], calib[4096];
    const char *bin;
    char *dir;
    lb_test_redis srv;
} fixture;

static void fixture_open(fixture *f)
{
    memset(f, 0, sizeof *f);
    if (!lb_test_shared_path(f->model, sizeof f->model, "models/stories260K") ||
        !lb_test_shared_path(f->calib, sizeof f->calib, "data/stories260K-calib.u32"))
        skip();
    f->bin = lb_test_lowbit_bin();
    f->dir = lb_test_mkdtemp();
    assert_non_null(f->dir);
    assert_int_equal(lb_test_redis_start(&f->srv, NULL), 0);
}

static void fixture_close(fixture *f)
{
    lb_test_redis_stop(&f->srv);
    lb_test_rmdir(&f->dir);
}

static void embedded(const fixture *f, const char *method, const char *bits, const char *threads)
{
    char *out = NULL;
    int rc = lb_test_run(&out,
                         "'%s' quantize --model '%s' --calib '%s' --out '%s/emb' --ctx 128 "
                         "--nsamples 8 --threads %s --method %s --bits %s",
                         f->bin, f->model, f->calib, f->dir, threads, method, bits);
    if (rc)
        fail_msg("embedded %s: %s", method, out ? out : "");
    free(out);
}

static pid_t spawn_coordinator(const fixture *f, const char *job, const char *method,
                               const char *bits)
{
    char log[4200], outp[4200];
    snprintf(log, sizeof log, "%s/%s.log", f->dir, job);
    snprintf(outp, sizeof outp, "%s/dist", f->dir);
    const char *argv[] = {f->bin,     "coordinator", "--redis",  f->srv.url, "--job",
                          job,        "--model",     f->model,   "--calib",  f->calib,
                          "--out",    outp,          "--ctx",    "128",      "--nsamples",
                          "8",        "--threads",   "1",        "--method", method,
                          "--bits",   bits,          "--redis-wait", "60",   NULL};
    pid_t p = lb_test_spawn(log, argv);
    assert_true(p > 0);
    return p;
}

/* A worker with --json, its cache in the test's directory; extra: more options. */
static pid_t spawn_worker(const fixture *f, const char *id, const char *const *extra)
{
    char log[4200], cache[4200];
    snprintf(log, sizeof log, "%s/%s.log", f->dir, id);
    snprintf(cache, sizeof cache, "%s/cache-%s", f->dir, id);
    const char *argv[40] = {f->bin,  "worker", "--redis", f->srv.url, "--id", id,
                            "--json", "--cache", cache,   "--redis-wait", "60"};
    int n = 11;
    for (int i = 0; extra && extra[i] && n < 39; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t p = lb_test_spawn(log, argv);
    assert_true(p > 0);
    return p;
}

static lb_redis *connect_srv(const fixture *f)
{
    lb_redis *s = NULL;
    lb_err err = {0};
    lb_redis_opts o = lb_redis_opts_default();
    o.retries = 0;
    if (lb_redis_connect(f->srv.url, &o, &s, &err))
        return NULL;
    return s;
}

static int64_t pending(const fixture *f, const char *name)
{
    lb_redis *s = connect_srv(f);
    lb_err err = {0};
    lb_redis_queue_counts c = {0};
    if (s)
        lb_redis_queue_stats(s, name, &c, &err);
    lb_redis_free(&s);
    return c.pending;
}

static long job_field(const fixture *f, const char *name, const char *field)
{
    lb_redis *s = connect_srv(f);
    lb_err err = {0};
    lb_redis_map m = {0};
    long v = -1;
    if (s && lb_redis_job_get(s, name, &m, &err) == 0) {
        const char *x = lb_redis_map_get(&m, field);
        v = x ? strtol(x, NULL, 10) : -1;
    }
    lb_redis_map_clear(&m);
    lb_redis_free(&s);
    return v;
}

static void set_artifacts(const fixture *f, const char *name, const char *endpoint)
{
    lb_redis *s = connect_srv(f);
    lb_err err = {0};
    const char *k[] = {"artifacts"}, *v[] = {endpoint};
    assert_non_null(s);
    assert_int_equal(lb_redis_job_set(s, name, 1, k, v, &err), 0);
    lb_redis_free(&s);
}

/* The job's artifacts field, once the coordinator has written it. */
static void wait_artifacts(const fixture *f, const char *name, char *buf, size_t size)
{
    double t0 = lb_now_s();
    buf[0] = 0;
    while (!buf[0] && lb_now_s() - t0 < 60) {
        lb_redis *s = connect_srv(f);
        lb_err err = {0};
        lb_redis_map m = {0};
        if (s && lb_redis_job_get(s, name, &m, &err) == 0 && lb_redis_map_get(&m, "artifacts") &&
            lb_redis_map_get(&m, "jobs_total"))
            snprintf(buf, size, "%s", lb_redis_map_get(&m, "artifacts"));
        lb_redis_map_clear(&m);
        lb_redis_free(&s);
        if (!buf[0])
            sleep_ms(20);
    }
    assert_true(buf[0] != 0);
}

/* Unix ms of the first event of job name containing a (and b), or -1. */
static int64_t event_time(const fixture *f, const char *name, const char *a, const char *b)
{
    lb_redis *s = connect_srv(f);
    lb_err err = {0};
    lb_redis_event_rec *ev = NULL;
    int32_t n = 0;
    int64_t t = -1;
    if (s && lb_redis_events_recent(s, name, 1000, &ev, &n, &err) == 0)
        for (int32_t i = 0; i < n && t < 0; i++)
            if (strstr(ev[i].msg, a) && (!b || strstr(ev[i].msg, b)))
                t = ev[i].t_ms;
    lb_redis_events_free(&ev, n);
    lb_redis_free(&s);
    return t;
}

static void same_checkpoint(const fixture *f)
{
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/emb/model.safetensors", f->dir);
    snprintf(b, sizeof b, "%s/dist/model.safetensors", f->dir);
    lb_test_assert_same_file(a, b);
}

static void fail_with_logs(const fixture *f, const char *what)
{
    char *out = NULL;
    lb_test_run(&out, "tail -n 5 '%s'/*.log", f->dir);
    fail_msg("%s:\n%s", what, out ? out : "");
}

/* kill -9 of the only worker while it holds an item; every worker has a
 * 10-minute --lease-ms, so only the liveness path (heartbeat gone) can
 * free the item. */
static void test_liveness_reclaim(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    fixture f;
    fixture_open(&f);
    embedded(&f, "claq", "3", "1");
    pid_t co = spawn_coordinator(&f, "lv", "claq", "3");
    const char *slow[] = {"--threads", "1", "--lease-ms", "600000", "--idle-exit", "60", NULL};
    pid_t victim = spawn_worker(&f, "wV", slow);
    double t0 = lb_now_s();
    while (job_field(&f, "lv", "jobs_done") < 2 && lb_now_s() - t0 < 60)
        sleep_ms(10);
    /* stop it while it holds a lease (SIGSTOP freezes its heartbeat too),
     * then kill it */
    bool frozen = false;
    while (!frozen && lb_now_s() - t0 < 60) {
        if (pending(&f, "lv") >= 1) {
            lb_test_signal(victim, SIGSTOP);
            sleep_ms(50);
            frozen = pending(&f, "lv") >= 1;
            if (!frozen)
                lb_test_signal(victim, SIGCONT);
        }
        sleep_ms(1);
    }
    int64_t killed_ms = unix_ms();
    lb_test_signal(victim, SIGKILL);
    int vrc = lb_test_wait(victim, 10);
    pid_t rescuer = spawn_worker(&f, "wR", slow);
    int co_rc = lb_test_wait(co, PROC_TIMEOUT_S);
    double total_s = lb_now_s() - t0;
    lb_test_signal(rescuer, SIGTERM);
    int r_rc = lb_test_wait(rescuer, 10);
    int64_t taken_ms = event_time(&f, "lv", "worker wV is dead", NULL);
    long done = job_field(&f, "lv", "jobs_done"), total = job_field(&f, "lv", "jobs_total");
    assert_true(frozen);
    assert_int_equal(vrc, 128 + SIGKILL);
    if (co_rc || r_rc)
        fail_with_logs(&f, "coordinator or rescuer failed");
    assert_true(taken_ms > 0);
    /* heartbeat TTL 6 s + 3 s of lease idleness + a poll: well under 15 s */
    print_message("item of the killed worker taken over %.1f s after the kill (run %.1f s)\n",
                  (double)(taken_ms - killed_ms) / 1000.0, total_s);
    assert_true(taken_ms - killed_ms < 15000);
    assert_true(total_s < 120); /* nowhere near --lease-ms */
    assert_true(done > 2 && done == total);
    same_checkpoint(&f);
    fixture_close(&f);
}

/* The job's artifacts field points at a refused endpoint; 2 s later at the
 * right one again. The worker fails fast, re-reads the field and carries on
 * without a failure. */
static void test_stale_endpoint_retry(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    fixture f;
    fixture_open(&f);
    embedded(&f, "rtn", "4", "1");
    pid_t co = spawn_coordinator(&f, "se", "rtn", "4");
    char real[256], dead[64];
    wait_artifacts(&f, "se", real, sizeof real);
    int port = lb_test_free_port();
    assert_true(port > 0);
    snprintf(dead, sizeof dead, "tcp://127.0.0.1:%d", port);
    set_artifacts(&f, "se", dead);
    const char *opts[] = {"--threads", "1", "--idle-exit", "3", "--fetch-give-up", "30", NULL};
    pid_t w = spawn_worker(&f, "wE", opts);
    sleep_ms(2000);
    double fixed = lb_now_s();
    set_artifacts(&f, "se", real);
    int co_rc = lb_test_wait(co, PROC_TIMEOUT_S);
    double after_fix = lb_now_s() - fixed;
    int w_rc = lb_test_wait(w, 30);
    if (co_rc || w_rc)
        fail_with_logs(&f, "coordinator or worker failed");
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "cat '%s/wE.log'", f.dir), 0);
    /* refused at once (not after the 120 s reply timeout), then recovered */
    assert_non_null(strstr(out, "Connection refused"));
    assert_non_null(strstr(out, "endpoint changed"));
    assert_null(strstr(out, "\"event\":\"failed\""));
    free(out);
    print_message("run finished %.1f s after the endpoint was fixed\n", after_fix);
    assert_int_equal(job_field(&f, "se", "jobs_failed"), 0);
    same_checkpoint(&f);
    fixture_close(&f);
}

/* A TCP listener that never accepts: connects succeed (backlog), requests
 * are never answered. */
static int blackhole(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 16) ||
        getsockname(fd, (struct sockaddr *)&a, &al)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* SIGTERM while the worker waits on a transfer that never answers: it exits
 * 0 within 5 s, the item is back in the queue without a failure counted, and
 * another worker finishes the run. */
static void test_sigterm_mid_fetch(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    fixture f;
    fixture_open(&f);
    embedded(&f, "rtn", "4", "1");
    pid_t co = spawn_coordinator(&f, "st", "rtn", "4");
    char real[256], hole[64];
    wait_artifacts(&f, "st", real, sizeof real);
    int port = 0, hfd = blackhole(&port);
    assert_true(hfd >= 0);
    snprintf(hole, sizeof hole, "tcp://127.0.0.1:%d", port);
    set_artifacts(&f, "st", hole);
    const char *opts[] = {"--threads", "1", "--fetch-give-up", "600", NULL};
    pid_t w = spawn_worker(&f, "wT", opts);
    double t0 = lb_now_s();
    while (pending(&f, "st") < 1 && lb_now_s() - t0 < 30)
        sleep_ms(20);
    bool leased = pending(&f, "st") >= 1;
    sleep_ms(1000); /* well inside the transfer's 120 s reply timeout */
    double term = lb_now_s();
    lb_test_signal(w, SIGTERM);
    int w_rc = lb_test_wait(w, 30);
    double exit_s = lb_now_s() - term;
    int64_t after = pending(&f, "st");
    char *out = NULL;
    lb_test_run(&out, "redis-cli -p %d HLEN lowbit:job:st:fails", f.srv.port);
    int fails_hash = out ? atoi(out) : -1; /* no failure counted for the item */
    free(out);
    bool given = event_time(&f, "st", "given back", NULL) > 0;
    close(hfd);
    set_artifacts(&f, "st", real);
    const char *opts2[] = {"--threads", "1", "--idle-exit", "3", NULL};
    pid_t w2 = spawn_worker(&f, "wU", opts2);
    int co_rc = lb_test_wait(co, PROC_TIMEOUT_S);
    int w2_rc = lb_test_wait(w2, 30);
    assert_true(leased);
    print_message("worker exited %.2f s after SIGTERM\n", exit_s);
    if (w_rc != 0)
        fail_with_logs(&f, "the stopped worker did not exit 0");
    assert_true(exit_s <= 5.0);
    assert_int_equal(after, 0); /* no lease left behind */
    assert_true(given);
    assert_int_equal(fails_hash, 0);
    if (co_rc || w2_rc)
        fail_with_logs(&f, "coordinator or second worker failed");
    same_checkpoint(&f);
    fixture_close(&f);
}

/* One worker, 2 threads, 2 slots: the checkpoint is the embedded run's
 * (2 threads) bytes, and both slots ran items. */
static void test_slots_identical(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    fixture f;
    fixture_open(&f);
    embedded(&f, "gptq", "3", "2");
    pid_t co = spawn_coordinator(&f, "sl", "gptq", "3");
    const char *opts[] = {"--threads", "2", "--slots", "2", "--idle-exit", "3", NULL};
    pid_t w = spawn_worker(&f, "wS", opts);
    int co_rc = lb_test_wait(co, PROC_TIMEOUT_S);
    int w_rc = lb_test_wait(w, 30);
    if (co_rc || w_rc)
        fail_with_logs(&f, "coordinator or worker failed");
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "grep -c '\"event\":\"ran\".*\"slot\":1' '%s/wS.log'",
                                 f.dir), 0);
    int on_second = atoi(out);
    free(out);
    assert_int_equal(lb_test_run(&out, "grep -c '\"slots\":2' '%s/wS.log'", f.dir), 0);
    free(out);
    print_message("items run by the second slot: %d\n", on_second);
    assert_true(on_second > 0);
    same_checkpoint(&f);
    fixture_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_liveness_reclaim),
        cmocka_unit_test(test_stale_endpoint_retry),
        cmocka_unit_test(test_sigterm_mid_fetch),
        cmocka_unit_test(test_slots_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
