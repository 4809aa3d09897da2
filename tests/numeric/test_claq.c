/* CLAQ: the plan (adaptive precision, reservation), the fast kernel against a slow
 * double-precision OBS reference, packing, bit accounting and corrupt input. */
#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_claq.h"
#include "lb_dtype.h"
#include "lb_quant.h"
#include "lb_ref_obs.h"

/* Heavy-tailed W (rows, cols): normal, with a few large entries in some columns. */
static void make_weights(float *W, int rows, int cols, uint64_t *rng)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float v = lb_test_rand_normal(rng);
            if (j % 3 == 0 && lb_test_rand_uniform(rng) < 0.15f)
                v *= 6.0f;
            W[i * cols + j] = v;
        }
}

static float *transpose(const float *W, int rows, int cols)
{
    float *T = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    assert_non_null(T);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            T[j * rows + i] = W[i * cols + j];
    return T;
}

static void test_plan_fractional_bits_exact(void **state)
{
    (void)state;
    enum { R = 64, C = 200 };
    uint64_t rng = 3;
    float *W = malloc(sizeof(float) * R * C);
    assert_non_null(W);
    make_weights(W, R, C, &rng);
    float *Wt = transpose(W, R, C);
    const double targets[] = {1.0, 2.0, 2.05, 2.1, 2.2, 2.5, 3.0, 3.1, 3.99, 4.0};
    int32_t width[C], keep[C];
    double score[C];
    for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
        lb_qopts o;
        lb_qopts_init(&o);
        o.bits = targets[t];
        o.outlier_threshold = 2.0;
        lb_err err = {0};
        assert_int_equal(lb_claq_plan(Wt, R, C, NULL, NULL, &o, width, keep, score, &err), 0);
        int base = (int)floor(targets[t] + 1e-9);
        long n_hi = lround((targets[t] - base) * C), wide = 0, total = 0;
        double min_wide = INFINITY, max_narrow = -INFINITY;
        for (int j = 0; j < C; j++) {
            assert_true(width[j] == base || width[j] == base + 1);
            total += width[j];
            if (width[j] == base + 1) {
                wide++;
                min_wide = fmin(min_wide, score[j]);
            } else {
                max_narrow = fmax(max_narrow, score[j]);
            }
        }
        assert_int_equal(wide, n_hi);
        /* the average lands on the target up to whole columns */
        assert_true(fabs((double)total / C - targets[t]) <= 0.5 / C + 1e-12);
        if (wide > 0 && wide < C)
            assert_true(min_wide >= max_narrow); /* the widest columns are the top-ranked */
    }
    lb_qopts o;
    lb_qopts_init(&o);
    lb_err err = {0};
    o.bits = 4.5;
    assert_int_equal(lb_claq_plan(Wt, R, C, NULL, NULL, &o, width, keep, NULL, &err), LB_EINVAL);
    o.bits = 0.5;
    assert_int_equal(lb_claq_plan(Wt, R, C, NULL, NULL, &o, width, keep, NULL, &err), LB_EINVAL);
    o.bits = 2.0;
    o.outlier_hessian_score = true;
    assert_int_equal(lb_claq_plan(Wt, R, C, NULL, NULL, &o, width, keep, NULL, &err), LB_EINVAL);
    free(W);
    free(Wt);
}

