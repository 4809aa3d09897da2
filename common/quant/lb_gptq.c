/* GPTQ engine: damping, dead columns, act-order, Cholesky factor of H^-1 and the
 * lazy-batch column loop with hooks (contract in lb_gptq.h). */
#include "lb_gptq.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"

uint32_t lb_gptq_perm_bits(int64_t cols)
{
    uint32_t b = 1;
    while (b < 63 && ((int64_t)1 << b) < cols)
        b++;
    return b;
}

int lb_gptq_pack_perm(lb_qpacked *p, const int64_t *perm, int64_t cols, lb_err *err)
{
    uint32_t bits = lb_gptq_perm_bits(cols);
    if (bits > 32)
        return lb_err_set(err, LB_EINVAL, "perm: %lld columns too many", (long long)cols);
    lb_qfield *f = lb_qpacked_add_field(p, "perm", LB_QFIELD_UINT, bits, 1, &cols, err);
    if (!f)
        return err ? err->code : LB_ENOMEM;
    for (int64_t c = 0; c < cols; c++)
        lb_qfield_put(f, c, (uint32_t)perm[c]);
    return LB_OK;
}

int lb_gptq_unpack_perm(const lb_qpacked *p, int64_t *perm, int64_t cols, lb_err *err)
{
    const lb_qfield *f = lb_qpacked_field(p, "perm");
    if (!f)
        return lb_err_set(err, LB_ENOTFOUND, "%s packed matrix: no perm field", p->method);
    if (f->kind != LB_QFIELD_UINT || f->ndim != 1 || f->count != cols)
        return lb_err_set(err, LB_EFORMAT, "%s packed matrix: perm field has the wrong shape",
                          p->method);
    uint8_t *seen = calloc((size_t)cols, 1);
    if (!seen)
        return lb_err_set(err, LB_ENOMEM, "perm: out of memory");
    int rc = LB_OK;
    for (int64_t c = 0; c < cols; c++) {
        uint32_t v = lb_qfield_get(f, c);
        if ((int64_t)v >= cols || seen[v]) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "%s packed matrix: perm is not a permutation (entry %lld)",
                            p->method, (long long)c);
            break;
        }
        seen[v] = 1;
        perm[c] = (int64_t)v;
    }
    free(seen);
    return rc;
}

/* Descending diag, ties by index: a deterministic act-order. */
static int cmp_desc(const void *a, const void *b, void *key)
{
    const float *sort_key = key;
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    if (sort_key[i] != sort_key[j])
        return sort_key[i] > sort_key[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Blocked lower Cholesky A = L Lᵀ (row-major, in place) whose result does not depend on
 * the thread count: BLAS runs on one thread and the parallel parts are fixed row chunks
 * computed independently (each element always sees the same operations in the same
 * order), instead of LAPACK's thread-dependent partition. */
enum { CHOL_NB = 256, CHOL_ROWS = 256, INV_COLS = 256, INV_ROWS = 256 };

static int chol_lower_det(float *A, int64_t n, lb_err *err)
{
    for (int64_t k0 = 0; k0 < n; k0 += CHOL_NB) {
        const int64_t k1 = k0 + CHOL_NB < n ? k0 + CHOL_NB : n, kb = k1 - k0;
        int rc = lb_spotrf(false, kb, A + k0 * n + k0, n, err);
        if (rc)
            return rc;
        const int64_t nchunks = (n - k1 + CHOL_ROWS - 1) / CHOL_ROWS;
        // panel: A[k1:, k0:k1] <- A[k1:, k0:k1] L_kk^-T
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t ci = 0; ci < nchunks; ci++) {
            const int64_t i0 = k1 + ci * CHOL_ROWS, i1 = i0 + CHOL_ROWS < n ? i0 + CHOL_ROWS : n;
            lb_strsm(false, false, true, i1 - i0, kb, 1.0f, A + k0 * n + k0, n, A + i0 * n + k0,
                     n);
        }
        // trailing lower part: A[i0:i1, k1:i1] -= P[i0:i1] P[k1:i1]ᵀ, P = A[:, k0:k1]
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t ci = 0; ci < nchunks; ci++) {
            const int64_t i0 = k1 + ci * CHOL_ROWS, i1 = i0 + CHOL_ROWS < n ? i0 + CHOL_ROWS : n;
            lb_sgemm(false, true, i1 - i0, i1 - k1, kb, -1.0f, A + i0 * n + k0, n,
                     A + k1 * n + k0, n, 1.0f, A + i0 * n + k1, n);
        }
    }
    return LB_OK;
}

