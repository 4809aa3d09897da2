#include "lb_qbb.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"
#include "lb_dtype.h"

void lb_qbb_cfg_init(lb_qbb_cfg *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->bases = 2;
    cfg->refine_iters = 4;
    cfg->hessian_weighted = false;
    cfg->ridge = 1e-7;
}

/* σ_i(c) ∈ {-1, +1} */
static inline double sgn_of(uint32_t c, int32_t i)
{
    return ((c >> i) & 1u) ? 1.0 : -1.0;
}

void lb_qbb_init_greedy(const float *W, int64_t rows, int64_t cols, int32_t n,
                        uint8_t *codes, float *scales)
{
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * cols;
        uint8_t *c = codes + r * cols;
        float *s = scales + r * n;
        memset(c, 0, (size_t)cols);
        for (int32_t i = 0; i < n; i++) {
            /* R = w - Σ_{k<i} s_k B_k, recomputed from the codes so far (no R buffer). */
            double sum_abs = 0.0;
            for (int64_t j = 0; j < cols; j++) {
                float res = w[j] - lb_qbb_value(c[j], s, i);
                sum_abs += fabs((double)res);
                if (res >= 0.0f)
                    c[j] |= (uint8_t)(1u << i); /* sign(0) = +1 */
            }
            s[i] = (float)(sum_abs / (double)cols);
        }
    }
}

void lb_qbb_update_codes(const float *W, int64_t rows, int64_t cols, int32_t n,
                         const float *scales, uint8_t *codes)
{
    const uint32_t ncodes = 1u << n;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * cols;
        uint8_t *c = codes + r * cols;
        float v[1u << LB_QBB_MAX_BASES];
        for (uint32_t k = 0; k < ncodes; k++)
            v[k] = lb_qbb_value(k, scales + r * n, n);
        for (int64_t j = 0; j < cols; j++) {
            uint32_t best = 0;
            float best_d = fabsf(w[j] - v[0]);
            for (uint32_t k = 1; k < ncodes; k++) {
                float d = fabsf(w[j] - v[k]);
                if (d < best_d) {
                    best_d = d;
                    best = k;
                }
            }
            c[j] = (uint8_t)best;
        }
    }
}

/* Per-row quadratic  q(s) = c - 2 sᵀb + sᵀ M s  of the objective in the scales.
 * Plain: M = B Bᵀ, b = B w, c = wᵀw, from the row's code histogram.
 * Weighted: M = B H Bᵀ, b = B H w, c = w H wᵀ with B H and W H from lb_sgemm.
 * M (rows, n, n), b (rows, n), c (rows). */
