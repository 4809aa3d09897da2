/* K-quant grids (Q2_K, Q3_K, Q4_K) for GPTQ: fitting, codes, ggml block packing and
 * dequantization (layout and contract in lb_kquant.h). */
#include "lb_kquant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_gptq.h"

int lb_kquant_type_of_grid(lb_qgrid grid)
{
    return grid == LB_GRID_Q2_K   ? LB_GGML_TYPE_Q2_K
           : grid == LB_GRID_Q3_K ? LB_GGML_TYPE_Q3_K
           : grid == LB_GRID_Q4_K ? LB_GGML_TYPE_Q4_K
                                  : -1;
}

size_t lb_kquant_block_bytes(int type)
{
    return type == LB_GGML_TYPE_Q2_K   ? 84
           : type == LB_GGML_TYPE_Q3_K ? 110
           : type == LB_GGML_TYPE_Q4_K ? 144
                                       : 0;
}

const char *lb_kquant_type_name(int type)
{
    return type == LB_GGML_TYPE_Q2_K   ? "q2_k"
           : type == LB_GGML_TYPE_Q3_K ? "q3_k"
           : type == LB_GGML_TYPE_Q4_K ? "q4_k"
                                       : NULL;
}

/* codes per sub-block, sub-blocks, top code, largest stored sub-block scale */
static void geometry(int type, int *sub_n, int *nsub, int *maxq, int *smax)
{
    *sub_n = type == LB_GGML_TYPE_Q4_K ? 32 : 16;
    *nsub = LB_KQ_QK / *sub_n;
    *maxq = type == LB_GGML_TYPE_Q4_K ? 15 : type == LB_GGML_TYPE_Q3_K ? 7 : 3;
    *smax = type == LB_GGML_TYPE_Q2_K ? 15 : 63;
}

uint8_t lb_kquant_code(int type, const lb_kq_super *sb, int j, float x)
{
    const float a = sb->a[j];
    if (type == LB_GGML_TYPE_Q3_K) {
        if (a == 0.0f)
            return 4;
        float v = nearbyintf(x / a);
        return (uint8_t)(v < -4.0f ? 0 : v > 3.0f ? 7 : (int)v + 4);
    }
    const float maxq = type == LB_GGML_TYPE_Q4_K ? 15.0f : 3.0f;
    if (!(a > 0.0f))
        return 0;
    float v = nearbyintf((x + sb->b[j]) / a);
    return (uint8_t)(v < 0.0f ? 0 : v > maxq ? (int)maxq : (int)v);
}

float lb_kquant_value(int type, const lb_kq_super *sb, int j, uint8_t code)
{
    // ggml: dl * q - ml (Q2_K, Q4_K) and dl * q (Q3_K), float products, no fusing (C11)
    if (type == LB_GGML_TYPE_Q3_K)
        return sb->a[j] * (float)((int)code - 4);
    return sb->a[j] * (float)code - sb->b[j];
}

/* Effective sub-block grid from the stored fields, with ggml's float operations. */
static void effective(int type, lb_kq_super *sb)
{
    const float d = lb_f16_to_f32(sb->d), dmin = lb_f16_to_f32(sb->dmin);
    const int nsub = type == LB_GGML_TYPE_Q4_K ? 8 : 16;
    // into locals, then copy: with GCC 12.2 -O2 the in-place loop (if-converted and
    // vectorized after inlining into decode) left a[] = 0; -O3 or -fno-tree-vectorize
    // did not, and we found no UB in it. test_kquant checks the result against ggml.
    float a[16] = {0}, b[16] = {0};
    for (int j = 0; j < nsub; j++) {
        const int sc = type == LB_GGML_TYPE_Q3_K ? (int)sb->sc[j] - 32 : (int)sb->sc[j];
        a[j] = d * (float)sc;
        b[j] = type == LB_GGML_TYPE_Q3_K ? 0.0f : dmin * (float)sb->m[j];
    }
    memcpy(sb->a, a, sizeof a);
    memcpy(sb->b, b, sizeof b);
}