/* Index of the first NaN/Inf in x (len), or -1. Parallel count, serial search only
 * on failure. */
static int64_t first_nonfinite(const float *x, int64_t len)
{
    int64_t bad = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : bad)
    for (int64_t i = 0; i < len; i++)
        bad += !isfinite(x[i]);
    if (!bad)
        return -1;
    for (int64_t i = 0; i < len; i++)
        if (!isfinite(x[i]))
            return i;
    return -1;
}

/* U (n, n): upper factor with H^-1 = Uᵀ U, from J Hp J in A (destroyed), Hp the
 * damped, permuted H and J the index reversal (the caller builds A reversed).
 * J Hp J = L Lᵀ  =>  A^-1 = (J L^-T J)(J L^-1 J) = Uᵀ U with U = J L^-1 J upper.
 * L^-1 is solved in independent column chunks: L^-1[j0:, j0:j1] = L[j0:, j0:]^-1 I. */
static int cholesky_inverse_upper(float *A, float *U, int64_t n, const float *hdiag,
                                  const int64_t *perm, lb_gptq_stats *stats, lb_err *err)
{
    double t0 = omp_get_wtime();
    const int saved_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    int rc = chol_lower_det(A, n, err);
    stats->chol_s = omp_get_wtime() - t0;
    t0 = omp_get_wtime();
    if (rc) {
        lb_blas_set_threads(saved_threads);
        return lb_err_prefix(err, "gptq: H is singular after damping (raise --damp)");
    }
    // A float32 factorization of a singular H can "succeed" with rounding-sized
    // pivots; a pivot below 16 eps of its diagonal entry means the column is linearly
    // dependent on the earlier ones in float32, and H^-1 would be noise.
    for (int64_t a = 0; a < n; a++) {
        float l = A[a * n + a];
        if (!(l * l >= 16.0f * FLT_EPSILON * hdiag[n - 1 - a])) {
            lb_blas_set_threads(saved_threads);
            return lb_err_set(err, LB_ENUMERIC,
                              "gptq: H is singular after damping (column %lld depends "
                              "linearly on others); raise --damp (e.g. 0.01)",
                              (long long)perm[n - 1 - a]);
        }
    }
    const int64_t nchunks = (n + INV_COLS - 1) / INV_COLS;
    // one (n, INV_COLS) scratch per thread, allocated once: fresh pages are expensive
    const int nthr = omp_get_max_threads();
    float *Xs = lb_quant_big_alloc((size_t)nthr * (size_t)n * INV_COLS * sizeof *Xs);
    if (!Xs) {
        lb_blas_set_threads(saved_threads);
        return lb_err_set(err, LB_ENOMEM, "gptq: out of memory inverting H");
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t ci = 0; ci < nchunks; ci++) {
        const int64_t j0 = ci * INV_COLS, w = j0 + INV_COLS < n ? INV_COLS : n - j0, m = n - j0;
        float *X = Xs + (size_t)omp_get_thread_num() * (size_t)n * INV_COLS;
        const float *Lc = A + j0 * n + j0; // L[j0:, j0:] (m, m), row stride n
        // X (m, w) = L[j0:, j0:]^-1 [I; 0] by forward substitution over row blocks,
        // the bulk as GEMMs: X[i0:i1] = L_ii^-1 ([I; 0][i0:i1] - L[i0:i1, :i0] @ X[:i0])
        memset(X, 0, (size_t)(w * w) * sizeof *X);
        for (int64_t j = 0; j < w; j++)
            X[j * w + j] = 1.0f;
        for (int64_t i0 = 0; i0 < m; i0 += INV_ROWS) {
            const int64_t i1 = i0 + INV_ROWS < m ? i0 + INV_ROWS : m;
            if (i0 > 0) // rows past w: the identity part is 0 (INV_ROWS >= INV_COLS)
                lb_sgemm(false, false, i1 - i0, w, i0, -1.0f, Lc + i0 * n, n, X, w, 0.0f,
                         X + i0 * w, w);
            lb_strsm(true, false, false, i1 - i0, w, 1.0f, Lc + i0 * n + i0, n, X + i0 * w, w);
        }
        // U[n-1-(j0+i), n-1-(j0+j)] = L^-1[j0+i, j0+j]; zero below U's diagonal
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < w; j++)
                U[(n - 1 - (j0 + i)) * n + (n - 1 - (j0 + j))] = i >= j ? X[i * w + j] : 0.0f;
        // rows of U below the ones solved here (L^-1 rows above j0): zero, as U is upper
        for (int64_t i = 0; i < j0; i++)
            for (int64_t j = 0; j < w; j++)
                U[(n - 1 - i) * n + (n - 1 - (j0 + j))] = 0.0f;
    }
    free(Xs);
    lb_blas_set_threads(saved_threads);
    stats->inv_s = omp_get_wtime() - t0; // the checks below are cheap
    for (int64_t a = 0; a < n; a++) {
        float d = U[a * n + a];
        if (!(d > 0.0f) || !isfinite(d))
            return lb_err_set(err, LB_ENUMERIC,
                              "gptq: Cholesky factor of H^-1 has diagonal %g at column %lld; "
                              "H is (nearly) singular, raise --damp",
                              (double)d, (long long)a);
    }
    if (first_nonfinite(U, n * n) >= 0)
        return lb_err_set(err, LB_ENUMERIC,
                          "gptq: Cholesky factor of H^-1 is not finite; raise --damp");
    return LB_OK;
}

