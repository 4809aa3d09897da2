#include "lb_pbllm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_gptq.h"

const lb_qmethod lb_qmethod_pbllm = {
    .name = "pbllm",
    .summary = "PB-LLM (PB-GPTQ): salient weights at salient_bits on a per-row grid, the rest "
               "binarized mu + alpha*sign per row and block, inside the GPTQ loop",
    .quantize = lb_pbllm_quantize,
    .dequantize = lb_pbllm_dequantize,
};

/* ---- the salient grid ---- */

static uint16_t f16_next_down(uint16_t h)
{
    if (h == 0x0000u)
        return 0x8001u;
    return (h & 0x8000u) ? (uint16_t)(h + 1u) : (uint16_t)(h - 1u);
}

int lb_pbllm_fit_grid(float lo, float hi, int32_t bits, float *lo16, float *step16,
                      lb_err *err)
{
    if (!isfinite(lo) || !isfinite(hi))
        return lb_err_set(err, LB_ENUMERIC, "pbllm grid: range [%g, %g] is not finite",
                          (double)lo, (double)hi);
    if (lo > hi || bits < 1 || bits > 16)
        return lb_err_set(err, LB_EINVAL, "pbllm grid: bad range [%g, %g] or bits %d (1..16)",
                          (double)lo, (double)hi, bits);
    uint16_t h = lb_f32_to_f16(lo);
    float l = lb_f16_to_f32(h);
    if (isfinite(l) && l > lo) {
        h = f16_next_down(h);
        l = lb_f16_to_f32(h);
    }
    const double levels = (double)((1u << bits) - 1u);
    double s = ((double)hi - (double)l) / levels;
    uint16_t hs = lb_f32_to_f16((float)s);
    float sv = lb_f16_to_f32(hs);
    /* round the step up until the top of the grid reaches hi */
    while (isfinite(sv) && (double)l + levels * (double)sv < (double)hi) {
        hs++;
        sv = lb_f16_to_f32(hs);
    }
    if (!isfinite(l) || !isfinite(sv))
        return lb_err_set(err, LB_ENUMERIC,
                          "pbllm grid: salient range [%g, %g] does not fit f16 (|w| <= 65504)",
                          (double)lo, (double)hi);
    *lo16 = l;
    *step16 = sv;
    return 0;
}

uint32_t lb_pbllm_grid_code(float w, float lo16, float step16, int32_t bits)
{
    if (!(step16 > 0.0f))
        return 0;
    double t = floor(((double)w - (double)lo16) / (double)step16 + 0.5);
    double top = (double)((1u << bits) - 1u);
    return (uint32_t)(t < 0.0 ? 0.0 : t > top ? top : t);
}

float lb_pbllm_grid_value(float lo16, float step16, uint32_t code)
{
    /* the product is exact in double, so the result does not depend on FMA contraction */
    return (float)((double)lo16 + (double)step16 * (double)code);
}

/* mu + alpha * sign, rounded once */
static inline float bin_value(float mu, float alpha, uint32_t positive)
{
    return positive ? (float)((double)mu + (double)alpha) : (float)((double)mu - (double)alpha);
}

/* Bits to store any value in 0..maxval (at least 1). */
static uint32_t pb_bits_for_max(uint64_t maxval)
{
    uint32_t b = 1;
    while (b < 64 && (maxval >> b) != 0)
        b++;
    return b;
}

/* ---- the hook ---- */

typedef struct {
    const lb_qopts *opts;
    int64_t rows, cols, bs, nblocks;
    int32_t sbits;
    lb_qpacked *packed;
    float thr;              /* per-matrix saliency threshold (salient_group == 0) */
    float *lo, *step;       /* (rows,) salient grid */
    float *mu, *alpha;      /* (rows,) current block */
    uint8_t *mask;          /* (bs, rows) current block */
    uint64_t *sel;          /* (rows * g,) per-group selection keys */
    double *sum;            /* (rows,) scratch */
    int64_t *cnt;           /* (rows,) scratch */
    uint8_t *signbits;      /* bit buffer, capacity rows*cols bits */
    uint8_t *maskbits;      /* (cols, rows) salient bitmap, bit c*rows + i */
    int64_t nsign;
    uint16_t *scodes;       /* salient codes, grown on demand */
    int64_t nsal, cap_sal;
    int64_t c0;
    int fi_mu, fi_alpha;
    float *rowabs;          /* (rows,) mean |w| of each row of the original W */
} pb_ctx;