/* Weighted squared error of n values x in sub-block j under nearest rounding. */
static double sub_error(int type, const lb_kq_super *sb, int j, const float *x, const float *w,
                        int n)
{
    double e = 0.0;
    for (int i = 0; i < n; i++) {
        double d = (double)lb_kquant_value(type, sb, j, lb_kquant_code(type, sb, j, x[i])) -
                   (double)x[i];
        e += (double)w[i] * d * d;
    }
    return e;
}

/* Continuous weighted least-squares fit of one sub-block: value = a*l - b, l in 0..maxq,
 * a >= 0, b >= 0 (0 stays inside the range, as ggml's mins are subtracted). Tries 21
 * ranges around min-max and keeps the lowest weighted error after re-solving (a, b) for
 * each candidate's codes. */
static void fit_asym(const float *x, const float *w, int n, int maxq, float *a_out,
                     float *b_out)
{
    float xmin = 0.0f, xmax = 0.0f;
    for (int i = 0; i < n; i++) {
        xmin = x[i] < xmin ? x[i] : xmin;
        xmax = x[i] > xmax ? x[i] : xmax;
    }
    *a_out = 0.0f;
    *b_out = -xmin;
    if (xmax - xmin <= 0.0f)
        return;
    double best = INFINITY;
    double ba = (double)(xmax - xmin) / maxq, bb = -(double)xmin;
    for (int t = -10; t <= 10; t++) {
        double iscale = (maxq + 0.1 * t) / (double)(xmax - xmin);
        if (iscale <= 0.0)
            continue;
        double sw = 0, sl = 0, sll = 0, sx = 0, slx = 0;
        for (int i = 0; i < n; i++) {
            const double xi = (double)x[i], wi = (double)w[i];
            double l = nearbyint(iscale * (xi - (double)xmin));
            l = l < 0 ? 0 : l > maxq ? maxq : l;
            sw += wi;
            sl += wi * l;
            sll += wi * l * l;
            sx += wi * xi;
            slx += wi * l * xi;
        }
        double D = sll * sw - sl * sl, a, b;
        if (!(D > 0.0))
            continue;
        a = (sw * slx - sl * sx) / D;
        b = (a * sl - sx) / sw;
        if (b < 0.0) { // range would not contain 0: pin the min at 0
            b = 0.0;
            a = sll > 0.0 ? slx / sll : 0.0;
        }
        if (!(a > 0.0))
            continue;
        double e = 0.0;
        for (int i = 0; i < n; i++) {
            double l = nearbyint(((double)x[i] + b) / a);
            l = l < 0 ? 0 : l > maxq ? maxq : l;
            double d = a * l - b - (double)x[i];
            e += (double)w[i] * d * d;
        }
        if (e < best) {
            best = e;
            ba = a;
            bb = b;
        }
    }
    *a_out = (float)ba;
    *b_out = (float)bb;
}

/* Symmetric fit (Q3_K): value = a*l, l in -4..3; a may be negative so the largest
 * magnitude can use the extra level -4. */
static float fit_sym(const float *x, const float *w, int n)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++)
        amax = fabsf(x[i]) > fabsf(amax) ? x[i] : amax;
    if (amax == 0.0f)
        return 0.0f;
    double best = INFINITY, ba = -(double)amax / 4.0;
    for (int s = 0; s < 2; s++)
        for (int t = -10; t <= 10; t++) {
            double iscale = (s ? -(4.0 + 0.1 * t) : (3.0 + 0.1 * t)) / (double)amax;
            double slx = 0, sll = 0;
            for (int i = 0; i < n; i++) {
                double l = nearbyint(iscale * (double)x[i]);
                l = l < -4 ? -4 : l > 3 ? 3 : l;
                slx += (double)w[i] * l * (double)x[i];
                sll += (double)w[i] * l * l;
            }
            if (!(sll > 0.0))
                continue;
            double a = slx / sll, e = 0.0;
            for (int i = 0; i < n; i++) {
                double l = nearbyint((double)x[i] / a);
                l = l < -4 ? -4 : l > 3 ? 3 : l;
                double d = a * l - (double)x[i];
                e += (double)w[i] * d * d;
            }
            if (e < best) {
                best = e;
                ba = a;
            }
        }
    return (float)ba;
}

