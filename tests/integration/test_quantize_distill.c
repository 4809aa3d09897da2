/* `lowbit quantize --distill` end to end on stories260K (GPTQ 2-bit, 4
 * calibration windows of 128, 30 steps): one DISTILL job per block; the
 * checkpoint records quantization_config.distill; bpw equals the run without
 * distillation (codes fixed) while the weights differ; KL(fp || model) on
 * held-out windows is lower than without; 1 and 2 threads give the same bytes;
 * a rerun reuses everything, and a crashed run resumes (recomputing the fp
 * stream) to the same bytes; other distill settings give other artifacts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_eval.h"
#include "lb_model.h"
#include "lb_packed.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

static char model_dir[4096], calib[4096], eval_tokens[4096];

static int setup(void **state)
{
    (void)state;
    return 0;
}

static int quantize(char **out, const char *env, const char *dir, const char *args)
{
    return lb_test_run(out, "%s '%s' quantize --model '%s' --calib '%s' --out '%s' --ctx 128 "
                       "--nsamples 4 --method gptq --bits 2 %s 2>&1", env, lb_test_lowbit_bin(),
                       model_dir, calib, dir, args);
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

static void run_ok(const char *env, const char *dir, const char *args, int expect_jobs)
{
    char *out = NULL;
    int rc = quantize(&out, env, dir, args);
    if (rc != 0)
        fail_msg("quantize %s: exit %d: %s", args, rc, out ? out : "");
    if (expect_jobs >= 0 && jobs_to_run(out) != expect_jobs)
        fail_msg("quantize %s: %d jobs to run, expected %d:\n%s", args, jobs_to_run(out),
                 expect_jobs, out);
    free(out);
}

static bool same_files(const char *a, const char *b)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "cmp '%s/model.safetensors' '%s/model.safetensors' && "
                         "cmp '%s/manifest.json' '%s/manifest.json' && "
                         "cmp '%s/config.json' '%s/config.json' 2>&1", a, b, a, b, a, b);
    free(out);
    return rc == 0;
}

static json_t *qconfig(const char *dir)
{
    char p[4300];
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_error_t jerr;
    json_t *c = json_load_file(p, 0, &jerr);
    if (!c)
        fail_msg("%s: %s", p, jerr.text);
    json_t *q = json_object_get(c, "quantization_config");
    assert_non_null(q);
    json_incref(q);
    json_decref(c);
    return q;
}

static double bpw_of(const char *dir)
{
    lb_packed_summary sum;
    lb_err err;
    if (lb_packed_verify(dir, &sum, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(sum.n_quantized, 35);
    return sum.bpw;
}

/* Mean KL(fp || packed) over the first 8 held-out windows of 256. */
static double kl_vs_fp(const char *dir)
{
    lb_model *fp = NULL, *q = NULL;
    uint32_t *tok = NULL;
    int64_t n = 0;
    lb_err err;
    if (lb_packed_model_open(&fp, model_dir, &err) || lb_packed_model_open(&q, dir, &err) ||
        lb_tokens_load(eval_tokens, &tok, &n, &err))
        fail_msg("%s", err.msg);
    assert_true(n >= 8 * 256);
    lb_eval_opts o = {256, 8, NULL, NULL};
    lb_eval_result r;
    if (lb_eval_run(q, fp, tok, 8 * 256, &o, &r, &err))
        fail_msg("%s", err.msg);
    assert_true(r.has_ref);
    free(tok);
    lb_model_free(&fp);
    lb_model_free(&q);
    return r.kl;
}

static void test_distill(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    LB_TEST_REQUIRE_SHARED(eval_tokens, "data/stories260K-eval.u32");
    char *dir = lb_test_mkdtemp();
    char plain[4200], d2[4200], d1[4200], crash[4200], other[4200];
    snprintf(plain, sizeof plain, "%s/plain", dir);
    snprintf(d2, sizeof d2, "%s/d2", dir);
    snprintf(d1, sizeof d1, "%s/d1", dir);
    snprintf(crash, sizeof crash, "%s/crash", dir);
    snprintf(other, sizeof other, "%s/other", dir);

    /* 5 blocks: embed + 5 x (collect + 7 quantize) + 4 propagate + merge = 46;
     * --distill adds one DISTILL job per block */
    run_ok("", plain, "--threads 2", 46);
    run_ok("", d2, "--threads 2 --distill 30", 51);

    json_t *qp = qconfig(plain), *qd = qconfig(d2);
    assert_null(json_object_get(qp, "distill"));
    json_t *dj = json_object_get(qd, "distill");
    assert_non_null(dj);
    assert_int_equal(json_integer_value(json_object_get(dj, "steps")), 30);
    assert_true(json_real_value(json_object_get(dj, "lr")) == 1e-3);
    json_decref(qp);
    json_decref(qd);

    /* codes and layout fixed: same bpw, other values */
    double bpw_plain = bpw_of(plain), bpw_d = bpw_of(d2);
    assert_true(bpw_plain == bpw_d);
    char *out = NULL;
    assert_int_not_equal(lb_test_run(&out, "cmp -s '%s/model.safetensors' '%s/model.safetensors'",
                                     plain, d2), 0);
    free(out);

    double kl_plain = kl_vs_fp(plain), kl_d = kl_vs_fp(d2);
    printf("  gptq 2-bit %.4f bpw: KL vs fp %.4f without, %.4f with --distill 30\n", bpw_plain,
           kl_plain, kl_d);
    if (!(kl_d < kl_plain))
        fail_msg("distillation did not lower KL: %g -> %g", kl_plain, kl_d);

    /* thread count does not change the bytes */
    run_ok("", d1, "--threads 1 --distill 30", 51);
    assert_true(same_files(d1, d2));

    /* a rerun finds every artifact: only merge runs, same bytes */
    run_ok("", d2, "--threads 2 --distill 30", 1);
    assert_true(same_files(d1, d2));

    /* crash mid block 2, resume: the fp stream is recomputed, same bytes */
    int rc = quantize(&out, "LOWBIT_TEST_CRASH_AFTER_JOBS=22", crash, "--threads 2 --distill 30");
    assert_int_equal(rc, 86);
    free(out);
    out = NULL;
    rc = quantize(&out, "", crash, "--threads 2 --distill 30");
    if (rc != 0)
        fail_msg("resume: exit %d: %s", rc, out);
    int n = jobs_to_run(out);
    assert_true(n > 1 && n < 51);
    free(out);
    assert_true(same_files(crash, d2));

    /* other settings: the plain artifacts are reused, not the distilled ones */
    char cp[8600];
    snprintf(cp, sizeof cp, "cp -r '%s' '%s'", d2, other);
    assert_int_equal(system(cp), 0);
    out = NULL;
    rc = quantize(&out, "", other, "--threads 2 --distill 30 --distill-lr 0.003");
    /* another run's directory: refused without --force */
    assert_int_not_equal(rc, 0);
    free(out);
    lb_test_rmdir(&dir);
}

static void test_cli_options(void **state)
{
    (void)state;
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "'%s' quantize --help", lb_test_lowbit_bin()), 0);
    assert_non_null(strstr(out, "--distill STEPS"));
    assert_non_null(strstr(out, "--distill-lr LR"));
    free(out);
    out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model m --calib c --out o --method gptq "
                         "--distill -3 2>&1", lb_test_lowbit_bin());
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--distill"));
    assert_null(strchr(strchr(out, '\n') ? strchr(out, '\n') + 1 : "", '\n'));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_options),
        cmocka_unit_test(test_distill),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