/* Wt (cols, rows) in processing order -> W_hat (rows, cols) original order, by tiles. */
static void untranspose(const float *Wt, const int64_t *perm, int64_t rows, int64_t cols,
                        float *W_hat)
{
    enum { T = 32 };
    // each thread owns whole row tiles of W_hat: disjoint writes
#pragma omp parallel for schedule(static)
    for (int64_t r0 = 0; r0 < rows; r0 += T)
        for (int64_t c0 = 0; c0 < cols; c0 += T) {
            int64_t c1 = c0 + T < cols ? c0 + T : cols, r1 = r0 + T < rows ? r0 + T : rows;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++)
                    W_hat[r * cols + perm[c]] = Wt[c * rows + r];
        }
}

int lb_gptq_work_init(lb_gptq_work *w, int64_t rows, int64_t cols, int64_t block_size,
                      lb_err *err)
{
    memset(w, 0, sizeof *w);
    if (rows < 1 || cols < 1 || block_size < 1 || rows > INT64_MAX / cols ||
        cols > INT64_MAX / cols || rows > INT64_MAX / block_size ||
        (uint64_t)(rows * cols) > SIZE_MAX / sizeof(float) ||
        (uint64_t)(cols * cols) > SIZE_MAX / sizeof(float))
        return lb_err_set(err, LB_EINVAL, "gptq: workspace for %lld x %lld (block %lld) "
                          "is empty or overflows", (long long)rows, (long long)cols,
                          (long long)block_size);
    const int64_t n = cols, bs = block_size < cols ? block_size : cols;
    w->rows = rows;
    w->cols = cols;
    w->block_size = bs;
    // one buffer holds A (n, n) during the factorization, then Wt (n, rows): fresh
    // memory costs page faults, so the engine touches as little as it can
    w->a = lb_quant_big_alloc((size_t)((rows > n ? rows : n) * n) * sizeof *w->a);
    w->u = lb_quant_big_alloc((size_t)(n * n) * sizeof *w->u);
    w->e = malloc((size_t)(rows * bs) * sizeof *w->e);
    w->q = malloc((size_t)rows * sizeof *w->q);
    w->diag = malloc((size_t)n * sizeof *w->diag);
    w->hdiag = malloc((size_t)n * sizeof *w->hdiag);
    w->perm = malloc((size_t)n * sizeof *w->perm);
    w->iperm = malloc((size_t)n * sizeof *w->iperm);
    w->dead = malloc((size_t)n);
    if (!w->a || !w->u || !w->e || !w->q || !w->diag || !w->hdiag || !w->perm || !w->iperm ||
        !w->dead) {
        lb_gptq_work_free(w);
        return lb_err_set(err, LB_ENOMEM, "gptq: out of memory for %lld x %lld",
                          (long long)rows, (long long)cols);
    }
    return LB_OK;
}

