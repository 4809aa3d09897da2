/* QBB: the fast kernels against plain double-precision references written here. */
#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "lb_dtype.h"
#include "lb_qbb.h"
#include "lb_quant.h"
#include "lb_test_qref.h"


static float *rand_matrix(int64_t rows, int64_t cols, uint64_t seed)
{
    float *W = malloc((size_t)(rows * cols) * sizeof(float));
    assert_non_null(W);
    uint64_t s = seed;
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = 0.02f * lb_test_rand_normal(&s);
    return W;
}

/* H = XᵀX / nx + eps I with correlated X (nx, cols): a realistic SPD Hessian. */
static float *rand_hessian(int64_t cols, uint64_t seed)
{
    return lb_test_correlated_hessian(cols, seed, 0.6, 5, true, 1e-3);
}

static double sgn_ref(uint32_t c, int i)
{
    return ((c >> i) & 1u) ? 1.0 : -1.0;
}

/* Reference reconstruction of one weight, double. */
static double value_ref(uint32_t c, const float *s, int n)
{
    double v = 0.0;
    for (int i = 0; i < n; i++)
        v += sgn_ref(c, i) * (double)s[i];
    return v;
}

/* Reference objective: Σ_r (w - ŵ) H (w - ŵ)ᵀ (H NULL: plain squared error). */
static double objective_ref(const float *W, int64_t rows, int64_t cols, int n,
                            const uint8_t *codes, const float *scales, const float *H)
{
    double total = 0.0;
    double *e = malloc((size_t)cols * sizeof(double));
    assert_non_null(e);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < cols; j++)
            e[j] = (double)W[r * cols + j] - value_ref(codes[r * cols + j], scales + r * n, n);
        if (!H) {
            for (int64_t j = 0; j < cols; j++)
                total += e[j] * e[j];
        } else {
            for (int64_t a = 0; a < cols; a++)
                for (int64_t b = 0; b < cols; b++)
                    total += e[a] * (double)H[a * cols + b] * e[b];
        }
    }
    free(e);
    return total;
}

/* Gaussian elimination with partial pivoting, n <= 4. */
static void solve_ref(double *A, double *x, int n)
{
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(A[i * (n + 1) + k]) > fabs(A[p * (n + 1) + k]))
                p = i;
        for (int j = 0; j <= n; j++) {
            double t = A[k * (n + 1) + j];
            A[k * (n + 1) + j] = A[p * (n + 1) + j];
            A[p * (n + 1) + j] = t;
        }
        for (int i = k + 1; i < n; i++) {
            double f = A[i * (n + 1) + k] / A[k * (n + 1) + k];
            for (int j = k; j <= n; j++)
                A[i * (n + 1) + j] -= f * A[k * (n + 1) + j];
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        double a = A[i * (n + 1) + n];
        for (int j = i + 1; j < n; j++)
            a -= A[i * (n + 1) + j] * x[j];
        x[i] = a / A[i * (n + 1) + i];
    }
}

/* Reference LS scales of one row: normal equations (B H Bᵀ) s = B H w built naively. */
static void ls_ref(const float *w, const uint8_t *c, int64_t cols, int n, const float *H,
                   double *s)
{
    double A[LB_QBB_MAX_BASES * (LB_QBB_MAX_BASES + 1)] = {0};
    for (int i = 0; i < n; i++) {
        for (int64_t a = 0; a < cols; a++) {
            for (int64_t b = 0; b < cols; b++) {
                double h = H ? (double)H[a * cols + b] : (a == b ? 1.0 : 0.0);
                if (h == 0.0)
                    continue;
                double bi = sgn_ref(c[a], i) * h;
                for (int k = 0; k < n; k++)
                    A[i * (n + 1) + k] += bi * sgn_ref(c[b], k);
                A[i * (n + 1) + n] += bi * (double)w[b];
            }
        }
    }
    solve_ref(A, s, n);
}

static void test_registry(void **state)
{
    (void)state;
    assert_ptr_equal(lb_qmethod_find("qbb"), &lb_qmethod_qbb);
}

