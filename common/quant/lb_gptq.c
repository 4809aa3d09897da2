/* GPTQ engine: damping, dead columns, act-order, Cholesky factor of H^-1 and the
 * lazy-batch column loop with hooks (contract in lb_gptq.h). */
#include "lb_gptq.h"

#include <float.h>
#include <math.h>
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
enum { CHOL_NB = 128, CHOL_ROWS = 128, INV_COLS = 128 };

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

/* U (n, n): upper factor with H^-1 = Uᵀ U, from the damped, permuted H in A (destroyed).
 * J A J = L Lᵀ  =>  A^-1 = (J L^-T J)(J L^-1 J) = Uᵀ U with U = J L^-1 J upper.
 * L^-1 is solved in independent column chunks: L^-1[j0:, j0:j1] = L[j0:, j0:]^-1 I. */
static int cholesky_inverse_upper(float *A, float *U, int64_t n, const float *hdiag,
                                  const int64_t *perm, lb_err *err)
{
    // A <- J A J: reversing the flat array maps (a, b) to (n-1-a, n-1-b)
    for (int64_t i = 0, j = n * n - 1; i < j; i++, j--) {
        float t = A[i];
        A[i] = A[j];
        A[j] = t;
    }
    const int saved_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    int rc = chol_lower_det(A, n, err);
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
    bool oom = false;
#pragma omp parallel for schedule(dynamic, 1) reduction(|| : oom)
    for (int64_t ci = 0; ci < nchunks; ci++) {
        const int64_t j0 = ci * INV_COLS, w = j0 + INV_COLS < n ? INV_COLS : n - j0, m = n - j0;
        float *X = calloc((size_t)(m * w), sizeof *X);
        if (!X) {
            oom = true;
            continue;
        }
        for (int64_t j = 0; j < w; j++)
            X[j * w + j] = 1.0f;
        // X (m, w) <- L[j0:, j0:]^-1 X
        lb_strsm(true, false, false, m, w, 1.0f, A + j0 * n + j0, n, X, w);
        // U[n-1-(j0+i), n-1-(j0+j)] = L^-1[j0+i, j0+j]; zero below U's diagonal
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < w; j++)
                U[(n - 1 - (j0 + i)) * n + (n - 1 - (j0 + j))] = i >= j ? X[i * w + j] : 0.0f;
        // rows of U below the ones solved here (L^-1 rows above j0): zero, as U is upper
        for (int64_t i = 0; i < j0; i++)
            for (int64_t j = 0; j < w; j++)
                U[(n - 1 - i) * n + (n - 1 - (j0 + j))] = 0.0f;
        free(X);
    }
    lb_blas_set_threads(saved_threads);
    if (oom)
        return lb_err_set(err, LB_ENOMEM, "gptq: out of memory inverting H");
    for (int64_t a = 0; a < n; a++) {
        float d = U[a * n + a];
        if (!(d > 0.0f) || !isfinite(d))
            return lb_err_set(err, LB_ENUMERIC,
                              "gptq: Cholesky factor of H^-1 has diagonal %g at column %lld; "
                              "H is (nearly) singular, raise --damp",
                              (double)d, (long long)a);
    }
    for (int64_t i = 0; i < n * n; i++)
        if (!isfinite(U[i]))
            return lb_err_set(err, LB_ENUMERIC,
                              "gptq: Cholesky factor of H^-1 is not finite; raise --damp");
    return LB_OK;
}

/* Wt (cols, rows) in processing order -> W_hat (rows, cols) original order, by tiles. */
static void untranspose(const float *Wt, const int64_t *perm, int64_t rows, int64_t cols,
                        float *W_hat)
{
    enum { T = 32 };
    for (int64_t c0 = 0; c0 < cols; c0 += T)
        for (int64_t r0 = 0; r0 < rows; r0 += T) {
            int64_t c1 = c0 + T < cols ? c0 + T : cols, r1 = r0 + T < rows ? r0 + T : rows;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++)
                    W_hat[r * cols + perm[c]] = Wt[c * rows + r];
        }
}