void lb_gptq_work_free(lb_gptq_work *w)
{
    if (!w)
        return;
    free(w->a);
    free(w->u);
    free(w->e);
    free(w->q);
    free(w->diag);
    free(w->hdiag);
    free(w->perm);
    free(w->iperm);
    free(w->dead);
    memset(w, 0, sizeof *w);
}

static int check_args(const float *W, int64_t rows, int64_t cols, const float *H,
                      const lb_qopts *opts, const lb_gptq_hook *hook, const float *W_hat,
                      lb_err *err)
{
    if (!W || !H || !opts || !hook || !hook->column || !W_hat || rows < 1 || cols < 1)
        return lb_err_set(err, LB_EINVAL, "gptq: NULL input, no column hook or empty matrix");
    if (opts->block_size < 1 || opts->group_size < 0 || !(opts->damp >= 0.0) ||
        !isfinite(opts->damp))
        return lb_err_set(err, LB_EINVAL, "gptq: block size %d, group size %d or damp %g invalid",
                          opts->block_size, opts->group_size, opts->damp);
    if (rows > INT64_MAX / cols || cols > INT64_MAX / cols ||
        (uint64_t)(rows * cols) > SIZE_MAX / sizeof(float) ||
        (uint64_t)(cols * cols) > SIZE_MAX / sizeof(float))
        return lb_err_set(err, LB_EINVAL, "gptq: %lld x %lld overflows", (long long)rows,
                          (long long)cols);
    int64_t bad;
    if ((bad = first_nonfinite(H, cols * cols)) >= 0)
        return lb_err_set(err, LB_ENUMERIC, "gptq: H[%lld, %lld] is NaN/Inf",
                          (long long)(bad / cols), (long long)(bad % cols));
    if ((bad = first_nonfinite(W, rows * cols)) >= 0)
        return lb_err_set(err, LB_ENUMERIC, "gptq: W[%lld, %lld] is NaN/Inf",
                          (long long)(bad / cols), (long long)(bad % cols));
    return LB_OK;
}