static void test_greedy_init_matches_reference(void **state)
{
    (void)state;
    const int64_t rows = 7, cols = 53;
    for (int n = 1; n <= 4; n++) {
        float *W = rand_matrix(rows, cols, 11 + (uint64_t)n);
        uint8_t *codes = malloc((size_t)(rows * cols));
        float scales[7 * 4];
        lb_qbb_init_greedy(W, rows, cols, n, codes, scales);
        double R[53];
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = 0; j < cols; j++)
                R[j] = W[r * cols + j];
            for (int i = 0; i < n; i++) {
                double mean_abs = 0.0;
                for (int64_t j = 0; j < cols; j++)
                    mean_abs += fabs(R[j]);
                mean_abs /= (double)cols;
                LB_ASSERT_NEAR(scales[r * n + i], mean_abs, 1e-6 * mean_abs + 1e-12);
                for (int64_t j = 0; j < cols; j++) {
                    double b = R[j] >= 0.0 ? 1.0 : -1.0;
                    assert_true(sgn_ref(codes[r * cols + j], i) == b);
                    R[j] -= b * mean_abs;
                }
            }
        }
        free(W);
        free(codes);
    }
}

static void test_code_update_is_brute_force_optimal(void **state)
{
    (void)state;
    const int64_t rows = 5, cols = 97;
    uint64_t s = 5;
    for (int n = 1; n <= 4; n++) {
        float *W = rand_matrix(rows, cols, 21 + (uint64_t)n);
        uint8_t *codes = malloc((size_t)(rows * cols));
        float scales[5 * 4];
        for (int i = 0; i < rows * n; i++)
            scales[i] = 0.03f * lb_test_rand_uniform(&s) - 0.005f; /* any sign */
        lb_qbb_update_codes(W, rows, cols, n, scales, codes);
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = 0; j < cols; j++) {
                double w = W[r * cols + j], best = INFINITY;
                for (uint32_t c = 0; c < (1u << n); c++) {
                    double d = w - value_ref(c, scales + r * n, n);
                    if (d * d < best)
                        best = d * d;
                }
                double got = w - value_ref(codes[r * cols + j], scales + r * n, n);
                assert_true(codes[r * cols + j] < (1u << n));
                assert_true(got * got <= best + 1e-12);
            }
        }
        free(W);
        free(codes);
    }
}

static void check_ls(int n, bool weighted)
{
    const int64_t rows = 6, cols = 40;
    float *W = rand_matrix(rows, cols, 31 + (uint64_t)n);
    float *H = weighted ? rand_hessian(cols, 77) : NULL;
    uint8_t *codes = malloc((size_t)(rows * cols));
    uint64_t s = 99 + (uint64_t)n;
    for (int64_t i = 0; i < rows * cols; i++)
        codes[i] = (uint8_t)(lb_test_rand_u64(&s) & ((1u << n) - 1u));
    float scales[6 * 4];
    double obj[6];
    assert_int_equal(lb_qbb_ls_scales(W, rows, cols, n, codes, H, 0.0, false, scales, obj, NULL),
                     0);
    for (int64_t r = 0; r < rows; r++) {
        double want[4];
        ls_ref(W + r * cols, codes + r * cols, cols, n, H, want);
        for (int i = 0; i < n; i++)
            LB_ASSERT_NEAR(scales[r * n + i], want[i], 2e-4 * fabs(want[i]) + 2e-7);
        /* reported objective = reference objective of that row */
        double ref = objective_ref(W + r * cols, 1, cols, n, codes + r * cols, scales + r * n, H);
        LB_ASSERT_NEAR(obj[r], ref, 1e-4 * ref + 1e-12);
        /* optimality: nudging any scale raises the objective */
        for (int i = 0; i < n; i++) {
            for (int sign = -1; sign <= 1; sign += 2) {
                float t[4];
                memcpy(t, scales + r * n, sizeof(float) * (size_t)n);
                t[i] += (float)sign * 1e-3f;
                double moved = objective_ref(W + r * cols, 1, cols, n, codes + r * cols, t, H);
                assert_true(moved >= ref * (1.0 - 1e-9));
            }
        }
    }
    free(W);
    free(H);
    free(codes);
}

