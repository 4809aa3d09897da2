#include "lb_backward.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"

struct lb_tape {
    lb_config cfg;
    int64_t max_ntok, max_seq_len;
    int64_t dim, q_dim, kv_dim, inter, hd;
    int nthreads;
    /* recorded by the forward */
    const float *x;
    int64_t n_seq, seq_len;
    bool recorded;
    float *xn1, *inv1, *q, *k, *v, *att, *h, *xn2, *inv2, *gt, *u, *a;
    /* backward scratch */
    float *dh, *dxn, *dgt, *du, *datt, *dq, *dk, *dv;
    float *pp;        /* per thread: P and dP, 2 * max_seq_len² */
    float *rope_cos, *rope_sin;
};

static float *falloc(int64_t n)
{
    if (n <= 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return NULL;
    return malloc((size_t)n * sizeof(float));
}

void lb_tape_free(lb_tape **tp)
{
    if (!tp || !*tp)
        return;
    lb_tape *t = *tp;
    float *all[] = {t->xn1, t->inv1, t->q,   t->k,   t->v,    t->att,  t->h,  t->xn2,
                    t->inv2, t->gt,  t->u,   t->a,   t->dh,   t->dxn,  t->dgt, t->du,
                    t->datt, t->dq,  t->dk,  t->dv,  t->pp,   t->rope_cos, t->rope_sin};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    free(t);
    *tp = NULL;
}

int lb_tape_new(const lb_config *cfg, int64_t max_ntok, int64_t max_seq_len, lb_tape **out,
                lb_err *err)
{
    *out = NULL;
    const int64_t hd = cfg->head_dim;
    if (max_ntok < 1 || max_seq_len < 1 || max_seq_len > 65536 || hd < 2 || hd % 2 ||
        cfg->num_key_value_heads < 1 || cfg->num_attention_heads % cfg->num_key_value_heads)
        return lb_err_set(err, LB_EINVAL,
                          "backward tape: bad sizes (%lld tokens, sequences of %lld, head_dim "
                          "%lld)",
                          (long long)max_ntok, (long long)max_seq_len, (long long)hd);
    lb_tape *t = calloc(1, sizeof *t);
    if (!t)
        return lb_err_set(err, LB_ENOMEM, "backward tape: out of memory");
    t->cfg = *cfg;
    t->max_ntok = max_ntok;
    t->max_seq_len = max_seq_len;
    t->dim = cfg->hidden_size;
    t->hd = hd;
    t->q_dim = (int64_t)cfg->num_attention_heads * hd;
    t->kv_dim = (int64_t)cfg->num_key_value_heads * hd;
    t->inter = cfg->intermediate_size;
    t->nthreads = omp_get_max_threads() < 1 ? 1 : omp_get_max_threads();
    const int64_t n = max_ntok;
    if (n > INT64_MAX / 4 / (t->dim + t->q_dim + t->kv_dim + t->inter)) {
        lb_tape_free(&t);
        return lb_err_set(err, LB_EINVAL, "backward tape: %lld tokens overflow the sizes",
                          (long long)n);
    }
    t->xn1 = falloc(n * t->dim);
    t->inv1 = falloc(n);
    t->q = falloc(n * t->q_dim);
    t->k = falloc(n * t->kv_dim);
    t->v = falloc(n * t->kv_dim);
    t->att = falloc(n * t->q_dim);
    t->h = falloc(n * t->dim);
    t->xn2 = falloc(n * t->dim);
    t->inv2 = falloc(n);
    t->gt = falloc(n * t->inter);
    t->u = falloc(n * t->inter);
    t->a = falloc(n * t->inter);
    t->dh = falloc(n * t->dim);
    t->dxn = falloc(n * t->dim);
    t->dgt = falloc(n * t->inter);
    t->du = falloc(n * t->inter);
    t->datt = falloc(n * t->q_dim);
    t->dq = falloc(n * t->q_dim);
    t->dk = falloc(n * t->kv_dim);
    t->dv = falloc(n * t->kv_dim);
    t->pp = falloc(2 * max_seq_len * max_seq_len * t->nthreads);
    t->rope_cos = falloc(max_seq_len * (hd / 2));
    t->rope_sin = falloc(max_seq_len * (hd / 2));
    if (!t->xn1 || !t->inv1 || !t->q || !t->k || !t->v || !t->att || !t->h || !t->xn2 ||
        !t->inv2 || !t->gt || !t->u || !t->a || !t->dh || !t->dxn || !t->dgt || !t->du ||
        !t->datt || !t->dq || !t->dk || !t->dv || !t->pp || !t->rope_cos || !t->rope_sin) {
        lb_tape_free(&t);
        return lb_err_set(err, LB_ENOMEM, "backward tape: out of memory for %lld tokens",
                          (long long)n);
    }
    /* same tables as lb_forward (angle in double, rounded once) */
    const int64_t half = hd / 2;
    for (int64_t p = 0; p < max_seq_len; p++)
        for (int64_t i = 0; i < half; i++) {
            double ang = (double)p * pow(cfg->rope_theta, -2.0 * (double)i / (double)hd);
            t->rope_cos[p * half + i] = (float)cos(ang);
            t->rope_sin[p * half + i] = (float)sin(ang);
        }
    *out = t;
    return LB_OK;
}

/* o = x * inv * g, inv = rsqrt(mean(x²) + eps) per row (RMSNorm eq. 4); keeps inv */
static void rms_fwd(const float *x, const float *g, float *o, float *inv, int64_t ntok,
                    int64_t dim, double eps)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < ntok; r++) {
        const float *xr = x + r * dim;
        double ss = 0.0;
        for (int64_t i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        inv[r] = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t i = 0; i < dim; i++)
            o[r * dim + i] = xr[i] * inv[r] * g[i];
    }
}

