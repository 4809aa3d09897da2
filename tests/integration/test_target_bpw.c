/* `--target-bpw B` (docs/target-bpw.md) on stories260K with a 4-entry menu:
 * the manifest's honest bpw lands within 0.01 of B; a second target in the
 * same --out runs no measure job (the measurements are reused); a run killed
 * mid-measurement (the runner's _exit test hook, as kill -9) resumes to the
 * same bytes as an uninterrupted run; the distributed run (coordinator + two
 * workers, one of them killed -9 mid-measurement) gives the same bytes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_test_redis.h"
#include "lb_test_util.h"

#define MENU "gptq:bits=2;gptq:bits=3;gptq:bits=4,group-size=32;rtn:bits=8"
#define OPTS "--ctx 128 --nsamples 8 --threads 2 --candidates '" MENU "' --json"

static char model_dir[4096], calib[4096];

static int quantize(char **out, const char *dir, const char *env, double target,
                    const char *extra)
{
    return lb_test_run(out, "%s '%s' quantize --model '%s' --calib '%s' --out '%s' "
                       "--target-bpw %g " OPTS " %s 2>&1", env, lb_test_lowbit_bin(),
                       model_dir, calib, dir, target, extra);
}

/* A number after "key": in JSON lines; NAN when absent. */
static double json_num(const char *out, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = out ? strstr(out, pat) : NULL;
    return p ? strtod(p + strlen(pat), NULL) : (double)NAN;
}

static void same_checkpoint(const char *a, const char *b)
{
    static const char *const files[] = {"model.safetensors", "manifest.json", "config.json",
                                        "allocation.json"};
    for (int k = 0; k < 4; k++) {
        char x[4300], y[4300];
        snprintf(x, sizeof x, "%s/%s", a, files[k]);
        snprintf(y, sizeof y, "%s/%s", b, files[k]);
        lb_test_assert_same_file(x, y);
    }
}

static void test_lands_and_reuses(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], p[4300];
    snprintf(a, sizeof a, "%s/a", dir);
    char *out = NULL;
    assert_int_equal(quantize(&out, a, "", 3.0, ""), 0);
    assert_int_equal((int)json_num(out, "measure_jobs_total"), 4 * 35);
    assert_int_equal((int)json_num(out, "measure_jobs_run"), 4 * 35);
    double bpw = json_num(out, "realized_bpw");
    if (!(fabs(bpw - 3.0) <= 0.01))
        fail_msg("target 3.0: realized %.6f bpw", bpw);
    assert_non_null(strstr(out, "\"realized_matches_measured\":true"));
    assert_non_null(strstr(out, "\"event\":\"allocation\""));
    free(out);
    snprintf(p, sizeof p, "%s/allocation.json", a);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/.lowbit/measurement.json", a);
    assert_int_equal(access(p, F_OK), 0);
    assert_int_equal(lb_test_run(&out, "grep -c allocation_sha256 '%s/config.json'", a), 0);
    free(out);

    /* another target over the same directory: every measurement is reused */
    assert_int_equal(quantize(&out, a, "", 2.5, "--force"), 0);
    assert_int_equal((int)json_num(out, "measure_jobs_run"), 0);
    bpw = json_num(out, "realized_bpw");
    if (!(fabs(bpw - 2.5) <= 0.01))
        fail_msg("target 2.5: realized %.6f bpw", bpw);
    free(out);

    /* and again after that run claimed the directory (--force keeps measurements) */
    assert_int_equal(quantize(&out, a, "", 3.0, "--force --proxy out_err"), 0);
    assert_int_equal((int)json_num(out, "measure_jobs_run"), 0);
    free(out);

    /* below the cheapest menu entry: a clear error, not a crash */
    assert_int_not_equal(quantize(&out, a, "", 1.0, "--force"), 0);
    assert_non_null(strstr(out, "--target-bpw 1"));
    free(out);
    lb_test_rmdir(&dir);
}

static void test_resume_and_distributed(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    char *out = NULL;
    assert_int_equal(quantize(&out, a, "", 3.0, ""), 0);
    free(out);
    /* killed after 60 jobs: mid-measurement (150 jobs before the allocation) */
    assert_int_equal(quantize(&out, b, "LOWBIT_TEST_CRASH_AFTER_JOBS=60", 3.0, ""), 86);
    free(out);
    assert_int_equal(quantize(&out, b, "", 3.0, ""), 0);
    int ran = (int)json_num(out, "measure_jobs_run");
    if (!(ran > 0 && ran < 4 * 35))
        fail_msg("resumed run measured %d of %d", ran, 4 * 35);
    free(out);
    same_checkpoint(a, b);

    if (!lb_test_redis_available()) {
        lb_test_rmdir(&dir);
        LB_TEST_REQUIRE_REDIS(); /* skips (fails under CI=true) */
    }
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start(&srv, NULL), 0);
    const char *bin = lb_test_lowbit_bin();
    /* worker wK is killed -9 after its 10th job; wL (short lease) finishes */
    int rc = lb_test_run(&out,
        "cd '%s' || exit 1; ( '%s' coordinator --redis %s --job t1 --model '%s' --calib '%s' "
        "--out dist --target-bpw 3 " OPTS " > coord.log 2>&1; echo $? > coord.rc ) & "
        "'%s' worker --redis %s --threads 1 --idle-exit 30 --id wK > wK.log 2>&1 & k=$!; "
        "for i in $(seq 600); do [ \"$(grep -c ' ran ' wK.log)\" -ge 10 ] && break; "
        "sleep 0.1; done; kill -9 $k; wait $k; "
        "'%s' worker --redis %s --threads 1 --lease-ms 500 --idle-exit 3 --id wL > wL.log 2>&1; "
        "wait; cat coord.rc; grep -c ' ran ' wK.log wL.log",
        dir, bin, srv.url, model_dir, calib, bin, srv.url, bin, srv.url);
    lb_test_redis_stop(&srv);
    assert_int_equal(rc, 0);
    if (strncmp(out, "0\n", 2)) {
        char *log = NULL;
        lb_test_run(&log, "tail -20 '%s/coord.log'", dir);
        fail_msg("coordinator failed: %s\n%s", out, log ? log : "");
    }
    free(out);
    char d[4200];
    snprintf(d, sizeof d, "%s/dist", dir);
    same_checkpoint(a, d);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lands_and_reuses),
        cmocka_unit_test(test_resume_and_distributed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
