/* lb_distill: block-wise distillation of the continuous quantization
 * parameters (scales, zero-point-free offsets, centroids, μ/α, outlier
 * values; see lb_qparams) with the codes fixed, so the packed format and bpw
 * do not change (QBB / PB-LLM style).
 *
 * One call = one block = one DISTILL job: the student is the block whose
 * quantized linears are rebuilt from θ (lb_qparams_weights) and whose norms
 * and biases are the fp ones; the loss is MSE(student(x_s), y_t) over every
 * element; gradients come from lb_backward (dL/dŴ = dYᵀ X) and lb_qparams
 * (dL/dθ); Adam (Kingma & Ba 2015, alg. 1) with a cosine learning-rate
 * schedule (Loshchilov & Hutter 2017, eq. 5, no restarts, to 0).
 *
 * Inputs (the caller's choice; lowbit uses the first):
 *   x_s = the block input along the QUANTIZED path, y_t = the fp block applied
 *   to the FP input: the block learns to map the already-degraded stream back
 *   onto the fp trajectory, so it also absorbs the error of earlier blocks
 *   (which is what KL against the fp model measures);
 *   or x_s = x_t = either stream: a purely local fit of this block's function.
 *
 * Learning rate: relative. Each Adam step of parameter p is scaled by the RMS
 * of p's field at the start, so one lr (default 1e-3 = about 0.1 % of a
 * typical scale per step) fits every method and model.
 * The result is stored rounded to the fields' type (f16); if the rounded
 * parameters do not lower the loss on all inputs, the original ones are kept
 * (stats say so). Determinism: same inputs and options give the same bytes at
 * any thread count. */
#ifndef LB_DISTILL_H
#define LB_DISTILL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"
#include "lb_model.h"
#include "lb_quant.h"

typedef struct {
    int32_t steps;      /* Adam steps (0 = nothing to do) */
    double lr;          /* peak relative learning rate, default 1e-3 */
    double beta1, beta2, eps; /* Adam, defaults 0.9, 0.999, 1e-8 */
    int64_t batch_seqs; /* sequences per step (<= 0 or > n_seq: all), default 8 */
    uint64_t seed;      /* minibatch order */
} lb_distill_opts;

void lb_distill_opts_init(lb_distill_opts *o);

typedef struct {
    double loss_before;  /* MSE over all inputs with the original parameters */
    double loss_after;   /* with the stored (f16-rounded) result */
    bool kept_original;  /* distillation did not help; packed is unchanged */
    int32_t steps;
    int64_t nparams;     /* continuous parameters trained */
    double seconds;
} lb_distill_stats;

/* Distills one block. cfg: the model config. fp: the fp block weights (only
 * norms and biases are read, plus the fp matrices of linears whose packed[l]
 * is NULL, which stay fp). packed[l] (in/out): the quantized linears; their
 * float fields are overwritten with the result. x_s (ntok, dim) student
 * inputs, y_t (ntok, dim) targets, ntok = n_seq * seq_len.
 * OUT: *stats (may be NULL). Returns 0, LB_EINVAL (bad sizes/options, a
 * method without parameterization), LB_ENUMERIC (loss became NaN/Inf),
 * LB_ENOMEM. On error packed is unchanged. */
int lb_distill_block(const lb_config *cfg, const lb_block_weights *fp,
                     lb_qpacked *const packed[LB_LINEAR_COUNT], const float *x_s, const float *y_t,
                     int64_t n_seq, int64_t seq_len, const lb_distill_opts *o,
                     lb_distill_stats *stats, lb_err *err);

/* The distillation loss MSE(student(x_s), y_t) over all n_seq sequences with
 * the parameters as currently stored in packed, and optionally its gradient:
 * grad[l] (lb_qparams nparams of packed[l], float fields in packed order) =
 * dL/dθ for each non-NULL packed[l] with non-NULL grad[l]; grad may be NULL.
 * Same arguments as lb_distill_block. Returns 0 or LB_E*. */
int lb_distill_eval(const lb_config *cfg, const lb_block_weights *fp,
                    lb_qpacked *const packed[LB_LINEAR_COUNT], const float *x_s, const float *y_t,
                    int64_t n_seq, int64_t seq_len, double *loss, double *const grad[LB_LINEAR_COUNT],
                    lb_err *err);

/* Optional final stage: every block's parameters together against the fp
 * model's next-token distribution, loss = mean over tokens of KL(p_fp || p_q)
 * of the logits (teacher = fp blocks, recomputed per minibatch). Needs all
 * blocks' weights, maps and tapes in RAM: for small models. fp: (layers,)
 * fp blocks; packed[layer][linear] (in/out, NULL entries stay fp); tokens
 * (n_seq * seq_len,) < vocab. Same optimizer, schedule, keep-if-better rule
 * and determinism as lb_distill_block (loss_* fields are KL in nats).
 * Returns 0 or LB_E*; on error packed is unchanged. */
int lb_distill_model(const lb_config *cfg, const lb_head_weights *head,
                     const lb_block_weights *fp, lb_qpacked *const (*packed)[LB_LINEAR_COUNT],
                     const uint32_t *tokens, int64_t n_seq, int64_t seq_len,
                     const lb_distill_opts *o, lb_distill_stats *stats, lb_err *err);

/* The final-stage loss on all n_seq sequences with the stored parameters and,
 * when grad != NULL, dL/dθ: grad[layer][linear] as in lb_distill_eval. */
int lb_distill_model_eval(const lb_config *cfg, const lb_head_weights *head,
                          const lb_block_weights *fp,
                          lb_qpacked *const (*packed)[LB_LINEAR_COUNT], const uint32_t *tokens,
                          int64_t n_seq, int64_t seq_len, double *loss,
                          double *const (*grad)[LB_LINEAR_COUNT], lb_err *err);

#endif