/* dx += d rms(x)/dx ᵀ do: dx_i += inv g_i do_i - x_i inv³ / dim Σ_j do_j g_j x_j */
static void rms_bwd_acc(const float *x, const float *g, const float *inv, const float *dout,
                        float *dx, int64_t ntok, int64_t dim)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < ntok; r++) {
        const float *xr = x + r * dim, *dr = dout + r * dim;
        double dot = 0.0;
        for (int64_t j = 0; j < dim; j++)
            dot += (double)dr[j] * (double)g[j] * (double)xr[j];
        const double iv = (double)inv[r], c = iv * iv * iv * dot / (double)dim;
        for (int64_t i = 0; i < dim; i++)
            dx[r * dim + i] += (float)(iv * (double)g[i] * (double)dr[i] - (double)xr[i] * c);
    }
}

static int64_t row_chunk(int64_t n)
{
    int64_t c = (n + 15) / 16;
    c = (c + 15) / 16 * 16;
    return c < 16 ? 16 : c > 512 ? 512 : c;
}

// y (ntok, n) = x (ntok, k) @ W (n, k)ᵀ + beta y [+ b], fixed row chunks
static void lin_fwd(const float *x, const float *W, const float *b, float beta, float *y,
                    int64_t ntok, int64_t k, int64_t n)
{
    const int64_t ch = row_chunk(ntok), nch = (ntok + ch - 1) / ch;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nch; c++) {
        int64_t r0 = c * ch, rows = ntok - r0 < ch ? ntok - r0 : ch;
        lb_sgemm(false, true, rows, n, k, 1.0f, x + r0 * k, k, W, k, beta, y + r0 * n, n);
        if (b)
            for (int64_t r = r0; r < r0 + rows; r++)
                for (int64_t j = 0; j < n; j++)
                    y[r * n + j] += b[j];
    }
}

// dx (ntok, k) = dy (ntok, n) @ W (n, k) + beta dx
static void lin_bwd_x(const float *dy, const float *W, float beta, float *dx, int64_t ntok,
                      int64_t k, int64_t n)
{
    const int64_t ch = row_chunk(ntok), nch = (ntok + ch - 1) / ch;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nch; c++) {
        int64_t r0 = c * ch, rows = ntok - r0 < ch ? ntok - r0 : ch;
        lb_sgemm(false, false, rows, k, n, 1.0f, dy + r0 * n, n, W, k, beta, dx + r0 * k, k);
    }
}