static int row_systems(const float *W, int64_t rows, int64_t cols, int32_t n,
                       const uint8_t *codes, const float *H, double *M, double *b, double *c,
                       lb_err *err)
{
    const uint32_t ncodes = 1u << n;
    if (!H) {
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *w = W + r * cols;
            const uint8_t *cr = codes + r * cols;
            double cnt[1u << LB_QBB_MAX_BASES] = {0}, sw[1u << LB_QBB_MAX_BASES] = {0};
            double ww = 0.0;
            for (int64_t j = 0; j < cols; j++) {
                cnt[cr[j]] += 1.0;
                sw[cr[j]] += (double)w[j];
                ww += (double)w[j] * (double)w[j];
            }
            double *Mr = M + r * n * n, *br = b + r * n;
            for (int32_t i = 0; i < n; i++) {
                br[i] = 0.0;
                for (int32_t k = 0; k < n; k++)
                    Mr[i * n + k] = 0.0;
            }
            for (uint32_t code = 0; code < ncodes; code++) {
                if (cnt[code] == 0.0)
                    continue;
                for (int32_t i = 0; i < n; i++) {
                    br[i] += sgn_of(code, i) * sw[code];
                    for (int32_t k = 0; k < n; k++)
                        Mr[i * n + k] += sgn_of(code, i) * sgn_of(code, k) * cnt[code];
                }
            }
            c[r] = ww;
        }
        return LB_OK;
    }

    /* Weighted: rows in chunks so that the sign matrix Bf (chunk*n, cols) and its
     * product with H stay around 16 MB each. */
    int64_t chunk = ((int64_t)1 << 22) / ((int64_t)n * cols);
    if (chunk < 1)
        chunk = 1;
    if (chunk > rows)
        chunk = rows;
    size_t elems = (size_t)chunk * (size_t)(n + 1) * (size_t)cols;
    float *Bf = malloc(elems * sizeof(float));
    float *BH = malloc(elems * sizeof(float));
    if (!Bf || !BH) {
        free(Bf);
        free(BH);
        return lb_err_set(err, LB_ENOMEM, "qbb: out of memory for %lld x %lld sign block",
                          (long long)chunk, (long long)cols);
    }
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        /* Bf rows: (r*n + i) = σ_i of row r; the last m rows are the weights themselves. */
        for (int64_t rr = 0; rr < m; rr++) {
            const uint8_t *cr = codes + (r0 + rr) * cols;
            for (int32_t i = 0; i < n; i++) {
                float *dst = Bf + (rr * n + i) * cols;
                for (int64_t j = 0; j < cols; j++)
                    dst[j] = ((cr[j] >> i) & 1u) ? 1.0f : -1.0f;
            }
        }
        memcpy(Bf + m * n * cols, W + r0 * cols, (size_t)(m * cols) * sizeof(float));
        // [Bf; W] (m*(n+1), cols) @ H (cols, cols) -> [B H; W H]
        lb_sgemm(false, false, m * (n + 1), cols, cols, 1.0f, Bf, cols, H, cols, 0.0f, BH, cols);
        #pragma omp parallel for schedule(static)
        for (int64_t rr = 0; rr < m; rr++) {
            int64_t r = r0 + rr;
            const float *w = W + r * cols;
            const float *wh = BH + (m * n + rr) * cols;
            double *Mr = M + r * n * n, *br = b + r * n;
            double ww = 0.0;
            for (int64_t j = 0; j < cols; j++)
                ww += (double)w[j] * (double)wh[j];
            c[r] = ww;
            for (int32_t i = 0; i < n; i++) {
                const float *bhi = BH + (rr * n + i) * cols;
                double acc = 0.0;
                for (int64_t j = 0; j < cols; j++)
                    acc += (double)bhi[j] * (double)w[j];
                br[i] = acc;
                for (int32_t k = i; k < n; k++) {
                    const float *bk = Bf + (rr * n + k) * cols;
                    double a = 0.0;
                    for (int64_t j = 0; j < cols; j++)
                        a += (double)bhi[j] * (double)bk[j];
                    Mr[i * n + k] = a;
                }
            }
            /* B H Bᵀ is symmetric; mirror the upper triangle. */
            for (int32_t i = 0; i < n; i++)
                for (int32_t k = 0; k < i; k++)
                    Mr[i * n + k] = Mr[k * n + i];
        }
    }
    free(Bf);
    free(BH);
    return LB_OK;
}

static double quad_obj(const double *Mr, const double *br, double c, const float *s, int32_t n)
{
    double q = c;
    for (int32_t i = 0; i < n; i++) {
        q -= 2.0 * (double)s[i] * br[i];
        for (int32_t k = 0; k < n; k++)
            q += (double)s[i] * Mr[i * n + k] * (double)s[k];
    }
    return q;
}

/* Solves (M + λI) s = b by Cholesky in double, λ = ridge * trace / n. Returns false when
 * the system is zero or numerically not positive definite (then s is untouched). */
static bool solve_small(const double *Mr, const double *br, int32_t n, double ridge, float *s)
{
    double L[LB_QBB_MAX_BASES * LB_QBB_MAX_BASES], y[LB_QBB_MAX_BASES], x[LB_QBB_MAX_BASES];
    double tr = 0.0;
    for (int32_t i = 0; i < n; i++)
        tr += Mr[i * n + i];
    if (!(tr > 0.0))
        return false;
    double lambda = ridge * tr / (double)n;
    for (int32_t i = 0; i < n; i++) {
        for (int32_t k = 0; k <= i; k++) {
            double a = Mr[i * n + k] + (i == k ? lambda : 0.0);
            for (int32_t m = 0; m < k; m++)
                a -= L[i * n + m] * L[k * n + m];
            if (i == k) {
                if (!(a > 0.0))
                    return false;
                L[i * n + i] = sqrt(a);
            } else {
                L[i * n + k] = a / L[k * n + k];
            }
        }
    }
    for (int32_t i = 0; i < n; i++) { /* L y = b */
        double a = br[i];
        for (int32_t k = 0; k < i; k++)
            a -= L[i * n + k] * y[k];
        y[i] = a / L[i * n + i];
    }
    for (int32_t i = n - 1; i >= 0; i--) { /* Lᵀ x = y */
        double a = y[i];
        for (int32_t k = i + 1; k < n; k++)
            a -= L[k * n + i] * x[k];
        x[i] = a / L[i * n + i];
    }
    for (int32_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return false;
    }
    for (int32_t i = 0; i < n; i++)
        s[i] = (float)x[i];
    return true;
}