static int round_clamp(double v, int lo, int hi)
{
    double r = nearbyint(v);
    return r < lo ? lo : r > hi ? hi : (int)r;
}

int lb_kquant_fit(int type, const float *x, const float *w_in, lb_kq_super *sb, lb_err *err)
{
    int sub_n, nsub, maxq, smax;
    if (!lb_kquant_block_bytes(type))
        return lb_err_set(err, LB_EINVAL, "kquant: ggml type %d is not Q2_K/Q3_K/Q4_K", type);
    geometry(type, &sub_n, &nsub, &maxq, &smax);
    float ones[LB_KQ_QK], w[LB_KQ_QK];
    for (int i = 0; i < LB_KQ_QK; i++) {
        if (!isfinite(x[i]))
            return lb_err_set(err, LB_ENUMERIC, "kquant: weight %d of a super-block is NaN/Inf",
                              i);
        ones[i] = 1.0f;
        w[i] = w_in && w_in[i] > 0.0f ? w_in[i] : 0.0f;
    }
    memset(sb, 0, sizeof *sb);
    float a[16], b[16];
    for (int j = 0; j < nsub; j++) {
        const float *xs = x + j * sub_n, *ws = w + j * sub_n;
        double sw = 0.0;
        for (int i = 0; i < sub_n; i++)
            sw += (double)ws[i];
        if (!(sw > 0.0)) // dead columns: plain least squares
            ws = ones;
        if (type == LB_GGML_TYPE_Q3_K) {
            a[j] = fit_sym(xs, ws, sub_n);
            b[j] = 0.0f;
        } else {
            fit_asym(xs, ws, sub_n, maxq, &a[j], &b[j]);
        }
    }
    // super-block scales: the largest sub-block scale (min) maps to the top stored value
    if (type == LB_GGML_TYPE_Q3_K) {
        float big = 0.0f;
        for (int j = 0; j < nsub; j++)
            big = fabsf(a[j]) > fabsf(big) ? a[j] : big;
        sb->d = lb_f32_to_f16(-big / 32.0f);
        const float d = lb_f16_to_f32(sb->d);
        for (int j = 0; j < nsub; j++)
            sb->sc[j] = d != 0.0f ? (uint8_t)(round_clamp((double)a[j] / (double)d, -32, 31) + 32) : 32;
    } else {
        float amax = 0.0f, bmax = 0.0f;
        for (int j = 0; j < nsub; j++) {
            amax = a[j] > amax ? a[j] : amax;
            bmax = b[j] > bmax ? b[j] : bmax;
        }
        sb->d = lb_f32_to_f16(amax / (float)smax);
        sb->dmin = lb_f32_to_f16(bmax / (float)smax);
        const float d = lb_f16_to_f32(sb->d), dmin = lb_f16_to_f32(sb->dmin);
        for (int j = 0; j < nsub; j++) {
            sb->sc[j] = d > 0.0f ? (uint8_t)round_clamp((double)a[j] / (double)d, 0, smax) : 0;
            sb->m[j] = dmin > 0.0f ? (uint8_t)round_clamp((double)b[j] / (double)dmin, 0, smax) : 0;
        }
    }
    effective(type, sb);
    // the stored scales are integers: try the neighbours of each, nearest rounding,
    // keep the lowest weighted error of the sub-block
    for (int j = 0; j < nsub; j++) {
        const float *xs = x + j * sub_n;
        const float *ws = w + j * sub_n;
        double sw = 0.0;
        for (int i = 0; i < sub_n; i++)
            sw += (double)ws[i];
        if (!(sw > 0.0))
            ws = ones;
        const int lo = 0, hi = type == LB_GGML_TYPE_Q3_K ? 63 : smax;
        const uint8_t sc0 = sb->sc[j], m0 = sb->m[j];
        uint8_t bsc = sc0, bm = m0;
        double best = sub_error(type, sb, j, xs, ws, sub_n);
        for (int ds = -1; ds <= 1; ds++)
            for (int dm = -1; dm <= 1; dm++) {
                int s = sc0 + ds, m = m0 + dm;
                if ((!ds && !dm) || s < lo || s > hi || m < 0 || m > hi ||
                    (type == LB_GGML_TYPE_Q3_K && dm))
                    continue;
                sb->sc[j] = (uint8_t)s;
                sb->m[j] = (uint8_t)m;
                effective(type, sb);
                double e = sub_error(type, sb, j, xs, ws, sub_n);
                if (e < best) {
                    best = e;
                    bsc = (uint8_t)s;
                    bm = (uint8_t)m;
                }
            }
        sb->sc[j] = bsc;
        sb->m[j] = bm;
        effective(type, sb);
    }
    return LB_OK;
}

