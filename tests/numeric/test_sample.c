/* lb_sample: the KV-cached decoder against the batched forward (lb_model_forward)
 * on a random GQA model; the sampler's distribution, greedy and top-p cut-off;
 * gen-calib determinism (batch independence, seeds) and the CLI. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_forward.h"
#include "lb_model.h"
#include "lb_sample.h"
#include "lb_test_model.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

static lb_model *toy_open(char **dir)
{
    *dir = lb_test_mkdtemp();
    assert_non_null(*dir);
    lb_config cfg = lb_test_model_config(32, 4, 2, 8, 48, 40, 2);
    lb_err err = {0};
    assert_int_equal(lb_test_model_write(*dir, &cfg, 7, NULL, NULL, &err), 0);
    lb_model *m = NULL;
    assert_int_equal(lb_model_open(&m, *dir, &err), 0);
    return m;
}

/* Decoding token by token must give the logits of the full causal forward. */
static void test_decoder_matches_forward(void **state)
{
    (void)state;
    char *dir = NULL;
    lb_model *m = toy_open(&dir);
    const int64_t n_seq = 3, len = 20, vocab = lb_model_config(m)->vocab_size;
    uint32_t toks[3 * 20];
    uint64_t rng = 5;
    for (int64_t i = 0; i < n_seq * len; i++)
        toks[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)vocab);
    float *ref = malloc((size_t)(n_seq * len * vocab) * sizeof *ref);
    float *lg = malloc((size_t)(n_seq * vocab) * sizeof *lg);
    assert_non_null(ref);
    assert_non_null(lg);
    lb_err err = {0};
    assert_int_equal(lb_model_forward(m, toks, n_seq, len, ref, &err), 0);
    lb_decoder *d = NULL;
    assert_int_equal(lb_decoder_new(m, n_seq, len, &d, &err), 0);
    double maxdiff = 0.0, maxref = 0.0;
    for (int64_t t = 0; t < len; t++) {
        uint32_t cur[3];
        for (int64_t s = 0; s < n_seq; s++)
            cur[s] = toks[s * len + t];
        assert_int_equal(lb_decoder_step(d, cur, lg, &err), 0);
        for (int64_t s = 0; s < n_seq; s++)
            for (int64_t v = 0; v < vocab; v++) {
                double a = lg[s * vocab + v], b = ref[(s * len + t) * vocab + v];
                maxdiff = fmax(maxdiff, fabs(a - b));
                maxref = fmax(maxref, fabs(b));
            }
    }
    /* fp32, different summation order (gemv vs gemm, no blocking): 1e-5 relative */
    assert_true(maxdiff <= 1e-5 * maxref + 1e-6);
    uint32_t cur[3] = {0, 0, 0};
    assert_int_equal(lb_decoder_step(d, cur, lg, &err), LB_EINVAL); /* cache full */
    lb_decoder_free(&d);
    assert_null(d);
    assert_int_equal(lb_decoder_new(m, 1, 1000, &d, &err), LB_EINVAL); /* > max positions */
    free(ref);
    free(lg);
    lb_model_free(&m);
    lb_test_rmdir(&dir);
}

static void test_sampler(void **state)
{
    (void)state;
    const float logits[5] = {1.0f, 2.0f, 0.5f, 2.0f, -1.0f};
    double wp[5];
    int32_t wi[10];
    lb_rng r;
    lb_rng_seed(&r, 3, 0);
    lb_sample_opts o;
    lb_sample_opts_init(&o);
    o.temperature = 0.0;
    assert_int_equal(lb_sample_token(logits, 5, &o, &r, wp, wi), 1); /* first maximum */
    /* T = 1: empirical frequencies vs softmax over 40000 draws (5 sigma ~ 0.012) */
    o.temperature = 1.0;
    double z = 0.0, p[5];
    for (int i = 0; i < 5; i++)
        z += exp((double)logits[i]);
    for (int i = 0; i < 5; i++)
        p[i] = exp((double)logits[i]) / z;
    int cnt[5] = {0};
    for (int k = 0; k < 40000; k++)
        cnt[lb_sample_token(logits, 5, &o, &r, wp, wi)]++;
    for (int i = 0; i < 5; i++)
        assert_true(fabs(cnt[i] / 40000.0 - p[i]) < 0.012);
    /* T = 0.5 sharpens: p ∝ exp(2 l) */
    o.temperature = 0.5;
    memset(cnt, 0, sizeof cnt);
    z = 0.0;
    for (int i = 0; i < 5; i++)
        z += exp(2.0 * (double)logits[i]);
    for (int k = 0; k < 40000; k++)
        cnt[lb_sample_token(logits, 5, &o, &r, wp, wi)]++;
    for (int i = 0; i < 5; i++)
        assert_true(fabs(cnt[i] / 40000.0 - exp(2.0 * (double)logits[i]) / z) < 0.012);
    /* top-p 0.6 at T = 1: ids 1 and 3 hold 2 * 0.336 = 0.67 >= 0.6, so only they appear,
     * each half the time */
    o.temperature = 1.0;
    o.top_p = 0.6;
    memset(cnt, 0, sizeof cnt);
    for (int k = 0; k < 20000; k++)
        cnt[lb_sample_token(logits, 5, &o, &r, wp, wi)]++;
    assert_int_equal(cnt[0] + cnt[2] + cnt[4], 0);
    assert_true(fabs(cnt[1] / 20000.0 - 0.5) < 0.02);
    /* a tiny top-p keeps only the most likely id (ties: lower id first) */
    o.top_p = 1e-9;
    for (int k = 0; k < 100; k++)
        assert_int_equal(lb_sample_token(logits, 5, &o, &r, wp, wi), 1);
    lb_err err = {0};
    o.top_p = 0.0;
    assert_int_equal(lb_sample_opts_check(&o, &err), LB_EINVAL);
    o.top_p = 1.0;
    o.temperature = -1.0;
    assert_int_equal(lb_sample_opts_check(&o, &err), LB_EINVAL);
}