int lb_gptq_run(const float *W, int64_t rows, int64_t cols, const float *H,
                const lb_qopts *opts, const lb_gptq_hook *hook, float *W_hat,
                int64_t *perm_out, lb_err *err)
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
    int rc = LB_OK;
    const int64_t n = cols, bs = opts->block_size;
    float *A = lb_quant_big_alloc((size_t)(n * n) * sizeof *A), *Uf = NULL;
    float *Wt = lb_quant_big_alloc((size_t)(rows * n) * sizeof *Wt);
    uint8_t *dead = malloc((size_t)n);
    float *E = malloc((size_t)(rows * bs) * sizeof *E);
    float *q = malloc((size_t)rows * sizeof *q);
    float *diag = malloc((size_t)n * sizeof *diag);
    float *hdiag = malloc((size_t)n * sizeof *hdiag);
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    int64_t *iperm = malloc((size_t)n * sizeof *iperm);
    if (!A || !Wt || !E || !q || !diag || !hdiag || !perm || !iperm || !dead) {
        rc = lb_err_set(err, LB_ENOMEM, "gptq: out of memory for %lld x %lld",
                        (long long)rows, (long long)cols);
        goto cleanup;
    }
    for (int64_t i = 0; i < n * n; i++)
        if (!isfinite(H[i])) {
            rc = lb_err_set(err, LB_EINVAL, "gptq: H[%lld, %lld] is not finite",
                            (long long)(i / n), (long long)(i % n));
            goto cleanup;
        }
    for (int64_t i = 0; i < rows * n; i++)
        if (!isfinite(W[i])) {
            rc = lb_err_set(err, LB_EINVAL, "gptq: W[%lld, %lld] is not finite",
                            (long long)(i / n), (long long)(i % n));
            goto cleanup;
        }

    // dead columns: H_jj == 0 -> H_jj = 1, W[:, j] = 0 (GPTQ reference)
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) {
        dead[j] = H[j * n + j] == 0.0f;
        diag[j] = dead[j] ? 1.0f : H[j * n + j];
        mean += (double)diag[j];
    }
    mean /= (double)n;
    for (int64_t j = 0; j < n; j++)
        perm[j] = j;
    if (opts->act_order) {
        qsort_r(perm, (size_t)n, sizeof *perm, cmp_desc, diag);
    }
    for (int64_t c = 0; c < n; c++)
        iperm[perm[c]] = c;
    const float damp = (float)(opts->damp * mean);
    // A = P H Pᵀ + damp I (dead diag = 1)
    for (int64_t a = 0; a < n; a++) {
        const float *hrow = H + perm[a] * n;
        if (opts->act_order)
            for (int64_t b = 0; b < n; b++)
                A[a * n + b] = hrow[perm[b]];
        else
            memcpy(A + a * n, hrow, (size_t)n * sizeof *A);
        A[a * n + a] = diag[perm[a]] + damp;
        hdiag[a] = A[a * n + a];
    }
    // Wt[c, :] = W[:, perm[c]] (zero for dead columns), by 32 x 32 tiles
    for (int64_t r0 = 0; r0 < rows; r0 += 32)
        for (int64_t c0 = 0; c0 < n; c0 += 32) {
            int64_t r1 = r0 + 32 < rows ? r0 + 32 : rows, c1 = c0 + 32 < n ? c0 + 32 : n;
            for (int64_t c = c0; c < c1; c++) {
                const int64_t o = perm[c];
                for (int64_t r = r0; r < r1; r++)
                    Wt[c * rows + r] = dead[o] ? 0.0f : W[r * n + o];
            }
        }
    Uf = lb_quant_big_alloc((size_t)(n * n) * sizeof *Uf);
    if (!Uf) {
        rc = lb_err_set(err, LB_ENOMEM, "gptq: out of memory for U (%lld x %lld)",
                        (long long)n, (long long)n);
        goto cleanup;
    }
    rc = cholesky_inverse_upper(A, Uf, n, hdiag, perm, err);
    free(A);
    A = NULL;
    if (rc)
        goto cleanup;
    const float *U = Uf;

    lb_gptq_state st = {.rows = rows, .cols = n, .block_size = bs, .opts = opts, .Wt = Wt,
                        .U = U, .Hdiag = hdiag, .perm = perm, .iperm = iperm};
    if (hook->begin && (rc = hook->begin(hook->ctx, &st, err)))
        goto cleanup;
    // sub-blocks: width divides the group size and the block size, so a group's first
    // column always starts a sub-block and sees all earlier in-block updates
    int64_t sub = gcd64(bs, 32);
    const int64_t gs = opts->group_size;
    const bool flush_groups = gs > 0 && !opts->static_groups;
    if (gs > 0)
        sub = gcd64(sub, gs);
    for (int64_t c0 = 0; c0 < n; c0 += bs) {
        const int64_t be = c0 + bs < n ? c0 + bs : n, nb = be - c0;
        if (hook->block_begin && (rc = hook->block_begin(hook->ctx, &st, c0, nb, err)))
            goto cleanup;
        int64_t flushed = c0; // E[c0:flushed] already applied to Wt[be:]
        for (int64_t s0 = c0; s0 < be; s0 += sub) {
            const int64_t s1 = s0 + sub < be ? s0 + sub : be;
            // A group that starts here and crosses the block end is fitted on its
            // current columns: flush the block's errors so far to Wt[be:] first.
            if (flush_groups && s0 % gs == 0 && s0 + gs > be && be < n && s0 > flushed) {
                lb_sgemm(true, false, n - be, rows, s0 - flushed, -1.0f, U + flushed * n + be,
                         n, E + (flushed - c0) * rows, rows, 1.0f, Wt + be * rows, rows);
                flushed = s0;
            }
            for (int64_t c = s0; c < s1; c++) {
                float *w = Wt + c * rows;
                float es = 1.0f;
                if ((rc = hook->column(hook->ctx, &st, c, w, q, &es, err)))
                    goto cleanup;
                // e_c = (w - q) / U_cc   (GPTQ Eq. 4 with the Cholesky row of H^-1)
                const float f = es / U[c * n + c];
                float *e = E + (c - c0) * rows;
                bool finite = true;
#pragma omp simd reduction(&& : finite)
                for (int64_t r = 0; r < rows; r++) {
                    finite = finite && isfinite(q[r]);
                    e[r] = (w[r] - q[r]) * f;
                    w[r] = q[r];
                }
                if (!finite) {
                    rc = lb_err_set(err, LB_ENUMERIC,
                                    "gptq: method returned NaN/Inf for column %lld",
                                    (long long)perm[c]);
                    goto cleanup;
                }
                // W[:, c+1:s1] -= e ⊗ U[c, c+1:s1]
                for (int64_t k = c + 1; k < s1; k++) {
                    const float u = U[c * n + k];
                    float *wk = Wt + k * rows;
#pragma omp simd
                    for (int64_t r = 0; r < rows; r++)
                        wk[r] -= u * e[r];
                }
            }
            // rest of the block: Wt[s1:be] (be-s1, rows) -= U[s0:s1, s1:be]ᵀ @ E[s0:s1]
            if (s1 < be)
                lb_sgemm(true, false, be - s1, rows, s1 - s0, -1.0f, U + s0 * n + s1, n,
                         E + (s0 - c0) * rows, rows, 1.0f, Wt + s1 * rows, rows);
        }
        // lazy batch: Wt[be:] (n-be, rows) -= U[f:be, be:]ᵀ (n-be, be-f) @ E[f:be] (be-f, rows)
        if (be < n)
            lb_sgemm(true, false, n - be, rows, be - flushed, -1.0f, U + flushed * n + be, n,
                     E + (flushed - c0) * rows, rows, 1.0f, Wt + be * rows, rows);
    }
    if (hook->end && (rc = hook->end(hook->ctx, &st, err)))
        goto cleanup;
    untranspose(Wt, perm, rows, n, W_hat);
    if (perm_out)
        memcpy(perm_out, perm, (size_t)n * sizeof *perm);
cleanup:
    free(A);
    free(Uf);
    free(Wt);
    free(E);
    free(q);
    free(diag);
    free(hdiag);
    free(perm);
    free(iperm);
    free(dead);
    return rc;
}
