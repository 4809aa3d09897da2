/* RTN: round-to-nearest on the uniform grid, per row or per group of columns, no
 * error compensation. The baseline every other method is compared with. */
#include <stdlib.h>
#include <string.h>

#include "lb_quant.h"
#include "lb_uniform.h"

static int rtn_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                        const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    (void)H; /* RTN ignores the Hessian */
    int32_t bits;
    int rc = lb_uniform_bits(opts, "rtn", &bits, err);
    if (rc)
        return rc;
    if (!W || rows < 1 || cols < 1 || opts->group_size < 0)
        return lb_err_set(err, LB_EINVAL, "rtn: empty matrix or negative group size");
    if (rows > INT64_MAX / cols || (uint64_t)(rows * cols) > SIZE_MAX / sizeof(float))
        return lb_err_set(err, LB_EINVAL, "rtn: %lld x %lld overflows", (long long)rows,
                          (long long)cols);
    memset(out, 0, sizeof *out);
    lb_uniform_fields f;
    rc = lb_uniform_pack_begin(&out->packed, "rtn", rows, cols, bits, opts->group_size,
                               opts->sym, &f, err);
    if (rc)
        return rc;
    lb_uniform_cfg cfg = {.maxq = f.maxq, .sym = opts->sym, .grid = opts->grid};
    float *scale = malloc((size_t)rows * sizeof *scale);
    int32_t *zero = malloc((size_t)rows * sizeof *zero);
    out->W_hat = lb_quant_big_alloc((size_t)(rows * cols) * sizeof *out->W_hat);
    if (!scale || !zero || !out->W_hat) {
        rc = lb_err_set(err, LB_ENOMEM, "rtn: out of memory for %lld x %lld", (long long)rows,
                        (long long)cols);
        goto fail;
    }
    for (int64_t gi = 0; gi < f.ngroups; gi++) {
        int64_t c0 = gi * f.group_size;
        int64_t n = cols - c0 < f.group_size ? cols - c0 : f.group_size;
        // W[:, c0:c0+n] -> one grid per row
        rc = lb_uniform_fit(W + c0, rows, n, cols, 1, &cfg, scale, zero, err);
        if (rc)
            goto fail;
        for (int64_t r = 0; r < rows; r++) {
            float s = lb_qfield_put_float(f.scales, r * f.ngroups + gi, scale[r]);
            if (f.zeros)
                lb_qfield_put(f.zeros, r * f.ngroups + gi, (uint32_t)zero[r]);
            for (int64_t c = c0; c < c0 + n; c++) {
                int32_t q = lb_uniform_code(W[r * cols + c], s, zero[r], f.maxq);
                lb_qfield_put(f.codes, r * cols + c, (uint32_t)q);
                out->W_hat[r * cols + c] = lb_uniform_value(q, s, zero[r]);
            }
        }
    }
    out->bpw = lb_qpacked_bpw(&out->packed);
    free(scale);
    free(zero);
    return LB_OK;
fail:
    free(scale);
    free(zero);
    lb_qresult_free(out);
    return rc;
}

const lb_qmethod lb_qmethod_rtn = {
    .name = "rtn",
    .summary = "round to nearest on a uniform grid per row or group (no compensation)",
    .quantize = rtn_quantize,
    .dequantize = lb_uniform_dequantize,
};