static void pb_ctx_release(pb_ctx *cx)
{
    free(cx->lo);
    free(cx->step);
    free(cx->mu);
    free(cx->alpha);
    free(cx->mask);
    free(cx->sel);
    free(cx->sum);
    free(cx->cnt);
    free(cx->signbits);
    free(cx->maskbits);
    free(cx->scodes);
    free(cx->rowabs);
}

/* Saliency of w in processing column c, row i: max(w^2, (|w| - a_i)^2) / U_cc^2 with a_i
 * the row's mean |w|, or |w|. Non-negative. PB-LLM's w^2 / U_cc^2 is the loss of pruning
 * w; a weight that stays out is binarized to about ±a_i, which costs (|w| - a_i)^2 and is
 * the larger of the two only for |w| < a_i / 2: a near-zero weight of an outlier input
 * channel (U_cc tiny) costs little to prune but much to binarize, so it must be salient
 * (issue 11). Elsewhere the ranking is PB-LLM's. */
static inline float saliency(const pb_ctx *cx, const lb_gptq_state *st, int64_t c, int64_t i,
                             float w)
{
    if (cx->opts->salient_criterion == LB_SALIENT_MAGNITUDE)
        return fabsf(w);
    double u = (double)st->U[c * st->cols + c];
    double d = fabs((double)w) - (double)cx->rowabs[i], d2 = d * d;
    if ((double)w * (double)w > d2)
        d2 = (double)w * (double)w;
    return (float)(d2 / (u * u));
}

static inline uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The n-th largest (n >= 1) saliency over the whole matrix Wt (cols, rows), by a two-pass
 * radix select on the float bits (non-negative floats order like their bits). */
static float matrix_threshold(const pb_ctx *cx, const lb_gptq_state *st, const float *Wt,
                              int64_t n, uint32_t *hist)
{
    const int64_t rows = cx->rows, cols = cx->cols;
    memset(hist, 0, 65536 * sizeof *hist);
    for (int64_t c = 0; c < cols; c++)
        for (int64_t i = 0; i < rows; i++)
            hist[float_bits(saliency(cx, st, c, i, Wt[c * rows + i])) >> 16]++;
    int64_t above = 0;
    uint32_t hi16 = 65535;
    for (;; hi16--) {
        if (above + hist[hi16] >= n)
            break;
        above += hist[hi16];
    }
    memset(hist, 0, 65536 * sizeof *hist);
    for (int64_t c = 0; c < cols; c++)
        for (int64_t i = 0; i < rows; i++) {
            uint32_t b = float_bits(saliency(cx, st, c, i, Wt[c * rows + i]));
            if ((b >> 16) == hi16)
                hist[b & 0xffffu]++;
        }
    uint32_t lo16 = 65535;
    for (;; lo16--) {
        if (above + hist[lo16] >= n)
            break;
        above += hist[lo16];
    }
    uint32_t bits = (hi16 << 16) | lo16;
    float t;
    memcpy(&t, &bits, sizeof t);
    return t;
}