/* Steps 1-3: dead columns, processing order, and A = J (P H Pᵀ + damp I) J in w->a. */
/* damp_rel: the relative damping of this try (opts->damp, or more under --damp-auto) */
static void prepare_h(const float *H, int64_t n, const lb_qopts *opts, double damp_rel,
                      lb_gptq_work *w)
{
    float *A = w->a, *diag = w->diag, *hdiag = w->hdiag;
    int64_t *perm = w->perm;
    // dead columns: H_jj == 0 -> H_jj = 1, W[:, j] = 0 (GPTQ reference)
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) {
        w->dead[j] = H[j * n + j] == 0.0f;
        diag[j] = w->dead[j] ? 1.0f : H[j * n + j];
        mean += (double)diag[j];
    }
    mean /= (double)n;
    for (int64_t j = 0; j < n; j++)
        perm[j] = j;
    if (opts->act_order) {
        qsort_r(perm, (size_t)n, sizeof *perm, cmp_desc, diag);
    }
    for (int64_t c = 0; c < n; c++)
        w->iperm[perm[c]] = c;
    const float damp = (float)(damp_rel * mean);
    // A = J (P H Pᵀ + damp I) J (dead diag = 1): element (a, b) of the damped, permuted
    // H goes to (n-1-a, n-1-b), the reversed order the factorization wants
#pragma omp parallel for schedule(static)
    for (int64_t a = 0; a < n; a++) {
        const float *hrow = H + perm[a] * n;
        float *arow = A + (n - 1 - a) * n + (n - 1); // arow[-b] = element (a, b)
        for (int64_t b = 0; b < n; b++)
            arow[-b] = hrow[perm[b]];
        arow[-a] = diag[perm[a]] + damp;
        hdiag[a] = arow[-a];
    }
}

/* Wt[c, :] = W[:, perm[c]] (zero for dead columns), by 32 x 32 tiles; each thread
 * owns whole column tiles (rows of Wt). */
static void transpose_in(const float *W, int64_t rows, int64_t n, const lb_gptq_work *w,
                         float *Wt)
{
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < n; c0 += 32)
        for (int64_t r0 = 0; r0 < rows; r0 += 32) {
            int64_t r1 = r0 + 32 < rows ? r0 + 32 : rows, c1 = c0 + 32 < n ? c0 + 32 : n;
            for (int64_t c = c0; c < c1; c++) {
                const int64_t o = w->perm[c];
                for (int64_t r = r0; r < r1; r++)
                    Wt[c * rows + r] = w->dead[o] ? 0.0f : W[r * n + o];
            }
        }
}

/* One column c of the block starting at c0: the hook's q, the scaled error e_c into E
 * and the rank-1 update of the sub-block's later columns [c+1, s1). */
static int do_column(const lb_gptq_hook *hook, const lb_gptq_state *st, lb_gptq_work *w,
                     int64_t c, int64_t c0, int64_t s1, lb_gptq_stats *stats, lb_err *err)
{
    const int64_t rows = st->rows, n = st->cols;
    float *Wt = (float *)st->Wt, *q = w->q;
    const float *U = st->U;
    float *wc = Wt + c * rows;
    float es = 1.0f;
    const double tc = omp_get_wtime();
    int rc = hook->column(hook->ctx, st, c, wc, q, &es, err);
    if (rc)
        return rc;
    stats->hook_s += omp_get_wtime() - tc;
    // e_c = (w - q) / U_cc   (GPTQ Eq. 4 with the Cholesky row of H^-1)
    const float f = es / U[c * n + c];
    float *e = w->e + (c - c0) * rows;
    bool finite = true;
#pragma omp simd reduction(&& : finite)
    for (int64_t r = 0; r < rows; r++) {
        finite = finite && isfinite(q[r]);
        e[r] = (wc[r] - q[r]) * f;
        wc[r] = q[r];
    }
    if (!finite)
        return lb_err_set(err, LB_ENUMERIC, "gptq: method returned NaN/Inf for column %lld",
                          (long long)st->perm[c]);
    // W[:, c+1:s1] -= e ⊗ U[c, c+1:s1]
    for (int64_t k = c + 1; k < s1; k++) {
        const float u = U[c * n + k];
        float *wk = Wt + k * rows;
#pragma omp simd
        for (int64_t r = 0; r < rows; r++)
            wk[r] -= u * e[r];
    }
    return LB_OK;
}

/* Step 5 for the block [c0, be): sub-blocks of rank-1 updates, group flushes and the
 * lazy-batch GEMM onto the columns past the block. */
