/* lb_exec_measure: the two job types of the --target-bpw measurement stage
 * (docs/target-bpw.md), run by lb_exec_run like every other job.
 *
 *   propagate-fp (b):  X_fp(b) through block b with the source (fp) weights
 *                      -> X_fp(b+1); b = -1 is the ordinary embed job.
 *   measure (b, l):    inputs X_fp(b), X_fp(b+1), H (the fp Hessian feeding
 *                      linear l); quantizes W_l with the job's method/options
 *                      and stores one "measure" artifact: F64 "m" with the
 *                      LB_MEAS_* values below, and metadata lowbit.tensor,
 *                      lowbit.method, lowbit.options, lowbit.proxy_version.
 * The stored bits are counted as the packed writer counts them
 * (lb_qpacked_io_nbytes, docs/bit-accounting.md), rotation fields included. */
#ifndef LB_EXEC_MEASURE_H
#define LB_EXEC_MEASURE_H

#include "lb_exec.h"

/* Bump when a proxy's definition changes: it is part of every measure job id,
 * so older measurements are not reused under a new meaning. */
#define LB_MEASURE_PROXY_VERSION "proxy-v2" /* v2: adds kl (v1 values unchanged) */

/* The kl proxy runs the rest of the model on the first
 * lb_measure_kl_windows(n_seq, seq_len) calibration windows: at most
 * LB_MEASURE_KL_WINDOWS and LB_MEASURE_KL_TOKENS tokens (at least one window),
 * so its cost stays bounded on long windows (7B: 2 windows of 2048). Part of the
 * proxy's definition: a change needs a new LB_MEASURE_PROXY_VERSION. */
#define LB_MEASURE_KL_WINDOWS 16
#define LB_MEASURE_KL_TOKENS 4096
int64_t lb_measure_kl_windows(int64_t n_seq, int64_t seq_len);

enum {
    LB_MEAS_BITS = 0,   /* stored bits, every field (= the manifest's bytes * 8) */
    LB_MEAS_WEIGHTS,    /* rows * cols */
    LB_MEAS_REL_ERR,    /* ||W - W_hat||^2 / ||W||^2 */
    LB_MEAS_OUT_ERR,    /* tr(dW H dWᵀ) / tr(W H Wᵀ) */
    LB_MEAS_OUT_ABS,    /* tr(dW H dWᵀ), H = 2/N XᵀX */
    LB_MEAS_BLOCK_ERR,  /* ||Y_q - Y_fp||^2 / ||Y_fp - X||^2 (the block's own contribution) */
    LB_MEAS_BLOCK_ABS,  /* ||Y_q - Y_fp||^2 / tokens */
    LB_MEAS_KL,         /* mean token KL(fp || q) at the model output: block b with only
                           this linear quantized, then blocks b+1.. in fp, final norm,
                           lm_head; first lb_measure_kl_windows windows (lb_measure_kl) */
    LB_MEAS_COUNT
};

/* Name of value k ("bits", "rel_err", ...) and the index of a proxy name
 * (-1 when it is not one of rel_err, out_err, out_abs, block_err, block_abs, kl). */
const char *lb_measure_value_name(int k);
int lb_measure_proxy_index(const char *name);

int lb_exec_measure(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err);
int lb_exec_propagate_fp(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err);

/* KL part of the measure job, on its own for tests: yq and yfp (n_seq * seq_len,
 * dim) are block `block`'s outputs with the candidate and in full precision.
 * Runs both through blocks block+1.. of m (fp, in lb_exec_chunk_seqs chunks of
 * the n_seq given), the final norm and lm_head, one window of logits at a time,
 * and sets *kl = mean over tokens of KL(softmax(fp) || softmax(q)) in float64
 * (serial sum in token order: thread-count independent). yq == yfp gives
 * exactly 0. Returns 0 or LB_E*. */
int lb_measure_kl(const lb_model *m, int32_t block, const float *yq, const float *yfp,
                  int64_t n_seq, int64_t seq_len, double *kl, lb_err *err);

/* Reads measure artifact id. OUT: v[LB_MEAS_COUNT]. Returns 0 or LB_E*. */
int lb_measure_read(const lb_store *store, const char *id, double *v, lb_err *err);

#endif
