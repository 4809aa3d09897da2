/* Distributed quantize through Redis: `lowbit coordinator` + two `lowbit worker`
 * processes against a private redis-server give the same checkpoint bytes as
 * the embedded `lowbit quantize`; a changed option under the same job name is
 * refused; a poison item is dead-lettered; SIGTERM stops an idle worker cleanly. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_redis.h"
#include "lb_test_cluster.h"
#include "lb_test_curve.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"

/* With CURVE: the coordinator said so, and no log line or job-hash field
 * carries a secret key. */
static void check_curve_run(const char *dir, const char *job)
{
    if (!lb_test_curve_on())
        return;
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "cat '%s/coord.log' '%s/wA.log' '%s/wB.log'", dir, dir,
                                 dir),
                     0);
    assert_non_null(strstr(out, "(CURVE)"));
    lb_test_curve_assert_no_secret(lb_test_curve_dir(), out, "a coordinator or worker log");
    free(out);
    lb_redis *r = NULL;
    lb_redis_map m;
    lb_err err = {0};
    assert_int_equal(lb_redis_connect(lb_test_srv.url, NULL, &r, &err), 0);
    assert_int_equal(lb_redis_job_get(r, job, &m, &err), 0);
    for (int32_t i = 0; i < m.n; i++) {
        lb_test_curve_assert_no_secret(lb_test_curve_dir(), m.keys[i], "a job-hash field");
        lb_test_curve_assert_no_secret(lb_test_curve_dir(), m.vals[i], "a job-hash value");
    }
    lb_redis_map_clear(&m);
    lb_redis_free(&r);
}

static void test_distributed_equals_embedded(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    const char *q = "--ctx 128 --nsamples 8 --method gptq --bits 3 --threads 1";
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/emb' %s 2>&1",
                         bin, model, calib, dir, q);
    assert_int_equal(rc, 0);
    free(out);
    /* coordinator and two workers side by side; the workers leave once idle */
    rc = lb_test_cluster_run(&(lb_test_cluster){.dir = dir, .job = "d1", .model = model,
                                                 .calib = calib, .out = "dist", .args = q,
                                                 .nworkers = 2, .id_prefix = "w"},
                             &out);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    if (strncmp(out, "0\n", 2))
        fail_msg("coordinator failed: %s", out);
    free(out);

    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/emb/model.safetensors", dir);
    snprintf(b, sizeof b, "%s/dist/model.safetensors", dir);
    lb_test_assert_same_file(a, b);

    /* both workers took part; the record says done */
    assert_int_equal(lb_test_run(&out, "grep -c ' ran ' '%s/wA.log' '%s/wB.log'", dir, dir), 0);
    assert_non_null(strstr(out, "wA.log:"));
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' status d1 --redis %s", bin, lb_test_srv.url), 0);
    assert_non_null(strstr(out, "state     done"));
    assert_non_null(strstr(out, "0 failed, 0 in flight"));
    assert_non_null(strstr(out, "0 dead-lettered"));
    free(out);
    check_curve_run(dir, "d1");

    /* the same job name with other options: refused, clearly */
    rc = lb_test_run(&out, "cd '%s' && '%s' coordinator --redis %s --job d1 --model '%s' "
                     "--calib '%s' --out dist2 --ctx 128 --nsamples 8 --method gptq --bits 2 "
                     "--threads 1 2>&1", dir, bin, lb_test_srv.url, model, calib);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "already exists with different options"));
    free(out);
    lb_test_rmdir(&dir);
}

/* --quantize-lm-head through Redis: the lm_head collect and quantize jobs run
 * on workers; the checkpoint equals the embedded one byte for byte. The flag
 * is part of the job's options: job d1 without it refuses it. */
