/* lb_eval: perplexity and agreement with a reference model on token ids.
 *
 * Windows: the token array is cut into n / ctx non-overlapping windows of ctx
 * tokens (the tail of n % ctx tokens is dropped and reported). Window w covers
 * tokens[w*ctx .. w*ctx+ctx-1]; position p < ctx-1 predicts token p+1, so each
 * window scores ctx-1 targets (as GPTQ's eval does). NLL is summed in double
 * and ppl = exp(nll_sum / tokens_scored).
 *
 * With a reference model, KL(ref || model) = sum_v p_ref(v) (log p_ref(v) -
 * log p_model(v)) and top-1 agreement (argmax equal; ties -> lowest index) are
 * averaged over the same scored positions 0..ctx-2 (the ones that predict a
 * target; position ctx-1 is not used). Log-softmax is computed in double with
 * the max subtracted. Results do not depend on the thread count. */
#ifndef LB_EVAL_H
#define LB_EVAL_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_model.h"

typedef struct lb_eval_result {
    int64_t ctx;
    int64_t windows;        /* windows scored */
    int64_t tokens_scored;  /* windows * (ctx - 1) */
    int64_t tokens_dropped; /* n % ctx tail tokens not evaluated */
    double nll_sum;         /* sum of -log p(target) */
    double nll;             /* nll_sum / tokens_scored */
    double ppl;             /* exp(nll) */
    bool has_ref;
    double kl;   /* mean KL(ref || model) per scored position (has_ref only) */
    double top1; /* fraction of scored positions with equal argmax (has_ref only) */
    double seconds;
} lb_eval_result;

/* Running sums; zero-initialize (= {0}) before the first window. */
typedef struct lb_eval_acc {
    int64_t windows;
    int64_t positions;
    double nll_sum;
    double kl_sum;
    int64_t top1_hits;
    bool has_ref;
} lb_eval_acc;

/* Scores one window. logits (ctx, vocab) of the model, ref_logits (ctx, vocab)
 * of the reference or NULL, tokens (ctx,) the window's ids (all < vocab).
 * Uses OpenMP over positions; sums are taken in position order. Returns 0, or
 * LB_EINVAL (token id >= vocab, ctx < 2, or ref given for some windows only),
 * LB_ENUMERIC (a non-finite logit), LB_ENOMEM. */
int lb_eval_acc_window(lb_eval_acc *acc, const float *logits, const float *ref_logits,
                       const uint32_t *tokens, int64_t ctx, int64_t vocab, lb_err *err);

/* Fills *out from the sums (ctx, tokens_dropped and seconds are left to the caller). */
void lb_eval_acc_result(const lb_eval_acc *acc, lb_eval_result *out);

/* Progress: called after each batch with windows done / total and seconds since the start. */
typedef void (*lb_eval_progress_fn)(void *user, int64_t done, int64_t total, double seconds);

typedef struct lb_eval_opts {
    int64_t ctx;   /* window length, >= 2 and <= max_position_embeddings */
    int64_t batch; /* windows per forward (<= 0: 8) */
    lb_eval_progress_fn progress; /* may be NULL */
    void *progress_user;
} lb_eval_opts;

/* Evaluates model (and ref, may be NULL: then no KL/top-1) on tokens (n,).
 * Both models must have the same vocab_size (else LB_EINVAL); every token
 * must be < vocab (lb_tokens_check_vocab: LB_EFORMAT naming the index);
 * ctx > max_position_embeddings or n < ctx -> LB_EINVAL. Streams blocks
 * one at a time per batch. OUT: *out. Returns 0 or LB_E*. */
int lb_eval_run(const lb_model *model, const lb_model *ref, const uint32_t *tokens, int64_t n,
                const lb_eval_opts *opts, lb_eval_result *out, lb_err *err);

#endif