static void test_gen_calib_deterministic(void **state)
{
    (void)state;
    char *dir = NULL;
    lb_model *m = toy_open(&dir);
    const int64_t n = 5, len = 12, vocab = lb_model_config(m)->vocab_size;
    uint32_t a[60], b[60], c[60];
    lb_sample_opts o;
    lb_sample_opts_init(&o);
    o.top_p = 0.9;
    lb_err err = {0};
    assert_int_equal(lb_gen_calib(m, n, len, 11, &o, 5, a, NULL, NULL, &err), 0);
    assert_int_equal(lb_gen_calib(m, n, len, 11, &o, 2, b, NULL, NULL, &err), 0);
    assert_memory_equal(a, b, sizeof a); /* batch does not change the result */
    assert_int_equal(lb_gen_calib(m, n, len, 12, &o, 5, c, NULL, NULL, &err), 0);
    assert_true(memcmp(a, c, sizeof a) != 0);
    for (int64_t i = 0; i < n * len; i++)
        assert_true((int64_t)a[i] < vocab);
    /* greedy continuation: token t+1 is the argmax after tokens 0..t */
    o.temperature = 0.0;
    assert_int_equal(lb_gen_calib(m, 1, len, 11, &o, 1, c, NULL, NULL, &err), 0);
    float *lg = malloc((size_t)(len * vocab) * sizeof *lg);
    assert_non_null(lg);
    assert_int_equal(lb_model_forward(m, c, 1, len, lg, &err), 0);
    for (int64_t t = 0; t + 1 < len; t++) {
        int64_t best = 0;
        for (int64_t v = 1; v < vocab; v++)
            if (lg[t * vocab + v] > lg[t * vocab + best])
                best = v;
        assert_int_equal(c[t + 1], best);
    }
    free(lg);
    assert_int_equal(lb_gen_calib(m, 0, len, 1, &o, 1, c, NULL, NULL, &err), LB_EINVAL);
    lb_model_free(&m);
    lb_test_rmdir(&dir);
}

static void test_cli(void **state)
{
    (void)state;
    char model[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    const char *bin = getenv("LOWBIT_BIN");
    if (!lb_test_need_that(bin && *bin, "LOWBIT_BIN unset: the lowbit CLI is not built "
                           "(-DLB_KERNELS_ONLY=ON builds the kernels only)"))
        skip();
    char *dir = lb_test_mkdtemp();
    char path[4200], path2[4200];
    snprintf(path, sizeof path, "%s/gc.u32", dir);
    snprintf(path2, sizeof path2, "%s/gc2.u32", dir);
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' gen-calib --model '%s' --out '%s' --n 3 --len 16 --seed 4 "
                         "--top-p 0.95 --batch 2 2>&1", lb_test_lowbit_bin(), model, path);
    assert_int_equal(rc, 0);
    free(out);
    rc = lb_test_run(&out, "'%s' gen-calib --model '%s' --out '%s' --n 3 --len 16 --seed 4 "
                     "--top-p 0.95 --batch 3 --threads 1 2>&1", lb_test_lowbit_bin(), model,
                     path2);
    assert_int_equal(rc, 0);
    free(out);
    uint32_t *t1 = NULL, *t2 = NULL;
    int64_t n1 = 0, n2 = 0;
    lb_err err = {0};
    assert_int_equal(lb_tokens_load(path, &t1, &n1, &err), 0);
    assert_int_equal(lb_tokens_load(path2, &t2, &n2, &err), 0);
    assert_int_equal(n1, 48);
    assert_int_equal(n2, 48);
    assert_memory_equal(t1, t2, 48 * sizeof *t1);
    assert_int_equal(lb_tokens_check_vocab(t1, n1, 512, path, &err), 0);
    free(t1);
    free(t2);
    rc = lb_test_run(&out, "'%s' gen-calib --model '%s' --out '%s' --n 3 --len 16 --seed 4 "
                     "--top-p 1.5 2>&1", lb_test_lowbit_bin(), model, path);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--top-p"));
    free(out);
    rc = lb_test_run(&out, "'%s' gen-calib --model '%s' --out '%s' --n 3 --len 100000 --seed 4 "
                     "2>&1", lb_test_lowbit_bin(), model, path2);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "max_position_embeddings"));
    free(out);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decoder_matches_forward),
        cmocka_unit_test(test_sampler),
        cmocka_unit_test(test_gen_calib_deterministic),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
