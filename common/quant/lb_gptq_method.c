/* The "gptq" method: the GPTQ engine with the reference's uniform-grid quantizer as
 * its column hook (per row, groups, static groups, sym/asym, min-max or MSE grid). */
#include <stdlib.h>
#include <string.h>

#include "lb_gptq.h"
#include "lb_kquant.h"
#include "lb_uniform.h"

typedef struct {
    lb_uniform_fields f;
    lb_uniform_cfg cfg;
    int64_t g;             /* group size in columns (cols when per row) */
    bool per_row, static_groups;
    float *scale;          /* (rows,) current group's grid */
    int32_t *zero;         /* (rows,) */
    float *sscale;         /* static groups: (ngroups, rows) */
    int32_t *szero;
    float *gather;         /* static groups: (g, rows) gather buffer */
    uint16_t *ct;          /* (cols, rows) codes in processing order, packed at the end */
} gptq_uniform;

/* Stores the grid of group gi from scale/zero; scales are already f16 values. */
static void store_grid(gptq_uniform *u, int64_t rows, int64_t gi, const float *scale,
                       const int32_t *zero)
{
    for (int64_t r = 0; r < rows; r++) {
        lb_qfield_put_float(u->f.scales, r * u->f.ngroups + gi, scale[r]);
        if (u->f.zeros)
            lb_qfield_put(u->f.zeros, r * u->f.ngroups + gi, (uint32_t)zero[r]);
    }
}

static int uniform_begin(void *ctx, const lb_gptq_state *st, lb_err *err)
{
    gptq_uniform *u = ctx;
    const int64_t rows = st->rows, cols = st->cols;
    if (u->per_row) {
        // one grid per row over the whole (permuted) W; order does not matter
        int rc = lb_uniform_fit(st->Wt, rows, cols, 1, rows, &u->cfg, u->scale, u->zero, err);
        if (!rc)
            store_grid(u, rows, 0, u->scale, u->zero);
        return rc;
    }
    if (!u->static_groups)
        return LB_OK;
    // static groups: grids of the ORIGINAL column groups [gi*g, (gi+1)*g), fixed now
    for (int64_t gi = 0; gi < u->f.ngroups; gi++) {
        int64_t o0 = gi * u->g, n = cols - o0 < u->g ? cols - o0 : u->g;
        for (int64_t k = 0; k < n; k++)
            memcpy(u->gather + k * rows, st->Wt + st->iperm[o0 + k] * rows,
                   (size_t)rows * sizeof(float));
        int rc = lb_uniform_fit(u->gather, rows, n, 1, rows, &u->cfg, u->sscale + gi * rows,
                                u->szero + gi * rows, err);
        if (rc)
            return rc;
        store_grid(u, rows, gi, u->sscale + gi * rows, u->szero + gi * rows);
    }
    return LB_OK;
}

static int uniform_column(void *ctx, const lb_gptq_state *st, int64_t c, const float *w,
                          float *q, float *err_scale, lb_err *err)
{
    (void)err_scale;
    gptq_uniform *u = ctx;
    const int64_t rows = st->rows, cols = st->cols, o = st->perm[c];
    const float *scale = u->scale;
    const int32_t *zero = u->zero;
    if (u->static_groups && !u->per_row) {
        scale = u->sscale + (o / u->g) * rows;
        zero = u->szero + (o / u->g) * rows;
    } else if (!u->per_row && c % u->g == 0) {
        // first column of a group (processing order): fit on the CURRENT columns
        int64_t n = cols - c < u->g ? cols - c : u->g;
        int rc = lb_uniform_fit(w, rows, n, 1, rows, &u->cfg, u->scale, u->zero, err);
        if (rc)
            return rc;
        store_grid(u, rows, c / u->g, u->scale, u->zero);
    }
    uint16_t *ct = u->ct + c * rows;
    const int32_t maxq = u->cfg.maxq;
#pragma omp simd
    for (int64_t r = 0; r < rows; r++) {
        int32_t code = lb_uniform_code(w[r], scale[r], zero[r], maxq);
        ct[r] = (uint16_t)code;
        q[r] = lb_uniform_value(code, scale[r], zero[r]);
    }
    return LB_OK;
}

