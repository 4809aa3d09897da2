/* The shell every method that quantizes inside the GPTQ loop shares (GPTQ's uniform
 * grid, CLAQ, PB-LLM, BiLLM): size checks, W_hat, the engine run, "perm", bpw. One copy,
 * so the methods cannot drift apart (contract in lb_gptq.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lb_gptq.h"

int lb_gptq_method_check(const char *method, const float *W, int64_t rows, int64_t cols,
                         const float *H, const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    if (!out)
        return lb_err_set(err, LB_EINVAL, "%s: NULL result", method);
    memset(out, 0, sizeof *out);
    // rows > INT32_MAX: the packed fields index rows with 32-bit counts
    if (!W || !H || !opts || rows < 1 || cols < 1 || rows > INT32_MAX ||
        rows > INT64_MAX / cols || (size_t)(rows * cols) > SIZE_MAX / sizeof(float))
        return lb_err_set(err, LB_EINVAL, "%s: empty or oversized matrix %lld x %lld", method,
                          (long long)rows, (long long)cols);
    return LB_OK;
}

int lb_gptq_method_run(const char *method, const float *W, int64_t rows, int64_t cols,
                       const float *H, const lb_qopts *opts, const lb_gptq_hook *hook,
                       unsigned flags, lb_qresult *out, lb_err *err)
{
    int rc = lb_gptq_method_check(method, W, rows, cols, H, opts, out ? &(lb_qresult){0} : NULL,
                                  err);
    if (rc)
        return rc;
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    out->W_hat = lb_quant_big_alloc((size_t)(rows * cols) * sizeof *out->W_hat);
    if (!perm || !out->W_hat) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory for a %lld x %lld matrix", method,
                        (long long)rows, (long long)cols);
        goto fail;
    }
    out->gptq_runs++;
    rc = lb_gptq_run_ex(W, rows, cols, H, opts, hook, out->W_hat, perm, NULL, &out->gptq_stats,
                        err);
    if (rc)
        goto fail;
    if ((flags & LB_GPTQ_PACK_PERM) && opts->act_order &&
        (rc = lb_gptq_pack_perm(&out->packed, perm, cols, err)))
        goto fail;
    out->bpw = lb_qpacked_bpw(&out->packed);
    free(perm);
    return LB_OK;
fail:
    free(perm);
    lb_qresult_free(out);
    return rc;
}
