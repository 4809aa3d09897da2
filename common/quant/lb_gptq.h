/* lb_gptq: the GPTQ engine (Frantar et al. 2023, "GPTQ", Algorithm 1) with a hook API
 * so that other methods (GPTQ's uniform grid, CLAQ, PB-LLM, BiLLM) quantize inside the
 * same error-compensation loop.
 *
 * What the engine does, in order (lb_gptq_run):
 *  1. copies H (cols, cols) to a private float32 matrix; dead columns (H_jj == 0) get
 *     H_jj = 1 and their W column is set to 0 (GPTQ reference: `dead`);
 *  2. damping: H += damp * mean(diag H) * I (opts->damp, default 0.01);
 *  3. act-order (opts->act_order): processing order = columns by descending diag(H)
 *     (stable: ties keep the lower index first); perm[c] = original column of
 *     processing position c. Without act-order perm is the identity;
 *  4. U = upper Cholesky factor of H^-1 (H^-1 = Uᵀ U), "Cholesky reformulation" of the
 *     paper (Sec. 3, Step 3). Computed as U = J L^-1 J where J H J = L Lᵀ (J reverses
 *     the index order): one Cholesky and one triangular inverse (2/3 n^3 flops instead of
 *     the reference's cholesky -> cholesky_inverse -> cholesky(upper), 5/3 n^3; same U).
 *     Both run as fixed blocks/chunks on single-threaded BLAS under OpenMP, so the result
 *     is bit-identical for any BLAS or OpenMP thread count (the BLAS thread count is
 *     process-global: it is set to 1 during this step and restored). A matrix that is not
 *     positive definite after damping, or numerically singular in float32 (a pivot below
 *     16 eps of its diagonal), gives LB_ENUMERIC naming the column (never NaN);
 *  5. the column loop in lazy-batch blocks of opts->block_size columns (default 128):
 *       for block [c0, c0+nb):   hook->block_begin (optional)
 *         for column c in the block:
 *           q   = hook->column(w_c)                          (current, compensated w)
 *           e_c = err_scale * (w_c - q) / U_cc                (Eq. 4 with the Cholesky row)
 *           W[:, c+1 : c0+nb] -= e_c ⊗ U[c, c+1 : c0+nb]       (rank-1 updates, in-block)
 *         W[:, c0+nb :] -= E_block @ U[block, c0+nb :]        (ONE lazy GEMM, Sec. 3 Step 2)
 *     Inside a block the rank-1 updates are applied lazily in sub-blocks whose width
 *     divides the group size, so every column, and every group's first column, sees
 *     all earlier columns' updates (only the float summation order differs from the
 *     column-by-column algorithm). When opts->group_size > 0 (and not static groups) and
 *     a group starts inside a block and runs past its end, the block's errors so far are
 *     flushed to the later columns (one extra GEMM) before the group is fitted, so the
 *     group's grid sees its fully compensated columns. The GPTQ reference fits such a
 *     group on columns that lack the current block's compensation; we do not copy that
 *     artifact, which makes results independent of block_size (they coincide with the
 *     reference whenever groups do not cross blocks, e.g. g = 128 = block);
 *  6. W_hat[:, perm[c]] = q_c (output in the ORIGINAL column order).
 *
 * Layout: the engine works on Wt, a transposed copy (cols, rows) in processing order, so
 * a column is contiguous: column c (processing order) is Wt + c * rows.
 *
 * Hook contract (all callbacks get the caller's ctx and the read-only engine state):
 *  - begin (optional): once, after steps 1-4, before any column. st->Wt then holds the
 *    original W (dead columns zeroed) in processing order: use it for anything fixed
 *    before the loop, e.g. GPTQ's static groups or a per-row grid (group_size 0).
 *  - block_begin (optional): at the start of each block [c0, c0+nb). Columns
 *    [c0, cols) of st->Wt include the compensation of all previous blocks; the block's
 *    own columns are the "current block of W" (PB-LLM salient mask, BiLLM structure).
 *    st->U row/column c gives U_cc: PB-LLM's "Hessian criterion" w^2 / [H^-1]_jj^2 is
 *    implemented, as in the PB-LLM and BiLLM reference code, with the Cholesky
 *    diagonal U_jj in place of [H^-1]_jj.
 *  - column (required): quantize processing column c. w (rows,) is the current,
 *    error-compensated column (== st->Wt + c*rows); write the dequantized values to
 *    q (rows,) (OUT, the engine's buffer). *err_scale is 1 on entry; the hook may set it
 *    to 0 (e.g. a column kept in full precision, or a method that only wants the loop)
 *    or another factor; the error propagated is err_scale * (w - q) / U_cc. A hook that
 *    quantized the whole block in block_begin just copies its precomputed q here and the
 *    engine compensates column by column. Group-wise hooks: when c is the first column
 *    of a group (c % group_size == 0 in processing order), fit the group's grid from
 *    st->Wt + c*rows ... (columns [c, min(c+g, cols)), stride rows): those columns are the
 *    CURRENT, fully compensated ones (see step 5), as the GPTQ reference intends.
 *    Other columns past the current block lack the current block's compensation.
 *    Returning non-zero aborts the run with that code (fill err).
 *  - end (optional): once after the last column (finish packing etc.). Not called
 *    when the run failed.
 * q must be finite; the engine checks and fails with LB_ENUMERIC otherwise. */
