/* lb_claq: CLAQ (Wang et al. 2024, "CLAQ: Pushing the Limits of Low-Bit Post-Training
 * Quantization for LLMs") inside the GPTQ engine (lb_gptq hook).
 *
 *  - Column K-means: every current, error-compensated column w (rows,) gets its own
 *    codebook of 2^b centroids from the EXACT optimal 1-D k-means (lb_kmeans1d);
 *    centroids are rounded to f16 first, then each weight takes the nearest stored one.
 *  - Outlier-guided adaptive precision (AP): column score = number of outliers
 *    |W_ij| >= t * mean|W| (t = opts->outlier_threshold, mean over the whole original
 *    matrix), or with opts->outlier_hessian_score the Hessian-weighted score
 *    sum over those outliers of W_ij^2 * H_jj (damped diagonal: the OBS saliency of
 *    the outliers). Columns are ranked by score, descending; ties (e.g. no column has
 *    an outlier) by max |W_ij| of the column (max W_ij^2 * H_jj with the Hessian score),
 *    descending, then by original column index, ascending. Width rule for a target opts->bits = b + f (b integer, 0 <= f < 1):
 *    the top round(f * cols) ranked columns get b + 1 bits, the rest b bits, so the
 *    average code width is b + round(f * cols) / cols (exact up to whole columns).
 *    bits in [1, 4]; 4.x is rejected.
 *  - Outlier reservation (OR): the top round(outlier_top_frac * cols) ranked columns keep
 *    round(outlier_keep_top * rows) values, the others round(outlier_keep_rest * rows):
 *    the largest |w| of the current column (ties: lower row), stored as f16 with their row
 *    index and left out of the codes. The ratio is looked up with the GLOBAL column
 *    index (the reference code's in-block index is a bug). K-means is fitted without the
 *    kept values unless opts->centroids_with_outliers. Measured (bench/claq_pbllm_sweep.py,
 *    35 stories260K linears, real Hessians): fitting WITHOUT them gives the lower
 *    H-weighted error on 24/35 layers at 2 bits and on 35/35 with keep ratios 0.05/0.02,
 *    so that is the default: the kept values are restored exactly anyway, and including
 *    them drags a centroid towards the tail.
 *
 * Packed fields (processing order c = 0..cols-1; perm[c] = original column):
 *   widths          UINT 2   (cols,)         code width - 1
 *   codes_w1..w4    UINT b   one stream per width: for each column of that width, in
 *                            order, the codes of its non-kept rows, ascending rows
 *   centroids       F16      (sum 2^width,)  per column, ascending
 *   outlier_counts  UINT ceil(log2(max count + 1)) (cols,)
 *   outlier_rows    UINT ceil(log2(rows))    (sum counts,) ascending within a column
 *   outlier_values  F16      (sum counts,)
 *   perm            UINT ceil(log2(cols)) (cols,)   only with act-order
 * bpw = 8 * (sum of field bytes) / (rows * cols). */
#ifndef LB_CLAQ_H
#define LB_CLAQ_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

extern const lb_qmethod lb_qmethod_claq;

/* The AP/OR plan. Wt (cols, rows): column c is Wt + c*rows (any column order);
 * hdiag (cols,) damped diag(H) in the same order (needed only with
 * opts->outlier_hessian_score, else may be NULL); colid (cols,) the original index of
 * each column, used to break the last ties (NULL = 0..cols-1).
 * OUT: width (cols,) code bits per column, keep (cols,) values reserved per column,
 *      score (cols,) the ranking score (may be NULL).
 * Returns 0 or LB_EINVAL (bits outside [1, 4] or 4.x, ratios outside [0, 1]), LB_ENOMEM. */
int lb_claq_plan(const float *Wt, int64_t rows, int64_t cols, const float *hdiag,
                 const int64_t *colid, const lb_qopts *opts, int32_t *width, int32_t *keep,
                 double *score, lb_err *err);

/* The quantize/dequantize pair registered as "claq" (see lb_qmethod). */
int lb_claq_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                     const lb_qopts *opts, lb_qresult *out, lb_err *err);
int lb_claq_dequantize(const lb_qpacked *packed, float *W_out, lb_err *err);

#endif