static void test_plan_scores(void **state)
{
    (void)state;
    /* 4 columns, mean|W| = 1 exactly; threshold 2: counts 0, 2, 1, 3. */
    enum { R = 4, C = 4 };
    const float W[R * C] = {
        0.5f, 3.0f, 0.5f, 2.0f, //
        0.5f, 2.0f, 0.5f, 2.0f, //
        0.5f, 0.5f, 2.5f, 2.0f, //
        0.5f, 0.5f, 0.5f, -0.5f,
    };
    /* mean |W| = (2 + 6 + 4 + 6.5) / 16; t puts the threshold at 1.9 */
    double mean = 0;
    for (int i = 0; i < R * C; i++)
        mean += fabs((double)W[i]);
    mean /= R * C;
    float *Wt = transpose(W, R, C);
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2.5;                 /* 2 of 4 columns at 3 bits */
    o.outlier_threshold = 1.9 / mean;
    o.outlier_top_frac = 0.25;    /* 1 top column */
    o.outlier_keep_top = 0.5;     /* keeps 2 of 4 */
    o.outlier_keep_rest = 0.25;   /* keeps 1 of 4 */
    int32_t width[C], keep[C];
    double score[C];
    lb_err err = {0};
    assert_int_equal(lb_claq_plan(Wt, R, C, NULL, NULL, &o, width, keep, score, &err), 0);
    assert_true(score[0] == 0 && score[1] == 2 && score[2] == 1 && score[3] == 3);
    assert_int_equal(width[3], 3);
    assert_int_equal(width[1], 3);
    assert_int_equal(width[0], 2);
    assert_int_equal(width[2], 2);
    assert_int_equal(keep[3], 2);
    assert_int_equal(keep[0], 1);
    /* Hessian score: sum of w^2 H_jj over outliers; H_11 large flips the order */
    const float hd[C] = {1.0f, 10.0f, 1.0f, 1.0f};
    o.outlier_hessian_score = true;
    assert_int_equal(lb_claq_plan(Wt, R, C, hd, NULL, &o, width, keep, score, &err), 0);
    assert_true(fabs(score[1] - 10.0 * (9.0 + 4.0)) < 1e-9);
    assert_true(fabs(score[3] - 12.0) < 1e-9);
    assert_int_equal(keep[1], 2); /* column 1 is now the top one */
    assert_int_equal(keep[3], 1);
    /* no outliers anywhere: ranked by max |w| (3.0, 2.5, 2.0, 0.5), not by index */
    o.outlier_hessian_score = false;
    o.outlier_threshold = 100.0;
    assert_int_equal(lb_claq_plan(Wt, R, C, NULL, NULL, &o, width, keep, score, &err), 0);
    assert_true(score[0] == 0 && score[1] == 0 && score[2] == 0 && score[3] == 0);
    assert_int_equal(width[1], 3);
    assert_int_equal(width[2], 3);
    assert_int_equal(width[3], 2);
    assert_int_equal(width[0], 2);
    assert_int_equal(keep[1], 2);
    free(Wt);
}

/* ---- slow reference CLAQ ---- */

typedef struct {
    const lb_qopts *o;
    int rows, cols;
    int width[64], keep[64]; /* processing order */
} ref_claq;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Optimal contiguous partition of sorted xs[0..n) into k runs (n >= k), by enumeration of
 * cut positions. OUT: means (k,). */
static double ref_best_runs(const double *xs, int lo, int n, int k, double *means)
{
    if (k == 1) {
        double s = 0, q = 0;
        for (int i = lo; i < n; i++) {
            s += xs[i];
            q += xs[i] * xs[i];
        }
        means[0] = s / (n - lo);
        return q - s * s / (n - lo);
    }
    double best = INFINITY, tmp[16];
    for (int cut = lo + 1; cut <= n - (k - 1); cut++) {
        double s = 0, q = 0;
        for (int i = lo; i < cut; i++) {
            s += xs[i];
            q += xs[i] * xs[i];
        }
        double v = q - s * s / (cut - lo) + ref_best_runs(xs, cut, n, k - 1, tmp + 1);
        if (v < best) {
            best = v;
            means[0] = s / (cut - lo);
            memcpy(means + 1, tmp + 1, sizeof(double) * (size_t)(k - 1));
        }
    }
    return best;
}