// dW (n, k) = dy (ntok, n)ᵀ @ x (ntok, k), split over output rows (no split reduction)
static void lin_bwd_w(const float *dy, const float *x, float *dW, int64_t ntok, int64_t k,
                      int64_t n)
{
    const int64_t ch = 16, nch = (n + ch - 1) / ch;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nch; c++) {
        int64_t r0 = c * ch, rows = n - r0 < ch ? n - r0 : ch;
        lb_sgemm(true, false, rows, k, ntok, 1.0f, dy + r0, n, x, k, 0.0f, dW + r0 * k, k);
    }
}

/* rotate-half RoPE at each row's position; inverse = transpose (rotation by -angle) */
static void rope_apply(float *v, int64_t ntok, int64_t seq_len, int64_t nh, int64_t hd,
                       const float *cs, const float *sn, bool transpose)
{
    const int64_t half = hd / 2;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < ntok; r++) {
        const int64_t pos = r % seq_len;
        const float *c = cs + pos * half, *s = sn + pos * half;
        for (int64_t h = 0; h < nh; h++) {
            float *p = v + r * nh * hd + h * hd;
            for (int64_t i = 0; i < half; i++) {
                float a = p[i], b = p[i + half], si = transpose ? -s[i] : s[i];
                p[i] = a * c[i] - b * si;
                p[i + half] = b * c[i] + a * si;
            }
        }
    }
}

/* P (L, L) = causal softmax(Q Kᵀ * scale) of one (sequence, head) */
static void att_probs(const float *Q, int64_t ldq, const float *K, int64_t ldk, int64_t L,
                      int64_t hd, float scale, float *P)
{
    lb_sgemm(false, true, L, L, hd, scale, Q, ldq, K, ldk, 0.0f, P, L);
    for (int64_t i = 0; i < L; i++) {
        float *r = P + i * L, m = r[0];
        for (int64_t j = 1; j <= i; j++)
            m = r[j] > m ? r[j] : m;
        double sum = 0.0;
        for (int64_t j = 0; j <= i; j++) {
            r[j] = expf(r[j] - m);
            sum += (double)r[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j <= i; j++)
            r[j] *= inv;
        for (int64_t j = i + 1; j < L; j++)
            r[j] = 0.0f;
    }
}

int lb_tape_forward(lb_tape *t, const lb_block_weights *w, const float *x, int64_t n_seq,
                    int64_t seq_len, float *y, lb_err *err)
{
    if (n_seq < 1 || seq_len < 1 || seq_len > t->max_seq_len || n_seq > t->max_ntok / seq_len)
        return lb_err_set(err, LB_EINVAL,
                          "backward tape: batch %lld x %lld exceeds the tape (%lld tokens, "
                          "sequences of <= %lld)",
                          (long long)n_seq, (long long)seq_len, (long long)t->max_ntok,
                          (long long)t->max_seq_len);
    const int64_t ntok = n_seq * seq_len, dim = t->dim, q_dim = t->q_dim, kv_dim = t->kv_dim,
                  inter = t->inter, hd = t->hd, L = seq_len;
    const int64_t nh = q_dim / hd, nkv = kv_dim / hd, group = nh / nkv;
    const double eps = t->cfg.rms_norm_eps;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    t->x = x;
    t->n_seq = n_seq;
    t->seq_len = seq_len;
    rms_fwd(x, w->attn_norm, t->xn1, t->inv1, ntok, dim, eps);
    lin_fwd(t->xn1, w->wq, w->bq, 0.0f, t->q, ntok, dim, q_dim);
    lin_fwd(t->xn1, w->wk, w->bk, 0.0f, t->k, ntok, dim, kv_dim);
    lin_fwd(t->xn1, w->wv, w->bv, 0.0f, t->v, ntok, dim, kv_dim);
    rope_apply(t->q, ntok, L, nh, hd, t->rope_cos, t->rope_sin, false);
    rope_apply(t->k, ntok, L, nkv, hd, t->rope_cos, t->rope_sin, false);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t job = 0; job < n_seq * nh; job++) {
        const int64_t s = job / nh, hh = job % nh, kvh = hh / group;
        float *P = t->pp + (int64_t)omp_get_thread_num() * 2 * t->max_seq_len * t->max_seq_len;
        const float *Q = t->q + s * L * q_dim + hh * hd, *K = t->k + s * L * kv_dim + kvh * hd;
        const float *V = t->v + s * L * kv_dim + kvh * hd;
        att_probs(Q, q_dim, K, kv_dim, L, hd, scale, P);
        // O (L, hd) = P (L, L) @ V (L, hd)
        lb_sgemm(false, false, L, hd, L, 1.0f, P, L, V, kv_dim, 0.0f,
                 t->att + s * L * q_dim + hh * hd, q_dim);
    }
    memcpy(t->h, x, (size_t)(ntok * dim) * sizeof(float));
    lin_fwd(t->att, w->wo, w->bo, 1.0f, t->h, ntok, q_dim, dim);
    rms_fwd(t->h, w->ffn_norm, t->xn2, t->inv2, ntok, dim, eps);
    lin_fwd(t->xn2, w->w_gate, w->b_gate, 0.0f, t->gt, ntok, dim, inter);
    lin_fwd(t->xn2, w->w_up, w->b_up, 0.0f, t->u, ntok, dim, inter);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < ntok * inter; i++) {
        const float g = t->gt[i];
        t->a[i] = g / (1.0f + expf(-g)) * t->u[i]; // SwiGLU (Shazeer 2020, eq. 6)
    }
    memcpy(y, t->h, (size_t)(ntok * dim) * sizeof(float));
    lin_fwd(t->a, w->w_down, w->b_down, 1.0f, y, ntok, inter, dim);
    lb_blas_set_threads(blas_threads);
    t->recorded = true;
    return LB_OK;
}