static void test_distributed_lm_head(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    const char *q = "--ctx 128 --nsamples 8 --method gptq --bits 3 --threads 1 "
                    "--quantize-lm-head";
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/emb' %s 2>&1",
                         bin, model, calib, dir, q);
    assert_int_equal(rc, 0);
    free(out);
    rc = lb_test_cluster_run(&(lb_test_cluster){.dir = dir, .job = "h1", .model = model,
                                                 .calib = calib, .out = "dist", .args = q,
                                                 .nworkers = 1, .id_prefix = "w"},
                             &out);
    assert_int_equal(rc, 0);
    if (strncmp(out, "0\n", 2))
        fail_msg("coordinator failed: %s", out);
    assert_non_null(strstr(out, "lm_head included"));
    free(out);
    for (int k = 0; k < 3; k++) {
        static const char *const files[] = {"model.safetensors", "manifest.json", "config.json"};
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/emb/%s", dir, files[k]);
        snprintf(b, sizeof b, "%s/dist/%s", dir, files[k]);
        lb_test_assert_same_file(a, b);
    }
    rc = lb_test_run(&out, "cd '%s' && '%s' coordinator --redis %s --job h1 --model '%s' "
                     "--calib '%s' --out dist2 --ctx 128 --nsamples 8 --method gptq --bits 3 "
                     "--threads 1 2>&1", dir, bin, lb_test_srv.url, model, calib);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "already exists with different options"));
    free(out);
    lb_test_rmdir(&dir);
}

/* The CLI's bind policy: a non-loopback artifact bind without CURVE keys is
 * refused with one line naming the option and the fixes, before any work. */
static void test_bind_policy_cli(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char *out = NULL;
    int rc = lb_test_run(&out,
                         "cd '%s' && LOWBIT_CURVE_DIR= timeout 120 '%s' coordinator --redis %s "
                         "--job bind1 --model '%s' --calib '%s' --out o --ctx 128 --nsamples 8 "
                         "--method gptq --bits 3 --threads 1 --artifact-bind tcp://0.0.0.0:0 2>&1",
                         dir, lb_test_lowbit_bin(), lb_test_srv.url, model, calib);
    assert_int_not_equal(rc, 0);
    assert_int_not_equal(rc, 124); /* refused, not hung */
    if (!strstr(out, "--artifact-bind tcp://0.0.0.0:0 is not loopback and CURVE is off") ||
        !strstr(out, "--curve-dir") || !strstr(out, "--insecure"))
        fail_msg("no clear refusal: %s", out);
    free(out);
    lb_test_rmdir(&dir);
}

static void test_poison_item_dead_lettered(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char *dir = lb_test_mkdtemp();
    lb_redis *s = NULL;
    lb_err err = {0};
    assert_int_equal(lb_redis_connect(lb_test_srv.url, NULL, &s, &err), 0);
    bool existed;
    assert_int_equal(lb_redis_job_create(s, "poison", "fp", &existed, &err), 0);
    const char *f[] = {"state", "out"}, *v[] = {"running", dir};
    assert_int_equal(lb_redis_job_set(s, "poison", 2, f, v, &err), 0);
    assert_int_equal(lb_redis_queue_init(s, "poison", &err), 0);
    assert_int_equal(lb_redis_enqueue(s, "poison", "junk", "\x93\x01\x02", 3, NULL, &err), 0);
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' worker --redis %s --threads 1 --idle-exit 1 --json "
                         "--max-failures 2 --id wP 2>/dev/null", lb_test_lowbit_bin(), lb_test_srv.url);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"event\":\"failed\""));
    assert_non_null(strstr(out, "\"dead\":true"));
    assert_non_null(strstr(out, "\"event\":\"exit\""));
    free(out);
    lb_redis_dead_rec *d = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_dead_list(s, "poison", 10, &d, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(d[0].id, "junk");
    assert_int_equal(d[0].fails, 2);
    assert_true(strlen(d[0].error) > 0);
    lb_redis_dead_free(&d, n);
    /* the coordinator would learn it from the results stream */
    char cursor[48] = "0";
    lb_redis_result *r = NULL;
    assert_int_equal(lb_redis_results_read(s, "poison", cursor, 10, 0, &r, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_non_null(r[0].error);
    assert_null(r[0].result);
    lb_redis_results_free(&r, n);
    lb_redis_free(&s);
    lb_test_rmdir(&dir);
}

static void test_worker_sigterm_deregisters(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char *out = NULL;
    char *dir = lb_test_mkdtemp();
    /* start, wait until it serves (its heartbeat key appears a moment before
     * the SIGTERM handler is installed), SIGTERM it, collect its exit status */
    int rc = lb_test_run(&out, "'%s' worker --redis %s --id wT --heartbeat-ttl 30 > '%s/w.log' "
                         "2>&1 & p=$!; for i in $(seq 100); do grep -q serving '%s/w.log' && "
                         "break; sleep 0.1; done; kill -TERM $p; wait $p; echo rc=$?; "
                         "cat '%s/w.log'; redis-cli -p %d EXISTS lowbit:worker:wT",
                         lb_test_lowbit_bin(), lb_test_srv.url, dir, dir, dir, lb_test_srv.port);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "signal received"));
    assert_non_null(strstr(out, "rc=0"));
    /* the heartbeat key is gone: last line is "0" */
    size_t len = strlen(out);
    assert_true(len >= 2 && out[len - 2] == '0');
    free(out);
    lb_test_rmdir(&dir);
}

