/* lb_synth: deterministic synthetic LLaMA checkpoints with LLM-like outlier structure.
 *
 * Every element is a pure function of (seed, tensor name, element index): a
 * splitmix64-keyed counter RNG, so the bytes do not depend on thread count or on
 * the order tensors are generated in. Statistics (see lb_synth.c for the numbers):
 *   - projection weights: Student-t (nu = 5, kurtosis 9), std ~ 1/sqrt(fan_in),
 *     log-normal per-row scale;
 *   - a fixed set of ~0.75% "outlier" hidden channels: large, fixed-sign values in
 *     the embedding (residual-stream outliers) and large RMSNorm gains on them, so
 *     after each input/post-attention RMSNorm they carry 10-100x the activation of
 *     a median channel;
 *   - a further ~3% of "dominant" channels with 2.5x norm gains;
 *   - residual branches (o_proj, down_proj) scaled by 1/sqrt(2 * preset layers)
 *     so the residual stream does not explode. */
#ifndef LB_SYNTH_H
#define LB_SYNTH_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_dtype.h"
#include "lb_err.h"

typedef struct lb_synth_preset {
    const char *name;
    const char *summary; /* one line for --help */
    int64_t hidden;
    int64_t intermediate;
    int64_t n_layers; /* default; --layers overrides */
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t vocab;
    int64_t max_position;
    double rope_theta;
    double rms_eps;
} lb_synth_preset;

/* Number of built-in presets and the i-th one (NULL when out of range). */
int lb_synth_preset_count(void);
const lb_synth_preset *lb_synth_preset_at(int i);
/* Preset by name, or NULL. */
const lb_synth_preset *lb_synth_preset_find(const char *name);

/* What one tensor is: kind decides its distribution. */
typedef enum {
    LB_SYNTH_EMBED = 0,
    LB_SYNTH_ATTN_NORM,
    LB_SYNTH_Q,
    LB_SYNTH_K,
    LB_SYNTH_V,
    LB_SYNTH_O,
    LB_SYNTH_FFN_NORM,
    LB_SYNTH_GATE,
    LB_SYNTH_UP,
    LB_SYNTH_DOWN,
    LB_SYNTH_FINAL_NORM,
    LB_SYNTH_LM_HEAD,
} lb_synth_kind;

typedef struct lb_synth_tensor {
    char name[96]; /* HF name, e.g. "model.layers.3.mlp.up_proj.weight" */
    lb_synth_kind kind;
    int64_t layer; /* -1 for embed / final norm / lm_head */
    int64_t rows;  /* out features (or vocab); 1 for a norm gain */
    int64_t cols;  /* in features (or hidden) */
} lb_synth_tensor;

typedef struct lb_synth lb_synth;

/* Creates a generator for preset with n_layers (0 = preset default) and seed.
 * Returns 0 and *out (free with lb_synth_free), or LB_EINVAL / LB_ENOMEM. */
int lb_synth_new(const lb_synth_preset *preset, int64_t n_layers, uint64_t seed, lb_synth **out,
                 lb_err *err);
void lb_synth_free(lb_synth **s);

const lb_synth_preset *lb_synth_get_preset(const lb_synth *s);
int64_t lb_synth_n_layers(const lb_synth *s);
uint64_t lb_synth_seed(const lb_synth *s);

/* Tensors in file order (HF names). lb_synth_tensor_at returns NULL past the end. */
int64_t lb_synth_n_tensors(const lb_synth *s);
const lb_synth_tensor *lb_synth_tensor_at(const lb_synth *s, int64_t i);
/* Total element count over all tensors. */
int64_t lb_synth_n_params(const lb_synth *s);

/* The outlier hidden channels (sorted ascending); OUT *n. Owned by s. */
const int64_t *lb_synth_outlier_channels(const lb_synth *s, int64_t *n);

/* Generates rows [row0, row0 + nrows) of tensor t into out (nrows, cols) f32.
 * Pure: the same arguments give the same values for any thread count (rows may be
 * split across OpenMP threads). Returns 0, or LB_EINVAL on a bad range. */
int lb_synth_fill(const lb_synth *s, int64_t t, int64_t row0, int64_t nrows, float *out,
                  lb_err *err);

/* Called once per tensor after it is written (may be NULL). */
typedef void (*lb_synth_progress_fn)(void *ctx, const lb_synth_tensor *t, int64_t index,
                                     int64_t count, double seconds);

typedef struct lb_synth_write_opts {
    lb_dtype dtype;     /* LB_DTYPE_BF16 or LB_DTYPE_F32 */
    bool force;         /* allow a non-empty existing dir (files are overwritten) */
    int64_t chunk_rows; /* rows generated per chunk; 0 = automatic (~16 MiB f32) */
    lb_synth_progress_fn progress;
    void *progress_ctx;
} lb_synth_write_opts;

typedef struct lb_synth_write_stats {
    int64_t params;
    int64_t file_bytes; /* size of model.safetensors */
    double seconds;
} lb_synth_write_stats;

/* Writes DIR/config.json and DIR/model.safetensors (tensor by tensor, in row
 * chunks: peak memory is one chunk plus the writer's header). Creates dir if
 * missing; a non-empty existing dir is refused (LB_ESTATE) unless opts->force
 * (which also deletes a stale model.safetensors.index.json there).
 * OUT stats (may be NULL). Returns 0 or a negative LB_E* code with err set. */
int lb_synth_write(const lb_synth *s, const char *dir, const lb_synth_write_opts *opts,
                   lb_synth_write_stats *stats, lb_err *err);

#endif
