/* BiLLM: the block planner and the full method against plain double references. */
#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "lb_billm.h"
#include "lb_dtype.h"
#include "lb_quant.h"
#include "lb_test_qref.h"

/* Heavy-tailed weights with a few strong columns, like LLM layers. */
static float *rand_weights(int64_t rows, int64_t cols, uint64_t seed)
{
    float *W = malloc((size_t)(rows * cols) * sizeof(float));
    assert_non_null(W);
    uint64_t s = seed;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            float g = lb_test_rand_normal(&s);
            float scale = (j % 11 == 3) ? 0.08f : 0.02f;
            if (lb_test_rand_uniform(&s) < 0.02f)
                scale *= 4.0f;
            W[r * cols + j] = scale * g;
        }
    return W;
}

static float *rand_hessian(int64_t cols, uint64_t seed)
{
    return lb_test_correlated_hessian(cols, seed, 0.5, 7, false, 0.0);
}

static float f16r(double v)
{
    return lb_f16_to_f32(lb_f32_to_f16((float)v));
}

/* ---- slow reference planner (double, explicit errors, every split tried) ---- */

typedef struct {
    int nsal;
    uint8_t sal[256];
    float alpha[64 * 4];
    double err;
} ref_plan;

typedef struct {
    double a, c;
} ref_item;

static int cmp_item(const void *x, const void *y)
{
    double a = ((const ref_item *)x)->a, b = ((const ref_item *)y)->a;
    return (a > b) - (a < b);
}

/* Best weighted two-level fit of n magnitudes: tries every split between distinct sorted
 * values (and one level), computes Σ c (a - level)² explicitly. OUT lo/hi levels. */
static double ref_two_level(const ref_item *in, int n, double *lo, double *hi)
{
    ref_item it[256];
    memcpy(it, in, sizeof(ref_item) * (size_t)n);
    qsort(it, (size_t)n, sizeof(ref_item), cmp_item);
    double best = INFINITY;
    *lo = *hi = 0.0;
    for (int s = 0; s <= n; s++) {
        if (s > 0 && s < n && it[s - 1].a == it[s].a)
            continue;
        double c0 = 0, s0 = 0, c1 = 0, s1 = 0;
        for (int i = 0; i < n; i++) {
            if (i < s) {
                c0 += it[i].c;
                s0 += it[i].c * it[i].a;
            } else {
                c1 += it[i].c;
                s1 += it[i].c * it[i].a;
            }
        }
        double all = c0 + c1 > 0 ? (s0 + s1) / (c0 + c1) : 0.0;
        double l0 = s > 0 ? s0 / c0 : all, l1 = s < n ? s1 / c1 : all, e = 0.0;
        for (int i = 0; i < n; i++) {
            double d = it[i].a - (i < s ? l0 : l1);
            e += it[i].c * d * d;
        }
        if (e < best * (1.0 - 1e-12)) {
            best = e;
            *lo = l0;
            *hi = l1;
        }
    }
    return n ? best : 0.0;
}

/* one weight with a plan: the sign, then the nearer magnitude (the method's rule) */
static double ref_quant(double w, bool sal, const float *a)
{
    if (sal) {
        double v1 = w >= 0 ? (double)a[0] : -(double)a[0];
        return v1 + (w - v1 >= 0 ? (double)a[1] : -(double)a[1]);
    }
    double g = fabs(w) > (double)(0.5f * (a[2] + a[3])) ? (double)a[3] : (double)a[2];
    return w >= 0 ? g : -g;
}

/* the row's two column sets (salient / rest) as items */
static int ref_gather(const double *w, const double *cw, const uint8_t *sal, int nb, int want,
                      ref_item *out)
{
    int n = 0;
    for (int j = 0; j < nb; j++)
        if ((sal[j] != 0) == (want != 0))
            out[n++] = (ref_item){fabs(w[j]), cw[j]};
    return n;
}