static void ref_claq_begin(void *ctx, const ref_obs_state *st)
{
    ref_claq *r = ctx;
    int rows = st->rows, cols = st->cols;
    double mean = 0;
    for (int i = 0; i < rows * cols; i++)
        mean += fabs(st->W0[i]);
    mean /= rows * cols;
    double score[64], tie[64];
    for (int c = 0; c < cols; c++) {
        score[c] = tie[c] = 0;
        for (int i = 0; i < rows; i++) {
            double a = fabs((double)(float)st->W0[i * cols + c]);
            if (a >= r->o->outlier_threshold * mean)
                score[c] += r->o->outlier_hessian_score ? a * a * st->hdiag[c] : 1.0;
            double t = r->o->outlier_hessian_score ? a * a * st->hdiag[c] : a;
            tie[c] = fmax(tie[c], t);
        }
    }
    /* rank: selection by (score desc, original column asc) */
    int used[64] = {0};
    int base = (int)floor(r->o->bits + 1e-9);
    long n_hi = lround((r->o->bits - base) * cols), n_top = lround(r->o->outlier_top_frac * cols);
    for (int rank = 0; rank < cols; rank++) {
        int best = -1;
        for (int c = 0; c < cols; c++)
            if (!used[c] &&
                (best < 0 || score[c] > score[best] ||
                 (score[c] == score[best] &&
                  (tie[c] > tie[best] || (tie[c] == tie[best] && st->perm[c] < st->perm[best])))))
                best = c;
        used[best] = 1;
        r->width[best] = base + (rank < n_hi);
        double ratio = rank < n_top ? r->o->outlier_keep_top : r->o->outlier_keep_rest;
        r->keep[best] = (int)lround(ratio * rows);
    }
}

static void ref_claq_column(void *ctx, const ref_obs_state *st, int c, const double *w,
                            double *q)
{
    ref_claq *r = ctx;
    int rows = st->rows, k = 1 << r->width[c], nk = r->keep[c];
    int kept[64] = {0};
    for (int t = 0; t < nk; t++) { /* largest |w| among the rest, ties: lower row */
        int best = -1;
        for (int i = 0; i < rows; i++)
            if (!kept[i] && (best < 0 || fabs((double)(float)w[i]) > fabs((double)(float)w[best])))
                best = i;
        kept[best] = 1;
    }
    double xs[64], means[16];
    int n = 0;
    for (int i = 0; i < rows; i++)
        if (!kept[i] || r->o->centroids_with_outliers)
            xs[n++] = (double)(float)w[i];
    qsort(xs, (size_t)n, sizeof(double), cmp_double);
    int ke = n < k ? n : k;
    ref_best_runs(xs, 0, n, ke, means);
    float cent[16];
    for (int m = 0; m < k; m++)
        cent[m] = lb_f16_to_f32(lb_f32_to_f16((float)means[m < ke ? m : ke - 1]));
    for (int i = 0; i < rows; i++) {
        if (kept[i]) {
            q[i] = lb_f16_to_f32(lb_f32_to_f16((float)w[i]));
            continue;
        }
        int best = 0;
        for (int m = 1; m < k; m++)
            if (fabs(w[i] - (double)cent[m]) < fabs(w[i] - (double)cent[best]))
                best = m;
        q[i] = cent[best];
    }
}