/* Salient mask of block [c0, c0+nb) of Wt (cols, rows) -> mask (nb, rows). */
static void block_mask(pb_ctx *cx, const lb_gptq_state *st, const float *Wt, int64_t c0,
                       int64_t nb, uint8_t *mask)
{
    const int64_t rows = cx->rows;
    const int64_t g = cx->opts->salient_group;
    if (g == 0) {
        for (int64_t j = 0; j < nb; j++)
            for (int64_t i = 0; i < rows; i++)
                mask[j * rows + i] =
                    saliency(cx, st, c0 + j, i, Wt[(c0 + j) * rows + i]) >= cx->thr;
        return;
    }
    memset(mask, 0, (size_t)(nb * rows));
    for (int64_t g0 = 0; g0 < nb; g0 += g) {
        int64_t gc = nb - g0 < g ? nb - g0 : g, n = gc * rows;
        int64_t k = (int64_t)llround(cx->opts->salient_frac * (double)n);
        if (k <= 0)
            continue;
        for (int64_t j = 0; j < gc; j++)
            for (int64_t i = 0; i < rows; i++) {
                float s = saliency(cx, st, c0 + g0 + j, i, Wt[(c0 + g0 + j) * rows + i]);
                uint32_t local = (uint32_t)(j * rows + i);
                cx->sel[j * rows + i] = ((uint64_t)float_bits(s) << 32) | (UINT32_MAX - local);
            }
        lb_quant_select_top_u64(cx->sel, n, k);
        for (int64_t t = 0; t < k; t++)
            mask[g0 * rows + (int64_t)(UINT32_MAX - (uint32_t)(cx->sel[t] & 0xffffffffu))] = 1;
    }
}

static int add_field(lb_qpacked *p, const char *name, lb_qfield_kind kind, uint32_t bits,
                     int32_t ndim, const int64_t *shape, int *index, lb_err *err)
{
    if (!lb_qpacked_add_field(p, name, kind, bits, ndim, shape, err))
        return err && err->code ? err->code : LB_EINVAL;
    if (index)
        *index = p->nfields - 1;
    return 0;
}

static int pb_check_opts(const lb_qopts *o, int64_t rows, int64_t bs, lb_err *err)
{
    if (!(o->salient_frac >= 0.0 && o->salient_frac <= 1.0))
        return lb_err_set(err, LB_EINVAL, "pbllm: salient_frac=%g must be in [0, 1]",
                          o->salient_frac);
    if (o->salient_bits < 1 || o->salient_bits > 16)
        return lb_err_set(err, LB_EINVAL, "pbllm: salient_bits=%d must be in 1..16",
                          o->salient_bits);
    if (o->salient_criterion != LB_SALIENT_HESSIAN &&
        o->salient_criterion != LB_SALIENT_MAGNITUDE)
        return lb_err_set(err, LB_EINVAL, "pbllm: unknown salient criterion %d",
                          (int)o->salient_criterion);
    if (o->salient_group < 0 || (o->salient_group > 0 && bs % o->salient_group != 0))
        return lb_err_set(err, LB_EINVAL,
                          "pbllm: salient_group=%d must be 0 or divide block_size=%lld",
                          o->salient_group, (long long)bs);
    if (o->salient_group > 0 && rows > (int64_t)UINT32_MAX / o->salient_group)
        return lb_err_set(err, LB_EINVAL, "pbllm: salient_group=%d x %lld rows too large",
                          o->salient_group, (long long)rows);
    if (o->group_size != 0)
        return lb_err_set(err, LB_EINVAL, "pbllm: group_size must be 0 (scales are per row "
                                          "and block)");
    return 0;
}