static void ref_plan_block(const double *Wb, int rows, int nb, const double *hinv_diag,
                           const double *cw, int max_salient, ref_plan *P)
{
    /* salient score, descending, ties by index */
    double score[256];
    int order[256];
    for (int j = 0; j < nb; j++) {
        double s = 0.0;
        for (int r = 0; r < rows; r++)
            s += Wb[r * nb + j] * Wb[r * nb + j];
        score[j] = s / (hinv_diag[j] * hinv_diag[j]);
        order[j] = j;
    }
    for (int i = 0; i < nb; i++) /* selection sort: the largest remaining, lowest index */
        for (int k = i + 1; k < nb; k++)
            if (score[order[k]] > score[order[i]] ||
                (score[order[k]] == score[order[i]] && order[k] < order[i])) {
                int t = order[i];
                order[i] = order[k];
                order[k] = t;
            }
    int kmax = max_salient < nb ? max_salient : nb, best_k = 0;
    double best_e = INFINITY, lo, hi;
    ref_item it[256];
    for (int k = 0; k <= kmax; k++) {
        uint8_t sel[256] = {0};
        for (int i = 0; i < k; i++)
            sel[order[i]] = 1;
        double e = 0.0;
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < 2; g++) {
                int n = ref_gather(Wb + r * nb, cw, sel, nb, g, it);
                e += ref_two_level(it, n, &lo, &hi);
            }
        if (e < best_e * (1.0 - 1e-12)) {
            best_e = e;
            best_k = k;
        }
    }
    memset(P->sal, 0, sizeof(P->sal));
    for (int i = 0; i < best_k; i++)
        P->sal[order[i]] = 1;
    P->nsal = best_k;
    P->err = 0.0;
    for (int r = 0; r < rows; r++) {
        int n = ref_gather(Wb + r * nb, cw, P->sal, nb, 1, it);
        ref_two_level(it, n, &lo, &hi);
        P->alpha[r * 4 + 0] = f16r(0.5 * (lo + hi));
        P->alpha[r * 4 + 1] = f16r(0.5 * (hi - lo));
        n = ref_gather(Wb + r * nb, cw, P->sal, nb, 0, it);
        ref_two_level(it, n, &lo, &hi);
        P->alpha[r * 4 + 2] = f16r(lo);
        P->alpha[r * 4 + 3] = f16r(hi);
        for (int j = 0; j < nb; j++) {
            double d = Wb[r * nb + j] - ref_quant(Wb[r * nb + j], P->sal[j], P->alpha + r * 4);
            P->err += cw[j] * d * d;
        }
    }
}

/* scales may differ by one f16 step when the double sums differ in the last bits */
static void assert_f16_close(float a, float b)
{
    LB_ASSERT_NEAR(a, b, fabs((double)b) * 0x1p-10 + 1e-12);
}

static void test_registry(void **state)
{
    (void)state;
    assert_ptr_equal(lb_qmethod_find("billm"), &lb_qmethod_billm);
}

/* Worked example of order-2 residual binarization and of the group rule. */
static void test_residual_binarization_by_hand(void **state)
{
    (void)state;
    /* salient {3, -1, 2, -2}: α1 = 2, residuals {1, 1, 0, 0}, α2 = 0.5 */
    const float a[4] = {2.0f, 0.5f, 0.25f, 1.0f};
    const float w[4] = {3.0f, -1.0f, 2.0f, -2.0f};
    const float want[4] = {2.5f, -1.5f, 2.5f, -1.5f};
    for (int i = 0; i < 4; i++) {
        uint8_t code;
        assert_true(lb_billm_quant(w[i], true, a, &code) == want[i]);
        assert_true(lb_billm_value(code, true, a) == want[i]);
    }
    /* non-salient: the nearer of 0.25 and 1 (midpoint 0.625) */
    const float wn[4] = {0.5f, -0.2f, 0.7f, -3.0f};
    const float wantn[4] = {0.25f, -0.25f, 1.0f, -1.0f};
    for (int i = 0; i < 4; i++) {
        uint8_t code;
        assert_true(lb_billm_quant(wn[i], false, a, &code) == wantn[i]);
        assert_true(lb_billm_value(code, false, a) == wantn[i]);
    }
}

