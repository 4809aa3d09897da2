#include "lb_uniform.h"

#include "lb_kquant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_gptq.h"

/* Rounds a positive scale to the f16 value that is stored; never returns 0 (the
 * smallest subnormal replaces an underflow) so divisions by it stay finite. */
static int f16_scale(float s, float *out)
{
    float h = lb_f16_to_f32(lb_f32_to_f16(s));
    if (!isfinite(h))
        return -1;
    *out = h > 0.0f ? h : 0x1p-24f;
    return 0;
}

static int32_t zero_of(float xmin, float scale, int32_t maxq)
{
    float z = nearbyintf(-xmin / scale);
    return z < 0.0f ? 0 : z > (float)maxq ? maxq : (int32_t)z;
}

int lb_uniform_bits(const lb_qopts *opts, const char *method, int32_t *bits_out, lb_err *err)
{
    double b = opts->bits;
    if (!(b >= 1.0 && b <= 16.0) || b != floor(b))
        return lb_err_set(err, LB_EINVAL, "%s: --bits %g must be an integer in 1..16", method,
                          b);
    *bits_out = (int32_t)b;
    return LB_OK;
}

int lb_uniform_fit(const float *X, int64_t rows, int64_t n, int64_t rs, int64_t cs,
                   const lb_uniform_cfg *cfg, float *scale, int32_t *zero, lb_err *err)
{
    if (!X || rows < 1 || n < 1 || !cfg || cfg->maxq < 1)
        return lb_err_set(err, LB_EINVAL, "uniform grid: empty input or maxq < 1");
    if (cfg->grid != LB_GRID_MINMAX && cfg->grid != LB_GRID_MSE)
        return lb_err_set(err, LB_EINVAL, "--grid %s: only gptq quantizes onto K-quant grids; "
                          "use --grid minmax or mse here", lb_qgrid_name(cfg->grid));
    int rc = LB_OK;
    const int32_t maxq = cfg->maxq;
    float *xmin = malloc((size_t)rows * sizeof *xmin);
    float *xmax = malloc((size_t)rows * sizeof *xmax);
    float *s1 = NULL;
    int32_t *z1 = NULL;
    double *e = NULL, *best = NULL;
    if (!xmin || !xmax) {
        rc = lb_err_set(err, LB_ENOMEM, "uniform grid: out of memory");
        goto cleanup;
    }
    for (int64_t r = 0; r < rows; r++)
        xmin[r] = xmax[r] = 0.0f;
    bool finite = true;
    // loop order follows the memory layout; each row still sees its k in order
    const bool row_inner = rs < cs;
    for (int64_t a = 0; a < (row_inner ? n : rows); a++)
        for (int64_t b = 0; b < (row_inner ? rows : n); b++) {
            const int64_t r = row_inner ? b : a, k = row_inner ? a : b;
            float x = X[r * rs + k * cs];
            finite &= isfinite(x) != 0;
            xmin[r] = x < xmin[r] ? x : xmin[r];
            xmax[r] = x > xmax[r] ? x : xmax[r];
        }
    if (!finite) {
        rc = lb_err_set(err, LB_ENUMERIC, "uniform grid: weights hold NaN/Inf");
        goto cleanup;
    }
    const int32_t zsym = (maxq + 1) / 2;
    for (int64_t r = 0; r < rows; r++) {
        if (cfg->sym) {
            float a = fabsf(xmin[r]);
            xmax[r] = a > xmax[r] ? a : xmax[r];
            if (xmin[r] < 0.0f)
                xmin[r] = -xmax[r];
        }
        if (xmin[r] == 0.0f && xmax[r] == 0.0f) {
            xmin[r] = -1.0f;
            xmax[r] = 1.0f;
        }
        if (f16_scale((xmax[r] - xmin[r]) / (float)maxq, &scale[r])) {
            rc = lb_err_set(err, LB_ENUMERIC,
                            "uniform grid: scale of range [%g, %g] overflows f16",
                            (double)xmin[r], (double)xmax[r]);
            goto cleanup;
        }
        zero[r] = cfg->sym ? zsym : zero_of(xmin[r], scale[r], maxq);
    }
    if (cfg->grid != LB_GRID_MSE)
        goto cleanup;

    /* GPTQ reference find_params(mse=True): norm 2.4, grid 100, maxshrink 0.8. */
    s1 = malloc((size_t)rows * sizeof *s1);
    z1 = malloc((size_t)rows * sizeof *z1);
    e = malloc((size_t)rows * sizeof *e);
    best = malloc((size_t)rows * sizeof *best);
    if (!s1 || !z1 || !e || !best) {
        rc = lb_err_set(err, LB_ENOMEM, "uniform grid: out of memory");
        goto cleanup;
    }
    for (int64_t r = 0; r < rows; r++)
        best[r] = INFINITY;
    for (int i = 0; i < 80; i++) {
        float p = 1.0f - (float)i / 100.0f;
        for (int64_t r = 0; r < rows; r++) {
            float lo = p * xmin[r], hi = p * xmax[r];
            if (f16_scale((hi - lo) / (float)maxq, &s1[r])) {
                rc = lb_err_set(err, LB_ENUMERIC, "uniform grid: scale overflows f16");
                goto cleanup;
            }
            z1[r] = cfg->sym ? zsym : zero_of(lo, s1[r], maxq);
            e[r] = 0.0;
        }
        for (int64_t a = 0; a < (row_inner ? n : rows); a++)
            for (int64_t b = 0; b < (row_inner ? rows : n); b++) {
                const int64_t r = row_inner ? b : a, k = row_inner ? a : b;
                float x = X[r * rs + k * cs];
                float v = lb_uniform_value(lb_uniform_code(x, s1[r], z1[r], maxq), s1[r], z1[r]);
                e[r] += (double)powf(fabsf(v - x), 2.4f);
            }
        for (int64_t r = 0; r < rows; r++)
            if (e[r] < best[r]) {
                best[r] = e[r];
                scale[r] = s1[r];
                zero[r] = z1[r];
            }
    }
cleanup:
    free(xmin);
    free(xmax);
    free(s1);
    free(z1);
    free(e);
    free(best);
    return rc;
}

