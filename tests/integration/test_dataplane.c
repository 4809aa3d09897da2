/* The ZeroMQ data plane in the distributed run: `lowbit coordinator` serves its
 * artifact store, `lowbit worker --cache DIR` fetches inputs and publishes
 * outputs. Checked against the embedded `lowbit quantize` bytes:
 *  - two workers with their own caches (claq 3 bit, qbb 1 bit x 2 bases), bytes
 *    moved > 0, the default scratch cache removed at exit;
 *  - a worker whose cache is the coordinator's --out moves zero bytes;
 *  - artifacts corrupted or truncated on the coordinator and in a worker's
 *    cache mid-run are detected, recomputed or re-fetched;
 *  - a dead artifact server: one-line error naming the endpoint, the item is
 *    retried (not dead-lettered) and the run completes once the server is back.
 * Every coordinator runs under `timeout` and is killed by pid in the teardown. */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_test_curve.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"

static lb_test_redis g_srv;

static int group_setup(void **state)
{
    (void)state;
    if (lb_test_curve_setup() != 0) /* LB_TEST_CURVE=1: everything below talks CURVE */
        return -1;
    if (!lb_test_redis_available())
        return 0;
    return lb_test_redis_start(&g_srv, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    lb_test_redis_stop(&g_srv);
    lb_test_curve_teardown();
    return 0;
}

typedef struct {
    char *dir;
    char model[4096], calib[4096];
} fixture;

static int fx_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->dir = lb_test_mkdtemp();
    *state = f;
    return f->dir ? 0 : -1;
}

static int fx_teardown(void **state)
{
    fixture *f = *state;
    /* a coordinator left running by a failed test: its `timeout` wrapper, by pid */
    lb_test_run(NULL, "for p in $(cat '%s'/*.pid 2>/dev/null); do kill -TERM $p 2>/dev/null; "
                "done; true", f->dir);
    lb_test_rmdir(&f->dir);
    free(f);
    return 0;
}

/* Skips without redis-server or fixtures; fills f->model / f->calib. */
#define REQUIRE_ALL(f)                                                                       \
    do {                                                                                     \
        LB_TEST_REQUIRE_REDIS();                                                             \
        LB_TEST_REQUIRE_SHARED((f)->model, "models/stories260K");                           \
        LB_TEST_REQUIRE_SHARED((f)->calib, "data/stories260K-calib.u32");                   \
    } while (0)

#define COMMON "--ctx 128 --nsamples 8 --threads 1"

/* Whole file; NULL when absent. */
/* DIR/a/model.safetensors and DIR/b/model.safetensors hold the same bytes. */
static void assert_same_checkpoint(const char *dir, const char *a, const char *b)
{
    char pa[4200], pb[4200];
    snprintf(pa, sizeof pa, "%s/%s/model.safetensors", dir, a);
    snprintf(pb, sizeof pb, "%s/%s/model.safetensors", dir, b);
    lb_test_assert_same_file(pa, pb);
}

static void embedded(const fixture *f, const char *sub, const char *q)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/%s' %s %s",
                         lb_test_lowbit_bin(), f->model, f->calib, f->dir, sub, q, COMMON);
    if (rc)
        fail_msg("embedded quantize failed: %s", out ? out : "");
    free(out);
}

/* Starts the coordinator of job in the background (output DIR/sub, log
 * DIR/job.log, exit status DIR/job.rc) and waits until the job record names
 * its artifact server. */
static void start_coordinator(const fixture *f, const char *job, const char *sub, const char *q)
{
    char *out = NULL;
    int rc = lb_test_run(
        &out,
        "cd '%s' || exit 1; ( timeout 120 '%s' coordinator --redis %s --job %s "
        "--model '%s' --calib '%s' --out '%s/%s' %s %s > %s.log 2>&1 & echo $! > %s.pid; "
        "wait $!; echo $? > %s.rc ) > /dev/null 2>&1 & "
        "for i in $(seq 200); do redis-cli -p %d HGET lowbit:job:%s artifacts | grep -q '^tcp://' "
        "&& exit 0; sleep 0.1; done; cat %s.log; exit 1",
        f->dir, lb_test_lowbit_bin(), g_srv.url, job, f->model, f->calib, f->dir, sub, q, COMMON,
        job, job, job, g_srv.port, job, job);
    if (rc)
        fail_msg("coordinator did not start: %s", out ? out : "");
    free(out);
}

/* Waits for the coordinator's exit status; returns it, *log = its output. */
static int wait_coordinator(const fixture *f, const char *job, char **log)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "cd '%s' && for i in $(seq 1300); do [ -s %s.rc ] && break; "
                         "sleep 0.1; done; cat %s.rc", f->dir, job, job);
    int status = rc == 0 && out ? atoi(out) : -1;
    free(out);
    lb_test_run(log, "cat '%s/%s.log'", f->dir, job);
    return status;
}

