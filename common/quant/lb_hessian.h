/* lb_hessian: accumulator of the layer-input Hessian used by GPTQ-style methods.
 *
 * Scaling (as the GPTQ reference's add_batch): after N tokens x_t (cols,),
 *   H = 2/N * sum_t x_t x_tᵀ        (cols, cols), the Hessian of the layer's squared
 * error sum_t |W x_t - W_hat x_t|^2 / N with respect to a row of W.
 * Inside, the raw sum S = sum_t x_t x_tᵀ is kept in float64 (each chunk's Xᵀ X is
 * computed with float32 SYRK, then added in float64), so partial accumulators over
 * disjoint token sets merge by addition: S(a ∪ b) = S(a) + S(b), N(a ∪ b) = N(a) + N(b).
 * Merging in a fixed order gives the same bits on every run. */
#ifndef LB_HESSIAN_H
#define LB_HESSIAN_H

#include <stdint.h>

#include "lb_err.h"

typedef struct lb_hessian lb_hessian;

/* New empty accumulator for inputs of `cols` channels. OUT: *out (free with
 * lb_hessian_free). Returns 0, LB_EINVAL, LB_ENOMEM. */
int lb_hessian_new(int64_t cols, lb_hessian **out, lb_err *err);
void lb_hessian_free(lb_hessian **h);

/* Adds a chunk X (ntok, cols) with row stride ld >= cols: S += Xᵀ X, N += ntok.
 * Returns 0, LB_EINVAL (bad sizes), LB_ENUMERIC (NaN/Inf in X; nothing added). */
int lb_hessian_add_chunk(lb_hessian *h, const float *X, int64_t ntok, int64_t ld, lb_err *err);

/* Merges another accumulator of the same width: S += other.S, N += other.N.
 * Returns 0 or LB_EINVAL (width mismatch). */
int lb_hessian_add(lb_hessian *h, const lb_hessian *other, lb_err *err);

int64_t lb_hessian_cols(const lb_hessian *h);
int64_t lb_hessian_tokens(const lb_hessian *h);

/* OUT: H (cols, cols) full symmetric float32 = 2/N S. Returns 0 or LB_ESTATE (no
 * tokens yet). */
int lb_hessian_get(const lb_hessian *h, float *H, lb_err *err);

/* H (cols, cols) = 2/ntok * S from stored sums S (cols, cols) float64, any alignment,
 * with the checks of lb_hessian_set_sums (finite, symmetric): the same H as set_sums then
 * get, without the float64 copies. Returns 0, LB_EINVAL or LB_ENUMERIC. */
int lb_hessian_from_sums(const void *S, int64_t cols, int64_t ntok, float *H, lb_err *err);

/* Raw state for transport/storage: OUT S (cols, cols) full symmetric float64 sums and
 * the token count. lb_hessian_set_sums replaces the state (S symmetric, finite,
 * ntok >= 0), returns 0, LB_EINVAL or LB_ENUMERIC. */
void lb_hessian_get_sums(const lb_hessian *h, double *S, int64_t *ntok);
int lb_hessian_set_sums(lb_hessian *h, const double *S, int64_t ntok, lb_err *err);

/* Packed upper triangles (row-major, a <= b: cols * (cols + 1) / 2 values), the
 * form of a partial sum stored by a chunk job (docs/distributed.md, "Chunked
 * collection"). A reduce that adds, in chunk order, the float32 chunk products
 * (lb_hessian_last_chunk_upper) into a fresh accumulator, after the float64 sums of
 * the leading chunks (lb_hessian_get_upper), performs exactly the float64 additions
 * of one accumulator fed every chunk: the same bits. */
int64_t lb_hessian_upper_count(int64_t cols);
/* OUT: tri = the float64 sums S (upper triangle). */
void lb_hessian_get_upper(const lb_hessian *h, double *tri);
/* OUT: tri = the float32 product Xᵀ X of the last lb_hessian_add_chunk (before its
 * float64 addition). Returns 0 or LB_ESTATE (no chunk added yet). */
int lb_hessian_last_chunk_upper(const lb_hessian *h, float *tri, lb_err *err);
/* S += tri (float64 sums, or float32 chunk products widened as add_chunk does),
 * N += ntok. tri may be unaligned (a mapped file). Returns 0, LB_EINVAL (ntok < 0)
 * or LB_ENUMERIC (a value not finite; nothing added). */
int lb_hessian_add_upper_f64(lb_hessian *h, const void *tri, int64_t ntok, lb_err *err);
int lb_hessian_add_upper_f32(lb_hessian *h, const void *tri, int64_t ntok, lb_err *err);

#endif