#ifndef LB_GPTQ_H
#define LB_GPTQ_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

/* Read-only view of the engine's state, passed to every hook callback. */
typedef struct {
    int64_t rows, cols;
    int64_t block_size;
    const lb_qopts *opts; /* the options lb_gptq_run got */
    const float *Wt;      /* (cols, rows) working W, transposed, processing order; columns
                           * before the current one already hold their dequantized q */
    const float *U;       /* (cols, cols) row-major, upper: H^-1 = Uᵀ U, processing order */
    const float *Hdiag;   /* (cols,) damped diag(H), processing order */
    const int64_t *perm;  /* (cols,) perm[c] = original column of processing column c */
    const int64_t *iperm; /* (cols,) inverse: iperm[perm[c]] == c */
} lb_gptq_state;

typedef struct {
    void *ctx;
    int (*begin)(void *ctx, const lb_gptq_state *st, lb_err *err);
    int (*block_begin)(void *ctx, const lb_gptq_state *st, int64_t c0, int64_t nb,
                       lb_err *err);
    int (*column)(void *ctx, const lb_gptq_state *st, int64_t c, const float *w, float *q,
                  float *err_scale, lb_err *err);
    int (*end)(void *ctx, const lb_gptq_state *st, lb_err *err);
} lb_gptq_hook;

/* Runs the engine (steps 1-6 above) on W (rows, cols) row-major and H (cols, cols)
 * (full symmetric; raw or normalized sums, only its shape matters for the result up to
 * the relative damping). Uses opts->damp, opts->block_size, opts->act_order and
 * opts->group_size (sub-block alignment). OUT: W_hat (rows, cols) caller-allocated;
 * perm_out (cols,) caller-allocated or NULL. Returns 0, LB_EINVAL (bad sizes/options),
 * LB_ENUMERIC (NaN/Inf in W or H, H singular after damping, non-finite hook output),
 * LB_ENOMEM, or a hook's code. Memory: one (cols, cols) and one (max(rows, cols), cols)
 * float buffer besides the inputs. */
int lb_gptq_run(const float *W, int64_t rows, int64_t cols, const float *H,
                const lb_qopts *opts, const lb_gptq_hook *hook, float *W_hat,
                int64_t *perm_out, lb_err *err);

