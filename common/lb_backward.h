/* lb_backward: analytic fp32 backward pass of one pre-norm LLaMA block
 * (RMSNorm, q/k/v/o projections, rotate-half RoPE, causal softmax attention
 * with GQA, SwiGLU MLP, both residuals), the same function as lb_fwd_block.
 *
 * Use: lb_tape_forward runs the block and records the activations the
 * backward needs; lb_tape_backward takes dL/dy and returns dL/dx and dL/dW of
 * any of the seven linears (dW = dYᵀ X per linear). Norm weights and biases
 * get no gradient (they stay fp and are not trained here).
 *
 * Memory: the tape holds about (4 dim + 2 q_dim + 3 kv_dim + 4 inter) floats
 * per token; attention probabilities are recomputed per (sequence, head) in
 * the backward instead of stored.
 * Threads: OpenMP over rows / (sequence, kv head); no reduction is split
 * across threads and BLAS runs single-threaded inside, so results are
 * bit-identical for any thread count. */
#ifndef LB_BACKWARD_H
#define LB_BACKWARD_H

#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"
#include "lb_model.h"

typedef struct lb_tape lb_tape;

/* Allocates a tape for up to max_ntok tokens in sequences of at most
 * max_seq_len. Returns 0 and *out (lb_tape_free), or LB_EINVAL / LB_ENOMEM. */
int lb_tape_new(const lb_config *cfg, int64_t max_ntok, int64_t max_seq_len, lb_tape **out,
                lb_err *err);
void lb_tape_free(lb_tape **t);

/* y (ntok, dim) = block(x (ntok, dim)) with weights w; records activations.
 * x is not modified and must stay valid and unchanged until lb_tape_backward.
 * y may alias nothing else. Returns 0 or LB_EINVAL (sizes beyond the tape). */
int lb_tape_forward(lb_tape *t, const lb_block_weights *w, const float *x, int64_t n_seq,
                    int64_t seq_len, float *y, lb_err *err);

/* Backward of the last lb_tape_forward (same w). dy (ntok, dim) = dL/dy.
 * OUT: dx (ntok, dim) = dL/dx, or NULL to skip; dW[l] (rows, cols) of linear l
 * (lb_linear order, shapes from lb_linear_shape) = dL/dW_l, overwritten, or
 * NULL to skip. Returns 0 or LB_EINVAL (no forward recorded). */
int lb_tape_backward(lb_tape *t, const lb_block_weights *w, const float *dy, float *dx,
                     float *const dW[LB_LINEAR_COUNT], lb_err *err);

#endif