static void check_plan(int rows, int nb, int max_salient, bool weighted, uint64_t seed)
{
    float *Wb = rand_weights(rows, nb, seed);
    double *Wd = malloc((size_t)(rows * nb) * sizeof(double));
    double hd[256], cw[256];
    uint64_t s = seed * 7 + 1;
    for (int i = 0; i < rows * nb; i++)
        Wd[i] = Wb[i];
    for (int j = 0; j < nb; j++) {
        hd[j] = 0.5 + (double)lb_test_rand_uniform(&s);
        /* a few columns with 100-1000x loss weight, like outlier input channels */
        cw[j] = !weighted ? 1.0 : (j % 9 == 4 ? 100.0 + 900.0 * (double)lb_test_rand_uniform(&s)
                                              : 0.5 + (double)lb_test_rand_uniform(&s));
    }
    lb_billm_cfg cfg = {.max_salient = max_salient};
    lb_billm_plan plan;
    lb_err e;
    assert_int_equal(lb_billm_plan_init(&plan, rows, nb, &cfg, &e), 0);
    assert_int_equal(lb_billm_plan_block(&plan, Wb, nb, nb, hd, weighted ? cw : NULL, &cfg, &e),
                     0);
    ref_plan *P = calloc(1, sizeof(*P));
    ref_plan_block(Wd, rows, nb, hd, cw, max_salient, P);
    assert_int_equal(plan.nsalient, P->nsal);
    assert_memory_equal(plan.salient, P->sal, (size_t)nb);
    for (int i = 0; i < rows * 4; i++)
        assert_f16_close(plan.alpha[i], P->alpha[i]);
    LB_ASSERT_NEAR(plan.err, P->err, 1e-6 * P->err);
    lb_billm_plan_free(&plan);
    assert_null(plan.alpha);
    free(P);
    free(Wb);
    free(Wd);
}

static void test_plan_matches_reference(void **state)
{
    (void)state;
    check_plan(16, 32, 50, false, 1); /* every salient count searched */
    check_plan(24, 40, 8, false, 2);  /* capped search */
    check_plan(9, 17, 5, true, 3);
    check_plan(64, 64, 20, true, 4);
    check_plan(16, 48, 50, true, 5);
}

/* Issue 11: two columns whose errors cost 1000x (outlier input channels) must become the
 * salient set and be reconstructed to f16 precision: two salient columns per row are
 * exactly two magnitudes, which α1 ± α2 represent. The unweighted planner did not. */
static void test_outlier_columns_exact(void **state)
{
    (void)state;
    const int rows = 24, nb = 32, c1 = 5, c2 = 20;
    float *Wb = rand_weights(rows, nb, 19);
    double hd[32], cw[32];
    for (int j = 0; j < nb; j++) {
        cw[j] = (j == c1 || j == c2) ? 1000.0 : 1.0;
        hd[j] = 1.0 / sqrt(cw[j]);
    }
    lb_billm_cfg cfg;
    lb_billm_cfg_init(&cfg);
    lb_billm_plan plan;
    assert_int_equal(lb_billm_plan_init(&plan, rows, nb, &cfg, NULL), 0);
    assert_int_equal(lb_billm_plan_block(&plan, Wb, nb, nb, hd, cw, &cfg, NULL), 0);
    assert_true(plan.salient[c1] && plan.salient[c2]);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < nb; j++) {
            if (j != c1 && j != c2)
                continue;
            uint8_t code;
            float w = Wb[r * nb + j];
            float q = lb_billm_quant(w, true, plan.alpha + r * 4, &code);
            /* only the salient set's other members pull the levels: allow 2% of |w| */
            assert_true(fabsf(w - q) <= 0.02f * fabsf(w) + 1e-6f);
        }
    lb_billm_plan_free(&plan);
    free(Wb);
}