static void test_ls_scales_plain(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++)
        check_ls(n, false);
}

static void test_ls_scales_hessian(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++)
        check_ls(n, true);
}

/* A row whose codes make B Bᵀ singular (two identical bases) or whose weights are all
 * zero must still give finite scales and the right reconstruction. */
static void test_ls_singular_rows(void **state)
{
    (void)state;
    const int64_t rows = 2, cols = 16;
    float W[32];
    uint8_t codes[32];
    for (int j = 0; j < cols; j++) {
        W[j] = (j % 3 == 0) ? 0.5f : -0.25f;
        codes[j] = (j % 3 == 0) ? 3 : 0; /* bases 0 and 1 identical */
        W[cols + j] = 0.0f;
        codes[cols + j] = (uint8_t)(j & 3);
    }
    float scales[4];
    assert_int_equal(lb_qbb_ls_scales(W, rows, cols, 2, codes, NULL, 1e-7, false, scales, NULL,
                                      NULL),
                     0);
    for (int i = 0; i < 4; i++)
        assert_true(isfinite(scales[i]));
    /* best fit of ±a to {0.5, -0.25} pattern: s0 + s1 = mean |.| weighted = LS */
    double sum = (double)scales[0] + (double)scales[1];
    double want = (6.0 * 0.5 + 10.0 * 0.25) / 16.0;
    LB_ASSERT_NEAR(sum, want, 1e-5);
    LB_ASSERT_NEAR(scales[2], 0.0, 1e-12);
    LB_ASSERT_NEAR(scales[3], 0.0, 1e-12);
}

/* Refinement: fitting with k rounds is the prefix of fitting with k+1 rounds, so the
 * plain error of the result, recomputed by the reference, must not increase in k. */
static void check_monotone(int n)
{
    const int64_t rows = 8, cols = 48;
    const int rounds = 6;
    float *W = rand_matrix(rows, cols, 41 + (uint64_t)n);
    uint8_t *codes = malloc((size_t)(rows * cols));
    float scales[8 * 4];
    double trace[7], prev = INFINITY, first = 0.0;
    for (int k = 0; k <= rounds; k++) {
        lb_qbb_cfg cfg;
        lb_qbb_cfg_init(&cfg);
        cfg.bases = n;
        cfg.refine_iters = k;
        assert_int_equal(lb_qbb_fit(W, rows, cols, NULL, &cfg, codes, scales, trace, NULL, NULL),
                         0);
        double obj = objective_ref(W, rows, cols, n, codes, scales, NULL);
        LB_ASSERT_NEAR(trace[k], obj, 1e-6 * obj);
        for (int i = 1; i <= k; i++)
            assert_true(trace[i] <= trace[i - 1]);
        assert_true(obj <= prev * (1.0 + 1e-9));
        if (k == 0)
            first = obj;
        prev = obj;
    }
    /* The refinement must actually help for N >= 2. For N = 1 the greedy init
     * (sign, mean |w|) is already the joint optimum, so it must stay put. */
    if (n >= 2)
        assert_true(prev < 0.99 * first);
    else
        LB_ASSERT_NEAR(prev, first, 1e-9 * first);
    free(W);
    free(codes);
}

/* Weighted: the same codes as the plain fit, then the exact H-weighted scales, whose
 * H-objective (recomputed by the reference) is not above that of the plain scales. */
static void check_weighted(int n)
{
    const int64_t rows = 8, cols = 48;
    float *W = rand_matrix(rows, cols, 43 + (uint64_t)n);
    float *H = rand_hessian(cols, 5);
    uint8_t *cp = malloc((size_t)(rows * cols)), *cw = malloc((size_t)(rows * cols));
    float sp[8 * 4], sw[8 * 4];
    double hobj[2] = {-1.0, -1.0};
    lb_qbb_cfg cfg;
    lb_qbb_cfg_init(&cfg);
    cfg.bases = n;
    cfg.refine_iters = 4;
    assert_int_equal(lb_qbb_fit(W, rows, cols, NULL, &cfg, cp, sp, NULL, hobj, NULL), 0);
    assert_true(hobj[0] == -1.0); /* untouched when not weighted */
    cfg.hessian_weighted = true;
    assert_int_equal(lb_qbb_fit(W, rows, cols, H, &cfg, cw, sw, NULL, hobj, NULL), 0);
    assert_memory_equal(cp, cw, (size_t)(rows * cols));
    double before = objective_ref(W, rows, cols, n, cp, sp, H);
    double after = objective_ref(W, rows, cols, n, cw, sw, H);
    LB_ASSERT_NEAR(hobj[0], before, 1e-4 * before);
    LB_ASSERT_NEAR(hobj[1], after, 1e-4 * before);
    assert_true(after < 0.999 * before); /* a correlated H: the weighted fit must pay off */
    free(W);
    free(H);
    free(cp);
    free(cw);
}

