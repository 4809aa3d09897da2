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
 * Chunked plans (job->n_chunks K > 0, docs/distributed.md "Chunked collection"):
 *   chunk jobs (job->chunk = c) run only block chunks lb_exec_chunk_span(c) and
 *   read/write only those token rows: embed (calib -> chunk c of X_0), propagate
 *   (chunk c of X_b -> chunk c of X_{b+1}), collect (chunk c of X_b -> one "hpart"
 *   partial per Hessian: chunk 0 float64 sums "S", later chunks the float32
 *   product of each block chunk "C", packed upper triangles with metadata
 *   lowbit.ntok/first_chunk/chunks/cols);
 *   reduce-hessian:     K x n_hessians partials (chunk-major) -> the Hessians,
 *                       added in chunk order: the unchunked bits;
 *   lm_head collect:    inputs are the K chunks of X_L in order.
 * Forward passes run over fixed chunks of whole sequences (lb_exec_chunk_seqs:
 * a function of n_seq and seq_len only), each chunk on its own, so the Hessian
 * sums and activations are the same bits at any thread count and on however
 * many processes the chunks are spread (lb_exec_part, lb_mpi_group.h). */
#ifndef LB_EXEC_H
#define LB_EXEC_H

#include "lb_artifact.h"
#include "lb_job.h"
#include "lb_model.h"
#include "lb_packed.h"

#include <stdbool.h>

#include "lb_hessian.h"

#define LB_EXEC_CHUNK_TOKENS 4096 /* at most this many tokens per chunk (>= 1 sequence) */
#define LB_EXEC_MIN_CHUNKS 8      /* at least this many chunks when n_seq >= 8 */

typedef struct {
    const lb_model *model;      /* the source (fp) model of job->model_fp (borrowed) */
    const char *model_fp;       /* its fingerprint (lb_exec_model_fingerprint); jobs for
                                   another fingerprint are refused */
    const lb_store *store;      /* artifacts (borrowed) */
    int omp_threads;            /* OpenMP threads for forward passes in this thread (>= 1) */
} lb_exec_ctx;

/* Sequences per chunk: min(LB_EXEC_CHUNK_TOKENS / seq_len, floor(n_seq /
 * LB_EXEC_MIN_CHUNKS)), at least 1: the largest chunk within the token cap
 * that still leaves LB_EXEC_MIN_CHUNKS chunks (n_seq chunks of one sequence
 * when n_seq < LB_EXEC_MIN_CHUNKS), so small calibration sets still spread
 * over data-parallel workers. Depends on nothing else. */
int64_t lb_exec_chunk_seqs(int64_t n_seq, int64_t seq_len);
/* Number of chunks: ceil(n_seq / lb_exec_chunk_seqs); 0 when n_seq < 1. */
int64_t lb_exec_chunk_count(int64_t n_seq, int64_t seq_len);

/* Chunk c of a plan's n_chunks chunk jobs (docs/distributed.md, "Chunked
 * collection"): block chunks [*e0, *e0 + *ne) = [floor(c n / K), floor((c + 1) n / K))
 * of the n = lb_exec_chunk_count block chunks, token rows [*t0, *t0 + *nt).
 * Returns 0 or LB_EINVAL (K < 1, K > n, c out of range). */
int lb_exec_chunk_span(int64_t n_seq, int64_t seq_len, int32_t n_chunks, int32_t c,
                       int64_t *e0, int64_t *ne, int64_t *t0, int64_t *nt);

/* Runs job. Fills *res (always: status, err_code, error, outputs, bpw,
 * seconds). Returns 0 or the job's LB_E* code (also in res->err_code). The
 * outputs exist and verify in the store when it returns 0. Thread-safe for
 * distinct jobs (the BLAS thread count is process-global: set it once, see
 * lb_runner.h). */
int lb_exec_run(const lb_job *job, const lb_exec_ctx *ctx, lb_job_result *res);

/* The chunked form of a data-parallel job (collect-hessian, propagate with
 * block >= 0). lb_exec_run runs every chunk in order in one process; an MPI
 * group runs chunks on several ranks and combines them in chunk order:
 * Hessians S = ((0 + S_0) + S_1) + ... (S_c the chunk's partial from a fresh
 * accumulator: the same float64 additions as one accumulator fed chunk after
 * chunk, docs/determinism.md), activations placed at the chunk's token rows. */
typedef struct lb_exec_part lb_exec_part;

/* true for collect-hessian (except the lm_head stage) and propagate with block >= 0. */
bool lb_exec_is_data_parallel(const lb_job *job);

/* Checks the job as lb_exec_run does, loads the block's weights (quantized
 * linears from the store where the job uses them) and maps X. job and ctx are
 * borrowed and must outlive the part. Does not set OpenMP threads (the caller
 * does: omp_set_num_threads(ctx->omp_threads)). OUT: *out (free with
 * lb_exec_part_free). Returns 0 or LB_E* (LB_EINVAL for a job without a
 * chunked form). */
int lb_exec_part_open(const lb_job *job, const lb_exec_ctx *ctx, lb_exec_part **out, lb_err *err);
void lb_exec_part_free(lb_exec_part **p);

int64_t lb_exec_part_chunks(const lb_exec_part *p);
/* Hessians the job outputs (4 for stage ALL, 1 for a true-sequential stage), 0 for propagate. */
int lb_exec_part_n_hessians(const lb_exec_part *p);
/* Width of output Hessian k (0 when k is out of range). */
int64_t lb_exec_part_hessian_width(const lb_exec_part *p, int k);
/* Hidden size: the width of activation rows. */
int64_t lb_exec_part_dim(const lb_exec_part *p);
/* Token rows of chunk c: OUT *t0 (first), *nt (count). */
void lb_exec_part_chunk_range(const lb_exec_part *p, int64_t c, int64_t *t0, int64_t *nt);

/* Runs chunk c through the block. collect: adds the chunk's captured inputs
 * to hs[0..n_hessians) (S += Xᵀ X, N += nt; pass fresh accumulators for a
 * partial). propagate: y (nt, dim) = block output (hs ignored). Returns 0 or LB_E*. */
int lb_exec_part_run_chunk(lb_exec_part *p, int64_t c, lb_hessian *const *hs, float *y,
                           lb_err *err);

/* Stores the job's outputs: the summed Hessians hs[0..n_hessians), or the
 * activations x (n_seq * seq_len, dim). Returns 0 or LB_E*. */
int lb_exec_part_store_hessians(const lb_exec_part *p, lb_hessian *const *hs, lb_err *err);
int lb_exec_part_store_x(const lb_exec_part *p, const float *x, lb_err *err);

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
