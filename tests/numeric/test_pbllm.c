/* PB-LLM (PB-GPTQ): the salient grid and its zero point, the fast kernel against a slow
 * double-precision OBS reference, per-group salient counts, packing and bit accounting. */
#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_pbllm.h"
#include "lb_quant.h"
#include "lb_ref_obs.h"

/* The salient mask (cols, rows) as bytes, decoded independently from whichever form was
 * stored: the bitmap "mask" or "salient_count" + "salient_pos". OUT *index_form. */
static unsigned char *decode_mask(const lb_qpacked *p, int rows, int cols, int bs,
                                  bool *index_form)
{
    unsigned char *m = calloc((size_t)rows * (size_t)cols, 1);
    assert_non_null(m);
    const lb_qfield *fm = lb_qpacked_field(p, "mask");
    const lb_qfield *fcnt = lb_qpacked_field(p, "salient_count");
    const lb_qfield *fpos = lb_qpacked_field(p, "salient_pos");
    assert_true((fm != NULL) != (fcnt != NULL && fpos != NULL));
    *index_form = fm == NULL;
    if (fm) {
        for (int k = 0; k < rows * cols; k++)
            m[k] = (unsigned char)lb_qfield_get(fm, k);
        return m;
    }
    int64_t t = 0;
    for (int c0 = 0, blk = 0; c0 < cols; c0 += bs, blk++)
        for (int i = 0; i < rows; i++) {
            uint32_t n = lb_qfield_get(fcnt, (int64_t)blk * rows + i);
            for (uint32_t k = 0; k < n; k++)
                m[(c0 + (int)lb_qfield_get(fpos, t++)) * rows + i] = 1;
        }
    assert_int_equal(t, fpos->count);
    return m;
}

static void test_grid_covers_range_and_round_trips(void **state)
{
    (void)state;
    /* all-positive, all-negative, straddling zero, tiny and constant ranges */
    const float ranges[][2] = {{0.5f, 1.5f},    {-3.0f, -0.01f}, {-0.7f, 2.3f},
                               {1000.f, 1000.5f}, {0.001f, 0.0011f}, {0.25f, 0.25f},
                               {-60000.f, 65000.f}};
    lb_err err = {0};
    for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
        for (int32_t bits = 2; bits <= 8; bits += 6) {
            float lo = ranges[r][0], hi = ranges[r][1], l16, s16;
            assert_int_equal(lb_pbllm_fit_grid(lo, hi, bits, &l16, &s16, &err), 0);
            assert_true(l16 <= lo);
            assert_true(l16 == lb_f16_to_f32(lb_f32_to_f16(l16)));
            assert_true(s16 == lb_f16_to_f32(lb_f32_to_f16(s16)));
            uint32_t top = (1u << bits) - 1u;
            assert_true(lb_pbllm_grid_value(l16, s16, top) >= hi);
            /* every value of the range comes back within half a step (plus the slack of
             * rounding lo down and the step up to f16) */
            for (int t = 0; t <= 100; t++) {
                float w = lo + (hi - lo) * (float)t / 100.0f;
                uint32_t code = lb_pbllm_grid_code(w, l16, s16, bits);
                assert_true(code <= top);
                float v = lb_pbllm_grid_value(l16, s16, code);
                assert_true(fabs((double)v - (double)w) <=
                            0.5 * (double)s16 * 1.0001 + 2.5e-7 * fabs((double)w) + 1e-9);
            }
        }
    }
    float l16, s16;
    assert_int_equal(lb_pbllm_fit_grid(1.0f, 0.0f, 8, &l16, &s16, &err), LB_EINVAL);
    assert_int_equal(lb_pbllm_fit_grid(-1e30f, 1.0f, 8, &l16, &s16, &err), LB_ENUMERIC);
    assert_int_equal(lb_pbllm_fit_grid(NAN, 1.0f, 8, &l16, &s16, &err), LB_ENUMERIC);
}

/* With H diagonal nothing is propagated, so W_hat can be checked entry by entry:
 * rows 0 (all positive) and 1 (all negative) must keep their salient values within half
 * a grid step: an integer zero point clamped to [0, 255] cannot do that. */