static void test_refinement_monotone_plain(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++)
        check_monotone(n);
}

static void test_hessian_weighted_scales_lower_weighted_error(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++)
        check_weighted(n);
}

static void test_quantize_pack_bpw_dequantize(void **state)
{
    (void)state;
    const int64_t rows = 12, cols = 64;
    float *W = rand_matrix(rows, cols, 51);
    float *H = rand_hessian(cols, 52);
    double prev_err = INFINITY;
    for (int n = 1; n <= 4; n++) {
        for (int weighted = 0; weighted <= 1; weighted++) {
            lb_qopts o;
            lb_qopts_init(&o);
            o.bases = n;
            o.refine_iters = 5;
            o.hessian_weighted = weighted;
            lb_qresult res;
            lb_err e;
            assert_int_equal(lb_qmethod_qbb.quantize(W, rows, cols, H, &o, &res, &e), 0);
            /* bpw = stored bits / weights = N + 16 N / cols */
            assert_int_equal(lb_qpacked_bits(&res.packed),
                             (uint64_t)(n * rows * cols + 16 * n * rows));
            LB_ASSERT_NEAR(res.bpw, (double)n + 16.0 * (double)n / (double)cols, 1e-12);
            LB_ASSERT_NEAR(res.bpw, 8.0 * (double)(lb_qpacked_field(&res.packed, "signs")->nbytes +
                                                       lb_qpacked_field(&res.packed, "scales")->nbytes) /
                                            (double)(rows * cols), 1e-12);
            /* dequantize(packed) == W_hat bit for bit */
            float *D = malloc((size_t)(rows * cols) * sizeof(float));
            assert_int_equal(lb_qmethod_qbb.dequantize(&res.packed, D, &e), 0);
            assert_memory_equal(D, res.W_hat, (size_t)(rows * cols) * sizeof(float));
            /* W_hat takes at most 2^N values per row, built from the stored f16 scales */
            const lb_qfield *fs = lb_qpacked_field(&res.packed, "scales");
            for (int64_t r = 0; r < rows; r++) {
                float s[4];
                for (int i = 0; i < n; i++)
                    s[i] = lb_qfield_get_float(fs, r * n + i);
                for (int64_t j = 0; j < cols; j++) {
                    bool found = false;
                    for (uint32_t c = 0; c < (1u << n); c++)
                        found = found || lb_qbb_value(c, s, n) == res.W_hat[r * cols + j];
                    assert_true(found);
                }
            }
            if (!weighted) {
                double err2 = 0.0;
                for (int64_t i = 0; i < rows * cols; i++)
                    err2 += ((double)W[i] - (double)res.W_hat[i]) * ((double)W[i] - (double)res.W_hat[i]);
                assert_true(err2 < prev_err); /* more bases, less error */
                prev_err = err2;
            }
            free(D);
            lb_qresult_free(&res);
        }
    }
    free(W);
    free(H);
}

static void test_hessian_weighting_lowers_weighted_error(void **state)
{
    (void)state;
    const int64_t rows = 16, cols = 48;
    float *W = rand_matrix(rows, cols, 61);
    float *H = rand_hessian(cols, 62);
    double e_plain = 0.0, e_w = 0.0;
    for (int weighted = 0; weighted <= 1; weighted++) {
        lb_qopts o;
        lb_qopts_init(&o);
        o.bases = 2;
        o.hessian_weighted = weighted;
        lb_qresult res;
        assert_int_equal(lb_qbb_quantize(W, rows, cols, H, &o, &res, NULL), 0);
        double e;
        assert_int_equal(lb_quant_error(W, res.W_hat, rows, cols, H, &e, NULL, NULL), 0);
        *(weighted ? &e_w : &e_plain) = e;
        lb_qresult_free(&res);
    }
    assert_true(e_w < e_plain);
    free(W);
    free(H);
}