/* New scales for every row from the systems; see lb_qbb_ls_scales. */
static void solve_rows(const double *M, const double *b, const double *c, int64_t rows,
                       int32_t n, double ridge, bool keep_if_better, float *scales,
                       double *row_obj)
{
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const double *Mr = M + r * n * n, *br = b + r * n;
        float *s = scales + r * n;
        float cand[LB_QBB_MAX_BASES];
        bool ok = solve_small(Mr, br, n, ridge, cand);
        if (!ok) {
            /* zero system: the row's codes carry no information (or all weights are 0) */
            bool zero = true;
            for (int32_t i = 0; i < n * n; i++)
                zero = zero && Mr[i] == 0.0;
            if (zero) {
                for (int32_t i = 0; i < n; i++)
                    cand[i] = 0.0f;
                ok = true;
            } else {
                ok = solve_small(Mr, br, n, ridge * 1e4 + 1e-9, cand);
            }
        }
        double q_old = quad_obj(Mr, br, c[r], s, n);
        double q = q_old;
        if (ok) {
            double q_new = quad_obj(Mr, br, c[r], cand, n);
            if (!keep_if_better || q_new <= q_old) {
                memcpy(s, cand, (size_t)n * sizeof(float));
                q = q_new;
            }
        }
        if (row_obj)
            row_obj[r] = q;
    }
}

static int alloc_systems(int64_t rows, int32_t n, double **M, double **b, double **c,
                         lb_err *err)
{
    *M = malloc((size_t)rows * (size_t)(n * n) * sizeof(double));
    *b = malloc((size_t)rows * (size_t)n * sizeof(double));
    *c = malloc((size_t)rows * sizeof(double));
    if (!*M || !*b || !*c) {
        free(*M);
        free(*b);
        free(*c);
        *M = *b = *c = NULL;
        return lb_err_set(err, LB_ENOMEM, "qbb: out of memory for %lld row systems",
                          (long long)rows);
    }
    return LB_OK;
}

int lb_qbb_ls_scales(const float *W, int64_t rows, int64_t cols, int32_t n,
                     const uint8_t *codes, const float *H, double ridge, bool keep_if_better,
                     float *scales, double *row_obj, lb_err *err)
{
    double *M = NULL, *b = NULL, *c = NULL;
    int rc = alloc_systems(rows, n, &M, &b, &c, err);
    if (rc)
        return rc;
    rc = row_systems(W, rows, cols, n, codes, H, M, b, c, err);
    if (!rc)
        solve_rows(M, b, c, rows, n, ridge, keep_if_better, scales, row_obj);
    free(M);
    free(b);
    free(c);
    return rc;
}

