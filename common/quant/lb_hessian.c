#include "lb_hessian.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "lb_blas.h"

/* Above this width the chunk product runs as fixed tiles across threads; at or below
 * it, as one SYRK (so small models keep their exact bits). */
#define LB_HESSIAN_TILE 512

struct lb_hessian {
    int64_t cols;
    int64_t ntok;
    double *S;     /* (cols, cols), upper triangle maintained; full on output */
    float *chunk;  /* (cols, cols) SYRK scratch, allocated on first chunk */
};

int lb_hessian_new(int64_t cols, lb_hessian **out, lb_err *err)
{
    *out = NULL;
    if (cols < 1 || cols > (int64_t)(SIZE_MAX / sizeof(double)) / cols)
        return lb_err_set(err, LB_EINVAL, "hessian: %lld columns invalid", (long long)cols);
    lb_hessian *h = calloc(1, sizeof *h);
    if (!h || !(h->S = calloc((size_t)(cols * cols), sizeof *h->S))) {
        free(h);
        return lb_err_set(err, LB_ENOMEM, "hessian: out of memory for %lld x %lld",
                          (long long)cols, (long long)cols);
    }
    h->cols = cols;
    *out = h;
    return LB_OK;
}

void lb_hessian_free(lb_hessian **hp)
{
    if (!hp || !*hp)
        return;
    free((*hp)->S);
    free((*hp)->chunk);
    free(*hp);
    *hp = NULL;
}

int lb_hessian_add_chunk(lb_hessian *h, const float *X, int64_t ntok, int64_t ld, lb_err *err)
{
    const int64_t n = h->cols;
    if (!X || ntok < 0 || ld < n)
        return lb_err_set(err, LB_EINVAL, "hessian: chunk of %lld tokens, stride %lld < %lld",
                          (long long)ntok, (long long)ld, (long long)n);
    if (ntok == 0)
        return LB_OK;
    for (int64_t t = 0; t < ntok; t++)
        for (int64_t c = 0; c < n; c++)
            if (!isfinite(X[t * ld + c]))
                return lb_err_set(err, LB_ENUMERIC,
                                  "hessian: activation [%lld, %lld] is NaN/Inf; check the "
                                  "model forward",
                                  (long long)t, (long long)c);
    if (!h->chunk && !(h->chunk = malloc((size_t)(n * n) * sizeof *h->chunk)))
        return lb_err_set(err, LB_ENOMEM, "hessian: out of memory for the chunk scratch");
    // chunk (n, n) upper = Xᵀ X, X (ntok, n)
    if (n <= LB_HESSIAN_TILE) {
        lb_ssyrk_upper_at_a(n, ntok, 1.0f, X, ld, 0.0f, h->chunk, n);
    } else {
        /* Fixed tiles, each one BLAS call on one thread, shared out among the OpenMP
         * threads: every element sees the same operations at any thread count. */
        const int64_t nt = (n + LB_HESSIAN_TILE - 1) / LB_HESSIAN_TILE,
                      npairs = nt * (nt + 1) / 2;
        const int blas_threads = lb_blas_get_threads();
        lb_blas_set_threads(1);
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t p = 0; p < npairs; p++) {
            int64_t ti = 0, rest = p; /* pair p -> tiles (ti, tj), ti <= tj */
            while (rest >= nt - ti) {
                rest -= nt - ti;
                ti++;
            }
            const int64_t tj = ti + rest;
            const int64_t i0 = ti * LB_HESSIAN_TILE, j0 = tj * LB_HESSIAN_TILE;
            const int64_t ni = n - i0 < LB_HESSIAN_TILE ? n - i0 : LB_HESSIAN_TILE;
            const int64_t nj = n - j0 < LB_HESSIAN_TILE ? n - j0 : LB_HESSIAN_TILE;
            if (ti == tj) // chunk[I, I] upper = X[:, I]ᵀ X[:, I]
                lb_ssyrk_upper_at_a(ni, ntok, 1.0f, X + i0, ld, 0.0f, h->chunk + i0 * n + i0, n);
            else // chunk[I, J] = X[:, I]ᵀ X[:, J]
                lb_sgemm(true, false, ni, nj, ntok, 1.0f, X + i0, ld, X + j0, ld, 0.0f,
                         h->chunk + i0 * n + j0, n);
        }
        lb_blas_set_threads(blas_threads);
    }
#pragma omp parallel for schedule(static)
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++)
            h->S[a * n + b] += (double)h->chunk[a * n + b];
    h->ntok += ntok;
    return LB_OK;
}

int lb_hessian_add(lb_hessian *h, const lb_hessian *other, lb_err *err)
{
    if (!other || other->cols != h->cols)
        return lb_err_set(err, LB_EINVAL, "hessian: cannot merge widths %lld and %lld",
                          (long long)h->cols, other ? (long long)other->cols : -1LL);
    const int64_t n = h->cols;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++)
            h->S[a * n + b] += other->S[a * n + b];
    h->ntok += other->ntok;
    return LB_OK;
}

int64_t lb_hessian_cols(const lb_hessian *h)
{
    return h->cols;
}

