/* lb_pbllm: PB-GPTQ, the post-training variant of PB-LLM (Shang et al. 2024,
 * "PB-LLM: Partially Binarized Large Language Models", Sec. 4) inside the GPTQ engine.
 *
 * At every block_begin [c0, c0+nb) of the GPTQ loop, on the CURRENT (compensated) block:
 *  - saliency s_ij = max(w_ij^2, (|w_ij| - a_i)^2) / U_jj^2 (LB_SALIENT_HESSIAN; U = upper
 *    Cholesky factor of H^-1, the diagonal the PB-LLM and GPTQ reference codes use in
 *    place of [H^-1]_jj; a_i = mean |w| of row i of the original W): PB-LLM's pruning
 *    loss w^2, raised to the loss of binarizing w to about ±a_i where that is larger
 *    (|w| < a_i / 2), so near-zero weights of outlier input channels, cheap to prune but
 *    costly to binarize, become salient; or |w_ij| (LB_SALIENT_MAGNITUDE);
 *  - salient mask: salient_group == 0: s_ij >= T, one threshold T per matrix, the
 *    round(salient_frac * rows * cols)-th largest saliency of the ORIGINAL W (computed
 *    once, before the loop); salient_group == g > 0: in every group of g columns exactly
 *    round(salient_frac * rows * g') entries (g' = columns in the group; ties: lower
 *    column, then lower row). g must divide block_size so a group never straddles blocks;
 *  - per row i, over the block's NON-salient entries: mu_i = mean, alpha_i = mean |w - mu_i|
 *    (the optimal scale of a sign code around mu), stored as f16.
 * Then the engine quantizes column by column with error compensation:
 *  - non-salient: w_hat = mu_i + alpha_i * sign(w - mu_i) (sign(0) = +1);
 *  - salient: salient_bits per-row asymmetric grid w_hat = lo_i + step_i * code,
 *    code = clamp(round((w - lo_i) / step_i), 0, 2^b - 1). lo_i (f16, rounded down) and
 *    step_i (f16, rounded up) are fitted once before the loop so that the grid covers
 *    [min, max] of row i's salient values of the original W (mask from the same rule on
 *    the original W; a row without salient values uses its full range). lo_i is the zero
 *    point in weight units: z = -lo_i / step_i need not lie in [0, 2^b - 1], so an
 *    all-positive or all-negative row is represented correctly (the reference code's
 *    integer zero point overflows there).
 *
 * Packed fields (processing order c = 0..cols-1; perm[c] = original column):
 *   block_size     UINT 32  (1,)
 *   the salient mask, whichever form is smaller (both counted):
 *     mask           UINT 1   (cols, rows)  1 = salient (bitmap), or
 *     salient_count  UINT ceil(log2(B+1)) (blocks, rows)  salient entries per row and block
 *     salient_pos    UINT ceil(log2 B)    (salient count,) their in-block columns,
 *                             ascending, ordered by block then row
 *   signs          UINT 1   (non-salient count,)  1 = +alpha, column by column, rows ascending
 *   salient_codes  UINT b   (salient count,)      same order
 *   mu, alpha      F16      (blocks, rows)
 *   salient_min    F16      (rows,)
 *   salient_step   F16      (rows,)
 *   perm           UINT ceil(log2(cols)) (cols,)  only with act-order
 * bpw = 8 * (sum of field bytes) / (rows * cols). */
#ifndef LB_PBLLM_H
#define LB_PBLLM_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

extern const lb_qmethod lb_qmethod_pbllm;

/* Per-row salient grid covering [lo, hi] with `bits` bits (1..16): OUT lo16 (f16 value,
 * <= lo) and step16 (f16 value, >= 0) such that lo16 + (2^bits - 1) * step16 >= hi.
 * Returns 0 or LB_ENUMERIC (range beyond f16, NaN) / LB_EINVAL (lo > hi, bits). */
int lb_pbllm_fit_grid(float lo, float hi, int32_t bits, float *lo16, float *step16,
                      lb_err *err);

/* Code of w on that grid (clamped) and the value it stands for, as dequantize computes it. */
uint32_t lb_pbllm_grid_code(float w, float lo16, float step16, int32_t bits);
float lb_pbllm_grid_value(float lo16, float step16, uint32_t code);

/* The quantize/dequantize pair registered as "pbllm" (see lb_qmethod). */
int lb_pbllm_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                      const lb_qopts *opts, lb_qresult *out, lb_err *err);
int lb_pbllm_dequantize(const lb_qpacked *packed, float *W_out, lb_err *err);

/* Decodes the salient mask of a packed pbllm matrix (bitmap or index form) into
 * mask, a zeroed bitmap of ceil(rows*cols/8) bytes with bit c*rows + i for
 * (permuted) column c, row i; bs is the stored block size. OUT: *nsal, the
 * number of salient entries. Returns 0 or LB_EFORMAT naming the problem. */
int lb_pbllm_unpack_mask(const lb_qpacked *packed, int64_t bs, uint8_t *mask, int64_t *nsal,
                         lb_err *err);

#endif