static int pb_begin(void *ctx, const lb_gptq_state *st, lb_err *err)
{
    pb_ctx *cx = ctx;
    const int64_t rows = st->rows, cols = st->cols, bs = st->block_size;
    int rc = pb_check_opts(cx->opts, rows, bs, err);
    if (rc)
        return rc;
    cx->bs = bs;
    cx->nblocks = (cols + bs - 1) / bs;
    cx->sbits = cx->opts->salient_bits;
    const int64_t g = cx->opts->salient_group;
    cx->lo = malloc((size_t)rows * sizeof(float));
    cx->step = malloc((size_t)rows * sizeof(float));
    cx->mu = malloc((size_t)rows * sizeof(float));
    cx->alpha = malloc((size_t)rows * sizeof(float));
    cx->mask = malloc((size_t)(bs * rows));
    cx->sel = malloc((size_t)((g ? g : 1) * rows) * sizeof(uint64_t));
    cx->sum = malloc((size_t)rows * sizeof(double));
    cx->cnt = malloc((size_t)rows * sizeof(int64_t));
    cx->signbits = calloc((size_t)((rows * cols + 7) / 8), 1);
    cx->maskbits = calloc((size_t)((rows * cols + 7) / 8), 1);
    float *smin = malloc((size_t)rows * sizeof(float)), *smax = malloc((size_t)rows * sizeof(float));
    float *rmin = malloc((size_t)rows * sizeof(float)), *rmax = malloc((size_t)rows * sizeof(float));
    uint32_t *hist = malloc(65536 * sizeof(uint32_t));
    cx->rowabs = malloc((size_t)rows * sizeof(float));
    if (!cx->rowabs || !cx->lo || !cx->step || !cx->mu || !cx->alpha || !cx->mask ||
        !cx->sel || !cx->sum || !cx->cnt || !cx->signbits || !cx->maskbits || !smin || !smax || !rmin || !rmax || !hist) {
        rc = lb_err_set(err, LB_ENOMEM, "pbllm: out of memory for a %lld x %lld matrix",
                        (long long)rows, (long long)cols);
        goto done;
    }
    /* st->Wt is the original W here: the saliency's row scales, the per-matrix threshold
     * and the salient grids. */
    for (int64_t i = 0; i < rows; i++)
        cx->sum[i] = 0.0;
    for (int64_t c = 0; c < cols; c++)
        for (int64_t i = 0; i < rows; i++)
            cx->sum[i] += fabs((double)st->Wt[c * rows + i]);
    for (int64_t i = 0; i < rows; i++)
        cx->rowabs[i] = (float)(cx->sum[i] / (double)cols);
    int64_t nsal = (int64_t)llround(cx->opts->salient_frac * (double)rows * (double)cols);
    cx->thr = nsal > 0 && g == 0 ? matrix_threshold(cx, st, st->Wt, nsal, hist) : INFINITY;
    for (int64_t i = 0; i < rows; i++) {
        smin[i] = rmin[i] = INFINITY;
        smax[i] = rmax[i] = -INFINITY;
    }
    for (int64_t c0 = 0; c0 < cols; c0 += bs) {
        int64_t nb = cols - c0 < bs ? cols - c0 : bs;
        block_mask(cx, st, st->Wt, c0, nb, cx->mask);
        for (int64_t j = 0; j < nb; j++)
            for (int64_t i = 0; i < rows; i++) {
                float w = st->Wt[(c0 + j) * rows + i];
                rmin[i] = fminf(rmin[i], w);
                rmax[i] = fmaxf(rmax[i], w);
                if (cx->mask[j * rows + i]) {
                    smin[i] = fminf(smin[i], w);
                    smax[i] = fmaxf(smax[i], w);
                }
            }
    }
    lb_qpacked *p = cx->packed;
    int64_t one = 1, shape_blk[2] = {cx->nblocks, rows};
    int fi_lo = 0, fi_step = 0, fi_bs = 0;
    if ((rc = add_field(p, "block_size", LB_QFIELD_UINT, 32, 1, &one, &fi_bs, err)) ||
        (rc = add_field(p, "mu", LB_QFIELD_F16, 16, 2, shape_blk, &cx->fi_mu, err)) ||
        (rc = add_field(p, "alpha", LB_QFIELD_F16, 16, 2, shape_blk, &cx->fi_alpha, err)) ||
        (rc = add_field(p, "salient_min", LB_QFIELD_F16, 16, 1, &rows, &fi_lo, err)) ||
        (rc = add_field(p, "salient_step", LB_QFIELD_F16, 16, 1, &rows, &fi_step, err)))
        goto done;
    lb_qfield_put(&p->fields[fi_bs], 0, (uint32_t)bs);
    for (int64_t i = 0; i < rows; i++) {
        float lo = smin[i] <= smax[i] ? smin[i] : rmin[i];
        float hi = smin[i] <= smax[i] ? smax[i] : rmax[i];
        if ((rc = lb_pbllm_fit_grid(lo, hi, cx->sbits, &cx->lo[i], &cx->step[i], err))) {
            lb_err_prefix(err, "pbllm row %lld", (long long)i);
            goto done;
        }
        lb_qfield_put_float(&p->fields[fi_lo], i, cx->lo[i]);
        lb_qfield_put_float(&p->fields[fi_step], i, cx->step[i]);
    }
    cx->cap_sal = nsal + nsal / 4 + 1024;
    cx->scodes = malloc((size_t)cx->cap_sal * sizeof *cx->scodes);
    if (!cx->scodes)
        rc = lb_err_set(err, LB_ENOMEM, "pbllm: out of memory for %lld salient codes",
                        (long long)cx->cap_sal);
done:
    free(smin);
    free(smax);
    free(rmin);
    free(rmax);
    free(hist);
    return rc;
}