/* Byte of weight k's low code bits in a Q2_K/Q3_K block's qs and its shift: ggml walks
 * two halves of 128, each as 4 shifts x 32 bytes. */
static inline int qs2_index(int k, int *shift)
{
    *shift = 2 * ((k % 128) / 32);
    return (k / 128) * 32 + k % 32;
}

void lb_kquant_encode(int type, const lb_kq_super *sb, const uint8_t *codes, uint8_t *blk)
{
    memset(blk, 0, lb_kquant_block_bytes(type));
    if (type == LB_GGML_TYPE_Q4_K) {
        blk[0] = (uint8_t)(sb->d & 0xff);
        blk[1] = (uint8_t)(sb->d >> 8);
        blk[2] = (uint8_t)(sb->dmin & 0xff);
        blk[3] = (uint8_t)(sb->dmin >> 8);
        uint8_t *s = blk + 4, *qs = blk + 16;
        // sub-blocks 0..3: low 6 bits of bytes 0..3 (scale) and 4..7 (min); 4..7: low
        // nibbles in bytes 8..11, their top 2 bits in the top of bytes 0..7
        for (int j = 0; j < 4; j++) {
            s[j] = (uint8_t)(sb->sc[j] | (sb->sc[j + 4] >> 4) << 6);
            s[j + 4] = (uint8_t)(sb->m[j] | (sb->m[j + 4] >> 4) << 6);
            s[j + 8] = (uint8_t)((sb->sc[j + 4] & 0xF) | (sb->m[j + 4] & 0xF) << 4);
        }
        for (int k = 0; k < LB_KQ_QK; k++) {
            uint8_t *p = qs + (k / 64) * 32 + k % 32;
            *p |= (uint8_t)((k % 64) < 32 ? codes[k] : codes[k] << 4);
        }
        return;
    }
    if (type == LB_GGML_TYPE_Q3_K) {
        uint8_t *hm = blk, *qs = blk + 32, *s = blk + 96;
        for (int k = 0; k < LB_KQ_QK; k++) {
            int shift, i = qs2_index(k, &shift);
            qs[i] |= (uint8_t)((codes[k] & 3) << shift);
            if (codes[k] & 4)
                hm[k % 32] |= (uint8_t)(1u << (k / 32));
        }
        // scale j (6 bits): low nibble in byte j (j < 8) or the high nibble of byte j-8;
        // top 2 bits in byte 8 + j%4 at bit 2*(j/4)
        for (int j = 0; j < 16; j++) {
            const uint8_t v = sb->sc[j];
            if (j < 8)
                s[j] |= v & 0xF;
            else
                s[j - 8] |= (uint8_t)((v & 0xF) << 4);
            s[8 + j % 4] |= (uint8_t)((v >> 4) << (2 * (j / 4)));
        }
        blk[108] = (uint8_t)(sb->d & 0xff);
        blk[109] = (uint8_t)(sb->d >> 8);
        return;
    }
    // Q2_K: scales[16] = sc | m << 4, qs[64], d, dmin
    uint8_t *qs = blk + 16;
    for (int j = 0; j < 16; j++)
        blk[j] = (uint8_t)(sb->sc[j] | sb->m[j] << 4);
    for (int k = 0; k < LB_KQ_QK; k++) {
        int shift, i = qs2_index(k, &shift);
        qs[i] |= (uint8_t)(codes[k] << shift);
    }
    blk[80] = (uint8_t)(sb->d & 0xff);
    blk[81] = (uint8_t)(sb->d >> 8);
    blk[82] = (uint8_t)(sb->dmin & 0xff);
    blk[83] = (uint8_t)(sb->dmin >> 8);
}