int lb_uniform_pack_begin(lb_qpacked *p, const char *method, int64_t rows, int64_t cols,
                          int32_t bits, int64_t group_size, bool sym, lb_uniform_fields *f,
                          lb_err *err)
{
    if (rows < 1 || cols < 1 || bits < 1 || bits > 16 || group_size < 0)
        return lb_err_set(err, LB_EINVAL, "%s: bad shape %lld x %lld, bits %d or group %lld",
                          method, (long long)rows, (long long)cols, bits,
                          (long long)group_size);
    memset(p, 0, sizeof *p);
    snprintf(p->method, sizeof p->method, "%s", method);
    p->rows = rows;
    p->cols = cols;
    int64_t g = group_size > 0 && group_size < cols ? group_size : cols;
    int64_t ngroups = (cols + g - 1) / g;
    int64_t one = 1, shape_c[2] = {rows, cols}, shape_g[2] = {rows, ngroups};
    if (!lb_qpacked_add_field(p, "group_size", LB_QFIELD_UINT, 32, 1, &one, err) ||
        !lb_qpacked_add_field(p, "codes", LB_QFIELD_UINT, (uint32_t)bits, 2, shape_c, err) ||
        !lb_qpacked_add_field(p, "scales", LB_QFIELD_F16, 16, 2, shape_g, err) ||
        (!sym && !lb_qpacked_add_field(p, "zeros", LB_QFIELD_UINT, (uint32_t)bits, 2, shape_g,
                                       err))) {
        lb_qpacked_free(p);
        return err ? err->code : LB_ENOMEM;
    }
    lb_qfield_put(&p->fields[0], 0, (uint32_t)(group_size > 0 ? group_size : 0));
    f->codes = &p->fields[1];
    f->scales = &p->fields[2];
    f->zeros = sym ? NULL : &p->fields[3];
    f->group_size = g;
    f->ngroups = ngroups;
    f->bits = bits;
    f->maxq = (int32_t)((1u << bits) - 1u);
    f->sym = sym;
    return LB_OK;
}