static void test_cancel_stops_coordinator(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    /* no workers: the coordinator waits until `lowbit cancel` */
    int rc = lb_test_run(&out,
                         "'%s' coordinator --redis %s --job c1 --model '%s' --calib '%s' "
                         "--out '%s/o' --ctx 128 --nsamples 8 --method rtn --threads 1 "
                         "> '%s/coord.log' 2>&1 & p=$!; "
                         "for i in $(seq 100); do redis-cli -p %d HGET lowbit:job:c1 state | "
                         "grep -q running && break; sleep 0.1; done; "
                         "'%s' cancel c1 --redis %s; wait $p; echo rc=$?; cat '%s/coord.log'",
                         bin, lb_test_srv.url, model, calib, dir, dir, lb_test_srv.port, bin, lb_test_srv.url, dir);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "cancel requested"));
    assert_non_null(strstr(out, "rc=1"));
    assert_non_null(strstr(out, "was cancelled"));
    free(out);
    /* a cancelled name is not reused */
    rc = lb_test_run(&out, "'%s' coordinator --redis %s --job c1 --model '%s' --calib '%s' "
                     "--out '%s/o' --ctx 128 --nsamples 8 --method rtn --threads 1 2>&1",
                     bin, lb_test_srv.url, model, calib, dir);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "was cancelled"));
    free(out);
    lb_test_rmdir(&dir);
}

/* A worker that leased an item and died (a consumer that never acks): a live
 * worker takes the lease over after --lease-ms and the run completes. */
