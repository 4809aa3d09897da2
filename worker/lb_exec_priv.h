/* lb_exec_priv.h: what the executor files (lb_exec*.c, not lb_exec_measure.c) share. */
#ifndef LB_EXEC_PRIV_H
#define LB_EXEC_PRIV_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_exec.h"
#include "lb_forward.h"
#include "lb_hessian.h"

/* Activations read from one artifact or from the K chunk artifacts of a chunked
 * plan (piece i: token rows [row0[i], row0[i] + rows[i])). */
typedef struct {
    int n;
    lb_st **st;
    const uint8_t **data;
    int64_t *row0, *rows;
    int64_t dim;
} lb_exec_xsrc;

/* One block's forward over the fixed chunks of a job's windows: chunk c is
 * sequences [c * chunk_seqs, min(n_seq, (c + 1) * chunk_seqs)), run on its own
 * (a copy of its rows of X, the block, optional captures of the linears' inputs). */
typedef struct {
    const lb_config *cfg;
    const lb_job *job;
    const lb_block_weights *w;
    lb_exec_xsrc xs;       /* X (whole, or the job's chunk) */
    lb_fwd_workspace *ws;
    float *x;              /* (chunk, dim) */
    float *cap[4];         /* captures: attn_in, attn_out, mlp_in, mlp_act */
    int64_t capw[4];
    int64_t chunk_seqs, n_chunks, dim;
    int64_t e0, ne;        /* the chunks this job runs: all, or its range (chunk jobs) */
    int64_t t_base, t_count; /* token rows of those chunks (rows of X held, of outputs) */
} lb_exec_blockrun;

struct lb_exec_part {
    const lb_job *job;
    const lb_exec_ctx *ctx;
    lb_block_weights w;
    lb_exec_blockrun br;
    int n_hessians;    /* outputs of a collect job (4 or 1); 0 for propagate */
    int slot[4];       /* output o is capture slot[o] (attn_in .. mlp_act) */
};

/* X artifact: "x" F32 (ntok, dim). Borrowed view into the mapping. */
int lb_exec_open_x(const lb_exec_ctx *ctx, const char *id, int64_t ntok, int64_t dim,
                   lb_st **st, const uint8_t **data, lb_err *err);
int lb_exec_put_x(const lb_exec_ctx *ctx, const char *id, const float *x, int64_t ntok,
                  int64_t dim, lb_err *err);
/* Stores h as a "hessian" artifact: F64 S (cols, cols), metadata lowbit.ntok. */
int lb_exec_put_hessian(const lb_exec_ctx *ctx, const char *id, const lb_hessian *h, lb_err *err);
/* The checks lb_exec_run makes before any job. */
int lb_exec_check_job(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err);

/* Opens pieces ids[0..n) (token rows [row0[i], row0[i] + rows[i])) as one source. */
int lb_exec_xsrc_open(lb_exec_xsrc *xs, const lb_exec_ctx *ctx, const lb_artifact_id *ids,
                      int n, const int64_t *row0, const int64_t *rows, int64_t dim,
                      lb_err *err);
/* dst (nt, dim) = token rows [t0, t0 + nt), which the pieces must cover. */
int lb_exec_xsrc_copy(const lb_exec_xsrc *xs, int64_t t0, int64_t nt, float *dst, lb_err *err);
void lb_exec_xsrc_free(lb_exec_xsrc *xs);
/* Block chunks of job (collect except lm_head, propagate block >= 0; chunk jobs
 * included): lb_exec_part_open without the data-parallel restriction. */
int lb_exec_part_open_any(const lb_job *job, const lb_exec_ctx *ctx, lb_exec_part **out,
                          lb_err *err);
/* Runs X (artifact xid) through block b, all chunks in order: out (ntok, dim)
 * gets the block outputs when not NULL. */
int lb_exec_run_block(const lb_exec_ctx *ctx, const lb_job *job, const char *xid,
                      const lb_block_weights *w, float *out, lb_err *err);

/* The job types (lb_exec_run dispatches; lb_exec_measure.c has measure, propagate-fp). */
int lb_exec_collect(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err);
int lb_exec_reduce(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err);
int lb_exec_propagate(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err);
int lb_exec_quantize(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err);
int lb_exec_distill(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err);
int lb_exec_merge(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err);

#endif