static int pb_block_begin(void *ctx, const lb_gptq_state *st, int64_t c0, int64_t nb,
                          lb_err *err)
{
    pb_ctx *cx = ctx;
    const int64_t rows = cx->rows;
    cx->c0 = c0;
    block_mask(cx, st, st->Wt, c0, nb, cx->mask);
    for (int64_t j = 0; j < nb; j++)
        for (int64_t i = 0; i < rows; i++)
            if (cx->mask[j * rows + i]) {
                int64_t bit = (c0 + j) * rows + i;
                cx->maskbits[bit >> 3] |= (uint8_t)(1u << (bit & 7));
            }
    /* mu_i = mean, alpha_i = mean |w - mu_i| over the row's non-salient block entries
     * (PB-LLM's optimal scale for the sign code). */
    for (int64_t i = 0; i < rows; i++) {
        cx->sum[i] = 0.0;
        cx->cnt[i] = 0;
    }
    for (int64_t j = 0; j < nb; j++) {
        const float *w = st->Wt + (c0 + j) * rows;
        for (int64_t i = 0; i < rows; i++)
            if (!cx->mask[j * rows + i]) {
                cx->sum[i] += (double)w[i];
                cx->cnt[i]++;
            }
    }
    const int64_t blk = c0 / cx->bs;
    lb_qfield *fmu = &cx->packed->fields[cx->fi_mu], *fal = &cx->packed->fields[cx->fi_alpha];
    for (int64_t i = 0; i < rows; i++) {
        double mu = cx->cnt[i] ? cx->sum[i] / (double)cx->cnt[i] : 0.0;
        cx->mu[i] = lb_qfield_put_float(fmu, blk * rows + i, (float)mu);
        cx->sum[i] = 0.0;
    }
    for (int64_t j = 0; j < nb; j++) {
        const float *w = st->Wt + (c0 + j) * rows;
        for (int64_t i = 0; i < rows; i++)
            if (!cx->mask[j * rows + i])
                cx->sum[i] += fabs((double)w[i] - (double)cx->mu[i]);
    }
    for (int64_t i = 0; i < rows; i++) {
        double a = cx->cnt[i] ? cx->sum[i] / (double)cx->cnt[i] : 0.0;
        cx->alpha[i] = lb_qfield_put_float(fal, blk * rows + i, (float)a);
        if (!isfinite(cx->mu[i]) || !isfinite(cx->alpha[i]))
            return lb_err_set(err, LB_ENUMERIC,
                              "pbllm block %lld row %lld: mean/scale beyond the f16 range",
                              (long long)blk, (long long)i);
    }
    return 0;
}

static int pb_column(void *ctx, const lb_gptq_state *st, int64_t c, const float *w, float *q,
                     float *err_scale, lb_err *err)
{
    (void)err_scale;
    pb_ctx *cx = ctx;
    const int64_t rows = st->rows;
    const uint8_t *m = cx->mask + (c - cx->c0) * rows;
    if (cx->nsal + rows > cx->cap_sal) {
        int64_t cap = cx->cap_sal * 2 + rows;
        uint16_t *grown = realloc(cx->scodes, (size_t)cap * sizeof *grown);
        if (!grown)
            return lb_err_set(err, LB_ENOMEM, "pbllm: out of memory for salient codes");
        cx->scodes = grown;
        cx->cap_sal = cap;
    }
    for (int64_t i = 0; i < rows; i++) {
        if (m[i]) {
            uint32_t code = lb_pbllm_grid_code(w[i], cx->lo[i], cx->step[i], cx->sbits);
            cx->scodes[cx->nsal++] = (uint16_t)code;
            q[i] = lb_pbllm_grid_value(cx->lo[i], cx->step[i], code);
        } else {
            uint32_t pos = (double)w[i] >= (double)cx->mu[i]; /* sign(0) = +1 */
            if (pos)
                cx->signbits[cx->nsign >> 3] |= (uint8_t)(1u << (cx->nsign & 7));
            cx->nsign++;
            q[i] = bin_value(cx->mu[i], cx->alpha[i], pos);
        }
    }
    return 0;
}