static void test_positive_and_negative_rows_round_trip(void **state)
{
    (void)state;
    enum { R = 6, C = 32 };
    uint64_t rng = 21;
    float W[R * C], H[C * C] = {0}, Wdq[R * C];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            float u = lb_test_rand_uniform(&rng);
            W[i * C + j] = i == 0 ? 2.5f + u : i == 1 ? -2.5f - u : lb_test_rand_normal(&rng);
        }
    for (int j = 0; j < C; j++)
        H[j * C + j] = 1.0f;
    lb_qopts o;
    lb_qopts_init(&o);
    o.salient_frac = 0.3;
    o.salient_criterion = LB_SALIENT_MAGNITUDE;
    o.block_size = 16;
    lb_qresult res;
    lb_err err = {0};
    if (lb_pbllm_quantize(W, R, C, H, &o, &res, &err))
        fail_msg("pbllm: %s", err.msg);
    bool idx;
    unsigned char *mk = decode_mask(&res.packed, R, C, 16, &idx);
    const lb_qfield *fst = lb_qpacked_field(&res.packed, "salient_step");
    const lb_qfield *fmu = lb_qpacked_field(&res.packed, "mu");
    const lb_qfield *fal = lb_qpacked_field(&res.packed, "alpha");
    assert_non_null(fst);
    int nsal[2] = {0, 0};
    for (int i = 0; i < R; i++) {
        double step = (double)lb_qfield_get_float(fst, i);
        for (int j = 0; j < C; j++) {
            double w = (double)W[i * C + j], wh = (double)res.W_hat[i * C + j];
            if (mk[j * R + i]) {
                assert_true(fabs(wh - w) <= 0.5 * step * 1.0001 + 1e-7);
                if (i < 2)
                    nsal[i]++;
            } else {
                /* mu +- alpha of this row and block */
                double mu = (double)lb_qfield_get_float(fmu, (j / 16) * R + i);
                double al = (double)lb_qfield_get_float(fal, (j / 16) * R + i);
                assert_true(wh == (double)(float)(w >= mu ? mu + al : mu - al));
            }
        }
    }
    assert_true(nsal[0] > 0 && nsal[1] > 0); /* the big rows hold salient weights */
    free(mk);
    assert_int_equal(lb_pbllm_dequantize(&res.packed, Wdq, &err), 0);
    assert_memory_equal(Wdq, res.W_hat, sizeof Wdq);
    lb_qresult_free(&res);
}

/* Issue 11: an input channel with 1000x the curvature of the others. Its near-zero
 * weights cost nothing to prune but 1000x to binarize (to about ±mean |w|), so the Hessian
 * criterion must make them salient; PB-LLM's w^2 / [H^-1]^2 ranks them last. */
static void test_outlier_channel_near_zero_is_salient(void **state)
{
    (void)state;
    enum { R = 8, C = 32, HOT = 5 };
    uint64_t rng = 33;
    float W[R * C], H[C * C] = {0};
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++)
            W[i * C + j] = 0.02f * lb_test_rand_normal(&rng);
    W[0 * C + HOT] = 1e-4f;
    W[3 * C + HOT] = -2e-4f;
    for (int j = 0; j < C; j++)
        H[j * C + j] = j == HOT ? 1000.0f : 1.0f;
    lb_qopts o;
    lb_qopts_init(&o);
    o.salient_frac = 0.1;
    o.block_size = 16;
    lb_qresult res;
    lb_err err = {0};
    if (lb_pbllm_quantize(W, R, C, H, &o, &res, &err))
        fail_msg("pbllm: %s", err.msg);
    bool idx;
    unsigned char *mk = decode_mask(&res.packed, R, C, 16, &idx);
    /* (a hot weight near ±mean |w| binarizes well and need not be salient) */
    assert_true(mk[HOT * R + 0] && mk[HOT * R + 3]);
    assert_true(fabsf(res.W_hat[0 * C + HOT] - W[0 * C + HOT]) < 2e-3f);
    assert_true(fabsf(res.W_hat[3 * C + HOT] - W[3 * C + HOT]) < 2e-3f);
    free(mk);
    lb_qresult_free(&res);
}

/* ---- slow reference PB-GPTQ ---- */

typedef struct {
    const lb_qopts *o;
    int rows, cols;
    double thr;
    float lo[64], step[64];
    unsigned char mask[64 * 64]; /* (nb, rows) current block */
    double mu[64], alpha[64];
    float rowabs[64]; /* mean |w| of each original row */
    int c0;
} ref_pb;