/* ---- slow reference of the full method: plain OBS column loop in double ---- */

static void ref_billm(const float *W, const float *H, int rows, int cols, int bs,
                      const lb_billm_cfg *cfg, double *W_hat)
{
    int n = cols;
    double *A = malloc(sizeof(double) * (size_t)(n * 2 * n));
    double *Wd = malloc(sizeof(double) * (size_t)(rows * n));
    double *U = calloc((size_t)(n * n), sizeof(double));
    double mean = 0.0;
    for (int j = 0; j < n; j++)
        mean += H[j * n + j] == 0.0f ? 1.0 : (double)H[j * n + j];
    double damp = (double)(float)(0.01 * (mean / n));
    /* [Hd | I] -> [I | Hd^-1] by Gauss-Jordan */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 2 * n; j++) {
            double v = j < n ? (double)H[i * n + j] : (j - n == i ? 1.0 : 0.0);
            if (j == i)
                v = (H[i * n + i] == 0.0f ? 1.0 : (double)H[i * n + i]) + damp;
            A[i * 2 * n + j] = v;
        }
    for (int k = 0; k < n; k++) {
        double piv = A[k * 2 * n + k];
        for (int j = 0; j < 2 * n; j++)
            A[k * 2 * n + j] /= piv;
        for (int i = 0; i < n; i++)
            if (i != k) {
                double f = A[i * 2 * n + k];
                for (int j = 0; j < 2 * n; j++)
                    A[i * 2 * n + j] -= f * A[k * 2 * n + j];
            }
    }
    /* Hinv = Uᵀ U, U upper: Cholesky from the bottom-right corner */
    double *Hi = malloc(sizeof(double) * (size_t)(n * n));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            Hi[i * n + j] = A[i * 2 * n + n + j];
    for (int i = 0; i < n; i++) {
        double d = Hi[i * n + i];
        for (int k = 0; k < i; k++)
            d -= U[k * n + i] * U[k * n + i];
        U[i * n + i] = sqrt(d);
        for (int j = i + 1; j < n; j++) {
            double v = Hi[i * n + j];
            for (int k = 0; k < i; k++)
                v -= U[k * n + i] * U[k * n + j];
            U[i * n + j] = v / U[i * n + i];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < n; j++)
            Wd[r * n + j] = H[j * n + j] == 0.0f ? 0.0 : (double)W[r * n + j];
    ref_plan *P = calloc(1, sizeof(*P));
    double *blk = malloc(sizeof(double) * (size_t)(rows * bs));
    for (int c0 = 0; c0 < n; c0 += bs) {
        int nb = n - c0 < bs ? n - c0 : bs;
        double hd[256], cw[256];
        for (int j = 0; j < nb; j++) {
            hd[j] = Hi[(c0 + j) * n + c0 + j];
            cw[j] = 1.0 / (U[(c0 + j) * n + c0 + j] * U[(c0 + j) * n + c0 + j]);
        }
        /* the method plans on float weights: round like the engine's float state */
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < nb; j++)
                blk[r * nb + j] = (double)(float)Wd[r * n + c0 + j];
        ref_plan_block(blk, rows, nb, hd, cw, cfg->max_salient, P);
        for (int j = 0; j < nb; j++) {
            int c = c0 + j;
            for (int r = 0; r < rows; r++) {
                double w = Wd[r * n + c];
                double q = ref_quant(w, P->sal[j], P->alpha + r * 4);
                W_hat[r * n + c] = q;
                double e = (w - q) / U[c * n + c]; /* GPTQ Eq. 4 */
                for (int k = c + 1; k < n; k++)
                    Wd[r * n + k] -= e * U[c * n + k];
            }
        }
    }
    free(blk);
    free(P);
    free(A);
    free(Hi);
    free(U);
    free(Wd);
}