static void test_dead_column(void **state)
{
    (void)state;
    const int64_t rows = 6, cols = 32;
    float *W = rand_matrix(rows, cols, 71);
    float *H = rand_hessian(cols, 72);
    for (int64_t j = 0; j < cols; j++) { /* column 5 never sees input */
        H[5 * cols + j] = 0.0f;
        H[j * cols + 5] = 0.0f;
    }
    lb_qopts o;
    lb_qopts_init(&o);
    o.bases = 3;
    o.hessian_weighted = true;
    lb_qresult res;
    lb_err e;
    assert_int_equal(lb_qbb_quantize(W, rows, cols, H, &o, &res, &e), 0);
    for (int64_t i = 0; i < rows * cols; i++)
        assert_true(isfinite(res.W_hat[i]));
    float *D = malloc((size_t)(rows * cols) * sizeof(float));
    assert_int_equal(lb_qbb_dequantize(&res.packed, D, &e), 0);
    assert_memory_equal(D, res.W_hat, (size_t)(rows * cols) * sizeof(float));
    free(D);
    lb_qresult_free(&res);
    free(W);
    free(H);
}

static void test_nan_input_rejected(void **state)
{
    (void)state;
    const int64_t rows = 4, cols = 16;
    float *W = rand_matrix(rows, cols, 81);
    W[9] = NAN;
    lb_qopts o;
    lb_qopts_init(&o);
    lb_qresult res;
    lb_err e;
    lb_err_clear(&e);
    assert_int_equal(lb_qbb_quantize(W, rows, cols, NULL, &o, &res, &e), LB_ENUMERIC);
    assert_non_null(strstr(e.msg, "NaN"));
    assert_null(res.W_hat);
    free(W);
}

static void test_bad_options_and_packed(void **state)
{
    (void)state;
    const int64_t rows = 4, cols = 16;
    float *W = rand_matrix(rows, cols, 91);
    lb_qopts o;
    lb_qopts_init(&o);
    lb_qresult res;
    lb_err e;
    o.bases = 5;
    assert_int_equal(lb_qbb_quantize(W, rows, cols, NULL, &o, &res, &e), LB_EINVAL);
    o.bases = 2;
    o.hessian_weighted = true;
    assert_int_equal(lb_qbb_quantize(W, rows, cols, NULL, &o, &res, &e), LB_EINVAL);
    o.hessian_weighted = false;
    assert_int_equal(lb_qbb_quantize(W, rows, cols, NULL, &o, &res, &e), 0);
    float *D = malloc((size_t)(rows * cols) * sizeof(float));
    /* a corrupted shape must be refused, not read out of bounds */
    lb_qfield *fb = (lb_qfield *)lb_qpacked_field(&res.packed, "signs");
    fb->shape[2] = cols + 1;
    assert_int_equal(lb_qbb_dequantize(&res.packed, D, &e), LB_EFORMAT);
    fb->shape[2] = cols;
    lb_qfield *fs = (lb_qfield *)lb_qpacked_field(&res.packed, "scales");
    lb_qfield_put(fs, 0, 0x7e00u); /* NaN scale */
    assert_int_equal(lb_qbb_dequantize(&res.packed, D, &e), LB_ENUMERIC);
    free(D);
    lb_qresult_free(&res);
    free(W);
}

/* gptq_init: the bases are fitted to the 4-bit GPTQ reconstruction, i.e. the result is
 * exactly lb_qbb_fit on gptq's W_hat (then f16 scales and the final code update). */