int lb_qbb_fit(const float *T, int64_t rows, int64_t cols, const float *H,
               const lb_qbb_cfg *cfg, uint8_t *codes, float *scales, double *trace,
               double *hobj, lb_err *err)
{
    const int32_t n = cfg->bases;
    if (n < 1 || n > LB_QBB_MAX_BASES)
        return lb_err_set(err, LB_EINVAL, "qbb: bases = %d; use 1..%d", (int)n,
                          LB_QBB_MAX_BASES);
    if (cfg->refine_iters < 0)
        return lb_err_set(err, LB_EINVAL, "qbb: refine_iters = %d; use >= 0",
                          (int)cfg->refine_iters);
    if (cfg->hessian_weighted && !H)
        return lb_err_set(err, LB_EINVAL, "qbb: hessian_weighted needs the Hessian H");

    int rc = LB_OK;
    double *M = NULL, *b = NULL, *c = NULL, *obj = NULL, *obj_new = NULL;
    uint8_t *codes_old = NULL;
    float *scales_old = NULL;
    size_t nw = (size_t)rows * (size_t)cols;
    rc = alloc_systems(rows, n, &M, &b, &c, err);
    if (rc)
        goto cleanup;
    obj = malloc((size_t)rows * sizeof(double));
    obj_new = malloc((size_t)rows * sizeof(double));
    codes_old = malloc(nw);
    scales_old = malloc((size_t)rows * (size_t)n * sizeof(float));
    if (!obj || !obj_new || !codes_old || !scales_old) {
        rc = lb_err_set(err, LB_ENOMEM, "qbb: out of memory for %lld x %lld codes",
                        (long long)rows, (long long)cols);
        goto cleanup;
    }

    lb_qbb_init_greedy(T, rows, cols, n, codes, scales);
    rc = row_systems(T, rows, cols, n, codes, NULL, M, b, c, err);
    if (rc)
        goto cleanup;
    double total = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        obj[r] = quad_obj(M + r * n * n, b + r * n, c[r], scales + r * n, n);
        total += obj[r];
    }
    if (trace)
        trace[0] = total;

    /* Rounds on the plain error: (b) is its exact minimiser over codes, (a) over scales. */
    for (int32_t it = 0; it < cfg->refine_iters; it++) {
        memcpy(codes_old, codes, nw);
        memcpy(scales_old, scales, (size_t)rows * (size_t)n * sizeof(float));
        lb_qbb_update_codes(T, rows, cols, n, scales, codes); /* (b) */
        bool changed = memcmp(codes_old, codes, nw) != 0;
        if (changed || it == 0) {
            rc = row_systems(T, rows, cols, n, codes, NULL, M, b, c, err);
            if (rc)
                goto cleanup;
            solve_rows(M, b, c, rows, n, cfg->ridge, true, scales, obj_new); /* (a) */
            total = 0.0;
            for (int64_t r = 0; r < rows; r++) {
                /* Guard against float ties in (b): a row never gets worse. */
                if (obj_new[r] > obj[r]) {
                    memcpy(codes + r * cols, codes_old + r * cols, (size_t)cols);
                    memcpy(scales + r * n, scales_old + r * n, (size_t)n * sizeof(float));
                } else {
                    obj[r] = obj_new[r];
                }
                total += obj[r];
            }
        }
        if (trace)
            trace[it + 1] = total;
    }

    /* Hessian-weighted (a) on the final codes. Alternating it with (b) inside the rounds
     * was measured worse: (b) minimises the plain error, so a guarded alternation stalls
     * and an unguarded one ends above this (docs/bit-accounting.md, QBB). */
    if (cfg->hessian_weighted) {
        rc = row_systems(T, rows, cols, n, codes, H, M, b, c, err);
        if (rc)
            goto cleanup;
        double before = 0.0, after = 0.0;
        for (int64_t r = 0; r < rows; r++)
            before += quad_obj(M + r * n * n, b + r * n, c[r], scales + r * n, n);
        solve_rows(M, b, c, rows, n, cfg->ridge, true, scales, obj_new);
        for (int64_t r = 0; r < rows; r++)
            after += obj_new[r];
        if (hobj) {
            hobj[0] = before;
            hobj[1] = after;
        }
    }

cleanup:
    free(M);
    free(b);
    free(c);
    free(obj);
    free(obj_new);
    free(codes_old);
    free(scales_old);
    return rc;
}

static int check_finite(const float *x, int64_t n, const char *what, lb_err *err)
{
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return lb_err_set(err, LB_ENUMERIC,
                              "qbb: %s element %lld is %s; clean the input before quantizing",
                              what, (long long)i, isnan(x[i]) ? "NaN" : "Inf");
    }
    return LB_OK;
}

/* Private damped copy: H + damp * mean(diag H) I (I when H is all zero). */
static float *damped_copy(const float *H, int64_t cols, double damp, lb_err *err)
{
    float *Hd = malloc((size_t)cols * (size_t)cols * sizeof(float));
    if (!Hd) {
        lb_err_set(err, LB_ENOMEM, "qbb: out of memory for the %lld x %lld Hessian",
                   (long long)cols, (long long)cols);
        return NULL;
    }
    memcpy(Hd, H, (size_t)cols * (size_t)cols * sizeof(float));
    double mean = 0.0;
    for (int64_t j = 0; j < cols; j++)
        mean += (double)H[j * cols + j];
    mean /= (double)cols;
    double lambda = mean > 0.0 ? damp * mean : 1.0;
    for (int64_t j = 0; j < cols; j++)
        Hd[j * cols + j] += (float)lambda;
    return Hd;
}

