/* lb_rotate: incoherence processing by random signs and Hadamard transforms.
 *
 * For a dimension n, let b = n & -n (the largest power of two dividing n: 64 -> 64,
 * 172 -> 4, 5504 -> 128, 11008 -> 256), S = diag(s) with s_i = +-1 drawn from the
 * seed, and Hb the block-diagonal Sylvester-Hadamard matrix of n/b blocks of order b,
 * scaled by 1/sqrt(b). The rotation is R = Hb S: orthogonal, R^T = S Hb.
 *
 * A linear W (rows, cols) with input Hessian H (cols, cols) is quantized as
 *   W' = R_out W R_in^T,  H' = R_in H R_in^T,
 * which keeps the proxy loss: tr(D' H' D'^T) = tr(D H D^T) for D' = R_out D R_in^T.
 * The packed matrix stores the kind and the seed (fields "rot_kind", "rot_seed"),
 * never a matrix; dequantize folds W_hat = R_out^T W_hat' R_in back. See
 * docs/rotation.md. */
#ifndef LB_ROTATE_H
#define LB_ROTATE_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

/* AUTO (`--rotate auto`) is resolved per method by lb_rotate_default before a job is
 * planned; it never travels on the wire nor into a checkpoint. */
typedef enum { LB_ROTATE_AUTO = -1, LB_ROTATE_NONE = 0, LB_ROTATE_HADAMARD = 1 } lb_rotate_kind;

/* Which side of a linear a sign vector belongs to (mixed into the seed). */
typedef enum { LB_ROT_IN = 0, LB_ROT_OUT = 1 } lb_rot_side;

const char *lb_rotate_name(int32_t kind);
/* The rotation `--rotate auto` picks for a method, from the stories260K measurements
 * in docs/results-rotate.md and docs/results.md "KL against bits": hadamard for rtn,
 * gptq, claq, billm, qbb (lower mean KL with it); none for pbllm (higher KL in every
 * configuration: the rotation spreads the outliers its salient set keeps). Unknown
 * methods: none. */
int32_t lb_rotate_default(const char *method);
/* opts->rotate with AUTO resolved for method. */
int32_t lb_rotate_resolve(const char *method, int32_t rotate);
/* Block order of the Hadamard for dimension n: the largest power of two dividing n
 * (0 for n < 1). */
int64_t lb_rotate_block(int64_t n);
/* Sign i (+1 / -1) of the sign vector for (seed, side). */
double lb_rotate_sign(uint64_t seed, lb_rot_side side, int64_t i);

/* In-place fast Walsh-Hadamard transform of x[0..n), n a power of two, unnormalized
 * (x <- H_n x with entries +-1). O(n log n). */
void lb_fwht(double *x, int64_t n);
/* x <- R x (forward) or x <- R^T x (transpose), x of length n, float64. */
void lb_rotate_vec(double *x, int64_t n, uint64_t seed, lb_rot_side side);
void lb_rotate_vec_t(double *x, int64_t n, uint64_t seed, lb_rot_side side);

/* W (rows, cols) <- R_out W R_in^T (forward) or R_out^T W R_in (inverse), computed in
 * float64 and rounded once. H (n, n) symmetric <- R_in H R_in^T. Return 0 or LB_ENOMEM. */
int lb_rotate_weight(float *W, int64_t rows, int64_t cols, uint64_t seed, int inverse,
                     lb_err *err);
int lb_rotate_hessian(float *H, int64_t n, uint64_t seed, lb_err *err);

/* The method run with opts->rotate honoured: rotates W and H, quantizes, appends the
 * fields rot_kind (UINT 8, 1) and rot_seed (UINT 32, 2: low, high word) to the packed
 * matrix (they count in its bpw) and folds W_hat back. Without rotation it is
 * m->quantize. */
int lb_qmethod_quantize(const lb_qmethod *m, const float *W, int64_t rows, int64_t cols,
                        const float *H, const lb_qopts *opts, lb_qresult *out, lb_err *err);
/* m->dequantize followed by the inverse rotation when p holds rot_kind/rot_seed. */
int lb_qmethod_dequantize(const lb_qmethod *m, const lb_qpacked *p, float *W_out, lb_err *err);
/* The rotation a packed matrix records: *kind (LB_ROTATE_NONE when absent) and *seed.
 * LB_EFORMAT on a malformed or unknown rotation. */
int lb_qpacked_rotation(const lb_qpacked *p, int32_t *kind, uint64_t *seed, lb_err *err);

#endif