static int do_block(const lb_gptq_hook *hook, const lb_gptq_state *st, lb_gptq_work *w,
                    int64_t c0, int64_t sub, lb_gptq_stats *stats, lb_err *err)
{
    const int64_t rows = st->rows, n = st->cols, bs = st->block_size;
    const int64_t be = c0 + bs < n ? c0 + bs : n, nb = be - c0;
    const int64_t gs = st->opts->group_size;
    const bool flush_groups = gs > 0 && !st->opts->static_groups;
    float *Wt = (float *)st->Wt, *E = w->e;
    const float *U = st->U;
    int rc;
    double th = omp_get_wtime();
    if (hook->block_begin && (rc = hook->block_begin(hook->ctx, st, c0, nb, err)))
        return rc;
    stats->hook_s += omp_get_wtime() - th;
    int64_t flushed = c0; // E[c0:flushed] already applied to Wt[be:]
    for (int64_t s0 = c0; s0 < be; s0 += sub) {
        const int64_t s1 = s0 + sub < be ? s0 + sub : be;
        // A group that starts here and crosses the block end is fitted on its
        // current columns: flush the block's errors so far to Wt[be:] first.
        if (flush_groups && s0 % gs == 0 && s0 + gs > be && be < n && s0 > flushed) {
            const double tg = omp_get_wtime();
            stats->gemm_flops += 2.0 * (double)(n - be) * (double)rows * (double)(s0 - flushed);
            lb_sgemm(true, false, n - be, rows, s0 - flushed, -1.0f, U + flushed * n + be,
                     n, E + (flushed - c0) * rows, rows, 1.0f, Wt + be * rows, rows);
            stats->gemm_s += omp_get_wtime() - tg;
            flushed = s0;
        }
        for (int64_t c = s0; c < s1; c++)
            if ((rc = do_column(hook, st, w, c, c0, s1, stats, err)))
                return rc;
        stats->update_flops += (double)rows * (double)(s1 - s0) * (double)(s1 - s0 - 1) +
                               2.0 * (double)rows * (double)(s1 - s0) * (double)(be - s1);
        // rest of the block: Wt[s1:be] (be-s1, rows) -= U[s0:s1, s1:be]ᵀ @ E[s0:s1]
        if (s1 < be)
            lb_sgemm(true, false, be - s1, rows, s1 - s0, -1.0f, U + s0 * n + s1, n,
                     E + (s0 - c0) * rows, rows, 1.0f, Wt + s1 * rows, rows);
    }
    // lazy batch: Wt[be:] (n-be, rows) -= U[f:be, be:]ᵀ (n-be, be-f) @ E[f:be] (be-f, rows)
    if (be < n) {
        const double tg = omp_get_wtime();
        stats->gemm_flops += 2.0 * (double)(n - be) * (double)rows * (double)(be - flushed);
        lb_sgemm(true, false, n - be, rows, be - flushed, -1.0f, U + flushed * n + be, n,
                 E + (flushed - c0) * rows, rows, 1.0f, Wt + be * rows, rows);
        stats->gemm_s += omp_get_wtime() - tg;
    }
    return LB_OK;
}

int lb_gptq_run(const float *W, int64_t rows, int64_t cols, const float *H,
                const lb_qopts *opts, const lb_gptq_hook *hook, float *W_hat,
                int64_t *perm_out, lb_err *err)
{
    return lb_gptq_run_ex(W, rows, cols, H, opts, hook, W_hat, perm_out, NULL, NULL, err);
}