static inline int mask_bit(const uint8_t *bits, int64_t k)
{
    return (bits[k >> 3] >> (k & 7)) & 1;
}

/* The mask as whichever is smaller (both counted in bpw): a bitmap "mask" (cols, rows),
 * or per row and block the count of salient entries "salient_count" (blocks, rows,
 * ceil(log2(B + 1)) bits) and their in-block columns "salient_pos" (ascending, ceil(log2 B)
 * bits each, ordered by block, row). At 10% salient and B = 128 the index form costs
 * 8/128 + 0.1 * 7 = 0.76 bit per weight instead of 1. */
static int pb_pack_mask(pb_ctx *cx, lb_err *err)
{
    const int64_t rows = cx->rows, cols = cx->cols, bs = cx->bs;
    const uint32_t cbits = pb_bits_for_max((uint64_t)bs), pbits = pb_bits_for_max((uint64_t)(bs - 1));
    const uint64_t bitmap = (uint64_t)(rows * cols);
    const uint64_t index = (uint64_t)(cx->nblocks * rows) * cbits + (uint64_t)cx->nsal * pbits;
    int rc, fi;
    if (bitmap <= index) {
        int64_t shape[2] = {cols, rows};
        if ((rc = add_field(cx->packed, "mask", LB_QFIELD_UINT, 1, 2, shape, &fi, err)))
            return rc;
        memcpy(cx->packed->fields[fi].data, cx->maskbits, (size_t)((rows * cols + 7) / 8));
        return 0;
    }
    int64_t shape_cnt[2] = {cx->nblocks, rows};
    int fi_pos;
    if ((rc = add_field(cx->packed, "salient_count", LB_QFIELD_UINT, cbits, 2, shape_cnt, &fi,
                        err)) ||
        (rc = add_field(cx->packed, "salient_pos", LB_QFIELD_UINT, pbits, 1, &cx->nsal, &fi_pos,
                        err)))
        return rc;
    lb_qfield *fcnt = &cx->packed->fields[fi], *fpos = &cx->packed->fields[fi_pos];
    int64_t t = 0;
    for (int64_t blk = 0; blk < cx->nblocks; blk++) {
        const int64_t c0 = blk * bs, nb = cols - c0 < bs ? cols - c0 : bs;
        for (int64_t i = 0; i < rows; i++) {
            uint32_t n = 0;
            for (int64_t j = 0; j < nb; j++)
                if (mask_bit(cx->maskbits, (c0 + j) * rows + i)) {
                    lb_qfield_put(fpos, t++, (uint32_t)j);
                    n++;
                }
            lb_qfield_put(fcnt, blk * rows + i, n);
        }
    }
    return 0;
}

static int pb_end(void *ctx, const lb_gptq_state *st, lb_err *err)
{
    (void)st;
    pb_ctx *cx = ctx;
    int fi_s = 0, fi_c = 0;
    int rc;
    if ((rc = add_field(cx->packed, "signs", LB_QFIELD_UINT, 1, 1, &cx->nsign, &fi_s, err)) ||
        (rc = add_field(cx->packed, "salient_codes", LB_QFIELD_UINT, (uint32_t)cx->sbits, 1,
                        &cx->nsal, &fi_c, err)))
        return rc;
    lb_qfield *fs = &cx->packed->fields[fi_s], *fc = &cx->packed->fields[fi_c];
    /* same little-endian bit order as lb_qfield_put */
    memcpy(fs->data, cx->signbits, (size_t)((cx->nsign + 7) / 8));
    for (int64_t t = 0; t < cx->nsal; t++)
        lb_qfield_put(fc, t, cx->scodes[t]);
    return pb_pack_mask(cx, err);
}

