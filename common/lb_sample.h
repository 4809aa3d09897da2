/* lb_sample: token sampling (temperature, top-p), a KV-cached batch decoder and
 * data-free calibration (sequences sampled from the model itself).
 *
 * Determinism: every sequence draws from its own RNG stream seeded from
 * (seed, sequence index), and the decoder's arithmetic per sequence does not
 * depend on the batch or thread count, so the same arguments give the same
 * tokens on any machine with the same BLAS. */
#ifndef LB_SAMPLE_H
#define LB_SAMPLE_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_model.h"

/* xoshiro256** (Blackman & Vigna 2018), seeded through splitmix64. */
typedef struct {
    uint64_t s[4];
} lb_rng;

/* Seeds r from (seed, stream): distinct streams give independent sequences. */
void lb_rng_seed(lb_rng *r, uint64_t seed, uint64_t stream);
uint64_t lb_rng_next(lb_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double lb_rng_uniform(lb_rng *r);

typedef struct {
    double temperature; /* 0 = greedy (argmax); else logits / T; default 1 */
    double top_p;       /* nucleus: smallest set of tokens with mass >= top_p; 1 = all */
} lb_sample_opts;

void lb_sample_opts_init(lb_sample_opts *o);

/* Samples one id from logits (vocab,). work: caller-given scratch of vocab
 * doubles and 2 * vocab int32. Ties in probability keep the lower id first, so the
 * result depends only on (logits, opts, rng state). Returns the id (0..vocab-1).
 * Requires vocab >= 1, temperature >= 0, 0 < top_p <= 1 (lb_sample_opts_check). */
int64_t lb_sample_token(const float *logits, int64_t vocab, const lb_sample_opts *o, lb_rng *rng,
                        double *work_p, int32_t *work_idx);

/* Returns 0 or LB_EINVAL naming the bad option. */
int lb_sample_opts_check(const lb_sample_opts *o, lb_err *err);

/* Batch decoder with a KV cache: n_seq sequences advance one token per step.
 * Keeps every block's weights resident (the whole model must fit in RAM). */
typedef struct lb_decoder lb_decoder;

/* Returns 0 and *out (lb_decoder_free), or LB_EINVAL (max_len above
 * max_position_embeddings, sliding window shorter than max_len) / LB_ENOMEM / io errors. */
int lb_decoder_new(const lb_model *m, int64_t n_seq, int64_t max_len, lb_decoder **out,
                   lb_err *err);
void lb_decoder_free(lb_decoder **d);
/* Feeds tokens (n_seq,) at the next position and writes the next-token logits
 * (n_seq, vocab). Returns 0, or LB_EINVAL when the cache is full or an id is >= vocab. */
int lb_decoder_step(lb_decoder *d, const uint32_t *tokens, float *logits, lb_err *err);
/* Vocabulary size (borrowed config). */
int64_t lb_decoder_vocab(const lb_decoder *d);

/* Data-free calibration: n sequences of len tokens. Sequence i starts with a
 * token drawn uniformly from [0, vocab) by stream i of seed, then each next
 * token is sampled from the model with opts. OUT: tokens (n * len,)
 * caller-allocated. batch: sequences decoded together (>= 1; does not change
 * the result). progress (may be NULL) is called after each batch with
 * (done sequences, n). Returns 0 or LB_E*. */
int lb_gen_calib(const lb_model *m, int64_t n, int64_t len, uint64_t seed,
                 const lb_sample_opts *opts, int64_t batch, uint32_t *tokens,
                 void (*progress)(void *user, int64_t done, int64_t total), void *user,
                 lb_err *err);

#endif