static void test_crashed_worker_lease_reclaimed(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    char coord[16384];
    snprintf(coord, sizeof coord,
             "'%s' coordinator --redis %s --job k1 --model '%s' --calib '%s' --out '%s/o' "
             "--ctx 128 --nsamples 8 --method rtn --threads 1 > '%s/coord.log' 2>&1",
             bin, lb_test_srv.url, model, calib, dir, dir);
    /* start the coordinator; once the first item is queued, "crash" a worker on it */
    int rc = lb_test_run(&out, "%s & echo $! > '%s/coord.pid'; "
                         "for i in $(seq 100); do [ \"$(redis-cli -p %d XLEN lowbit:job:k1:queue)\" "
                         "-ge 1 ] 2>/dev/null && break; sleep 0.1; done; "
                         "redis-cli -p %d XREADGROUP GROUP workers ghost COUNT 1 STREAMS "
                         "lowbit:job:k1:queue '>' | head -2",
                         coord, dir, lb_test_srv.port, lb_test_srv.port);
    assert_int_equal(rc, 0);
    free(out);
    lb_redis *s = NULL;
    lb_err err = {0};
    assert_int_equal(lb_redis_connect(lb_test_srv.url, NULL, &s, &err), 0);
    lb_redis_queue_counts c;
    assert_int_equal(lb_redis_queue_stats(s, "k1", &c, &err), 0);
    assert_int_equal(c.pending, 1); /* held by the dead "ghost" */
    rc = lb_test_run(&out, "'%s' worker --redis %s --threads 1 --lease-ms 300 --idle-exit 2 "
                     "--id wR 2>&1; wait $(cat '%s/coord.pid') 2>/dev/null; cat '%s/coord.log'",
                     bin, lb_test_srv.url, dir, dir);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "quantized 35 linears"));
    free(out);
    lb_redis_event_rec *ev = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_events_recent(s, "k1", 200, &ev, &n, &err), 0);
    bool reclaimed = false;
    for (int32_t i = 0; i < n; i++)
        reclaimed = reclaimed || (strstr(ev[i].msg, "lease expired") && strstr(ev[i].msg, "wR"));
    lb_redis_events_free(&ev, n);
    assert_true(reclaimed);
    lb_redis_map m;
    assert_int_equal(lb_redis_job_get(s, "k1", &m, &err), 0);
    assert_string_equal(lb_redis_map_get(&m, "state"), "done");
    lb_redis_map_clear(&m);
    lb_redis_free(&s);
    lb_test_rmdir(&dir);
}

/* kill -9 of the coordinator: a new one with the same options resumes, queues
 * nothing twice, and the run completes. */
static void test_coordinator_restart_resumes(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    char coord[16384];
    snprintf(coord, sizeof coord,
             "'%s' coordinator --redis %s --job r1 --model '%s' --calib '%s' --out '%s/o' "
             "--ctx 128 --nsamples 8 --method rtn --threads 1",
             bin, lb_test_srv.url, model, calib, dir);
    char *out = NULL;
    int rc = lb_test_run(&out, "%s > '%s/c1.log' 2>&1 & p=$!; "
                         "for i in $(seq 100); do [ \"$(redis-cli -p %d XLEN lowbit:job:r1:queue)\" "
                         "-ge 1 ] 2>/dev/null && break; sleep 0.1; done; kill -9 $p; wait $p; "
                         "echo killed=$?",
                         coord, dir, lb_test_srv.port);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "killed=137"));
    free(out);
    rc = lb_test_run(&out, "%s --resume > '%s/c2.log' 2>&1 & p=$!; sleep 1; "
                     "redis-cli -p %d XLEN lowbit:job:r1:queue; "
                     "'%s' worker --redis %s --threads 1 --idle-exit 2 --id wS > /dev/null 2>&1; "
                     "wait $p; echo rc=$?; cat '%s/c2.log'",
                     coord, dir, lb_test_srv.port, bin, lb_test_srv.url, dir);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    /* the restarted coordinator did not queue the two embed chunk items (the
     * coordinator's default --collect-chunks 2) a second time */
    assert_int_equal(strncmp(out, "2\n", 2), 0);
    assert_non_null(strstr(out, "rc=0"));
    assert_non_null(strstr(out, "quantized 35 linears"));
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' status r1 --redis %s --events 200", bin, lb_test_srv.url), 0);
    assert_non_null(strstr(out, "state     done"));
    assert_non_null(strstr(out, "resumed"));
    free(out);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distributed_equals_embedded),
        cmocka_unit_test(test_poison_item_dead_lettered),
        cmocka_unit_test(test_bind_policy_cli),
        cmocka_unit_test(test_worker_sigterm_deregisters),
        cmocka_unit_test(test_cancel_stops_coordinator),
        cmocka_unit_test(test_distributed_lm_head),
        cmocka_unit_test(test_crashed_worker_lease_reclaimed),
        cmocka_unit_test(test_coordinator_restart_resumes),
    };
    return cmocka_run_group_tests(tests, lb_test_cluster_setup, lb_test_cluster_teardown);
}