static void check_method_vs_reference(int rows, int cols, int bs, bool dead, uint64_t seed)
{
    float *W = rand_weights(rows, cols, seed);
    float *H = rand_hessian(cols, seed + 100);
    if (dead)
        for (int j = 0; j < cols; j++) {
            H[3 * cols + j] = 0.0f;
            H[j * cols + 3] = 0.0f;
        }
    lb_qopts o;
    lb_qopts_init(&o);
    o.block_size = bs;
    lb_billm_cfg cfg;
    lb_billm_cfg_init(&cfg);
    lb_qresult res;
    lb_err e;
    int rc = lb_billm_quantize_cfg(W, rows, cols, H, &o, &cfg, &res, &e);
    if (rc)
        fail_msg("%s", e.msg);
    double *ref = malloc(sizeof(double) * (size_t)(rows * cols));
    ref_billm(W, H, rows, cols, bs, &cfg, ref);
    double amax = 0.0, maxdiff = 0.0;
    for (int i = 0; i < rows * cols; i++) {
        amax = fmax(amax, fabs(ref[i]));
        maxdiff = fmax(maxdiff, fabs(ref[i] - (double)res.W_hat[i]));
    }
    /* same structure and codes; scales agree to an f16 step */
    assert_true(maxdiff <= 2e-3 * amax);
    /* the method's salient bitmap is the reference's */
    const lb_qfield *fsal = lb_qpacked_field(&res.packed, "salient");
    assert_non_null(fsal);
    if (dead)
        assert_int_equal(lb_qfield_get(fsal, 3), 0); /* no input, no saliency */
    /* dequantize == W_hat bit for bit */
    float *D = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_int_equal(lb_billm_dequantize(&res.packed, D, &e), 0);
    assert_memory_equal(D, res.W_hat, sizeof(float) * (size_t)(rows * cols));
    /* bpw = stored bits / weights, from the formula of every field */
    int64_t nsal = 0, nblocks = (cols + bs - 1) / bs;
    for (int c = 0; c < cols; c++)
        nsal += lb_qfield_get(fsal, c);
    uint64_t bits = 32 + 8 * (uint64_t)((cols + 7) / 8) + 8 * (uint64_t)((rows * cols + 7) / 8) +
                    8 * (uint64_t)((rows * nsal + 7) / 8) +
                    8 * (uint64_t)((rows * (cols - nsal) + 7) / 8) +
                    (uint64_t)(16 * 4 * rows * nblocks);
    assert_int_equal(lb_qpacked_bits(&res.packed), bits);
    LB_ASSERT_NEAR(res.bpw, (double)bits / (double)(rows * cols), 1e-12);
    free(D);
    free(ref);
    lb_qresult_free(&res);
    free(W);
    free(H);
}

static void test_method_matches_reference(void **state)
{
    (void)state;
    check_method_vs_reference(12, 64, 32, false, 21);
    check_method_vs_reference(10, 80, 32, false, 22); /* last block narrower */
    check_method_vs_reference(8, 48, 128, false, 23); /* one block */
}

static void test_dead_column(void **state)
{
    (void)state;
    check_method_vs_reference(12, 48, 16, true, 31);
}

/* Block compensation must pay off: the H-weighted error of the method is below that of
 * the same structure applied without GPTQ, and far below plain sign binarization. */