/* Unpacks one block into sb (stored fields + effective grid) and codes[256]. */
static void decode(int type, const uint8_t *blk, lb_kq_super *sb, uint8_t *codes)
{
    memset(sb, 0, sizeof *sb);
    if (type == LB_GGML_TYPE_Q4_K) {
        sb->d = (uint16_t)(blk[0] | blk[1] << 8);
        sb->dmin = (uint16_t)(blk[2] | blk[3] << 8);
        const uint8_t *s = blk + 4, *qs = blk + 16;
        for (int j = 0; j < 4; j++) {
            sb->sc[j] = s[j] & 63;
            sb->m[j] = s[j + 4] & 63;
            sb->sc[j + 4] = (uint8_t)((s[j + 8] & 0xF) | (s[j] >> 6) << 4);
            sb->m[j + 4] = (uint8_t)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
        }
        for (int k = 0; k < LB_KQ_QK; k++) {
            uint8_t v = qs[(k / 64) * 32 + k % 32];
            codes[k] = (k % 64) < 32 ? v & 0xF : v >> 4;
        }
    } else if (type == LB_GGML_TYPE_Q3_K) {
        const uint8_t *hm = blk, *qs = blk + 32, *s = blk + 96;
        sb->d = (uint16_t)(blk[108] | blk[109] << 8);
        for (int j = 0; j < 16; j++) {
            uint8_t lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
            sb->sc[j] = (uint8_t)(lo | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
        }
        for (int k = 0; k < LB_KQ_QK; k++) {
            int shift, i = qs2_index(k, &shift);
            codes[k] = (uint8_t)(((qs[i] >> shift) & 3) | ((hm[k % 32] >> (k / 32)) & 1) << 2);
        }
    } else {
        const uint8_t *qs = blk + 16;
        for (int j = 0; j < 16; j++) {
            sb->sc[j] = blk[j] & 0xF;
            sb->m[j] = blk[j] >> 4;
        }
        sb->d = (uint16_t)(blk[80] | blk[81] << 8);
        sb->dmin = (uint16_t)(blk[82] | blk[83] << 8);
        for (int k = 0; k < LB_KQ_QK; k++) {
            int shift, i = qs2_index(k, &shift);
            codes[k] = (qs[i] >> shift) & 3;
        }
    }
    effective(type, sb);
}

int lb_kquant_dequant_row(int type, const uint8_t *blocks, float *y, int64_t n, lb_err *err)
{
    const size_t bb = lb_kquant_block_bytes(type);
    if (!bb || n % LB_KQ_QK)
        return lb_err_set(err, LB_EINVAL, "kquant dequant: type %d or row of %lld is not "
                          "whole Q2_K/Q3_K/Q4_K blocks", type, (long long)n);
    lb_kq_super sb;
    uint8_t codes[LB_KQ_QK];
    for (int64_t i = 0; i < n / LB_KQ_QK; i++) {
        decode(type, blocks + (size_t)i * bb, &sb, codes);
        for (int k = 0; k < LB_KQ_QK; k++)
            y[i * LB_KQ_QK + k] = lb_kquant_value(type, &sb, lb_kquant_sub(type, k), codes[k]);
    }
    return LB_OK;
}

int lb_kquant_packed_type(const lb_qpacked *p)
{
    const lb_qfield *t = lb_qpacked_field(p, "kq_type");
    if (!t || t->kind != LB_QFIELD_UINT || t->count != 1)
        return -1;
    int type = (int)lb_qfield_get(t, 0);
    return lb_kquant_block_bytes(type) ? type : -1;
}

int lb_kquant_dequantize(const lb_qpacked *p, float *W_out, lb_err *err)
{
    const int type = lb_kquant_packed_type(p);
    const lb_qfield *bl = lb_qpacked_field(p, "kq_blocks");
    if (type < 0 || !bl)
        return lb_err_set(err, LB_EFORMAT, "%s packed matrix: kq_type is not 10/11/12 or "
                          "kq_blocks is missing (re-quantize with --grid q2_k|q3_k|q4_k)",
                          p->method);
    const size_t bb = lb_kquant_block_bytes(type);
    if (p->rows < 1 || p->cols < LB_KQ_QK || p->cols % LB_KQ_QK || bl->kind != LB_QFIELD_UINT ||
        bl->bits != 8 || (uint64_t)bl->count != (uint64_t)p->rows * (uint64_t)(p->cols / LB_KQ_QK) * bb)
        return lb_err_set(err, LB_EFORMAT, "%s packed matrix: kq_blocks holds %lld bytes, "
                          "%lld x %lld %s needs %lld", p->method, (long long)bl->count,
                          (long long)p->rows, (long long)p->cols, lb_kquant_type_name(type),
                          (long long)(p->rows * (p->cols / LB_KQ_QK) * (int64_t)bb));
    const int64_t row_bytes = p->cols / LB_KQ_QK * (int64_t)bb;
    for (int64_t r = 0; r < p->rows; r++)
        lb_kquant_dequant_row(type, bl->data + r * row_bytes, W_out + r * p->cols, p->cols,
                              NULL);
    return LB_OK;
}

/* ---- GPTQ hook ---- */

typedef struct {
    int type;
    size_t bb;
    int64_t nsbr;       /* super-blocks per row */
    lb_kq_super *sb;    /* (rows,) current super-block of each row */
    uint8_t *codes;     /* (rows, 256) current super-block's codes */
    uint8_t *blocks;    /* (rows, nsbr * bb): the kq_blocks field's data */
    lb_err *fit_err;
} kq_ctx;

static int kq_column(void *ctx, const lb_gptq_state *st, int64_t c, const float *w, float *q,
                     float *err_scale, lb_err *err)
{
    (void)err_scale;
    kq_ctx *k = ctx;
    const int64_t rows = st->rows, s = c / LB_KQ_QK;
    const int kk = (int)(c % LB_KQ_QK), j = lb_kquant_sub(k->type, kk);
    if (kk == 0) {
        // the super-block's current, fully compensated columns (engine group = 256)
        int bad = 0;
        const float *hd = st->Hdiag + c;
#pragma omp parallel for schedule(static) reduction(| : bad)
        for (int64_t r = 0; r < rows; r++) {
            float x[LB_KQ_QK];
            for (int i = 0; i < LB_KQ_QK; i++)
                x[i] = st->Wt[(c + i) * rows + r];
            bad |= lb_kquant_fit(k->type, x, hd, &k->sb[r], NULL) != 0;
        }
        if (bad)
            return lb_err_set(err, LB_ENUMERIC, "gptq %s: a super-block holds NaN/Inf",
                              lb_kquant_type_name(k->type));
    }
    for (int64_t r = 0; r < rows; r++) {
        uint8_t code = lb_kquant_code(k->type, &k->sb[r], j, w[r]);
        k->codes[r * LB_KQ_QK + kk] = code;
        q[r] = lb_kquant_value(k->type, &k->sb[r], j, code);
    }
    if (kk == LB_KQ_QK - 1)
        for (int64_t r = 0; r < rows; r++)
            lb_kquant_encode(k->type, &k->sb[r], k->codes + r * LB_KQ_QK,
                             k->blocks + ((size_t)r * (size_t)k->nsbr + (size_t)s) * k->bb);
    return LB_OK;
}

int lb_kquant_gptq(const float *W, int64_t rows, int64_t cols, const float *H,
                   const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    const int type = lb_kquant_type_of_grid(opts->grid);
    const char *tn = lb_kquant_type_name(type);
    if (type < 0)
        return lb_err_set(err, LB_EINVAL, "gptq: --grid is not q2_k, q3_k or q4_k");
    if (!W || !H || rows < 1 || cols < 1)
        return lb_err_set(err, LB_EINVAL, "gptq %s: empty matrix", tn);
    if (cols % LB_KQ_QK)
        return lb_err_set(err, LB_EINVAL, "gptq --grid %s: rows of %lld columns are not whole "
                          "super-blocks of 256 (llama.cpp would fall back to another type); "
                          "use --grid minmax for this model", tn, (long long)cols);
    if (opts->act_order || opts->static_groups)
        return lb_err_set(err, LB_EINVAL, "gptq --grid %s: --act-order/--static-groups do not "
                          "apply (ggml blocks follow the column order); drop them", tn);
    if (rows > INT64_MAX / cols || (uint64_t)(rows * cols) > SIZE_MAX / sizeof(float))
        return lb_err_set(err, LB_EINVAL, "gptq: %lld x %lld overflows", (long long)rows,
                          (long long)cols);
    memset(out, 0, sizeof *out);
    int rc = LB_OK;
    kq_ctx k = {.type = type, .bb = lb_kquant_block_bytes(type), .nsbr = cols / LB_KQ_QK};
    const int64_t one = 1;
    const int64_t shape[2] = {rows, k.nsbr * (int64_t)k.bb};
    snprintf(out->packed.method, sizeof out->packed.method, "gptq");
    out->packed.rows = rows;
    out->packed.cols = cols;
    if (!lb_qpacked_add_field(&out->packed, "kq_type", LB_QFIELD_UINT, 8, 1, &one, err) ||
        !lb_qpacked_add_field(&out->packed, "kq_blocks", LB_QFIELD_UINT, 8, 2, shape, err)) {
        rc = err ? err->code : LB_ENOMEM;
        goto fail;
    }
    lb_qfield_put(&out->packed.fields[0], 0, (uint32_t)type);
    k.blocks = out->packed.fields[1].data;
    k.sb = malloc((size_t)rows * sizeof *k.sb);
    k.codes = malloc((size_t)rows * LB_KQ_QK);
    out->W_hat = lb_quant_big_alloc((size_t)(rows * cols) * sizeof *out->W_hat);
    if (!k.sb || !k.codes || !out->W_hat) {
        rc = lb_err_set(err, LB_ENOMEM, "gptq %s: out of memory for %lld x %lld", tn,
                        (long long)rows, (long long)cols);
        goto fail;
    }
    lb_qopts eo = *opts;
    eo.group_size = LB_KQ_QK; // super-blocks are fitted on fully compensated columns
    lb_gptq_hook hook = {.ctx = &k, .column = kq_column};
    if ((rc = lb_gptq_run(W, rows, cols, H, &eo, &hook, out->W_hat, NULL, err)))
        goto fail;
    out->bpw = lb_qpacked_bpw(&out->packed);
    goto cleanup;
fail:
    lb_qresult_free(out);
cleanup:
    free(k.sb);
    free(k.codes);
    return rc;
}
