/* lb_billm: BiLLM (Huang et al. 2024, "BiLLM: Pushing the Limit of Post-Training
 * Quantization for LLMs"), method "billm".
 *
 * Every error below is weighted by the column's loss weight c_j = 1 / U_jj² (U the
 * engine's upper Cholesky factor of H^-1): the GPTQ loss of quantizing column j is
 * Σ_rows (w - ŵ)² c_j, so an outlier input channel (H_jj 1000x the others) counts 1000x.
 * Per block of block_size columns, at the block's start (inside the GPTQ engine, so the
 * block already carries the compensation of earlier blocks):
 *  1. salient columns: score_j = Σ_rows w_rj² / [H^-1]_jj² (paper Eq. 6, with the true
 *     diagonal of the damped H^-1; opts->salient_criterion = LB_SALIENT_MAGNITUDE scores
 *     by Σ_rows w² alone); the count k is searched over 0..max_salient: for each k the
 *     top-k columns and the rest each get their best two-level fit (below), and the k with
 *     the lowest weighted error of the block wins;
 *  2. salient weights, per row: ŵ = sign(w) (α1 ± α2) (order-2 residual binarization,
 *     paper Eq. 7-8): the two magnitudes α1 - α2 < α1 + α2 are the optimal weighted
 *     two-level fit of the row's salient |w| (exact 1-D 2-means over sorted |w|), which
 *     the paper's greedy α1 = mean |w|, α2 = mean |residual| only approximates;
 *  3. non-salient weights, per row: "concentrated" ±α_c and "sparse" ±α_s (paper Eq.
 *     9-10), again the optimal weighted two-level fit: the break point is the best one of
 *     each row, not one p per block, since the group bit of every weight is stored anyway.
 * Then every column is quantized with that structure from its CURRENT (compensated)
 * values, each weight to the nearer of its two magnitudes, and the engine propagates the
 * error column by column (the reference code skips the in-block updates; we do not).
 * All scales are rounded to f16 when planned; the stored values are the ones used.
 * sign(0) = +1 throughout. The planner runs rows in parallel (OpenMP); results do not
 * depend on the thread count.
 *
 * Packed fields (row-major, columns ascending):
 *   "block_size" UINT32 (1,)            block width used for the scales
 *   "salient"    UINT1  (cols,)         1 = salient column
 *   "sign1"      UINT1  (rows, cols)    sign of w (salient: first base), 1 = +
 *   "sign2"      UINT1  (rows, nsal)    second-base sign of salient weights
 *   "group"      UINT1  (rows, cols - nsal)  non-salient: 1 = sparse (the larger scale)
 *   "scales"     F16    (rows, nblocks, 4)   α1, α2, α_concentrated, α_sparse */
#ifndef LB_BILLM_H
#define LB_BILLM_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

typedef struct {
    int32_t max_salient; /* salient-count candidates 0..max_salient (capped at the block) */
} lb_billm_cfg;

/* Defaults: max_salient 50 (the reference's search limit). */
void lb_billm_cfg_init(lb_billm_cfg *cfg);

enum { LB_BILLM_A1 = 0, LB_BILLM_A2 = 1, LB_BILLM_AC = 2, LB_BILLM_AS = 3 };

typedef struct {
    float a;   /* |w| */
    int32_t j; /* column in the block */
} lb_billm_item;

/* The structure of one block. Arrays are owned by the plan; workspace lives here too so
 * a plan is allocated once and reused for every block. */
typedef struct {
    int64_t rows, nb_max;
    int64_t nb;          /* columns of the last planned block */
    uint8_t *salient;    /* (nb_max,) 1 = salient column of the block */
    int64_t nsalient;
    float *alpha;        /* (rows, 4) f16-exact scales, LB_BILLM_A1..AS */
    double err;          /* loss-weighted squared error of the block under this plan */
    /* workspace */
    int64_t *order;      /* (nb_max,) columns by descending score */
    int32_t *rank;       /* (nb_max,) position of each column in order */
    double *score;       /* (nb_max,) */
    double *cand_err;    /* (nb_max + 1,) */
    lb_billm_item *items; /* (rows, nb_max) each row's |w| sorted ascending */
    double *rowerr;      /* (rows, nb_max + 1) */
    double *colw;        /* (nb_max,) the block's loss weights */
} lb_billm_plan;

/* Allocates a plan for blocks of up to nb_max columns and `rows` rows. Returns 0,
 * LB_EINVAL, LB_ENOMEM. Free with lb_billm_plan_free. */
int lb_billm_plan_init(lb_billm_plan *plan, int64_t rows, int64_t nb_max,
                       const lb_billm_cfg *cfg, lb_err *err);
void lb_billm_plan_free(lb_billm_plan *plan);

/* Plans one block. Wb (rows, nb) row-major with row stride ld; hinv_diag (nb,) the
 * block's [H^-1]_jj (> 0); colw (nb,) the loss weights (> 0), NULL = all 1.
 * OUT: plan->salient, nsalient, alpha, err. Returns 0, LB_EINVAL (nb out of range,
 * non-finite input) or LB_ENUMERIC (a scale overflows f16). */
int lb_billm_plan_block(lb_billm_plan *plan, const float *Wb, int64_t nb, int64_t ld,
                        const double *hinv_diag, const double *colw, const lb_billm_cfg *cfg,
                        lb_err *err);

/* Reconstruction of one weight from its code bits (bit 0: sign1, bit 1: sign2 for a
 * salient weight / group for a non-salient one) and its row's 4 scales. */
static inline float lb_billm_value(uint32_t code, bool salient, const float *a)
{
    if (salient) {
        float v1 = (code & 1u) ? a[LB_BILLM_A1] : -a[LB_BILLM_A1];
        return v1 + ((code & 2u) ? a[LB_BILLM_A2] : -a[LB_BILLM_A2]);
    }
    float g = (code & 2u) ? a[LB_BILLM_AS] : a[LB_BILLM_AC];
    return (code & 1u) ? g : -g;
}

/* Quantizes one weight with the plan's structure: the sign, then the nearer of the two
 * magnitudes (salient α1 ± α2, else α_c / α_s). OUT: *code (bits as above).
 * Returns the reconstruction, == lb_billm_value(*code, salient, a). */
static inline float lb_billm_quant(float w, bool salient, const float *a, uint8_t *code)
{
    uint32_t c = w >= 0.0f ? 1u : 0u;
    if (salient) {
        float v1 = c ? a[LB_BILLM_A1] : -a[LB_BILLM_A1];
        if (w - v1 >= 0.0f)
            c |= 2u;
    } else if (fabsf(w) > 0.5f * (a[LB_BILLM_AC] + a[LB_BILLM_AS])) {
        c |= 2u;
    }
    *code = (uint8_t)c;
    return lb_billm_value(c, salient, a);
}

/* The lb_qmethod entry points (registered as lb_qmethod_billm). quantize runs the GPTQ
 * engine (opts->damp, opts->block_size; act_order is not used: the block structure is
 * per contiguous column block) with the default lb_billm_cfg. H is required. */
int lb_billm_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                      const lb_qopts *opts, lb_qresult *out, lb_err *err);
/* Same with an explicit search configuration. */
int lb_billm_quantize_cfg(const float *W, int64_t rows, int64_t cols, const float *H,
                          const lb_qopts *opts, const lb_billm_cfg *cfg, lb_qresult *out,
                          lb_err *err);
int lb_billm_dequantize(const lb_qpacked *packed, float *W_out, lb_err *err);

extern const lb_qmethod lb_qmethod_billm;

#endif
