/* lb_qparams: for every parameterized method, the linear map reproduces the
 * method's dequantize, the gradient dL/dθ of L = Σ G ∘ Ŵ matches the change of
 * L computed through the registry's dequantize when one stored parameter is
 * changed (an independent finite difference, exact up to rounding since Ŵ is
 * linear in θ), and storing new θ keeps the codes and bpw. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_qparams.h"
#include "lb_quant.h"
#include "lb_test_util.h"

enum { ROWS = 24, COLS = 48 };

static void make_problem(float *W, float *H, uint64_t seed)
{
    uint64_t rng = seed;
    for (int i = 0; i < ROWS * COLS; i++)
        W[i] = lb_test_rand_normal(&rng) * (i % 37 == 0 ? 6.0f : 1.0f); /* a few outliers */
    enum { NX = 200 };
    float *X = malloc(sizeof(float) * NX * COLS);
    assert_non_null(X);
    for (int i = 0; i < NX * COLS; i++)
        X[i] = lb_test_rand_normal(&rng) * (1.0f + (float)(i % COLS) / COLS);
    for (int a = 0; a < COLS; a++)
        for (int b = 0; b < COLS; b++) {
            double s = 0.0;
            for (int t = 0; t < NX; t++)
                s += (double)X[t * COLS + a] * (double)X[t * COLS + b];
            H[a * COLS + b] = (float)s;
        }
    free(X);
}

static double loss_of(const lb_qpacked *p, const float *G)
{
    static float W[ROWS * COLS];
    lb_err err = {0};
    assert_int_equal(lb_qmethod_find(p->method)->dequantize(p, W, &err), 0);
    double s = 0.0;
    for (int i = 0; i < ROWS * COLS; i++)
        s += (double)G[i] * (double)W[i];
    return s;
}