int lb_pbllm_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                      const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    int rc = lb_gptq_method_check("pbllm", W, rows, cols, H, opts, out, err);
    if (rc)
        return rc;
    rc = pb_check_opts(opts, rows, opts->block_size > 0 ? opts->block_size : 1, err);
    if (rc)
        return rc;
    pb_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.opts = opts;
    cx.rows = rows;
    cx.cols = cols;
    cx.packed = &out->packed;
    snprintf(out->packed.method, sizeof out->packed.method, "pbllm");
    out->packed.rows = rows;
    out->packed.cols = cols;
    lb_gptq_hook hook = {.ctx = &cx,
                         .begin = pb_begin,
                         .block_begin = pb_block_begin,
                         .column = pb_column,
                         .end = pb_end};
    rc = lb_gptq_method_run("pbllm", W, rows, cols, H, opts, &hook, LB_GPTQ_PACK_PERM, out, err);
    pb_ctx_release(&cx);
    return rc;
}

/* ---- dequantize ---- */


int lb_pbllm_unpack_mask(const lb_qpacked *p, int64_t bs, uint8_t *mask, int64_t *nsal_out,
                         lb_err *err)
{
    const int64_t rows = p->rows, cols = p->cols, nblocks = (cols + bs - 1) / bs;
    int64_t nsal = 0;
    int rc;
    if (lb_qpacked_field(p, "mask")) {
        const lb_qfield *fm = lb_qpacked_need_field(p, "mask", LB_QFIELD_UINT, rows * cols, err);
        if (!fm || fm->bits != 1) {
            rc = fm ? lb_err_set(err, LB_EFORMAT, "pbllm packed: mask is not 1-bit; corrupt")
                    : err->code;
            return rc;
        }
        memcpy(mask, fm->data, (size_t)((rows * cols + 7) / 8));
        for (int64_t t = 0; t < rows * cols; t++)
            nsal += mask_bit(mask, t);
    } else {
        /* index form: per row and block a count, then ascending in-block columns */
        const lb_qfield *fcnt =
            lb_qpacked_need_field(p, "salient_count", LB_QFIELD_UINT, nblocks * rows, err);
        const lb_qfield *fpos =
            fcnt ? lb_qpacked_need_field(p, "salient_pos", LB_QFIELD_UINT, -1, err) : NULL;
        if (!fcnt || !fpos) {
            return err->code;
        }
        for (int64_t blk = 0; blk < nblocks; blk++) {
            const int64_t c0 = blk * bs, nb = cols - c0 < bs ? cols - c0 : bs;
            for (int64_t i = 0; i < rows; i++) {
                const int64_t n = lb_qfield_get(fcnt, blk * rows + i);
                int64_t prev = -1;
                for (int64_t t = 0; t < n; t++) {
                    const int64_t j = nsal < fpos->count ? (int64_t)lb_qfield_get(fpos, nsal) : -1;
                    if (j <= prev || j >= nb) {
                        rc = lb_err_set(err, LB_EFORMAT,
                                        "pbllm packed: salient positions of block %lld row %lld "
                                        "not ascending below %lld or too few; corrupt",
                                        (long long)blk, (long long)i, (long long)nb);
                        return rc;
                    }
                    const int64_t bit = (c0 + j) * rows + i;
                    mask[bit >> 3] |= (uint8_t)(1u << (bit & 7));
                    prev = j;
                    nsal++;
                }
            }
        }
        if (nsal != fpos->count) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "pbllm packed: counts give %lld salient entries, %lld positions "
                            "stored; corrupt",
                            (long long)nsal, (long long)fpos->count);
            return rc;
        }
    }
    *nsal_out = nsal;
    return 0;
}

