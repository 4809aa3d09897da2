/* lb_uniform: the uniform (affine) integer grid of RTN and GPTQ, as in the GPTQ
 * reference quantizer (quant.py: find_params / quantize):
 *   code  = clamp(round(x / scale) + zero, 0, maxq)          round half to even
 *   value = scale * (code - zero)
 * Scales are rounded to f16 when fitted (that is what is stored), so the values used
 * while quantizing are exactly the ones dequantization reproduces. */
#ifndef LB_UNIFORM_H
#define LB_UNIFORM_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

typedef struct {
    int32_t maxq;  /* 2^bits - 1 */
    bool sym;      /* symmetric: zero = (maxq + 1) / 2, not stored */
    lb_qgrid grid; /* LB_GRID_MINMAX or LB_GRID_MSE (shrink search) */
} lb_uniform_cfg;

/* Fits one grid per row r < rows over the n values X[r*rs + k*cs], k < n:
 *   xmin = min(min_k x, 0), xmax = max(max_k x, 0) (0 always representable);
 *   sym: xmax = max(|xmin|, xmax), xmin = -xmax if xmin < 0; all-zero rows use [-1, 1];
 *   scale = f16((xmax - xmin) / maxq), zero = round(-xmin / scale) (sym: (maxq+1)/2).
 * LB_GRID_MSE: tries the range shrunk by p = 1 - i/100, i = 0..79 (down to p = 0.21,
 * the reference's maxshrink 0.8 with grid 100) and keeps, per row, the lowest
 * sum_k |x - value|^2.4 (first minimum wins).
 * OUT: scale[rows] (exact f16 values, > 0), zero[rows] in [0, maxq].
 * Returns 0, LB_EINVAL (maxq < 1, n < 1), LB_ENOMEM, LB_ENUMERIC (a scale overflows
 * f16 or x is not finite). */
int lb_uniform_fit(const float *X, int64_t rows, int64_t n, int64_t rs, int64_t cs,
                   const lb_uniform_cfg *cfg, float *scale, int32_t *zero, lb_err *err);

static inline int32_t lb_uniform_code(float x, float scale, int32_t zero, int32_t maxq)
{
    // round half to even without a libm call (vectorizes): for |v| <= 2^20 adding and
    // subtracting 1.5 * 2^23 rounds exactly like nearbyintf; larger |v| clamp to a code
    // bound anyway (0 <= zero <= maxq <= 65535), so clamp v first
    float v = x / scale;
    v = v < -0x1p20f ? -0x1p20f : v > 0x1p20f ? 0x1p20f : v;
    float c = ((v + 0x1.8p23f) - 0x1.8p23f) + (float)zero;
    return c < 0.0f ? 0 : c > (float)maxq ? maxq : (int32_t)c;
}

static inline float lb_uniform_value(int32_t code, float scale, int32_t zero)
{
    return scale * (float)(code - zero);
}

/* Parses opts->bits as an integer width 1..16 into *maxq. Returns 0 or LB_EINVAL
 * naming `method`. */
int lb_uniform_bits(const lb_qopts *opts, const char *method, int32_t *bits_out,
                    lb_err *err);

/* Packed layout shared by RTN and GPTQ (all fields counted in bpw):
 *   "group_size" UINT 32 (1,)           g, 0 = one group per row
 *   "codes"      UINT bits (rows, cols)  original column order
 *   "scales"     F16 (rows, ngroups)     ngroups = ceil(cols / g) (1 when g = 0)
 *   "zeros"      UINT bits (rows, ngroups), asymmetric grids only (sym: (maxq+1)/2)
 *   "perm"       optional (lb_gptq_pack_perm): groups are then formed in processing
 *                order: group of original column o = iperm[o] / g.
 * Without "perm", group of column o = o / g. */
typedef struct {
    lb_qfield *codes, *scales, *zeros; /* zeros NULL when sym */
    int64_t group_size, ngroups;      /* group_size: effective g (cols when per row) */
    int32_t bits, maxq;
    bool sym;
} lb_uniform_fields;

/* Adds the fields above (not "perm") to an empty packed struct and sets method,
 * rows, cols. OUT: *f points into p (valid until another field is added).
 * Returns 0 or LB_EINVAL/LB_ENOMEM. */
int lb_uniform_pack_begin(lb_qpacked *p, const char *method, int64_t rows, int64_t cols,
                          int32_t bits, int64_t group_size, bool sym, lb_uniform_fields *f,
                          lb_err *err);

/* Rebuilds W (rows, cols) from the layout above (with or without "perm"). Validates
 * every field's presence, kind, shape and range. Returns 0, LB_EFORMAT, LB_ENOTFOUND
 * or LB_ENOMEM. */
int lb_uniform_dequantize(const lb_qpacked *p, float *W_out, lb_err *err);

#endif
