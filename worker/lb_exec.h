/* lb_exec: runs one pipeline job (lb_job.h) against a source model and an
 * artifact store. It does not know which queue fed it: the embedded runner
 * calls it from a thread pool, a remote worker would call it after fetching the
 * job's input artifacts by id into its local store.
 *
 * What each job does (b = job->block):
 *   propagate, b == -1: calib tokens (n_seq, seq_len) -> X_0 = embed(tokens)
 *   collect-hessian:    X_b through block b with fp weights (stage ALL: the 4
 *                       Hessians S = Σ x xᵀ of q/k/v, o, gate/up and down inputs)
 *                       or, true-sequential stage s, with the block's earlier
 *                       linears replaced by their quantized versions (inputs
 *                       after X_b), giving the one Hessian of stage s
 *   collect-hessian, stage LM_HEAD (b = num_hidden_layers): X_L -> rms(X_L,
 *                       final norm) -> the lm_head input Hessian (dim, dim)
 *   quantize-linear:    W (from the model) + H = 2/N S -> registry method ->
 *                       packed "qlinear" artifact (W_hat is not stored: it is
 *                       dequantize(packed), bit for bit); lm_head.weight
 *                       (LB_JOB_LINEAR_LM_HEAD) is the embedding when tied
 *   distill (--distill): X_q(b), X_fp(b), 7 packed -> Y_t = fp block b on X_fp(b)
 *                       (stored as X_fp(b+1) when the job has an 8th output),
 *                       lb_distill_block(student input X_q(b), target Y_t) ->
 *                       7 distilled packed linears (same codes, new f16 fields)
 *   propagate, b >= 0:  X_b through block b with its 7 quantized linears -> X_{b+1}
 *                       (b = L-1 only for --quantize-lm-head)
 *   merge:              all qlinear artifacts + the model -> packed checkpoint
 *                       in job->out_dir (lb_packed_write)
 * Forward passes run over fixed chunks of LB_EXEC_CHUNK_TOKENS tokens (whole
 * sequences), a function of seq_len only, so the Hessian sums and activations
 * are the same bits at any thread count. */
#ifndef LB_EXEC_H
#define LB_EXEC_H

#include "lb_artifact.h"
#include "lb_job.h"
#include "lb_model.h"
#include "lb_packed.h"

#define LB_EXEC_CHUNK_TOKENS 4096

typedef struct {
    const lb_model *model;      /* the source (fp) model of job->model_fp (borrowed) */
    const char *model_fp;       /* its fingerprint (lb_exec_model_fingerprint); jobs for
                                   another fingerprint are refused */
    const lb_store *store;      /* artifacts (borrowed) */
    int omp_threads;            /* OpenMP threads for forward passes in this thread (>= 1) */
} lb_exec_ctx;

/* Runs job. Fills *res (always: status, err_code, error, outputs, bpw,
 * seconds). Returns 0 or the job's LB_E* code (also in res->err_code). The
 * outputs exist and verify in the store when it returns 0. Thread-safe for
 * distinct jobs (the BLAS thread count is process-global: set it once, see
 * lb_runner.h). */
int lb_exec_run(const lb_job *job, const lb_exec_ctx *ctx, lb_job_result *res);

/* SHA-256 over the model's config.json bytes and every tensor's name, dtype,
 * shape and data (file order). OUT: hex. Returns 0 or LB_EIO/LB_ENOMEM. */
int lb_exec_model_fingerprint(const lb_model *m, char hex[LB_ID_HEX], lb_err *err);

/* Dequantizes qlinear artifact id into W (rows, cols), checking the shape.
 * Returns 0 or LB_E*. */
int lb_exec_load_qlinear(const lb_store *store, const char *id, int64_t rows, int64_t cols,
                         float *W, lb_err *err);

/* Full option set as "key=value,..." (recorded per tensor). OUT: buf. */
void lb_exec_describe_opts(const lb_qopts *o, char *buf, size_t size);

#endif