int lb_tape_backward(lb_tape *t, const lb_block_weights *w, const float *dy, float *dx,
                     float *const dW[LB_LINEAR_COUNT], lb_err *err)
{
    if (!t->recorded)
        return lb_err_set(err, LB_EINVAL, "backward tape: no forward recorded");
    const int64_t ntok = t->n_seq * t->seq_len, dim = t->dim, q_dim = t->q_dim,
                  kv_dim = t->kv_dim, inter = t->inter, hd = t->hd, L = t->seq_len;
    const int64_t nh = q_dim / hd, nkv = kv_dim / hd, group = nh / nkv;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    float *const *g = dW;
    // MLP half: y = h + a Wdᵀ
    if (g && g[LB_LINEAR_DOWN])
        lin_bwd_w(dy, t->a, g[LB_LINEAR_DOWN], ntok, inter, dim);
    lin_bwd_x(dy, w->w_down, 0.0f, t->dgt, ntok, inter, dim); /* dgt holds da for now */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < ntok * inter; i++) {
        const float gv = t->gt[i], sg = 1.0f / (1.0f + expf(-gv)), da = t->dgt[i];
        t->du[i] = da * gv * sg;                                   // ∂a/∂u = silu(g)
        t->dgt[i] = da * t->u[i] * sg * (1.0f + gv * (1.0f - sg)); // silu'(g)
    }
    if (g && g[LB_LINEAR_GATE])
        lin_bwd_w(t->dgt, t->xn2, g[LB_LINEAR_GATE], ntok, dim, inter);
    if (g && g[LB_LINEAR_UP])
        lin_bwd_w(t->du, t->xn2, g[LB_LINEAR_UP], ntok, dim, inter);
    lin_bwd_x(t->dgt, w->w_gate, 0.0f, t->dxn, ntok, dim, inter);
    lin_bwd_x(t->du, w->w_up, 1.0f, t->dxn, ntok, dim, inter);
    memcpy(t->dh, dy, (size_t)(ntok * dim) * sizeof(float));
    rms_bwd_acc(t->h, w->ffn_norm, t->inv2, t->dxn, t->dh, ntok, dim);
    // attention half: h = x + att Woᵀ
    if (g && g[LB_LINEAR_O])
        lin_bwd_w(t->dh, t->att, g[LB_LINEAR_O], ntok, q_dim, dim);
    lin_bwd_x(t->dh, w->wo, 0.0f, t->datt, ntok, q_dim, dim);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t job = 0; job < t->n_seq * nkv; job++) {
        const int64_t s = job / nkv, kvh = job % nkv;
        float *P = t->pp + (int64_t)omp_get_thread_num() * 2 * t->max_seq_len * t->max_seq_len;
        float *dP = P + t->max_seq_len * t->max_seq_len;
        const float *K = t->k + s * L * kv_dim + kvh * hd, *V = t->v + s * L * kv_dim + kvh * hd;
        float *dK = t->dk + s * L * kv_dim + kvh * hd, *dV = t->dv + s * L * kv_dim + kvh * hd;
        for (int64_t r = 0; r < L; r++) {
            memset(dK + r * kv_dim, 0, (size_t)hd * sizeof(float));
            memset(dV + r * kv_dim, 0, (size_t)hd * sizeof(float));
        }
        for (int64_t hh = kvh * group; hh < (kvh + 1) * group; hh++) {
            const float *Q = t->q + s * L * q_dim + hh * hd;
            const float *dO = t->datt + s * L * q_dim + hh * hd;
            float *dQ = t->dq + s * L * q_dim + hh * hd;
            att_probs(Q, q_dim, K, kv_dim, L, hd, scale, P);
            // dP (L, L) = dO (L, hd) @ V (L, hd)ᵀ ; dV += Pᵀ dO
            lb_sgemm(false, true, L, L, hd, 1.0f, dO, q_dim, V, kv_dim, 0.0f, dP, L);
            lb_sgemm(true, false, L, hd, L, 1.0f, P, L, dO, q_dim, 1.0f, dV, kv_dim);
            // softmax backward: dS = P ∘ (dP - Σ_j P dP) * scale (causal zeros stay zero)
            for (int64_t i = 0; i < L; i++) {
                double dot = 0.0;
                for (int64_t j = 0; j <= i; j++)
                    dot += (double)P[i * L + j] * (double)dP[i * L + j];
                for (int64_t j = 0; j < L; j++)
                    dP[i * L + j] = j <= i ? P[i * L + j] * (dP[i * L + j] - (float)dot) * scale
                                           : 0.0f;
            }
            // dQ = dS K ; dK += dSᵀ Q
            lb_sgemm(false, false, L, hd, L, 1.0f, dP, L, K, kv_dim, 0.0f, dQ, q_dim);
            lb_sgemm(true, false, L, hd, L, 1.0f, dP, L, Q, q_dim, 1.0f, dK, kv_dim);
        }
    }
    rope_apply(t->dq, ntok, L, nh, hd, t->rope_cos, t->rope_sin, true);
    rope_apply(t->dk, ntok, L, nkv, hd, t->rope_cos, t->rope_sin, true);
    if (g && g[LB_LINEAR_Q])
        lin_bwd_w(t->dq, t->xn1, g[LB_LINEAR_Q], ntok, dim, q_dim);
    if (g && g[LB_LINEAR_K])
        lin_bwd_w(t->dk, t->xn1, g[LB_LINEAR_K], ntok, dim, kv_dim);
    if (g && g[LB_LINEAR_V])
        lin_bwd_w(t->dv, t->xn1, g[LB_LINEAR_V], ntok, dim, kv_dim);
    if (dx) {
        lin_bwd_x(t->dq, w->wq, 0.0f, t->dxn, ntok, dim, q_dim);
        lin_bwd_x(t->dk, w->wk, 1.0f, t->dxn, ntok, dim, kv_dim);
        lin_bwd_x(t->dv, w->wv, 1.0f, t->dxn, ntok, dim, kv_dim);
        memcpy(dx, t->dh, (size_t)(ntok * dim) * sizeof(float));
        rms_bwd_acc(t->x, w->attn_norm, t->inv1, t->dxn, dx, ntok, dim);
    }
    lb_blas_set_threads(blas_threads);
    return LB_OK;
}
