/* Interrupted `lowbit quantize` resumes: the CLI's test hook
 * LOWBIT_TEST_CRASH_AFTER_JOBS=N makes the runner _exit(86) after N finished
 * jobs (as kill -9 would, no cleanup). The interrupted directory must not look
 * complete; the rerun must reuse the verified artifacts (fewer jobs) and end
 * byte-identical to an uninterrupted run. A corrupted artifact is recomputed. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_test_util.h"

static char model_dir[4096], calib[4096];

static int run_args(char **out, const char *dir, const char *env, const char *extra)
{
    return lb_test_run(out, "%s '%s' quantize --model '%s' --calib '%s' --out '%s' --ctx 128 "
                       "--nsamples 8 --method gptq --bits 3 --threads 2 %s 2>&1", env,
                       lb_test_lowbit_bin(), model_dir, calib, dir, extra);
}

static int run(char **out, const char *dir, const char *env)
{
    return run_args(out, dir, env, "");
}

static int jobs_to_run(const char *out)
{
    const char *p = strstr(out, "lowbit quantize: ");
    int n = -1;
    while (p) {
        if (sscanf(p, "lowbit quantize: %d jobs to run", &n) == 1)
            return n;
        p = strstr(p + 1, "lowbit quantize: ");
    }
    return -1;
}

static void test_crash_and_resume(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], b[4200], p[4300];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    char *out = NULL;
    assert_int_equal(run(&out, a, ""), 0);
    int full = jobs_to_run(out);
    assert_int_equal(full, 46);
    free(out);

    /* crash after 20 jobs: mid block 2 */
    int rc = run(&out, b, "LOWBIT_TEST_CRASH_AFTER_JOBS=20");
    assert_int_equal(rc, 86);
    assert_non_null(strstr(out, "test hook"));
    free(out);
    snprintf(p, sizeof p, "%s/manifest.json", b);
    assert_int_not_equal(access(p, F_OK), 0);

    /* corrupt one surviving quantized artifact: it must be recomputed, not trusted */
    char art[4300];
    snprintf(art, sizeof art, "%s/.lowbit/artifacts", b);
    DIR *d = opendir(art);
    assert_non_null(d);
    struct dirent *e;
    int corrupted = 0, files = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        files++;
        if (corrupted)
            continue;
        char f[4600];
        snprintf(f, sizeof f, "%s/%s", art, e->d_name);
        char *o2 = NULL;
        /* qlinear artifacts mention their tensor in the header */
        if (lb_test_run(&o2, "grep -q 'lowbit.tensor' '%s'", f) == 0) {
            FILE *fp = fopen(f, "r+b");
            assert_non_null(fp);
            fseek(fp, -3, SEEK_END);
            int c = fgetc(fp);
            fseek(fp, -3, SEEK_END);
            fputc(c ^ 0x5a, fp);
            fclose(fp);
            corrupted = 1;
        }
        free(o2);
    }
    closedir(d);
    assert_true(files > 0);
    assert_int_equal(corrupted, 1);

    assert_int_equal(run(&out, b, ""), 0);
    int resumed = jobs_to_run(out);
    /* 20 were done before the crash (26 remain); the corrupted linear is redone,
     * with the chain that recreates its Hessian (embed, propagates, collect:
     * at most 4 more jobs, since released activations are recomputed) */
    if (!(resumed >= full - 20 && resumed <= full - 20 + 5))
        fail_msg("rerun planned %d jobs (full run %d): %s", resumed, full, out);
    free(out);
    assert_int_equal(lb_test_run(&out, "cmp '%s/model.safetensors' '%s/model.safetensors' && "
                                 "cmp '%s/manifest.json' '%s/manifest.json' && "
                                 "cmp '%s/config.json' '%s/config.json'", a, b, a, b, a, b), 0);
    free(out);

    /* a third run only merges */
    assert_int_equal(run(&out, b, ""), 0);
    assert_int_equal(jobs_to_run(out), 1);
    free(out);
    lb_test_rmdir(&dir);
}

/* --quantize-lm-head adds 3 jobs (last propagate, lm_head collect, lm_head
 * quantize). A crash after the lm_head collect resumes with just the lm_head
 * quantize and the merge, byte-identical to an uninterrupted run. The same
 * --out without the flag is another job (the flag is in the run id). */
static void test_lm_head_resume(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], b[4200], p[4300];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    char *out = NULL;
    assert_int_equal(run_args(&out, a, "", "--quantize-lm-head"), 0);
    assert_int_equal(jobs_to_run(out), 49);
    free(out);
    /* jobs 46..49 are sequential: propagate 4, lm_head collect, quantize, merge */
    assert_int_equal(run_args(&out, b, "LOWBIT_TEST_CRASH_AFTER_JOBS=47", "--quantize-lm-head"),
                     86);
    free(out);
    snprintf(p, sizeof p, "%s/manifest.json", b);
    assert_int_not_equal(access(p, F_OK), 0);
    assert_int_equal(run_args(&out, b, "", "--quantize-lm-head"), 0);
    if (jobs_to_run(out) != 2)
        fail_msg("resume after the lm_head collect planned %d jobs: %s", jobs_to_run(out), out);
    free(out);
    assert_int_equal(lb_test_run(&out, "cmp '%s/model.safetensors' '%s/model.safetensors' && "
                                 "cmp '%s/manifest.json' '%s/manifest.json' && "
                                 "cmp '%s/config.json' '%s/config.json'", a, b, a, b, a, b), 0);
    free(out);
    /* without the flag, the directory holds a different job */
    int rc = run(&out, b, "");
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "holds a different quantize job"));
    free(out);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_and_resume),
        cmocka_unit_test(test_lm_head_resume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