static void test_compensation_lowers_error(void **state)
{
    (void)state;
    const int rows = 32, cols = 96, bs = 32;
    float *W = rand_weights(rows, cols, 41);
    float *H = rand_hessian(cols, 42);
    lb_qopts o;
    lb_qopts_init(&o);
    o.block_size = bs;
    lb_qresult res;
    assert_int_equal(lb_billm_quantize(W, rows, cols, H, &o, &res, NULL), 0);
    double e_billm;
    assert_int_equal(lb_quant_error(W, res.W_hat, rows, cols, H, &e_billm, NULL, NULL), 0);
    /* no compensation: plan each block of the original W and quantize it */
    lb_billm_cfg cfg;
    lb_billm_cfg_init(&cfg);
    lb_billm_plan plan;
    assert_int_equal(lb_billm_plan_init(&plan, rows, bs, &cfg, NULL), 0);
    float *Q = malloc(sizeof(float) * (size_t)(rows * cols));
    float *S = malloc(sizeof(float) * (size_t)(rows * cols));
    float blk[32 * 32];
    double hd[32];
    for (int j = 0; j < bs; j++)
        hd[j] = 1.0;
    for (int c0 = 0; c0 < cols; c0 += bs) {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < bs; j++)
                blk[r * bs + j] = W[r * cols + c0 + j];
        assert_int_equal(lb_billm_plan_block(&plan, blk, bs, bs, hd, NULL, &cfg, NULL), 0);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < bs; j++) {
                uint8_t code;
                Q[r * cols + c0 + j] = lb_billm_quant(blk[r * bs + j], plan.salient[j],
                                                      plan.alpha + r * 4, &code);
            }
    }
    for (int r = 0; r < rows; r++) { /* 1-bit: sign(w) * mean |w| per row */
        double m = 0.0;
        for (int j = 0; j < cols; j++)
            m += fabs((double)W[r * cols + j]);
        m /= cols;
        for (int j = 0; j < cols; j++)
            S[r * cols + j] = W[r * cols + j] >= 0.0f ? (float)m : -(float)m;
    }
    double e_plain, e_sign;
    assert_int_equal(lb_quant_error(W, Q, rows, cols, H, &e_plain, NULL, NULL), 0);
    assert_int_equal(lb_quant_error(W, S, rows, cols, H, &e_sign, NULL, NULL), 0);
    assert_true(e_billm < e_plain);
    assert_true(e_plain < e_sign);
    free(Q);
    free(S);
    lb_billm_plan_free(&plan);
    lb_qresult_free(&res);
    free(W);
    free(H);
}

/* Magnitude criterion: salient columns ranked by Σ w² only. With H = I (no correlation,
 * equal [H^-1]_jj) both criteria must pick the same structure and the same W_hat; with a
 * Hessian whose diagonal varies they must differ. */
static void test_salient_criterion(void **state)
{
    (void)state;
    const int rows = 16, cols = 64;
    float *W = rand_weights(rows, cols, 61);
    float *I = calloc((size_t)(cols * cols), sizeof(float));
    for (int j = 0; j < cols; j++)
        I[j * cols + j] = 1.0f;
    float *H = rand_hessian(cols, 62);
    lb_qopts o;
    lb_qopts_init(&o);
    o.block_size = 32;
    lb_qresult a, b;
    for (int pass = 0; pass < 2; pass++) {
        const float *Hp = pass ? H : I;
        o.salient_criterion = LB_SALIENT_HESSIAN;
        assert_int_equal(lb_billm_quantize(W, rows, cols, Hp, &o, &a, NULL), 0);
        o.salient_criterion = LB_SALIENT_MAGNITUDE;
        assert_int_equal(lb_billm_quantize(W, rows, cols, Hp, &o, &b, NULL), 0);
        const lb_qfield *sa = lb_qpacked_field(&a.packed, "salient");
        const lb_qfield *sb = lb_qpacked_field(&b.packed, "salient");
        bool same = sa->nbytes == sb->nbytes && !memcmp(sa->data, sb->data, sa->nbytes);
        if (pass == 0) {
            assert_true(same);
            assert_memory_equal(a.W_hat, b.W_hat, sizeof(float) * (size_t)(rows * cols));
        } else {
            assert_false(same);
        }
        lb_qresult_free(&a);
        lb_qresult_free(&b);
    }
    free(W);
    free(I);
    free(H);
}