/* the larger of the pruning loss w^2 and the binarization loss (|w| - mean |w| of the
 * row)^2, over U_cc^2 */
static double ref_saliency(const ref_pb *r, const ref_obs_state *st, int c, int i, double w)
{
    float wf = (float)w;
    if (r->o->salient_criterion == LB_SALIENT_MAGNITUDE)
        return fabsf(wf);
    double d = fabs((double)wf) - (double)r->rowabs[i];
    double d2 = fmax(d * d, (double)wf * (double)wf);
    return (float)(d2 / st->udiag2[c]);
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* mask of block [c0, c0+nb) of M (rows, cols) */
static void ref_mask(ref_pb *r, const ref_obs_state *st, const double *M, int c0, int nb,
                     unsigned char *mask)
{
    int rows = r->rows, cols = r->cols, g = r->o->salient_group;
    memset(mask, 0, (size_t)(nb * rows));
    if (g == 0) {
        for (int j = 0; j < nb; j++)
            for (int i = 0; i < rows; i++)
                mask[j * rows + i] = ref_saliency(r, st, c0 + j, i, M[i * cols + c0 + j]) >= r->thr;
        return;
    }
    for (int g0 = 0; g0 < nb; g0 += g) {
        int gc = nb - g0 < g ? nb - g0 : g;
        long k = lround(r->o->salient_frac * gc * rows);
        for (long t = 0; t < k; t++) { /* largest, ties: lower column then lower row */
            int bj = -1, bi = -1;
            double bs = -1;
            for (int j = g0; j < g0 + gc; j++)
                for (int i = 0; i < rows; i++) {
                    double s = ref_saliency(r, st, c0 + j, i, M[i * cols + c0 + j]);
                    if (!mask[j * rows + i] && s > bs) {
                        bs = s;
                        bj = j;
                        bi = i;
                    }
                }
            mask[bj * rows + bi] = 1;
        }
    }
}

static void ref_pb_begin(void *ctx, const ref_obs_state *st)
{
    ref_pb *r = ctx;
    int rows = r->rows, cols = r->cols;
    long n = lround(r->o->salient_frac * rows * cols);
    for (int i = 0; i < rows; i++) {
        double a = 0.0;
        for (int c = 0; c < cols; c++)
            a += fabs(st->W0[i * cols + c]);
        r->rowabs[i] = (float)(a / cols);
    }
    double *s = malloc(sizeof(double) * (size_t)(rows * cols));
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < cols; c++)
            s[i * cols + c] = ref_saliency(r, st, c, i, st->W0[i * cols + c]);
    qsort(s, (size_t)(rows * cols), sizeof(double), cmp_desc);
    r->thr = n > 0 ? s[n - 1] : (double)INFINITY;
    free(s);
    int bs = r->o->block_size;
    double smin[64], smax[64], rmin[64], rmax[64];
    for (int i = 0; i < rows; i++) {
        smin[i] = rmin[i] = INFINITY;
        smax[i] = rmax[i] = -INFINITY;
    }
    unsigned char m[64 * 64];
    for (int c0 = 0; c0 < cols; c0 += bs) {
        int nb = cols - c0 < bs ? cols - c0 : bs;
        ref_mask(r, st, st->W0, c0, nb, m);
        for (int j = 0; j < nb; j++)
            for (int i = 0; i < rows; i++) {
                double w = st->W0[i * cols + c0 + j];
                rmin[i] = fmin(rmin[i], w);
                rmax[i] = fmax(rmax[i], w);
                if (m[j * rows + i]) {
                    smin[i] = fmin(smin[i], w);
                    smax[i] = fmax(smax[i], w);
                }
            }
    }
    lb_err err = {0};
    for (int i = 0; i < rows; i++) {
        bool has = smin[i] <= smax[i];
        /* the grid fit itself is checked in test_grid_covers_range_and_round_trips */
        assert_int_equal(lb_pbllm_fit_grid((float)(has ? smin[i] : rmin[i]),
                                           (float)(has ? smax[i] : rmax[i]),
                                           r->o->salient_bits, &r->lo[i], &r->step[i], &err),
                         0);
    }
}