static void run_against_reference(int rows, int cols, double bits, bool act_order,
                                  bool with_outliers, bool hess_score, uint64_t seed)
{
    uint64_t rng = seed;
    float *W = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    float *H = malloc(sizeof(float) * (size_t)cols * (size_t)cols);
    float *Wref = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    float *Wdq = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    assert_non_null(W);
    assert_non_null(H);
    assert_non_null(Wref);
    assert_non_null(Wdq);
    make_weights(W, rows, cols, &rng);
    ref_make_hessian(H, cols, 4 * cols, &rng);
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = bits;
    o.act_order = act_order;
    o.block_size = 8;
    o.outlier_threshold = 2.5;
    o.outlier_top_frac = 0.25;
    o.outlier_keep_top = 2.0 / rows;
    o.outlier_keep_rest = 1.0 / rows;
    o.centroids_with_outliers = with_outliers;
    o.outlier_hessian_score = hess_score;
    lb_qresult res;
    lb_err err = {0};
    int rc = lb_claq_quantize(W, rows, cols, H, &o, &res, &err);
    if (rc)
        fail_msg("claq: %s", err.msg);
    ref_claq rc_ctx = {.o = &o, .rows = rows, .cols = cols};
    ref_obs_hook hook = {&rc_ctx, ref_claq_begin, NULL, ref_claq_column};
    ref_obs_run(W, rows, cols, H, o.damp, act_order, o.block_size, &hook, Wref);
    double maxw = 0, maxd = 0;
    for (int i = 0; i < rows * cols; i++) {
        maxw = fmax(maxw, fabs((double)W[i]));
        maxd = fmax(maxd, fabs((double)res.W_hat[i] - (double)Wref[i]));
    }
    /* float32 engine vs float64 reference: a centroid may round to the neighbouring f16 */
    if (maxd > 2e-3 * maxw)
        fail_msg("claq vs reference: max |diff| %g (max |W| %g), bits %g act %d", maxd, maxw,
                 bits, act_order);
    /* dequantize(packed) == W_hat bit for bit */
    assert_int_equal(lb_claq_dequantize(&res.packed, Wdq, &err), 0);
    assert_memory_equal(Wdq, res.W_hat, sizeof(float) * (size_t)rows * (size_t)cols);
    /* the registry entry is this method */
    const lb_qmethod *m = lb_qmethod_find("claq");
    assert_non_null(m);
    assert_ptr_equal(m->dequantize, lb_claq_dequantize);
    /* bit accounting from the formula in lb_claq.h */
    uint64_t bytes = 0, codes[5] = {0}, cent = 0, nout = 0, maxk = 0;
    for (int c = 0; c < cols; c++) {
        codes[rc_ctx.width[c]] += (uint64_t)(rows - rc_ctx.keep[c]) * (uint64_t)rc_ctx.width[c];
        cent += 16u << rc_ctx.width[c];
        nout += (uint64_t)rc_ctx.keep[c];
        if ((uint64_t)rc_ctx.keep[c] > maxk)
            maxk = (uint64_t)rc_ctx.keep[c];
    }
    uint64_t cnt_bits = 1;
    while ((maxk >> cnt_bits) != 0)
        cnt_bits++;
    uint64_t row_bits = 1;
    while (((uint64_t)(rows - 1) >> row_bits) != 0)
        row_bits++;
    bytes += ((uint64_t)cols * 2 + 7) / 8;
    for (int b = 1; b <= 4; b++)
        bytes += (codes[b] + 7) / 8;
    bytes += (cent + 7) / 8 + ((uint64_t)cols * cnt_bits + 7) / 8 + (nout * row_bits + 7) / 8 +
             (nout * 16 + 7) / 8;
    if (act_order) {
        uint64_t pb = 1;
        while (((uint64_t)(cols - 1) >> pb) != 0)
            pb++;
        bytes += ((uint64_t)cols * pb + 7) / 8;
    }
    assert_true(lb_qpacked_bits(&res.packed) == 8 * bytes);
    assert_true(fabs(res.bpw - 8.0 * (double)bytes / ((double)rows * cols)) < 1e-12);
    /* the kept values are stored exactly and their count follows the global-index plan */
    const lb_qfield *fcnt = lb_qpacked_field(&res.packed, "outlier_counts");
    assert_non_null(fcnt);
    for (int c = 0; c < cols; c++)
        assert_int_equal(lb_qfield_get(fcnt, c), rc_ctx.keep[c]);
    lb_qresult_free(&res);
    free(W);
    free(H);
    free(Wref);
    free(Wdq);
}

static void test_matches_reference_2bit(void **state)
{
    (void)state;
    run_against_reference(12, 24, 2.0, false, false, false, 1);
    run_against_reference(12, 24, 2.0, true, false, false, 2);
}

static void test_matches_reference_fractional(void **state)
{
    (void)state;
    run_against_reference(12, 20, 2.25, false, false, false, 3);
    run_against_reference(12, 20, 2.5, true, true, false, 4);
    run_against_reference(10, 17, 3.3, false, false, true, 5);
    run_against_reference(9, 16, 1.5, true, false, true, 6);
}

/* The top-ranked column sits at in-block index 1 of its block (global 13 with blocks of
 * 4). The reference code's bug (ratio[in-block index]) would give it column 1's ratio. */