int lb_qbb_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                    const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    memset(out, 0, sizeof(*out));
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / cols / LB_QBB_MAX_BASES ||
        (uint64_t)(rows * cols) > SIZE_MAX / 8)
        return lb_err_set(err, LB_EINVAL, "qbb: bad shape %lld x %lld", (long long)rows,
                          (long long)cols);
    lb_qbb_cfg cfg;
    lb_qbb_cfg_init(&cfg);
    cfg.bases = opts->bases;
    cfg.refine_iters = opts->refine_iters;
    cfg.hessian_weighted = opts->hessian_weighted;
    if (cfg.bases < 1 || cfg.bases > LB_QBB_MAX_BASES)
        return lb_err_set(err, LB_EINVAL, "qbb: bases = %d; use 1..%d", (int)cfg.bases,
                          LB_QBB_MAX_BASES);
    if ((cfg.hessian_weighted || opts->gptq_init) && !H)
        return lb_err_set(err, LB_EINVAL,
                          "qbb: hessian_weighted/gptq_init need the layer Hessian; pass H");
    const int32_t n = cfg.bases;
    int rc = check_finite(W, rows * cols, "W", err);
    if (!rc && H)
        rc = check_finite(H, cols * cols, "H", err);
    if (rc)
        return rc;

    float *Hd = NULL, *scales = NULL;
    uint8_t *codes = NULL;
    lb_qresult gres;
    memset(&gres, 0, sizeof(gres));
    const float *target = W;
    if (opts->gptq_init) {
        /* The paper's progressive init: fit the bases to a 4-bit GPTQ reconstruction. */
        const lb_qmethod *gptq = lb_qmethod_find("gptq");
        if (!gptq) {
            rc = lb_err_set(err, LB_ENOTFOUND, "qbb: gptq_init needs the \"gptq\" method, "
                                               "which is not registered in this build");
            goto fail;
        }
        lb_qopts g = *opts;
        g.bits = 4;
        rc = gptq->quantize(W, rows, cols, H, &g, &gres, err);
        if (rc) {
            lb_err_prefix(err, "qbb gptq_init");
            goto fail;
        }
        target = gres.W_hat;
    }
    if (cfg.hessian_weighted) {
        Hd = damped_copy(H, cols, opts->damp, err);
        if (!Hd) {
            rc = LB_ENOMEM;
            goto fail;
        }
    }
    codes = malloc((size_t)(rows * cols));
    scales = malloc((size_t)(rows * n) * sizeof(float));
    out->W_hat = malloc((size_t)(rows * cols) * sizeof(float));
    if (!codes || !scales || !out->W_hat) {
        rc = lb_err_set(err, LB_ENOMEM, "qbb: out of memory for %lld x %lld",
                        (long long)rows, (long long)cols);
        goto fail;
    }
    /* Plain rounds; the weighted scale step comes after the f16 code update below. */
    lb_qbb_cfg plain = cfg;
    plain.hessian_weighted = false;
    rc = lb_qbb_fit(target, rows, cols, NULL, &plain, codes, scales, NULL, NULL, err);
    if (rc)
        goto fail;
    for (int64_t i = 0; i < rows * n; i++)
        scales[i] = lb_f16_to_f32(lb_f32_to_f16(scales[i]));
    /* With the rounded scales fixed, the nearest codes are the exact plain optimum. */
    lb_qbb_update_codes(target, rows, cols, n, scales, codes);
    if (cfg.hessian_weighted) {
        /* exact H-weighted scales for these codes; a row keeps its plain scales if they
         * are better (the f16 rounding below is the only loss after that) */
        rc = lb_qbb_ls_scales(target, rows, cols, n, codes, Hd, cfg.ridge, true, scales, NULL,
                              err);
        if (rc)
            goto fail;
    }

    /* Pack. The stored f16 scales are the ones the reconstruction uses. */
    lb_qpacked *p = &out->packed;
    snprintf(p->method, sizeof(p->method), "qbb");
    p->rows = rows;
    p->cols = cols;
    int64_t sshape[2] = {rows, n};
    int64_t bshape[3] = {n, rows, cols};
    /* add both fields first: adding reallocates p->fields, so take pointers after */
    if (!lb_qpacked_add_field(p, "scales", LB_QFIELD_F16, 16, 2, sshape, err) ||
        !lb_qpacked_add_field(p, "signs", LB_QFIELD_UINT, 1, 3, bshape, err)) {
        rc = err ? err->code : LB_ENOMEM;
        goto fail;
    }
    lb_qfield *fs = &p->fields[0], *fb = &p->fields[1];
    for (int64_t i = 0; i < rows * n; i++) {
        scales[i] = lb_qfield_put_float(fs, i, scales[i]);
        if (!isfinite(scales[i])) {
            rc = lb_err_set(err, LB_ENUMERIC,
                            "qbb: scale of row %lld overflows f16 (|w| too large); rescale W",
                            (long long)(i / n));
            goto fail;
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < cols; j++) {
            uint8_t code = codes[r * cols + j];
            for (int32_t i = 0; i < n; i++)
                lb_qfield_put(fb, ((int64_t)i * rows + r) * cols + j, (code >> i) & 1u);
            out->W_hat[r * cols + j] = lb_qbb_value(code, scales + r * n, n);
        }
    }
    out->bpw = lb_qpacked_bpw(p);
    out->gptq_runs = gres.gptq_runs; /* the gptq_init run's phase times, for benchmarks */
    out->gptq_stats = gres.gptq_stats;
    rc = LB_OK;
    goto cleanup;