int64_t lb_hessian_tokens(const lb_hessian *h)
{
    return h->ntok;
}

int lb_hessian_get(const lb_hessian *h, float *H, lb_err *err)
{
    if (h->ntok < 1)
        return lb_err_set(err, LB_ESTATE, "hessian: no tokens accumulated yet");
    const int64_t n = h->cols;
    const double f = 2.0 / (double)h->ntok;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++) {
            float v = (float)(f * h->S[a * n + b]);
            H[a * n + b] = v;
            H[b * n + a] = v;
        }
    return LB_OK;
}

void lb_hessian_get_sums(const lb_hessian *h, double *S, int64_t *ntok)
{
    const int64_t n = h->cols;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++)
            S[a * n + b] = S[b * n + a] = h->S[a * n + b];
    if (ntok)
        *ntok = h->ntok;
}

int lb_hessian_from_sums(const void *S, int64_t cols, int64_t ntok, float *H, lb_err *err)
{
    if (!S || cols < 1 || ntok < 1)
        return lb_err_set(err, LB_EINVAL, "hessian sums: %lld columns, %lld tokens",
                          (long long)cols, (long long)ntok);
    const unsigned char *p = S;
    const int64_t n = cols;
    const double f = 2.0 / (double)ntok;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++) {
            double v, w; /* memcpy: a mapped file need not be 8-byte aligned */
            memcpy(&v, p + (size_t)(a * n + b) * sizeof v, sizeof v);
            memcpy(&w, p + (size_t)(b * n + a) * sizeof w, sizeof w);
            if (!isfinite(v))
                return lb_err_set(err, LB_ENUMERIC, "hessian sums: [%lld, %lld] not finite",
                                  (long long)a, (long long)b);
            if (v != w)
                return lb_err_set(err, LB_EINVAL, "hessian sums: not symmetric at [%lld, %lld]",
                                  (long long)a, (long long)b);
            H[a * n + b] = H[b * n + a] = (float)(f * v);
        }
    return LB_OK;
}

int lb_hessian_set_sums(lb_hessian *h, const double *S, int64_t ntok, lb_err *err)
{
    const int64_t n = h->cols;
    if (!S || ntok < 0)
        return lb_err_set(err, LB_EINVAL, "hessian: negative token count %lld", (long long)ntok);
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++) {
            if (!isfinite(S[a * n + b]))
                return lb_err_set(err, LB_ENUMERIC, "hessian sums: [%lld, %lld] not finite",
                                  (long long)a, (long long)b);
            if (S[a * n + b] != S[b * n + a])
                return lb_err_set(err, LB_EINVAL, "hessian sums: not symmetric at [%lld, %lld]",
                                  (long long)a, (long long)b);
        }
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++)
            h->S[a * n + b] = S[a * n + b];
    h->ntok = ntok;
    return LB_OK;
}

int64_t lb_hessian_upper_count(int64_t cols)
{
    return cols * (cols + 1) / 2;
}

void lb_hessian_get_upper(const lb_hessian *h, double *tri)
{
    const int64_t n = h->cols;
    int64_t k = 0;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++)
            tri[k++] = h->S[a * n + b];
}

int lb_hessian_last_chunk_upper(const lb_hessian *h, float *tri, lb_err *err)
{
    if (!h->chunk || h->ntok < 1)
        return lb_err_set(err, LB_ESTATE, "hessian: no chunk added yet");
    const int64_t n = h->cols;
    int64_t k = 0;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++)
            tri[k++] = h->chunk[a * n + b];
    return LB_OK;
}

/* Checks then adds a packed triangle of `size`-byte floats (4 or 8). */
static int add_upper(lb_hessian *h, const void *tri, size_t size, int64_t ntok, lb_err *err)
{
    const unsigned char *p = tri;
    const int64_t n = h->cols, cnt = lb_hessian_upper_count(n);
    if (!tri || ntok < 0)
        return lb_err_set(err, LB_EINVAL, "hessian: partial sum of %lld tokens", (long long)ntok);
    for (int64_t k = 0; k < cnt; k++) {
        double v;
        if (size == sizeof(float)) {
            float f;
            memcpy(&f, p + (size_t)k * size, size);
            v = f;
        } else {
            memcpy(&v, p + (size_t)k * size, size);
        }
        if (!isfinite(v))
            return lb_err_set(err, LB_ENUMERIC, "hessian: partial sum value %lld not finite",
                              (long long)k);
    }
    int64_t k = 0;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a; b < n; b++, k++) {
            double v;
            if (size == sizeof(float)) {
                float f;
                memcpy(&f, p + (size_t)k * size, size);
                v = (double)f;
            } else {
                memcpy(&v, p + (size_t)k * size, size);
            }
            h->S[a * n + b] += v;
        }
    h->ntok += ntok;
    return LB_OK;
}

int lb_hessian_add_upper_f64(lb_hessian *h, const void *tri, int64_t ntok, lb_err *err)
{
    return add_upper(h, tri, sizeof(double), ntok, err);
}

int lb_hessian_add_upper_f32(lb_hessian *h, const void *tri, int64_t ntok, lb_err *err)
{
    return add_upper(h, tri, sizeof(float), ntok, err);
}