/* HGET lowbit:job:job field as a number (-1 when absent). */
static long long record_num(const char *job, const char *field)
{
    char *out = NULL;
    long long v = -1;
    if (lb_test_run(&out, "redis-cli -p %d HGET lowbit:job:%s %s", g_srv.port, job, field) == 0 &&
        out && out[0] >= '0' && out[0] <= '9')
        v = atoll(out);
    free(out);
    return v;
}

static bool is_kind(const char *path, const char *kind);

/* Activation and Hessian artifacts in store root DIR/.lowbit/artifacts. */
static int count_released_kinds(const char *root)
{
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/.lowbit/artifacts", root);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char p[4700];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        n += strstr(e->d_name, ".safetensors") && (is_kind(p, "activations") || is_kind(p, "hessian"));
    }
    closedir(d);
    return n;
}

/* Two jobs (claq 3 bit, qbb 1 bit x 2 bases) at once, each with its own
 * artifact server; two workers with their own caches serve both. */
static void test_own_caches(void **state)
{
    fixture *f = *state;
    REQUIRE_ALL(f);
    const char *jobs[2] = {"dp-claq", "dp-qbb"};
    const char *qs[2] = {"--method claq --bits 3", "--method qbb --bits 1 --bases 2"};
    const char *emb[2] = {"emb-claq", "emb-qbb"};
    for (int k = 0; k < 2; k++)
        embedded(f, emb[k], qs[k]);
    start_coordinator(f, jobs[0], "dist-claq", qs[0]);
    start_coordinator(f, jobs[1], "dist-qbb", qs[1]);
    char *out = NULL;
    /* wA: explicit cache; wB: the default scratch cache under TMPDIR */
    int rc = lb_test_run(&out,
                         "cd '%s' || exit 1; mkdir -p tmp; "
                         "'%s' worker --redis %s --threads 1 --idle-exit 2 --id wA --cache ca --json "
                         "> wA.log 2>wA.err & "
                         "TMPDIR='%s/tmp' '%s' worker --redis %s --threads 1 --idle-exit 2 --id wB "
                         "--json > wB.log 2>wB.err & wait",
                         f->dir, lb_test_lowbit_bin(), g_srv.url, f->dir, lb_test_lowbit_bin(),
                         g_srv.url);
    assert_int_equal(rc, 0);
    free(out);
    for (int k = 0; k < 2; k++) {
        char *log = NULL;
        int st = wait_coordinator(f, jobs[k], &log);
        if (st != 0)
            fail_msg("coordinator %s exit %d: %s", jobs[k], st, log ? log : "");
        assert_non_null(strstr(log, "artifact server tcp://127.0.0.1:"));
        free(log);
    }
    assert_same_checkpoint(f->dir, "emb-claq", "dist-claq");
    assert_same_checkpoint(f->dir, "emb-qbb", "dist-qbb");

    /* both workers ran jobs of both runs, and each reports its bytes per job */
    for (int w = 0; w < 2; w++)
        for (int k = 0; k < 2; k++) {
            rc = lb_test_run(&out, "grep '\"event\":\"ran\"' '%s/w%c.log' | grep '\"job\":\"%s\"'",
                             f->dir, w ? 'B' : 'A', jobs[k]);
            if (rc)
                fail_msg("worker %c ran nothing of %s: %s", w ? 'B' : 'A', jobs[k], out);
            assert_non_null(strstr(out, "\"bytes_fetched\":"));
            assert_non_null(strstr(out, "\"bytes_published\":"));
            free(out);
        }
    /* something really moved: the records' totals and at least one job's fetch */
    for (int k = 0; k < 2; k++) {
        assert_true(record_num(jobs[k], "bytes_fetched") > 0);
        assert_true(record_num(jobs[k], "bytes_published") > 0);
    }
    assert_int_equal(lb_test_run(&out, "cat '%s'/w?.log | grep -c '\"bytes_fetched\":[1-9]'",
                                 f->dir), 0);
    free(out);
    /* wA's own cache holds artifacts, but the released activations and
     * Hessians (5 X_b and 20 Hessians per run) were pruned from it: at most
     * one block's worth per run is left (those released after its last item) */
    assert_int_equal(lb_test_run(&out, "ls '%s/ca/.lowbit/artifacts' | grep -c safetensors",
                                 f->dir), 0);
    free(out);
    char ca[4200];
    snprintf(ca, sizeof ca, "%s/ca", f->dir);
    int left = count_released_kinds(ca);
    if (left > 2 * 6)
        fail_msg("worker cache kept %d activation/Hessian artifacts", left);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(lb_test_run(&out, "redis-cli -p %d LLEN lowbit:job:%s:released",
                                     g_srv.port, jobs[k]), 0);
        assert_true(atoi(out) >= 20);
        free(out);
    }
    rc = lb_test_run(&out, "ls -A '%s/tmp/'lowbit-*/", f->dir);
    if (rc || strcmp(out, ""))
        fail_msg("scratch cache left behind (rc %d): %s", rc, out);
    free(out);
}