static void check_method(const char *method, const lb_qopts *opts, int32_t want_k)
{
    float *W = malloc(sizeof(float) * ROWS * COLS), *H = malloc(sizeof(float) * COLS * COLS);
    float *G = malloc(sizeof(float) * ROWS * COLS), *Wm = malloc(sizeof(float) * ROWS * COLS);
    assert_non_null(W);
    assert_non_null(H);
    assert_non_null(G);
    assert_non_null(Wm);
    make_problem(W, H, 17);
    uint64_t rng = 99;
    for (int i = 0; i < ROWS * COLS; i++)
        G[i] = lb_test_rand_normal(&rng);
    lb_err err = {0};
    lb_qresult res = {0};
    const lb_qmethod *m = lb_qmethod_find(method);
    assert_non_null(m);
    assert_int_equal(m->quantize(W, ROWS, COLS, H, opts, &res, &err), 0);
    lb_qparams q;
    int rc = lb_qparams_from_packed(&res.packed, &q, &err);
    if (rc)
        fprintf(stderr, "%s: %s\n", method, err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(q.K, want_k);
    assert_true(q.nparams > 0);
    /* map == the method's W_hat (from quantize, which equals dequantize) */
    lb_qparams_weights(&q, Wm);
    double maxd = 0.0;
    for (int i = 0; i < ROWS * COLS; i++)
        maxd = fmax(maxd, fabs((double)Wm[i] - (double)res.W_hat[i]));
    assert_true(maxd <= 1e-5);
    /* gradient vs a changed stored parameter through the registry */
    double *g = malloc(sizeof(double) * (size_t)q.nparams);
    assert_non_null(g);
    lb_qparams_grad(&q, G, g);
    const double L0 = loss_of(&res.packed, G);
    double max_err = 0.0, max_g = 0.0;
    int64_t checked = 0;
    for (int32_t f = 0; f < q.nfields; f++) {
        lb_qfield *fl = &res.packed.fields[q.field[f]];
        for (int64_t e = 0; e < fl->count; e++) {
            const int64_t p = q.offset[f] + e;
            const float old = lb_qfield_get_float(fl, e);
            const float nv = lb_qfield_put_float(fl, e, old * 1.125f + 0.0625f);
            const double dl = loss_of(&res.packed, G) - L0;
            lb_qfield_put_float(fl, e, old);
            const double pred = g[p] * ((double)nv - (double)old);
            max_err = fmax(max_err, fabs(dl - pred));
            max_g = fmax(max_g, fabs(dl));
            checked++;
        }
    }
    printf("  %-6s K=%d params %lld  max|ΔL| %.3e  max|ΔL - g·Δθ| %.3e\n", method, q.K,
           (long long)checked, max_g, max_err);
    assert_true(max_g > 1e-3);
    assert_true(max_err <= 1e-4 * max_g + 1e-6);
    /* store: codes and bpw unchanged, dequantize == map on the stored values */
    lb_qpacked before = res.packed;
    uint8_t *codes_copy[64] = {NULL};
    for (int32_t f = 0; f < before.nfields && f < 64; f++) {
        codes_copy[f] = malloc(before.fields[f].nbytes);
        memcpy(codes_copy[f], before.fields[f].data, before.fields[f].nbytes);
    }
    const double bpw = lb_qpacked_bpw(&res.packed);
    for (int64_t p = 0; p < q.nparams; p++)
        q.theta[p] = q.theta[p] * 1.01f + 1e-3f;
    assert_int_equal(lb_qparams_store(&q, &res.packed, &err), 0);
    assert_true(lb_qpacked_bpw(&res.packed) == bpw);
    bool float_changed = false;
    for (int32_t f = 0; f < res.packed.nfields && f < 64; f++) {
        const lb_qfield *fl = &res.packed.fields[f];
        bool same = memcmp(codes_copy[f], fl->data, fl->nbytes) == 0;
        if (fl->kind == LB_QFIELD_UINT || fl->kind == LB_QFIELD_INT)
            assert_true(same);
        else if (!same)
            float_changed = true;
        free(codes_copy[f]);
    }
    assert_true(float_changed);
    assert_int_equal(m->dequantize(&res.packed, W, &err), 0);
    lb_qparams_weights(&q, Wm);
    for (int i = 0; i < ROWS * COLS; i++)
        assert_true(fabsf(W[i] - Wm[i]) <= 1e-5f * (1.0f + fabsf(W[i])));
    /* NaN is refused and nothing is written */
    q.theta[0] = NAN;
    assert_int_equal(lb_qparams_store(&q, &res.packed, &err), LB_ENUMERIC);
    free(g);
    lb_qparams_free(&q);
    lb_qresult_free(&res);
    free(W);
    free(H);
    free(G);
    free(Wm);
}

static void test_rtn(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2;
    o.group_size = 16;
    check_method("rtn", &o, 1);
}

static void test_gptq_act_order(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2;
    o.act_order = true;
    o.group_size = 16;
    check_method("gptq", &o, 1);
    o.sym = true;
    o.group_size = 0;
    check_method("gptq", &o, 1);
}

static void test_claq(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2.1;
    o.outlier_keep_top = 0.05;
    o.outlier_keep_rest = 0.02;
    check_method("claq", &o, 1);
}

static void test_pbllm(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    o.salient_frac = 0.1;
    check_method("pbllm", &o, 2);
}

static void test_billm(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    check_method("billm", &o, 2);
}

static void test_qbb(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bases = 2;
    check_method("qbb", &o, 2);
    o.bases = 3;
    check_method("qbb", &o, 3);
}

static void test_unsupported(void **state)
{
    (void)state;
    lb_qpacked p = {0};
    strcpy(p.method, "nope");
    p.rows = 2;
    p.cols = 2;
    lb_qparams q;
    lb_err err = {0};
    assert_int_equal(lb_qparams_from_packed(&p, &q, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "nope"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rtn),   cmocka_unit_test(test_gptq_act_order),
        cmocka_unit_test(test_claq),  cmocka_unit_test(test_pbllm),
        cmocka_unit_test(test_billm), cmocka_unit_test(test_qbb),
        cmocka_unit_test(test_unsupported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