/* codes (rows, cols) original order <- ct (cols, rows) processing order, by tiles so
 * both the reads and the 32 row bit streams being written stay in cache. */
static int uniform_end(void *ctx, const lb_gptq_state *st, lb_err *err)
{
    (void)err;
    gptq_uniform *u = ctx;
    const int64_t rows = st->rows, cols = st->cols;
    // 32 rows hold 32 * cols * bits bits, a whole number of bytes: threads writing
    // different 32-row chunks never share a byte of the stream
#pragma omp parallel for schedule(static)
    for (int64_t r0 = 0; r0 < rows; r0 += 32) {
        const int64_t r1 = r0 + 32 < rows ? r0 + 32 : rows;
        for (int64_t o = 0; o < cols; o++) {
            const uint16_t *src = u->ct + st->iperm[o] * rows;
            for (int64_t r = r0; r < r1; r++)
                lb_qfield_put(u->f.codes, r * cols + o, src[r]);
        }
    }
    return LB_OK;
}

static int gptq_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                         const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    if (lb_kquant_type_of_grid(opts->grid) >= 0) // --grid q2_k|q3_k|q4_k: ggml's blocks
        return lb_kquant_gptq(W, rows, cols, H, opts, out, err);
    int32_t bits;
    int rc = lb_uniform_bits(opts, "gptq", &bits, err);
    if (rc)
        return rc;
    if (!W || !H || rows < 1 || cols < 1 || opts->group_size < 0)
        return lb_err_set(err, LB_EINVAL, "gptq: empty matrix or negative group size");
    if (rows > INT64_MAX / cols || (uint64_t)(rows * cols) > SIZE_MAX / sizeof(float))
        return lb_err_set(err, LB_EINVAL, "gptq: %lld x %lld overflows", (long long)rows,
                          (long long)cols);
    if ((rc = lb_gptq_method_check("gptq", W, rows, cols, H, opts, out, err)))
        return rc;
    gptq_uniform u = {0};
    rc = lb_uniform_pack_begin(&out->packed, "gptq", rows, cols, bits, opts->group_size,
                               opts->sym, &u.f, err);
    if (rc)
        return rc;
    u.cfg = (lb_uniform_cfg){.maxq = u.f.maxq, .sym = opts->sym, .grid = opts->grid};
    u.g = u.f.group_size;
    u.per_row = u.f.ngroups == 1;
    u.static_groups = opts->static_groups;
    u.scale = malloc((size_t)rows * sizeof *u.scale);
    u.zero = malloc((size_t)rows * sizeof *u.zero);
    u.ct = lb_quant_big_alloc((size_t)(rows * cols) * sizeof *u.ct);
    bool ok = u.scale && u.zero && u.ct;
    if (ok && u.static_groups && !u.per_row) {
        u.sscale = malloc((size_t)(u.f.ngroups * rows) * sizeof *u.sscale);
        u.szero = malloc((size_t)(u.f.ngroups * rows) * sizeof *u.szero);
        u.gather = malloc((size_t)(u.g * rows) * sizeof *u.gather);
        ok = u.sscale && u.szero && u.gather;
    }
    if (!ok) {
        rc = lb_err_set(err, LB_ENOMEM, "gptq: out of memory for %lld x %lld", (long long)rows,
                        (long long)cols);
        goto fail;
    }
    lb_gptq_hook hook = {.ctx = &u, .begin = uniform_begin, .column = uniform_column,
                         .end = uniform_end};
    // the permutation is needed to find groups only when groups follow processing order
    rc = lb_gptq_method_run("gptq", W, rows, cols, H, opts, &hook,
                            !u.per_row && !u.static_groups ? LB_GPTQ_PACK_PERM : 0, out, err);
    goto cleanup;
fail:
    lb_qresult_free(out);
cleanup:
    free(u.scale);
    free(u.zero);
    free(u.sscale);
    free(u.szero);
    free(u.gather);
    free(u.ct);
    return rc;
}

const lb_qmethod lb_qmethod_gptq = {
    .name = "gptq",
    .summary = "GPTQ: Hessian-compensated uniform grid (act-order, groups, static groups)",
    .quantize = gptq_quantize,
    .dequantize = lb_uniform_dequantize,
};