/* A worker whose cache is the coordinator's output directory: nothing moves. */
static void test_shared_filesystem_moves_nothing(void **state)
{
    fixture *f = *state;
    REQUIRE_ALL(f);
    const char *q = "--method claq --bits 3";
    embedded(f, "emb", q);
    start_coordinator(f, "dp-shared", "dist", q);
    char *out = NULL;
    int rc = lb_test_run(&out, "cd '%s' && '%s' worker --redis %s --threads 1 --idle-exit 2 "
                         "--id wS --cache '%s/dist' --json 2>/dev/null",
                         f->dir, lb_test_lowbit_bin(), g_srv.url, f->dir);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"event\":\"ran\""));
    assert_null(strstr(out, "\"bytes_fetched\":1"));
    for (const char *p = out; (p = strstr(p, "\"bytes_")) != NULL; p++) {
        const char *colon = strchr(p, ':');
        assert_non_null(colon);
        assert_int_equal(colon[1], '0');
    }
    free(out);
    char *log = NULL;
    int st = wait_coordinator(f, "dp-shared", &log);
    if (st != 0)
        fail_msg("coordinator exit %d: %s", st, log ? log : "");
    free(log);
    assert_same_checkpoint(f->dir, "emb", "dist");
    assert_int_equal(record_num("dp-shared", "bytes_fetched"), 0);
    assert_int_equal(record_num("dp-shared", "bytes_published"), 0);
}

/* True when the safetensors header of path says lowbit.kind is kind. */
static bool is_kind(const char *path, const char *kind)
{
    char want[64];
    snprintf(want, sizeof want, "\"lowbit.kind\":\"%s\"", kind);
    FILE *fp = fopen(path, "rb");
    unsigned char n8[8];
    bool found = false;
    if (fp && fread(n8, 1, 8, fp) == 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = n << 8 | n8[i];
        char *h = n < (1u << 20) ? calloc(1, (size_t)n + 1) : NULL;
        if (h && fread(h, 1, (size_t)n, fp) == (size_t)n)
            found = strstr(h, want) != NULL;
        free(h);
    }
    if (fp)
        fclose(fp);
    return found;
}

/* Damages every artifact in DIR/.lowbit/artifacts (with_calib: the
 * calibration windows too): the first is truncated to half, the others get
 * their last byte flipped. Returns how many were damaged. */
static int damage_store(const char *root, bool with_calib)
{
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/.lowbit/artifacts", root);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strstr(e->d_name, ".safetensors") || strstr(e->d_name, ".tmp"))
            continue;
        char p[4700];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (!with_calib && is_kind(p, "calib"))
            continue;
        FILE *fp = fopen(p, "r+b");
        assert_non_null(fp);
        assert_int_equal(fseek(fp, 0, SEEK_END), 0);
        long size = ftell(fp);
        assert_true(size > 16);
        if (n == 0) {
            fclose(fp);
            assert_int_equal(truncate(p, size / 2), 0);
        } else {
            assert_int_equal(fseek(fp, -1, SEEK_END), 0);
            int ch = fgetc(fp);
            assert_int_equal(fseek(fp, -1, SEEK_END), 0);
            assert_int_not_equal(fputc(ch ^ 0x5a, fp), EOF);
            fclose(fp);
        }
        n++;
    }
    closedir(d);
    return n;
}

/* Mid-run, after three jobs: the coordinator's artifacts (calibration
 * windows included) and a worker's cache are damaged. The damaged copies
 * are refused, their producers rerun, and the checkpoint is still the
 * embedded one. */