static void test_outlier_ratio_uses_global_column(void **state)
{
    (void)state;
    enum { R = 100, C = 16 };
    uint64_t rng = 77;
    float *W = malloc(sizeof(float) * R * C), *H = malloc(sizeof(float) * C * C);
    assert_non_null(W);
    assert_non_null(H);
    for (int i = 0; i < R * C; i++)
        W[i] = lb_test_rand_normal(&rng) * 0.1f;
    for (int i = 0; i < 20; i++)
        W[(i * 5) * C + 13] = (i % 2 ? 30.0f : -30.0f) + 0.01f * (float)i; /* 20 outliers */
    for (int i = 0; i < 3; i++)
        W[(i * 7 + 1) * C + 6] = 25.0f; /* second-ranked column */
    ref_make_hessian(H, C, 64, &rng);
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2.0;
    o.block_size = 4;
    o.outlier_top_frac = 1.0 / C; /* one top column */
    o.outlier_keep_top = 0.2;     /* 20 of 100 */
    o.outlier_keep_rest = 0.03;   /* 3 of 100 */
    lb_qresult res;
    lb_err err = {0};
    if (lb_claq_quantize(W, R, C, H, &o, &res, &err))
        fail_msg("claq: %s", err.msg);
    const lb_qfield *fcnt = lb_qpacked_field(&res.packed, "outlier_counts");
    assert_non_null(fcnt);
    for (int c = 0; c < C; c++)
        assert_int_equal(lb_qfield_get(fcnt, c), c == 13 ? 20 : 3);
    /* all 20 outliers of column 13 are reserved: W_hat there is within f16 rounding of the
     * (slightly compensated) value, never a 2-bit centroid shared with the small weights */
    for (int i = 0; i < 20; i++) {
        double wh = (double)res.W_hat[(i * 5) * C + 13], w = (double)W[(i * 5) * C + 13];
        assert_true(fabs(wh - w) < 1.0);
    }
    float *Wdq = malloc(sizeof(float) * R * C);
    assert_non_null(Wdq);
    assert_int_equal(lb_claq_dequantize(&res.packed, Wdq, &err), 0);
    assert_memory_equal(Wdq, res.W_hat, sizeof(float) * R * C);
    lb_qresult_free(&res);
    free(W);
    free(H);
    free(Wdq);
}

/* Without the engine's error propagation (H diagonal) the first column is quantized from
 * the original values: the kept ones come back as their f16 values, exactly. */
static void test_kept_values_exact_and_codebook_size(void **state)
{
    (void)state;
    enum { R = 50, C = 6 };
    uint64_t rng = 8;
    float W[R * C], H[C * C] = {0};
    for (int i = 0; i < R * C; i++)
        W[i] = lb_test_rand_normal(&rng);
    for (int j = 0; j < C; j++)
        H[j * C + j] = 1.0f + (float)j;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 3.0;
    o.outlier_keep_top = 0.1;
    o.outlier_keep_rest = 0.1;
    lb_qresult res;
    lb_err err = {0};
    assert_int_equal(lb_claq_quantize(W, R, C, H, &o, &res, &err), 0);
    for (int j = 0; j < C; j++) {
        /* 5 largest |w| are f16(w); the other 45 use at most 8 distinct values */
        int order[R];
        for (int i = 0; i < R; i++)
            order[i] = i;
        for (int a = 0; a < R; a++)
            for (int b = a + 1; b < R; b++)
                if (fabsf(W[order[b] * C + j]) > fabsf(W[order[a] * C + j])) {
                    int t = order[a];
                    order[a] = order[b];
                    order[b] = t;
                }
        for (int t = 0; t < 5; t++) {
            float w = W[order[t] * C + j];
            assert_true(res.W_hat[order[t] * C + j] == lb_f16_to_f32(lb_f32_to_f16(w)));
        }
        float distinct[R];
        int nd = 0;
        for (int t = 5; t < R; t++) {
            float v = res.W_hat[order[t] * C + j];
            int seen = 0;
            for (int d = 0; d < nd; d++)
                seen |= distinct[d] == v;
            if (!seen)
                distinct[nd++] = v;
            assert_true(v == lb_f16_to_f32(lb_f32_to_f16(v))); /* a stored f16 centroid */
        }
        assert_true(nd <= 8);
    }
    lb_qresult_free(&res);
}