static void ref_pb_block_begin(void *ctx, const ref_obs_state *st, int c0, int nb)
{
    ref_pb *r = ctx;
    int rows = r->rows, cols = r->cols;
    r->c0 = c0;
    ref_mask(r, st, st->Wc, c0, nb, r->mask);
    for (int i = 0; i < rows; i++) {
        double s = 0;
        int n = 0;
        for (int j = 0; j < nb; j++)
            if (!r->mask[j * rows + i]) {
                s += (double)(float)st->Wc[i * cols + c0 + j];
                n++;
            }
        r->mu[i] = lb_f16_to_f32(lb_f32_to_f16((float)(n ? s / n : 0.0)));
        double a = 0;
        for (int j = 0; j < nb; j++)
            if (!r->mask[j * rows + i])
                a += fabs((double)(float)st->Wc[i * cols + c0 + j] - r->mu[i]);
        r->alpha[i] = lb_f16_to_f32(lb_f32_to_f16((float)(n ? a / n : 0.0)));
    }
}

static void ref_pb_column(void *ctx, const ref_obs_state *st, int c, const double *w, double *q)
{
    ref_pb *r = ctx;
    int rows = st->rows;
    for (int i = 0; i < rows; i++) {
        if (r->mask[(c - r->c0) * rows + i]) {
            double t = floor((w[i] - (double)r->lo[i]) / (double)r->step[i] + 0.5);
            double top = (1 << r->o->salient_bits) - 1;
            t = t < 0 ? 0 : t > top ? top : t;
            q[i] = (float)((double)r->lo[i] + (double)r->step[i] * t);
        } else {
            q[i] = (float)(w[i] >= r->mu[i] ? r->mu[i] + r->alpha[i] : r->mu[i] - r->alpha[i]);
        }
    }
}

static void run_against_reference(int rows, int cols, lb_qsalient crit, int group, int bs,
                                  bool act_order, double frac, uint64_t seed)
{
    uint64_t rng = seed;
    size_t n = (size_t)rows * (size_t)cols;
    float *W = malloc(sizeof(float) * n), *H = malloc(sizeof(float) * (size_t)(cols * cols));
    float *Wref = malloc(sizeof(float) * n), *Wdq = malloc(sizeof(float) * n);
    assert_non_null(W);
    assert_non_null(H);
    assert_non_null(Wref);
    assert_non_null(Wdq);
    for (size_t i = 0; i < n; i++)
        W[i] = lb_test_rand_normal(&rng) * (i % 7 == 0 ? 3.0f : 1.0f);
    ref_make_hessian(H, cols, 4 * cols, &rng);
    lb_qopts o;
    lb_qopts_init(&o);
    o.salient_frac = frac;
    o.salient_criterion = crit;
    o.salient_group = group;
    o.block_size = bs;
    o.act_order = act_order;
    lb_qresult res;
    lb_err err = {0};
    if (lb_pbllm_quantize(W, rows, cols, H, &o, &res, &err))
        fail_msg("pbllm: %s", err.msg);
    ref_pb r = {.o = &o, .rows = rows, .cols = cols};
    ref_obs_hook hook = {&r, ref_pb_begin, ref_pb_block_begin, ref_pb_column};
    ref_obs_run(W, rows, cols, H, o.damp, act_order, bs, &hook, Wref);
    double maxw = 0, maxd = 0;
    for (size_t i = 0; i < n; i++) {
        maxw = fmax(maxw, fabs((double)W[i]));
        maxd = fmax(maxd, fabs((double)res.W_hat[i] - (double)Wref[i]));
    }
    /* float32 engine vs float64 reference; f16 mu/alpha may round to a neighbour */
    if (maxd > 2e-3 * maxw)
        fail_msg("pbllm vs reference: max |diff| %g (max |W| %g), crit %d group %d act %d",
                 maxd, maxw, (int)crit, group, act_order);
    assert_int_equal(lb_pbllm_dequantize(&res.packed, Wdq, &err), 0);
    assert_memory_equal(Wdq, res.W_hat, sizeof(float) * n);
    /* per-group salient counts are exact */
    bool idx;
    unsigned char *mk = decode_mask(&res.packed, rows, cols, bs, &idx);
    int64_t total = 0;
    for (int c = 0; c < cols; c++)
        for (int i = 0; i < rows; i++)
            total += mk[c * rows + i];
    if (group > 0) {
        for (int g0 = 0; g0 < cols; g0 += group) {
            int gc = cols - g0 < group ? cols - g0 : group;
            int64_t cnt = 0;
            for (int c = g0; c < g0 + gc; c++)
                for (int i = 0; i < rows; i++)
                    cnt += mk[c * rows + i];
            assert_int_equal(cnt, lround(frac * gc * rows));
        }
    }
    /* bit accounting: the formula in lb_pbllm.h */
    int64_t nblocks = (cols + bs - 1) / bs, sal = total, bin = (int64_t)n - total;
    uint64_t cb = 1, pb = 1;
    while (((uint64_t)bs >> cb) != 0)
        cb++;
    while (((uint64_t)(bs - 1) >> pb) != 0)
        pb++;
    uint64_t bitmap = n, index = (uint64_t)(nblocks * rows) * cb + (uint64_t)sal * pb;
    assert_true(idx == (index < bitmap)); /* the cheaper form was chosen */
    uint64_t mask_bytes = idx ? ((uint64_t)(nblocks * rows) * cb + 7) / 8 + ((uint64_t)sal * pb + 7) / 8
                              : (n + 7) / 8;
    free(mk);
    uint64_t bytes = 4 + mask_bytes + (uint64_t)(bin + 7) / 8 +
                     (uint64_t)(sal * o.salient_bits + 7) / 8 +
                     2 * (uint64_t)(nblocks * rows * 2) + 2 * (uint64_t)rows * 2;
    if (act_order) {
        uint64_t permb = 1;
        while (((uint64_t)(cols - 1) >> permb) != 0)
            permb++;
        bytes += ((uint64_t)cols * permb + 7) / 8;
    }
    assert_true(lb_qpacked_bits(&res.packed) == 8 * bytes);
    assert_true(fabs(res.bpw - 8.0 * (double)bytes / (double)n) < 1e-12);
    const lb_qmethod *m = lb_qmethod_find("pbllm");
    assert_non_null(m);
    assert_ptr_equal(m->quantize, lb_pbllm_quantize);
    lb_qresult_free(&res);
    free(W);
    free(H);
    free(Wref);
    free(Wdq);
}