static void test_corruption_recomputed(void **state)
{
    fixture *f = *state;
    REQUIRE_ALL(f);
    const char *q = "--method claq --bits 3";
    embedded(f, "emb", q);
    start_coordinator(f, "dp-corrupt", "dist", q);
    char *out = NULL;
    int rc = lb_test_run(&out, "cd '%s' && '%s' worker --redis %s --threads 1 --max-jobs 3 "
                         "--id wA --cache ca --json 2>&1",
                         f->dir, lb_test_lowbit_bin(), g_srv.url);
    assert_int_equal(rc, 0);
    free(out);
    char root[4200];
    snprintf(root, sizeof root, "%s/dist", f->dir);
    int on_server = damage_store(root, true);
    snprintf(root, sizeof root, "%s/ca", f->dir);
    int in_cache = damage_store(root, true); /* so whoever reruns the embedding fetches calib */
    assert_true(on_server >= 4); /* calib, X_0, the Hessians of block 0, one packed linear */
    assert_true(in_cache >= 3);
    rc = lb_test_run(&out,
                     "cd '%s' || exit 1; "
                     "'%s' worker --redis %s --threads 1 --idle-exit 3 --id wA --cache ca --json "
                     "> wA.log 2>&1 & "
                     "'%s' worker --redis %s --threads 1 --idle-exit 3 --id wB --cache cb --json "
                     "> wB.log 2>&1 & wait",
                     f->dir, lb_test_lowbit_bin(), g_srv.url, lb_test_lowbit_bin(), g_srv.url);
    assert_int_equal(rc, 0);
    free(out);
    char *log = NULL;
    int st = wait_coordinator(f, "dp-corrupt", &log);
    if (st != 0)
        fail_msg("coordinator exit %d: %s", st, log ? log : "");
    /* the coordinator saw the damage and reran producers */
    assert_non_null(strstr(log, "missing or invalid"));
    assert_non_null(strstr(log, "rerunning"));
    /* X_0 is needed again by propagate 0: the embedding reran on rewritten calib windows */
    assert_non_null(strstr(log, "calibration artifact missing or invalid; written again"));
    free(log);
    assert_int_equal(lb_test_run(&out, "cat '%s'/w?.log | grep -c '\"event\":\"input-lost\"'",
                                 f->dir), 0);
    free(out);
    assert_same_checkpoint(f->dir, "emb", "dist");
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d XLEN lowbit:job:dp-corrupt:dead",
                                 g_srv.port), 0);
    assert_int_equal(atoi(out), 0);
    free(out);
}

/* The job record points at a dead artifact server: the worker's item fails
 * with one line naming that endpoint and goes back to the queue; with the
 * real endpoint back the run completes. */
static void test_dead_server_item_retried(void **state)
{
    fixture *f = *state;
    REQUIRE_ALL(f);
    const char *q = "--method rtn --bits 4";
    embedded(f, "emb", q);
    start_coordinator(f, "dp-dead", "dist", q);
    int port = lb_test_free_port();
    assert_true(port > 0);
    char *out = NULL, real[256];
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d HGET lowbit:job:dp-dead artifacts",
                                 g_srv.port), 0);
    snprintf(real, sizeof real, "%s", out);
    real[strcspn(real, "\r\n")] = 0;
    free(out);
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d HSET lowbit:job:dp-dead artifacts "
                                 "tcp://127.0.0.1:%d", g_srv.port, port), 0);
    free(out);
    int rc = lb_test_run(&out, "cd '%s' && '%s' worker --redis %s --threads 1 --max-jobs 1 "
                         "--xfer-timeout-ms 200 --id wD --cache cd 2>&1",
                         f->dir, lb_test_lowbit_bin(), g_srv.url);
    assert_int_equal(rc, 0);
    char want[128];
    snprintf(want, sizeof want, "tcp://127.0.0.1:%d: no answer in", port);
    const char *line = strstr(out, want);
    if (!line)
        fail_msg("no error naming the endpoint: %s", out);
    assert_non_null(strstr(out, "failed (1 of 3)"));
    assert_null(strstr(out, "dead-lettered"));
    /* one line: from "item ... failed" to the end of the message */
    const char *nl = strchr(line, '\n');
    assert_non_null(strstr(line, "artifact server running?"));
    assert_true(strstr(line, "artifact server running?") < nl);
    free(out);
    /* the item is back in the queue, not dead */
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d XLEN lowbit:job:dp-dead:dead",
                                 g_srv.port), 0);
    assert_int_equal(atoi(out), 0);
    free(out);
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d HSET lowbit:job:dp-dead artifacts '%s'",
                                 g_srv.port, real), 0);
    free(out);
    rc = lb_test_run(&out, "cd '%s' && '%s' worker --redis %s --threads 1 --idle-exit 2 --id wD "
                     "--cache cd 2>&1", f->dir, lb_test_lowbit_bin(), g_srv.url);
    assert_int_equal(rc, 0);
    free(out);
    char *log = NULL;
    int st = wait_coordinator(f, "dp-dead", &log);
    if (st != 0)
        fail_msg("coordinator exit %d: %s", st, log ? log : "");
    free(log);
    assert_same_checkpoint(f->dir, "emb", "dist");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_own_caches, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_shared_filesystem_moves_nothing, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_corruption_recomputed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dead_server_item_retried, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