int lb_pbllm_dequantize(const lb_qpacked *p, float *W_out, lb_err *err)
{
    lb_err local = {0};
    if (!err)
        err = &local;
    if (!p || !W_out)
        return lb_err_set(err, LB_EINVAL, "pbllm dequantize: NULL argument");
    const int64_t rows = p->rows, cols = p->cols;
    if (strcmp(p->method, "pbllm") || rows < 1 || cols < 1 || rows > INT64_MAX / cols)
        return lb_err_set(err, LB_EFORMAT,
                          "pbllm dequantize: packed is method '%.16s', %lld x %lld; expected a "
                          "non-empty pbllm matrix",
                          p->method, (long long)rows, (long long)cols);
    int rc = 0;
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    uint8_t *mask = calloc((size_t)((rows * cols + 7) / 8), 1); /* bit c*rows + i */
    if (!perm || !mask) {
        free(perm);
        free(mask);
        return lb_err_set(err, LB_ENOMEM, "pbllm dequantize: out of memory");
    }
    const lb_qfield *fbs = lb_qpacked_need_field(p, "block_size", LB_QFIELD_UINT, 1, err);
    const lb_qfield *fs = lb_qpacked_need_field(p, "signs", LB_QFIELD_UINT, -1, err);
    const lb_qfield *fc = lb_qpacked_need_field(p, "salient_codes", LB_QFIELD_UINT, -1, err);
    const lb_qfield *flo = lb_qpacked_need_field(p, "salient_min", LB_QFIELD_F16, rows, err);
    const lb_qfield *fst = lb_qpacked_need_field(p, "salient_step", LB_QFIELD_F16, rows, err);
    if (!fbs || !fs || !fc || !flo || !fst) {
        rc = err->code;
        goto cleanup;
    }
    const int64_t bs = lb_qfield_get(fbs, 0);
    if (bs < 1 || fs->bits != 1 || fc->bits < 1 || fc->bits > 16) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "pbllm packed: block_size %lld or field widths invalid; corrupt",
                        (long long)bs);
        goto cleanup;
    }
    const int64_t nblocks = (cols + bs - 1) / bs;
    const lb_qfield *fmu = lb_qpacked_need_field(p, "mu", LB_QFIELD_F16, nblocks * rows, err);
    const lb_qfield *fal = lb_qpacked_need_field(p, "alpha", LB_QFIELD_F16, nblocks * rows, err);
    if (!fmu || !fal) {
        rc = err->code;
        goto cleanup;
    }
    int64_t nsal = 0;
    if ((rc = lb_pbllm_unpack_mask(p, bs, mask, &nsal, err)))
        goto cleanup;
    if (nsal != fc->count || rows * cols - nsal != fs->count) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "pbllm packed: mask has %lld salient entries but %lld codes and %lld "
                        "signs are stored; corrupt",
                        (long long)nsal, (long long)fc->count, (long long)fs->count);
        goto cleanup;
    }
    if (lb_qpacked_field(p, "perm")) {
        if ((rc = lb_gptq_unpack_perm(p, perm, cols, err)))
            goto cleanup;
    } else {
        for (int64_t c = 0; c < cols; c++)
            perm[c] = c;
    }
    for (int64_t t = 0; t < nblocks * rows; t++)
        if (!isfinite(lb_qfield_get_float(fmu, t)) || !isfinite(lb_qfield_get_float(fal, t))) {
            rc = lb_err_set(err, LB_ENUMERIC, "pbllm packed: mu/alpha %lld is NaN/Inf; corrupt",
                            (long long)t);
            goto cleanup;
        }
    for (int64_t i = 0; i < rows; i++)
        if (!isfinite(lb_qfield_get_float(flo, i)) || !isfinite(lb_qfield_get_float(fst, i))) {
            rc = lb_err_set(err, LB_ENUMERIC,
                            "pbllm packed: salient grid of row %lld is NaN/Inf; corrupt",
                            (long long)i);
            goto cleanup;
        }
    int64_t os = 0, oc = 0;
    for (int64_t c = 0; c < cols; c++) {
        const int64_t blk = c / bs, col = perm[c];
        for (int64_t i = 0; i < rows; i++) {
            float v;
            if (mask_bit(mask, c * rows + i)) {
                v = lb_pbllm_grid_value(lb_qfield_get_float(flo, i), lb_qfield_get_float(fst, i),
                                        lb_qfield_get(fc, oc++));
            } else {
                v = bin_value(lb_qfield_get_float(fmu, blk * rows + i),
                              lb_qfield_get_float(fal, blk * rows + i), lb_qfield_get(fs, os++));
            }
            W_out[i * cols + col] = v;
        }
    }
cleanup:
    free(perm);
    free(mask);
    return rc;
}