/* Rows are planned in parallel; the result must not depend on the thread count. */
static void test_thread_count_invariant(void **state)
{
    (void)state;
    const int rows = 48, cols = 96;
    float *W = rand_weights(rows, cols, 71);
    float *H = rand_hessian(cols, 72);
    lb_qopts o;
    lb_qopts_init(&o);
    o.block_size = 32;
    lb_qresult a, b;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    assert_int_equal(lb_billm_quantize(W, rows, cols, H, &o, &a, NULL), 0);
    omp_set_num_threads(3);
    assert_int_equal(lb_billm_quantize(W, rows, cols, H, &o, &b, NULL), 0);
    omp_set_num_threads(saved);
    assert_memory_equal(a.W_hat, b.W_hat, sizeof(float) * (size_t)(rows * cols));
    lb_qresult_free(&a);
    lb_qresult_free(&b);
    free(W);
    free(H);
}

static void test_nan_and_bad_input(void **state)
{
    (void)state;
    const int rows = 4, cols = 16;
    float *W = rand_weights(rows, cols, 51);
    float *H = rand_hessian(cols, 52);
    lb_qopts o;
    lb_qopts_init(&o);
    lb_qresult res;
    lb_err e;
    W[5] = NAN;
    assert_int_equal(lb_billm_quantize(W, rows, cols, H, &o, &res, &e), LB_ENUMERIC);
    assert_non_null(strstr(e.msg, "NaN"));
    assert_null(res.W_hat);
    W[5] = 0.0f;
    H[7] = INFINITY;
    assert_int_equal(lb_billm_quantize(W, rows, cols, H, &o, &res, &e), LB_ENUMERIC);
    H[7] = 0.0f;
    H[7 * cols] = 0.0f;
    assert_int_equal(lb_billm_quantize(W, rows, cols, NULL, &o, &res, &e), LB_EINVAL);
    assert_int_equal(lb_billm_quantize(W, rows, cols, H, &o, &res, &e), 0);
    /* corrupted packed data is refused */
    float *D = malloc(sizeof(float) * (size_t)(rows * cols));
    lb_qfield *fsal = (lb_qfield *)lb_qpacked_field(&res.packed, "salient");
    uint32_t old = lb_qfield_get(fsal, 0);
    lb_qfield_put(fsal, 0, !old); /* now sign2/group lengths disagree with the bitmap */
    assert_int_equal(lb_billm_dequantize(&res.packed, D, &e), LB_EFORMAT);
    lb_qfield_put(fsal, 0, old);
    lb_qfield *fbs = (lb_qfield *)lb_qpacked_field(&res.packed, "block_size");
    lb_qfield_put(fbs, 0, 0);
    assert_int_equal(lb_billm_dequantize(&res.packed, D, &e), LB_EFORMAT);
    free(D);
    lb_qresult_free(&res);
    free(W);
    free(H);
}

/* Degenerate shapes: a single row, a single column, a single weight. */
static void test_tiny_shapes(void **state)
{
    (void)state;
    const int64_t shapes[4][2] = {{1, 1}, {1, 7}, {5, 1}, {3, 130}};
    for (int i = 0; i < 4; i++) {
        const int64_t rows = shapes[i][0], cols = shapes[i][1];
        float *W = rand_weights(rows, cols, 81 + (uint64_t)i);
        float *H = rand_hessian(shapes[i][1], 82 + (uint64_t)i);
        lb_qopts o;
        lb_qopts_init(&o);
        lb_test_check_packed_roundtrip(lb_billm_quantize, lb_billm_dequantize, W, rows, cols, H,
                                       &o);
        free(W);
        free(H);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_shapes),
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_residual_binarization_by_hand),
        cmocka_unit_test(test_plan_matches_reference),
        cmocka_unit_test(test_outlier_columns_exact),
        cmocka_unit_test(test_method_matches_reference),
        cmocka_unit_test(test_dead_column),
        cmocka_unit_test(test_compensation_lowers_error),
        cmocka_unit_test(test_salient_criterion),
        cmocka_unit_test(test_thread_count_invariant),
        cmocka_unit_test(test_nan_and_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
