/* lb_qparams: a quantized matrix as a differentiable function of its
 * continuous parameters, with the discrete codes held fixed.
 *
 * The parameters θ are every float field of the packed matrix (F16/BF16/F32),
 * concatenated in field order: RTN/GPTQ "scales" (integer zero points are
 * codes and stay fixed), CLAQ "centroids" and "outlier_values", PB-LLM "mu",
 * "alpha", "salient_min", "salient_step", BiLLM "scales" (α1, α2, αc, αs per
 * row and block), QBB "scales" (one per row and basis). For all of these
 * methods Ŵ is linear in θ given the codes:
 *   Ŵ_ij = Σ_t coef[ij,t] θ[idx[ij,t]]          (t < K terms per weight)
 * so dL/dθ_p = Σ_{ij,t: idx = p} coef[ij,t] dL/dŴ_ij (chain rule; the block
 * backward gives dL/dŴ = dYᵀ X per linear).
 * lb_qparams_from_packed checks the map against the method's own
 * dequantize (registry) and refuses a matrix where they disagree.
 *
 * Memory: K * (4 + 4) bytes per weight (K = 1 for RTN/GPTQ/CLAQ, 2 for
 * PB-LLM/BiLLM, N for QBB). */
#ifndef LB_QPARAMS_H
#define LB_QPARAMS_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

typedef struct {
    int64_t rows, cols;
    int32_t K;          /* terms per weight */
    int64_t nparams;
    float *theta;       /* (nparams,) current parameter values, f32 */
    int32_t *idx;       /* (rows * cols * K) parameter index, -1 = no term */
    float *coef;        /* (rows * cols * K) */
    int32_t nfields;    /* float fields, in packed order */
    int32_t field[LB_QFIELD_MAX_DIMS * 8]; /* index into packed->fields */
    int64_t offset[LB_QFIELD_MAX_DIMS * 8 + 1]; /* first parameter of each float field */
} lb_qparams;

/* Builds the map for packed (method rtn, gptq, claq, pbllm, billm or qbb) and
 * θ from its stored floats. OUT: *out (lb_qparams_free). Returns 0,
 * LB_EINVAL (method without a parameterization), LB_EFORMAT (fields invalid,
 * or the map does not reproduce the method's dequantize), LB_ENOMEM. */
int lb_qparams_from_packed(const lb_qpacked *p, lb_qparams *out, lb_err *err);

/* Frees the arrays and zeroes *q. Safe on a zeroed struct. */
void lb_qparams_free(lb_qparams *q);

/* W (rows, cols) = Ŵ(θ) (each weight summed in double, rounded once). */
void lb_qparams_weights(const lb_qparams *q, float *W);

/* g (nparams,) = dL/dθ from G (rows, cols) = dL/dŴ; g is overwritten. */
void lb_qparams_grad(const lb_qparams *q, const float *G, double *g);

/* Writes θ into the packed float fields, rounded to each field's storage type
 * (f16 for every method here), and sets θ to the stored values. Codes are not
 * touched, so the bpw does not change. Returns 0 or LB_ENUMERIC (a value is
 * NaN/Inf or overflows the field's type; nothing is written then). */
int lb_qparams_store(lb_qparams *q, lb_qpacked *p, lb_err *err);

#endif