/* Caller-provided scratch of lb_gptq_run_ex (every buffer the column loop needs):
 * one (max(rows, cols), cols) and one (cols, cols) float buffer plus O(rows * block)
 * small ones. Init once for a shape and reuse it for runs with the same cols, at most
 * rows rows and a block size at most block_size: the engine writes every element it
 * reads, so results do not depend on what an earlier run left. */
typedef struct {
    int64_t rows, cols, block_size; /* capacity (block_size clamped to cols) */
    float *a;                       /* H copy for the factorization, then Wt */
    float *u;                       /* U (cols, cols) */
    float *e;                       /* block errors (block_size, rows) */
    float *q;                       /* one dequantized column (rows,) */
    float *diag, *hdiag;            /* (cols,) */
    int64_t *perm, *iperm;          /* (cols,) */
    uint8_t *dead;                  /* (cols,) */
} lb_gptq_work;

/* Allocates w for (rows, cols) runs with block size up to block_size. Returns 0,
 * LB_EINVAL (empty or overflowing shape) or LB_ENOMEM (w zeroed then). */
int lb_gptq_work_init(lb_gptq_work *w, int64_t rows, int64_t cols, int64_t block_size,
                      lb_err *err);
/* Frees w's buffers and zeroes it. Safe on a zeroed struct. */
void lb_gptq_work_free(lb_gptq_work *w);

/* lb_gptq_run with caller-provided scratch (work, NULL: allocated and freed inside) and
 * the run's phase times (stats_out, may be NULL; filled on failure too, with the phases
 * not reached 0). A work too small for the run gives LB_EINVAL. Results are
 * bit-identical to lb_gptq_run. The stats type is lb_gptq_stats (lb_quant.h). */
int lb_gptq_run_ex(const float *W, int64_t rows, int64_t cols, const float *H,
                   const lb_qopts *opts, const lb_gptq_hook *hook, float *W_hat,
                   int64_t *perm_out, lb_gptq_work *work, lb_gptq_stats *stats_out,
                   lb_err *err);

/* ---- the method shell: one copy of what every GPTQ-loop method does around its hook ----
 * Checks the shapes every such method accepts: out non-NULL (then zeroed), W, H, opts
 * non-NULL, 1 <= rows <= INT32_MAX, cols >= 1, rows * cols floats addressable.
 * Returns 0, or LB_EINVAL "<method>: empty or oversized matrix R x C". */
int lb_gptq_method_check(const char *method, const float *W, int64_t rows, int64_t cols,
                         const float *H, const lb_qopts *opts, lb_qresult *out, lb_err *err);

#define LB_GPTQ_PACK_PERM 1u /* add "perm" (lb_gptq_pack_perm) when opts->act_order */

/* After lb_gptq_method_check (out zeroed, except out->packed the method may have
 * begun): allocates out->W_hat, runs the engine with hook (its callbacks fill
 * out->packed), adds "perm" per flags, sets out->bpw, out->gptq_runs and
 * out->gptq_stats. On failure frees out (lb_qresult_free) and returns the code. */
int lb_gptq_method_run(const char *method, const float *W, int64_t rows, int64_t cols,
                       const float *H, const lb_qopts *opts, const lb_gptq_hook *hook,
                       unsigned flags, lb_qresult *out, lb_err *err);

/* Bits used to store one permutation entry: ceil(log2(cols)), at least 1. */
uint32_t lb_gptq_perm_bits(int64_t cols);

/* Adds field "perm" (UINT, lb_gptq_perm_bits(cols) bits, shape (cols,)) holding
 * perm[c] = original column of processing column c. Returns 0 or an lb_qpacked error. */
int lb_gptq_pack_perm(lb_qpacked *p, const int64_t *perm, int64_t cols, lb_err *err);

/* Reads the "perm" field back into perm (cols,), validating it is a permutation.
 * Returns 0, LB_ENOTFOUND (no field), LB_EFORMAT (bad shape or not a permutation). */
int lb_gptq_unpack_perm(const lb_qpacked *p, int64_t *perm, int64_t cols, lb_err *err);

#endif