int lb_gptq_run_ex(const float *W, int64_t rows, int64_t cols, const float *H,
                   const lb_qopts *opts, const lb_gptq_hook *hook, float *W_hat,
                   int64_t *perm_out, lb_gptq_work *work, lb_gptq_stats *stats_out,
                   lb_err *err)
{
    lb_gptq_stats stats = {0};
    const double t_start = omp_get_wtime();
    double t_phase = t_start, t_loop = 0.0;
    lb_gptq_work own = {0};
    int rc = check_args(W, rows, cols, H, opts, hook, W_hat, err);
    if (rc)
        goto cleanup;
    const int64_t n = cols, bs = opts->block_size;
    if (!work) {
        if ((rc = lb_gptq_work_init(&own, rows, cols, bs, err)))
            goto cleanup;
        work = &own;
    } else if (work->rows < rows || work->cols != cols || work->block_size < (bs < n ? bs : n)) {
        rc = lb_err_set(err, LB_EINVAL, "gptq: workspace is %lld x %lld (block %lld), the "
                        "run needs %lld x %lld (block %lld): lb_gptq_work_init it for this "
                        "shape", (long long)work->rows, (long long)work->cols,
                        (long long)work->block_size, (long long)rows, (long long)cols,
                        (long long)bs);
        goto cleanup;
    }
    stats.chol_flops = (double)n * (double)n * (double)n / 3.0;
    stats.inv_flops = stats.chol_flops;
    // --damp-auto: a failed factorization is retried with 10x the damping (0.01 after
    // 0), at most 3 times, as GPTQModel does; A is rebuilt from H for each try
    double damp_rel = opts->damp;
    for (int tries = 0;; tries++) {
        prepare_h(H, n, opts, damp_rel, work);
        stats.prep_s += omp_get_wtime() - t_phase;
        rc = cholesky_inverse_upper(work->a, work->u, n, work->hdiag, work->perm, &stats, err);
        if (!rc || rc == LB_ENOMEM || !opts->damp_auto || tries == 3)
            break;
        damp_rel = damp_rel > 0.0 ? 10.0 * damp_rel : 0.01;
        t_phase = omp_get_wtime();
    }
    if (rc)
        goto cleanup;
    t_phase = omp_get_wtime();
    float *Wt = work->a; // A is no longer needed
    transpose_in(W, rows, n, work, Wt);
    stats.prep_s += omp_get_wtime() - t_phase;

    lb_gptq_state st = {.rows = rows, .cols = n, .block_size = bs, .opts = opts, .Wt = Wt,
                        .U = work->u, .Hdiag = work->hdiag, .perm = work->perm,
                        .iperm = work->iperm};
    t_loop = omp_get_wtime();
    if (hook->begin && (rc = hook->begin(hook->ctx, &st, err)))
        goto cleanup;
    stats.hook_s += omp_get_wtime() - t_loop;
    // sub-blocks: width divides the group size and the block size, so a group's first
    // column always starts a sub-block and sees all earlier in-block updates
    int64_t sub = gcd64(bs, 32);
    if (opts->group_size > 0)
        sub = gcd64(sub, opts->group_size);
    for (int64_t c0 = 0; c0 < n; c0 += bs)
        if ((rc = do_block(hook, &st, work, c0, sub, &stats, err)))
            goto cleanup;
    t_phase = omp_get_wtime();
    stats.update_s = t_phase - t_loop - stats.hook_s - stats.gemm_s;
    t_loop = 0.0;
    if (hook->end && (rc = hook->end(hook->ctx, &st, err)))
        goto cleanup;
    stats.end_s = omp_get_wtime() - t_phase;
    t_phase = omp_get_wtime();
    untranspose(Wt, work->perm, rows, n, W_hat);
    if (perm_out)
        memcpy(perm_out, work->perm, (size_t)n * sizeof *perm_out);
    stats.finish_s = omp_get_wtime() - t_phase;
cleanup:
    if (t_loop > 0.0) // failed inside the loop
        stats.update_s = omp_get_wtime() - t_loop - stats.hook_s - stats.gemm_s;
    stats.total_s = omp_get_wtime() - t_start;
    if (stats_out)
        *stats_out = stats;
    lb_gptq_work_free(&own);
    return rc;
}