static bool shape2(const lb_qfield *f, int64_t a, int64_t b)
{
    return f->ndim == 2 && f->shape[0] == a && f->shape[1] == b;
}

int lb_uniform_dequantize(const lb_qpacked *p, float *W_out, lb_err *err)
{
    if (!p || !W_out || p->rows < 1 || p->cols < 1)
        return lb_err_set(err, LB_EINVAL, "uniform dequantize: empty packed matrix");
    if (lb_qpacked_field(p, "kq_type")) // gptq --grid q2_k|q3_k|q4_k
        return lb_kquant_dequantize(p, W_out, err);
    const int64_t rows = p->rows, cols = p->cols;
    const lb_qfield *fg = lb_qpacked_field(p, "group_size");
    const lb_qfield *fc = lb_qpacked_field(p, "codes");
    const lb_qfield *fs = lb_qpacked_field(p, "scales");
    const lb_qfield *fz = lb_qpacked_field(p, "zeros");
    if (!fg || !fc || !fs)
        return lb_err_set(err, LB_ENOTFOUND,
                          "%s packed matrix: missing group_size, codes or scales field",
                          p->method);
    if (fg->kind != LB_QFIELD_UINT || fg->count != 1 || fc->kind != LB_QFIELD_UINT ||
        fc->bits > 16 || fs->kind != LB_QFIELD_F16)
        return lb_err_set(err, LB_EFORMAT, "%s packed matrix: field kinds are wrong",
                          p->method);
    int64_t gs = (int64_t)lb_qfield_get(fg, 0);
    int64_t g = gs > 0 && gs < cols ? gs : cols;
    int64_t ngroups = (cols + g - 1) / g;
    int32_t maxq = (int32_t)((1u << fc->bits) - 1u);
    if (!shape2(fc, rows, cols) || !shape2(fs, rows, ngroups) ||
        (fz && (!shape2(fz, rows, ngroups) || fz->kind != LB_QFIELD_UINT ||
                fz->bits != fc->bits)))
        return lb_err_set(err, LB_EFORMAT,
                          "%s packed matrix: field shapes do not match %lld x %lld, group %lld",
                          p->method, (long long)rows, (long long)cols, (long long)gs);
    int64_t *perm = NULL;
    int64_t *group_of = malloc((size_t)cols * sizeof *group_of);
    if (!group_of)
        return lb_err_set(err, LB_ENOMEM, "uniform dequantize: out of memory");
    int rc = LB_OK;
    if (lb_qpacked_field(p, "perm")) {
        perm = malloc((size_t)cols * sizeof *perm);
        if (!perm) {
            rc = lb_err_set(err, LB_ENOMEM, "uniform dequantize: out of memory");
            goto cleanup;
        }
        rc = lb_gptq_unpack_perm(p, perm, cols, err);
        if (rc)
            goto cleanup;
        for (int64_t c = 0; c < cols; c++)
            group_of[perm[c]] = c / g;
    } else {
        for (int64_t o = 0; o < cols; o++)
            group_of[o] = o / g;
    }
    const int32_t zsym = (maxq + 1) / 2;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < cols; o++) {
            int64_t gi = r * ngroups + group_of[o];
            float s = lb_qfield_get_float(fs, gi);
            int32_t z = fz ? (int32_t)lb_qfield_get(fz, gi) : zsym;
            if (!isfinite(s)) {
                rc = lb_err_set(err, LB_EFORMAT, "%s packed matrix: scale %lld is not finite",
                                p->method, (long long)gi);
                goto cleanup;
            }
            W_out[r * cols + o] =
                lb_uniform_value((int32_t)lb_qfield_get(fc, r * cols + o), s, z);
        }
cleanup:
    free(group_of);
    free(perm);
    return rc;
}
