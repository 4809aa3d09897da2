/* lb_forward: fp32 LLaMA forward pass over a batch of token sequences,
 * one transformer block at a time.
 *
 * Layout: n_seq sequences of seq_len tokens each, flattened to ntok =
 * n_seq * seq_len rows; the residual stream x is (ntok, dim), row-major.
 * Positions restart at 0 in every sequence and attention is causal within a
 * sequence only. Projections are sgemms over blocks of rows (never per-token
 * GEMVs): the ntok rows are cut into chunks of row_chunk(ntok) = clamp(
 * ntok/16 rounded up to 16, 16, 512) rows. Attention is two sgemms per
 * (sequence, head, 64-query block), skipping the masked triangle.
 *
 * Threads: results are bit-identical for any OpenMP and BLAS thread count.
 * OpenBLAS's own threading changes the rounding (its partition of the matrix
 * depends on the thread count), so lb_fwd_block and lb_fwd_logits set the
 * BLAS thread count to 1 while they run (and restore it; the setting is
 * process-global) and parallelise with OpenMP instead, in three regions per
 * block: row chunks (RMSNorm, q/k/v, RoPE), (sequence, head) attention, row
 * chunks (o_proj + residual, RMSNorm, SwiGLU MLP + residual). The chunking
 * depends on ntok only and no reduction is split across threads. Results do
 * change (by fp32 rounding) with the batch shape, since that moves rows
 * between chunks. */
#ifndef LB_FORWARD_H
#define LB_FORWARD_H

#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"
#include "lb_model.h"

typedef struct lb_fwd_workspace lb_fwd_workspace;

/* Inputs of each distinct linear of a block, filled by lb_fwd_block when the
 * pointer is non-NULL (for Hessian collection). Caller-allocated, each
 * (ntok, in_features), row-major; any field may be NULL. */
typedef struct lb_fwd_capture {
    float *attn_in;  /* (ntok, dim)   RMSNorm'ed block input: feeds q/k/v_proj */
    float *attn_out; /* (ntok, q_dim) attention output: feeds o_proj */
    float *mlp_in;   /* (ntok, dim)   RMSNorm'ed MLP input: feeds gate/up_proj */
    float *mlp_act;  /* (ntok, inter) silu(gate) * up: feeds down_proj */
} lb_fwd_capture;

/* Allocates all scratch for blocks over up to max_ntok rows with sequences of
 * at most max_seq_len tokens (every call must have n_seq * seq_len <= max_ntok
 * and seq_len <= max_seq_len). RoPE tables are precomputed for max_seq_len
 * positions. Sizes the per-thread attention buffers for omp_get_max_threads()
 * at this call. Returns 0 and sets *out (lb_fwd_workspace_free), or
 * LB_EINVAL/LB_ENOMEM with err set. */
int lb_fwd_workspace_new(const lb_config *cfg, int64_t max_ntok, int64_t max_seq_len,
                         lb_fwd_workspace **out, lb_err *err);

/* Frees the workspace and sets *ws = NULL. Accepts NULL. */
void lb_fwd_workspace_free(lb_fwd_workspace **ws);

/* x (ntok, dim) = embed[tokens[t]] for t < ntok. Returns 0, or LB_EINVAL (err
 * names the index) when a token id is >= head->vocab. */
int lb_fwd_embed(const lb_head_weights *head, const uint32_t *tokens, int64_t ntok, float *x,
                 lb_err *err);

/* One pre-norm LLaMA block, in place on the residual stream:
 *   x += o_proj(attn(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
 *   x += down_proj(silu(gate_proj(rms(x))) * up_proj(rms(x)))
 * x: (n_seq * seq_len, dim) in/out. capture may be NULL. Returns 0, or
 * LB_EINVAL when the sizes exceed the workspace or seq_len exceeds a nonzero
 * cfg->sliding_window (sliding-window attention is not implemented). */
int lb_fwd_block(const lb_config *cfg, const lb_block_weights *w, float *x, int64_t n_seq,
                 int64_t seq_len, lb_fwd_workspace *ws, const lb_fwd_capture *capture,
                 lb_err *err);

/* logits (ntok, vocab) = lm_head @ rms(x, final_norm). x (ntok, dim) is
 * OVERWRITTEN with the final-normed stream (no scratch needed). Rows are
 * independent, so callers may pass any subset of rows (e.g. one window). */
void lb_fwd_logits(const lb_config *cfg, const lb_head_weights *head, float *x, int64_t ntok,
                   float *logits);

/* x (ntok, dim) = rms(x, final_norm (dim,)) in place: the lm_head input, the
 * same floats lb_fwd_logits multiplies by lm_head. Rows are independent. */
void lb_fwd_final_norm(const lb_config *cfg, const float *final_norm, float *x, int64_t ntok,
                       int64_t dim);

/* Runs embedding + all blocks (streamed: each block is converted, applied and
 * freed before the next) and leaves the final residual stream (before the
 * final norm) in x (n_seq * seq_len, dim). head must come from
 * lb_model_load_head(m); ws from lb_fwd_workspace_new with room for the batch. */
int lb_model_hidden(const lb_model *m, const lb_head_weights *head, const uint32_t *tokens,
                    int64_t n_seq, int64_t seq_len, lb_fwd_workspace *ws, float *x, lb_err *err);

/* Convenience: full forward. tokens (n_seq * seq_len,), OUT logits
 * (n_seq * seq_len, vocab) caller-allocated. Loads the head, allocates a
 * workspace and streams blocks one at a time. Returns 0 or LB_E*. */
int lb_model_forward(const lb_model *m, const uint32_t *tokens, int64_t n_seq, int64_t seq_len,
                     float *logits, lb_err *err);

#endif