fail:
    lb_qresult_free(out);
cleanup:
    lb_qresult_free(&gres);
    free(Hd);
    free(codes);
    free(scales);
    return rc;
}

int lb_qbb_dequantize(const lb_qpacked *packed, float *W_out, lb_err *err)
{
    const int64_t rows = packed->rows, cols = packed->cols;
    const lb_qfield *fs = lb_qpacked_field(packed, "scales");
    const lb_qfield *fb = lb_qpacked_field(packed, "signs");
    if (strcmp(packed->method, "qbb") != 0)
        return lb_err_set(err, LB_EFORMAT, "qbb dequantize: packed method is \"%.16s\"",
                          packed->method);
    if (!fs || !fb)
        return lb_err_set(err, LB_EFORMAT,
                          "qbb dequantize: missing field \"%s\"; repack with method qbb",
                          fs ? "signs" : "scales");
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / cols / LB_QBB_MAX_BASES)
        return lb_err_set(err, LB_EFORMAT, "qbb dequantize: bad shape %lld x %lld",
                          (long long)rows, (long long)cols);
    int64_t n = fs->ndim == 2 ? fs->shape[1] : 0;
    if (fs->kind != LB_QFIELD_F16 || fs->bits != 16 || fs->ndim != 2 ||
        fs->shape[0] != rows || n < 1 || n > LB_QBB_MAX_BASES || fs->count != rows * n ||
        fs->nbytes < (size_t)(fs->count * 2))
        return lb_err_set(err, LB_EFORMAT,
                          "qbb dequantize: field \"scales\" must be f16 (rows, N<=4)");
    if (fb->kind != LB_QFIELD_UINT || fb->bits != 1 || fb->ndim != 3 || fb->shape[0] != n ||
        fb->shape[1] != rows || fb->shape[2] != cols || fb->count != n * rows * cols ||
        fb->nbytes < (size_t)((fb->count + 7) / 8))
        return lb_err_set(err, LB_EFORMAT,
                          "qbb dequantize: field \"signs\" must be 1-bit (N, rows, cols)");
    float s[LB_QBB_MAX_BASES];
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < n; i++) {
            s[i] = lb_qfield_get_float(fs, r * n + i);
            if (!isfinite(s[i]))
                return lb_err_set(err, LB_ENUMERIC,
                                  "qbb dequantize: scale (%lld, %lld) is not finite",
                                  (long long)r, (long long)i);
        }
        for (int64_t j = 0; j < cols; j++) {
            uint32_t code = 0;
            for (int64_t i = 0; i < n; i++)
                code |= lb_qfield_get(fb, (i * rows + r) * cols + j) << i;
            W_out[r * cols + j] = lb_qbb_value(code, s, (int32_t)n);
        }
    }
    return LB_OK;
}

const lb_qmethod lb_qmethod_qbb = {
    .name = "qbb",
    .summary = "N binary bases with per-row scales (QBB), greedy init + LS/code refinement",
    .quantize = lb_qbb_quantize,
    .dequantize = lb_qbb_dequantize,
};