static void test_dequantize_rejects_corrupt(void **state)
{
    (void)state;
    enum { R = 16, C = 8 };
    uint64_t rng = 12;
    float W[R * C], H[C * C], out[R * C];
    for (int i = 0; i < R * C; i++)
        W[i] = lb_test_rand_normal(&rng);
    ref_make_hessian(H, C, 32, &rng);
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2.0;
    o.outlier_keep_rest = 2.0 / R;
    o.outlier_keep_top = 2.0 / R;
    lb_qresult res;
    lb_err err = {0};
    assert_int_equal(lb_claq_quantize(W, R, C, H, &o, &res, &err), 0);
    /* outlier rows not ascending */
    lb_qfield *frow = NULL;
    for (int i = 0; i < res.packed.nfields; i++)
        if (!strcmp(res.packed.fields[i].name, "outlier_rows"))
            frow = &res.packed.fields[i];
    assert_non_null(frow);
    uint32_t r0 = lb_qfield_get(frow, 0), r1 = lb_qfield_get(frow, 1);
    lb_qfield_put(frow, 0, r1);
    lb_qfield_put(frow, 1, r0);
    assert_int_equal(lb_claq_dequantize(&res.packed, out, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "ascending"));
    lb_qfield_put(frow, 0, r0);
    lb_qfield_put(frow, 1, r1);
    assert_int_equal(lb_claq_dequantize(&res.packed, out, &err), 0);
    /* wrong method name and a missing field */
    memcpy(res.packed.method, "gptq", 5);
    assert_int_equal(lb_claq_dequantize(&res.packed, out, &err), LB_EFORMAT);
    memcpy(res.packed.method, "claq", 5);
    memcpy(res.packed.fields[0].name, "xidths", 7);
    assert_int_equal(lb_claq_dequantize(&res.packed, out, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "widths"));
    lb_qresult_free(&res);
    /* options */
    o.bits = 5.0;
    assert_int_equal(lb_claq_quantize(W, R, C, H, &o, &res, &err), LB_EINVAL);
}

/* A dead input channel (H_jj = 0, no signal) and act-order: the engine zeroes that column;
 * the method must still produce a consistent packed matrix. */
static void test_dead_column_act_order(void **state)
{
    (void)state;
    enum { R = 16, C = 12 };
    uint64_t rng = 31;
    float W[R * C], H[C * C], Wdq[R * C];
    for (int i = 0; i < R * C; i++)
        W[i] = lb_test_rand_normal(&rng);
    ref_make_hessian(H, C, 48, &rng);
    for (int j = 0; j < C; j++)
        H[5 * C + j] = H[j * C + 5] = 0.0f;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 2.5;
    o.act_order = true;
    o.block_size = 4;
    lb_qresult res;
    lb_err err = {0};
    if (lb_claq_quantize(W, R, C, H, &o, &res, &err))
        fail_msg("claq: %s", err.msg);
    for (int i = 0; i < R * C; i++)
        assert_true(isfinite(res.W_hat[i]));
    for (int i = 0; i < R; i++)
        assert_true(res.W_hat[i * C + 5] == 0.0f); /* zeroed by the engine, codebook {0} */
    assert_int_equal(lb_claq_dequantize(&res.packed, Wdq, &err), 0);
    assert_memory_equal(Wdq, res.W_hat, sizeof Wdq);
    assert_non_null(lb_qpacked_field(&res.packed, "perm"));
    lb_qresult_free(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_fractional_bits_exact),
        cmocka_unit_test(test_plan_scores),
        cmocka_unit_test(test_matches_reference_2bit),
        cmocka_unit_test(test_matches_reference_fractional),
        cmocka_unit_test(test_outlier_ratio_uses_global_column),
        cmocka_unit_test(test_kept_values_exact_and_codebook_size),
        cmocka_unit_test(test_dequantize_rejects_corrupt),
        cmocka_unit_test(test_dead_column_act_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