static void test_gptq_init_fits_gptq_reconstruction(void **state)
{
    (void)state;
    const lb_qmethod *gptq = lb_qmethod_find("gptq");
    if (!gptq)
        skip();
    const int64_t rows = 10, cols = 64;
    float *W = rand_matrix(rows, cols, 101);
    float *H = rand_hessian(cols, 102);
    lb_qopts o;
    lb_qopts_init(&o);
    o.bases = 3;
    o.refine_iters = 3;
    o.gptq_init = true;
    lb_qresult res, g;
    lb_err e;
    assert_int_equal(lb_qbb_quantize(W, rows, cols, H, &o, &res, &e), 0);
    lb_qopts go = o;
    go.bits = 4;
    assert_int_equal(gptq->quantize(W, rows, cols, H, &go, &g, &e), 0);
    lb_qbb_cfg cfg;
    lb_qbb_cfg_init(&cfg);
    cfg.bases = 3;
    cfg.refine_iters = 3;
    uint8_t *codes = malloc((size_t)(rows * cols));
    float scales[10 * 3];
    assert_int_equal(lb_qbb_fit(g.W_hat, rows, cols, NULL, &cfg, codes, scales, NULL, NULL, &e), 0);
    for (int i = 0; i < rows * 3; i++)
        scales[i] = lb_f16_to_f32(lb_f32_to_f16(scales[i]));
    lb_qbb_update_codes(g.W_hat, rows, cols, 3, scales, codes);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++)
            assert_true(res.W_hat[r * cols + j] ==
                        lb_qbb_value(codes[r * cols + j], scales + r * 3, 3));
    /* and it differs from fitting W itself (the option does something) */
    lb_qresult plain;
    o.gptq_init = false;
    assert_int_equal(lb_qbb_quantize(W, rows, cols, H, &o, &plain, &e), 0);
    assert_memory_not_equal(plain.W_hat, res.W_hat, (size_t)(rows * cols) * sizeof(float));
    free(codes);
    lb_qresult_free(&plain);
    lb_qresult_free(&g);
    lb_qresult_free(&res);
    free(W);
    free(H);
}

/* Rows are fitted in parallel; the result must not depend on the thread count. */
static void test_thread_count_invariant(void **state)
{
    (void)state;
    const int64_t rows = 40, cols = 64;
    float *W = rand_matrix(rows, cols, 111);
    float *H = rand_hessian(cols, 112);
    lb_qopts o;
    lb_qopts_init(&o);
    o.bases = 3;
    o.hessian_weighted = true;
    lb_qresult a, b;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    assert_int_equal(lb_qbb_quantize(W, rows, cols, H, &o, &a, NULL), 0);
    omp_set_num_threads(3);
    assert_int_equal(lb_qbb_quantize(W, rows, cols, H, &o, &b, NULL), 0);
    omp_set_num_threads(saved);
    assert_memory_equal(a.W_hat, b.W_hat, (size_t)(rows * cols) * sizeof(float));
    lb_qresult_free(&a);
    lb_qresult_free(&b);
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
        float *W = rand_matrix(rows, cols, 81 + (uint64_t)i);
        float *H = rand_hessian(shapes[i][1], 92 + (uint64_t)i);
        lb_qopts o;
        lb_qopts_init(&o);
        o.bases = 4;
        o.hessian_weighted = true;
        lb_test_check_packed_roundtrip(lb_qbb_quantize, lb_qbb_dequantize, W, rows, cols, H, &o);
        free(W);
        free(H);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_shapes),
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_greedy_init_matches_reference),
        cmocka_unit_test(test_code_update_is_brute_force_optimal),
        cmocka_unit_test(test_ls_scales_plain),
        cmocka_unit_test(test_ls_scales_hessian),
        cmocka_unit_test(test_ls_singular_rows),
        cmocka_unit_test(test_refinement_monotone_plain),
        cmocka_unit_test(test_hessian_weighted_scales_lower_weighted_error),
        cmocka_unit_test(test_quantize_pack_bpw_dequantize),
        cmocka_unit_test(test_hessian_weighting_lowers_weighted_error),
        cmocka_unit_test(test_dead_column),
        cmocka_unit_test(test_nan_input_rejected),
        cmocka_unit_test(test_bad_options_and_packed),
        cmocka_unit_test(test_gptq_init_fits_gptq_reconstruction),
        cmocka_unit_test(test_thread_count_invariant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
