/* lb_qbb: QBB, quantization with N binary bases (method "qbb").
 *
 *   W ≈ Σ_{i=1..N} diag(s_i) B_i,  B_i ∈ {-1,+1}^(rows, cols), s_i (rows,)
 *
 * Codes: one byte per weight, bit i set means B_i = +1 (bit clear: -1). A row's
 * 2^N representable values are v(c) = Σ_i s_i σ_i(c), evaluated by lb_qbb_value
 * in a fixed order so that quantize and dequantize agree bit for bit.
 * Scales: (rows, N) row-major, s[r*N + i] is base i's scale for row r.
 *
 * Fit: cascaded greedy init, then refine_iters rounds of
 *   (b) codes: nearest representable value per weight (exact argmin of the plain error),
 *   (a) scales: exact per-row least squares of the plain error,
 * (a per-row guard keeps a row's previous codes/scales if float ties would raise its
 * error), then optionally one exact H-weighted (a) on the final codes.
 *
 * Rows run in parallel (OpenMP); results do not depend on the thread count.
 *
 * Packed fields: "signs" UINT 1 bit, shape (N, rows, cols), 1 = +1;
 *                "scales" F16, shape (rows, N).  bpw = N + 16 N / cols. */
#ifndef LB_QBB_H
#define LB_QBB_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

#define LB_QBB_MAX_BASES 4

typedef struct {
    int32_t bases;         /* N, 1..LB_QBB_MAX_BASES */
    int32_t refine_iters;  /* rounds of (b) then (a); 0 = greedy init only */
    bool hessian_weighted; /* finish with (a) minimising (w - Bᵀs) H (w - Bᵀs)ᵀ */
    double ridge;          /* relative ridge of the N x N systems (times trace/N), default 1e-7 */
} lb_qbb_cfg;

/* Defaults: N = 2, 4 rounds, plain, ridge 1e-7. */
void lb_qbb_cfg_init(lb_qbb_cfg *cfg);

/* Representable value of code c for one row's scales s (N,). */
static inline float lb_qbb_value(uint32_t c, const float *s, int32_t n)
{
    float v = 0.0f;
    for (int32_t i = 0; i < n; i++)
        v += ((c >> i) & 1u) ? s[i] : -s[i];
    return v;
}

/* Cascaded greedy init: R = W; for i: B_i = sign(R) (sign(0) = +1), s_i = mean |R| per
 * row, R -= s_i B_i.  OUT: codes (rows, cols), scales (rows, n). */
void lb_qbb_init_greedy(const float *W, int64_t rows, int64_t cols, int32_t n,
                        uint8_t *codes, float *scales);

/* (b) For fixed scales, sets every code to the nearest of the row's 2^n values (first
 * minimum on ties): the exact minimiser of ||w - ŵ||² over codes. OUT: codes. */
void lb_qbb_update_codes(const float *W, int64_t rows, int64_t cols, int32_t n,
                         const float *scales, uint8_t *codes);

/* (a) Exact per-row least-squares scales for fixed codes.
 * H == NULL: min_s ||w - Bᵀs||², the n x n normal equations (B Bᵀ) s = B w per row.
 * H (cols, cols) symmetric PSD (already damped by the caller): min_s (w - Bᵀs) H (w - Bᵀs)ᵀ,
 *   (B H Bᵀ) s = B H w per row; B H is formed for blocks of rows with lb_sgemm.
 * Systems get a ridge of ridge * trace / n and are solved by Cholesky in double; a row
 * whose system is zero gets s = 0.
 * keep_if_better: the scales passed in are a candidate too; each row keeps whichever of
 * its old and new scales gives the lower objective (guards ridge and rounding effects).
 * OUT: scales (rows, n). OUT (optional, may be NULL): row_obj (rows,) each row's objective
 * at the scales it ends with. Returns 0 or LB_ENOMEM. */
int lb_qbb_ls_scales(const float *W, int64_t rows, int64_t cols, int32_t n,
                     const uint8_t *codes, const float *H, double ridge, bool keep_if_better,
                     float *scales, double *row_obj, lb_err *err);

/* Runs init + refinement on target T (rows, cols): refine_iters rounds of (b) codes then
 * (a) plain scales, then, when cfg->hessian_weighted, one H-weighted (a) on the final
 * codes (H: damped Hessian, required then, else ignored and may be NULL).
 * OUT: codes (rows, cols), scales (rows, N) in float (not yet rounded to f16).
 * OUT (optional): trace (refine_iters + 1) plain error ||T - T_hat||² after init and after
 * each round, never increasing; hobj[2] the H-weighted objective before and after the
 * weighted scale step (hobj[1] <= hobj[0]; untouched when not weighted).
 * Returns 0, LB_EINVAL, LB_ENOMEM. */
int lb_qbb_fit(const float *T, int64_t rows, int64_t cols, const float *H,
               const lb_qbb_cfg *cfg, uint8_t *codes, float *scales, double *trace,
               double *hobj, lb_err *err);

/* The lb_qmethod entry points (registered as lb_qmethod_qbb). quantize uses opts->bases,
 * refine_iters, hessian_weighted, damp and gptq_init (fit to the 4-bit "gptq" method's
 * W_hat instead of W). H may be NULL unless hessian_weighted or gptq_init. */
int lb_qbb_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                    const lb_qopts *opts, lb_qresult *out, lb_err *err);
int lb_qbb_dequantize(const lb_qpacked *packed, float *W_out, lb_err *err);

extern const lb_qmethod lb_qmethod_qbb;

#endif