static void test_matches_reference_hessian(void **state)
{
    (void)state;
    run_against_reference(12, 24, LB_SALIENT_HESSIAN, 0, 8, false, 0.1, 1);
    run_against_reference(10, 19, LB_SALIENT_HESSIAN, 4, 8, true, 0.15, 2);
}

static void test_matches_reference_magnitude(void **state)
{
    (void)state;
    run_against_reference(12, 24, LB_SALIENT_MAGNITUDE, 0, 8, true, 0.1, 3);
    run_against_reference(8, 20, LB_SALIENT_MAGNITUDE, 2, 4, false, 0.3, 4);
    run_against_reference(8, 16, LB_SALIENT_MAGNITUDE, 0, 16, false, 0.0, 5);
    run_against_reference(8, 16, LB_SALIENT_HESSIAN, 0, 8, false, 0.5, 6);
}

static void test_options_and_corrupt(void **state)
{
    (void)state;
    enum { R = 8, C = 16 };
    uint64_t rng = 5;
    float W[R * C], H[C * C], out[R * C];
    for (int i = 0; i < R * C; i++)
        W[i] = lb_test_rand_normal(&rng);
    ref_make_hessian(H, C, 40, &rng);
    lb_qopts o;
    lb_qopts_init(&o);
    lb_qresult res;
    lb_err err = {0};
    o.salient_group = 48; /* does not divide 128 */
    assert_int_equal(lb_pbllm_quantize(W, R, C, H, &o, &res, &err), LB_EINVAL);
    o.salient_group = 0;
    o.salient_bits = 17;
    assert_int_equal(lb_pbllm_quantize(W, R, C, H, &o, &res, &err), LB_EINVAL);
    o.salient_bits = 8;
    o.salient_frac = 1.5;
    assert_int_equal(lb_pbllm_quantize(W, R, C, H, &o, &res, &err), LB_EINVAL);
    o.salient_frac = 0.25;
    /* every salient width decodes exactly, 1 bit (two levels) included */
    for (int32_t sb = 1; sb <= 16; sb += 5) {
        o.salient_bits = sb;
        assert_int_equal(lb_pbllm_quantize(W, R, C, H, &o, &res, &err), 0);
        assert_int_equal(lb_pbllm_dequantize(&res.packed, out, &err), 0);
        assert_memory_equal(out, res.W_hat, sizeof out);
        assert_int_equal(lb_qpacked_field(&res.packed, "salient_codes")->bits, (uint32_t)sb);
        lb_qresult_free(&res);
    }
    o.salient_bits = 8;
    assert_int_equal(lb_pbllm_quantize(W, R, C, H, &o, &res, &err), 0);
    assert_int_equal(lb_pbllm_dequantize(&res.packed, out, &err), 0);
    /* flipping a mask bit breaks the count consistency */
    lb_qfield *fm = NULL;
    for (int i = 0; i < res.packed.nfields; i++)
        if (!strcmp(res.packed.fields[i].name, "mask"))
            fm = &res.packed.fields[i];
    assert_non_null(fm);
    lb_qfield_put(fm, 0, !lb_qfield_get(fm, 0));
    assert_int_equal(lb_pbllm_dequantize(&res.packed, out, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "mask"));
    lb_qresult_free(&res);
    /* few salient weights: the index form; a position out of order is rejected */
    enum { R2 = 64, C2 = 128 };
    float *W2 = malloc(sizeof(float) * R2 * C2), *H2 = malloc(sizeof(float) * C2 * C2);
    float *out2 = malloc(sizeof(float) * R2 * C2);
    assert_non_null(W2);
    assert_non_null(H2);
    assert_non_null(out2);
    for (int i = 0; i < R2 * C2; i++)
        W2[i] = lb_test_rand_normal(&rng);
    ref_make_hessian(H2, C2, 2 * C2, &rng);
    o.salient_frac = 0.02;
    assert_int_equal(lb_pbllm_quantize(W2, R2, C2, H2, &o, &res, &err), 0);
    assert_null(lb_qpacked_field(&res.packed, "mask"));
    assert_int_equal(lb_pbllm_dequantize(&res.packed, out2, &err), 0);
    assert_memory_equal(out2, res.W_hat, sizeof(float) * R2 * C2);
    lb_qfield *fpos = NULL, *fcnt = NULL;
    for (int i = 0; i < res.packed.nfields; i++) {
        if (!strcmp(res.packed.fields[i].name, "salient_pos"))
            fpos = &res.packed.fields[i];
        if (!strcmp(res.packed.fields[i].name, "salient_count"))
            fcnt = &res.packed.fields[i];
    }
    assert_non_null(fpos);
    assert_non_null(fcnt);
    int64_t first = -1; /* first row with two or more salient entries */
    for (int64_t i = 0, t = 0; i < R2 && first < 0; t += lb_qfield_get(fcnt, i), i++)
        if (lb_qfield_get(fcnt, i) >= 2)
            first = t;
    assert_true(first >= 0);
    uint32_t a = lb_qfield_get(fpos, first), b = lb_qfield_get(fpos, first + 1);
    lb_qfield_put(fpos, first, b);
    lb_qfield_put(fpos, first + 1, a);
    assert_int_equal(lb_pbllm_dequantize(&res.packed, out2, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "ascending"));
    lb_qfield_put(fpos, first, a);
    lb_qfield_put(fpos, first + 1, b);
    lb_qfield_put(fcnt, 0, lb_qfield_get(fcnt, 0) + 1); /* one count too many */
    assert_int_equal(lb_pbllm_dequantize(&res.packed, out2, &err), LB_EFORMAT);
    lb_qresult_free(&res);
    free(W2);
    free(H2);
    free(out2);
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
    o.bits = 1;
    o.act_order = true;
    o.block_size = 4;
    lb_qresult res;
    lb_err err = {0};
    if (lb_pbllm_quantize(W, R, C, H, &o, &res, &err))
        fail_msg("pbllm: %s", err.msg);
    for (int i = 0; i < R * C; i++)
        assert_true(isfinite(res.W_hat[i]));
    assert_int_equal(lb_pbllm_dequantize(&res.packed, Wdq, &err), 0);
    assert_memory_equal(Wdq, res.W_hat, sizeof Wdq);
    assert_non_null(lb_qpacked_field(&res.packed, "perm"));
    lb_qresult_free(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_covers_range_and_round_trips),
        cmocka_unit_test(test_positive_and_negative_rows_round_trip),
        cmocka_unit_test(test_outlier_channel_near_zero_is_salient),
        cmocka_unit_test(test_matches_reference_hessian),
        cmocka_unit_test(test_matches_reference_magnitude),
        cmocka_unit_test(test_options_and_corrupt),
        cmocka_unit_test(test_dead_column_act_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
