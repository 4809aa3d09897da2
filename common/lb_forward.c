#include "lb_forward.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"

/* Query rows per attention block: block b only needs keys [0, end of b), so
 * the masked upper triangle is skipped (about half the work at long context). */
#define LB_ATT_ROW_BLOCK 64

struct lb_fwd_workspace {
    int64_t max_ntok;
    int64_t max_seq_len;
    int64_t dim, q_dim, kv_dim, inter, head_dim;
    int nthreads;     /* per-thread score buffers allocated */
    float *xn;        /* (max_ntok, dim) normed stream */
    float *arena;     /* attention phase: q, k, v, att; MLP phase: gate, up */
    float *scores;    /* (nthreads, LB_ATT_ROW_BLOCK, max_seq_len) */
    float *rope_cos;  /* (max_seq_len, head_dim / 2) */
    float *rope_sin;  /* (max_seq_len, head_dim / 2) */
};

static int mul_ok(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0)
        return 0;
    if (a != 0 && b > INT64_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

static float *alloc_floats(int64_t n)
{
    if (n <= 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return NULL;
    return malloc((size_t)n * sizeof(float));
}

int lb_fwd_workspace_new(const lb_config *cfg, int64_t max_ntok, int64_t max_seq_len,
                         lb_fwd_workspace **out, lb_err *err)
{
    *out = NULL;
    if (max_ntok < 1 || max_seq_len < 1)
        return lb_err_set(err, LB_EINVAL,
                          "forward workspace: max_ntok (%lld) and max_seq_len (%lld) must be >= 1",
                          (long long)max_ntok, (long long)max_seq_len);
    int64_t hd = cfg->head_dim;
    if (hd < 2 || hd % 2)
        return lb_err_set(err, LB_EINVAL,
                          "forward workspace: head_dim %lld must be even for rotate-half RoPE",
                          (long long)hd);
    lb_fwd_workspace *ws = calloc(1, sizeof *ws);
    if (!ws)
        return lb_err_set(err, LB_ENOMEM, "forward workspace: out of memory");
    ws->max_ntok = max_ntok;
    ws->max_seq_len = max_seq_len;
    ws->dim = cfg->hidden_size;
    ws->head_dim = hd;
    ws->q_dim = (int64_t)cfg->num_attention_heads * hd;
    ws->kv_dim = (int64_t)cfg->num_key_value_heads * hd;
    ws->inter = cfg->intermediate_size;
    ws->nthreads = omp_get_max_threads();
    if (ws->nthreads < 1)
        ws->nthreads = 1;

    int64_t n_xn, n_attn, n_mlp, n_scores, n_rope, t;
    const int64_t rb = max_seq_len < LB_ATT_ROW_BLOCK ? max_seq_len : LB_ATT_ROW_BLOCK;
    int ok = mul_ok(max_ntok, ws->dim, &n_xn) &&
             mul_ok(max_ntok, 2 * ws->q_dim + 2 * ws->kv_dim, &n_attn) &&
             mul_ok(max_ntok, 2 * ws->inter, &n_mlp) && mul_ok(rb, max_seq_len, &t) &&
             mul_ok(t, ws->nthreads, &n_scores) && mul_ok(max_seq_len, hd / 2, &n_rope);
    if (!ok) {
        lb_fwd_workspace_free(&ws);
        return lb_err_set(err, LB_EINVAL, "forward workspace: sizes overflow (max_ntok %lld)",
                          (long long)max_ntok);
    }
    ws->xn = alloc_floats(n_xn);
    ws->arena = alloc_floats(n_attn > n_mlp ? n_attn : n_mlp);
    ws->scores = alloc_floats(n_scores);
    ws->rope_cos = alloc_floats(n_rope);
    ws->rope_sin = alloc_floats(n_rope);
    if (!ws->xn || !ws->arena || !ws->scores || !ws->rope_cos || !ws->rope_sin) {
        lb_fwd_workspace_free(&ws);
        return lb_err_set(err, LB_ENOMEM,
                          "forward workspace: out of memory for %lld tokens; lower --batch",
                          (long long)max_ntok);
    }
    /* RoPE: freq_i = theta^(-2i/head_dim), angle = pos * freq_i (computed in
     * double, then rounded once). */
    int64_t half = hd / 2;
    for (int64_t p = 0; p < max_seq_len; p++)
        for (int64_t i = 0; i < half; i++) {
            double freq = pow((double)cfg->rope_theta, -2.0 * (double)i / (double)hd);
            double a = (double)p * freq;
            ws->rope_cos[p * half + i] = (float)cos(a);
            ws->rope_sin[p * half + i] = (float)sin(a);
        }
    *out = ws;
    return LB_OK;
}

void lb_fwd_workspace_free(lb_fwd_workspace **ws)
{
    if (!ws || !*ws)
        return;
    free((*ws)->xn);
    free((*ws)->arena);
    free((*ws)->scores);
    free((*ws)->rope_cos);
    free((*ws)->rope_sin);
    free(*ws);
    *ws = NULL;
}

int lb_fwd_embed(const lb_head_weights *head, const uint32_t *tokens, int64_t ntok, float *x,
                 lb_err *err)
{
    for (int64_t t = 0; t < ntok; t++)
        if ((int64_t)tokens[t] >= head->vocab)
            return lb_err_set(err, LB_EINVAL,
                              "embedding: token id %u at index %lld is >= vocab size %lld",
                              tokens[t], (long long)t, (long long)head->vocab);
    const int64_t dim = head->dim;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < ntok; t++)
        memcpy(x + t * dim, head->embed + (int64_t)tokens[t] * dim, (size_t)dim * sizeof(float));
    return LB_OK;
}

/* out (ntok, dim) = x * rsqrt(mean(x²) + eps) * g, per row (RMSNorm, Zhang &
 * Sennrich 2019, eq. 4). The sum of squares is taken in double, in order. */
static void rms_norm(const float *x, const float *g, float *out, int64_t ntok, int64_t dim,
                     double eps)
{
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < ntok; t++) {
        const float *xr = x + t * dim;
        float *o = out + t * dim;
        double ss = 0.0;
        for (int64_t i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t i = 0; i < dim; i++)
            o[i] = xr[i] * inv * g[i];
    }
}

/* y (ntok, n) += b (n,) on every row; b may be NULL. */
static void add_bias(float *y, const float *b, int64_t ntok, int64_t n)
{
    if (!b)
        return;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < ntok; t++)
        for (int64_t j = 0; j < n; j++)
            y[t * n + j] += b[j];
}

/* Rows per sgemm chunk: a function of ntok only, never of the thread count,
 * so every row is computed by the same kernel call shape whatever the number
 * of threads (OpenBLAS's own threading changes the bits; see lb_forward.h). */
static int64_t row_chunk(int64_t ntok)
{
    int64_t c = (ntok + 15) / 16;
    c = (c + 15) / 16 * 16;
    return c < 16 ? 16 : c > 512 ? 512 : c;
}

/* y (ntok, n) = x (ntok, k) @ W (n, k)ᵀ + beta * y, as single-threaded sgemms
 * over fixed row chunks run in parallel by OpenMP. */
static void gemm_rows(const float *x, const float *w, float beta, float *y, int64_t ntok,
                      int64_t k, int64_t n)
{
    const int64_t chunk = row_chunk(ntok), nchunks = (ntok + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t r0 = c * chunk, rows = ntok - r0 < chunk ? ntok - r0 : chunk;
        lb_sgemm(false, true, rows, n, k, 1.0f, x + r0 * k, k, w, k, beta, y + r0 * n, n);
    }
}

/* y (ntok, out) = x (ntok, in) @ W (out, in)ᵀ [+ b] */
static void linear(const float *x, const float *w, const float *b, float *y, int64_t ntok,
                   int64_t in, int64_t out_f)
{
    gemm_rows(x, w, 0.0f, y, ntok, in, out_f);
    add_bias(y, b, ntok, out_f);
}

/* Rotate-half RoPE (Su et al. 2021, eq. 34, HF layout): for i < hd/2 the pair
 * (v[i], v[i + hd/2]) is rotated by pos * theta^(-2i/hd). */
static void rope(float *v, int64_t ntok, int64_t seq_len, int64_t n_heads, int64_t hd,
                 const float *cos_t, const float *sin_t)
{
    const int64_t half = hd / 2, row = n_heads * hd;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < ntok; t++) {
        const int64_t pos = t % seq_len;
        const float *c = cos_t + pos * half, *s = sin_t + pos * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *p = v + t * row + h * hd;
            for (int64_t i = 0; i < half; i++) {
                float a = p[i], b = p[i + half];
                p[i] = a * c[i] - b * s[i];
                p[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

/* Causal softmax attention per (sequence, head) (Vaswani et al. 2017, eq. 1),
 * GQA: head h reads kv head h / (n_heads / n_kv). att (ntok, q_dim). */
static void attention(const float *q, const float *k, const float *v, float *att, int64_t n_seq,
                      int64_t seq_len, int64_t n_heads, int64_t n_kv, int64_t hd, float *scores,
                      int nthreads)
{
    const int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, group = n_heads / n_kv;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int64_t jobs = n_seq * n_heads;
    const int64_t rb = seq_len < LB_ATT_ROW_BLOCK ? seq_len : LB_ATT_ROW_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t job = 0; job < jobs; job++) {
        const int64_t s = job / n_heads, h = job % n_heads, kvh = h / group;
        float *S = scores + (int64_t)omp_get_thread_num() * rb * seq_len;
        const float *Q = q + s * seq_len * q_dim + h * hd;
        const float *K = k + s * seq_len * kv_dim + kvh * hd;
        const float *V = v + s * seq_len * kv_dim + kvh * hd;
        float *O = att + s * seq_len * q_dim + h * hd;
        for (int64_t r0 = 0; r0 < seq_len; r0 += rb) {
            const int64_t rows = seq_len - r0 < rb ? seq_len - r0 : rb, nk = r0 + rows;
            // S (rows, nk) = Q[r0:r0+rows] (rows, hd) @ K[0:nk] (nk, hd)ᵀ / sqrt(hd)
            lb_sgemm(false, true, rows, nk, hd, scale, Q + r0 * q_dim, q_dim, K, kv_dim, 0.0f, S,
                     nk);
            // row i (position r0 + i): softmax over keys j <= r0 + i, zero after (causal mask)
            for (int64_t i = 0; i < rows; i++) {
                float *r = S + i * nk;
                const int64_t last = r0 + i;
                float m = r[0];
                for (int64_t jj = 1; jj <= last; jj++)
                    m = r[jj] > m ? r[jj] : m;
                double sum = 0.0;
                for (int64_t jj = 0; jj <= last; jj++) {
                    r[jj] = expf(r[jj] - m);
                    sum += (double)r[jj];
                }
                const float inv = (float)(1.0 / sum);
                for (int64_t jj = 0; jj <= last; jj++)
                    r[jj] *= inv;
                for (int64_t jj = last + 1; jj < nk; jj++)
                    r[jj] = 0.0f;
            }
            // O[r0:r0+rows] (rows, hd) = P (rows, nk) @ V[0:nk] (nk, hd)
            lb_sgemm(false, false, rows, hd, nk, 1.0f, S, nk, V, kv_dim, 0.0f, O + r0 * q_dim,
                     q_dim);
        }
    }
}

int lb_fwd_block(const lb_config *cfg, const lb_block_weights *w, float *x, int64_t n_seq,
                 int64_t seq_len, lb_fwd_workspace *ws, const lb_fwd_capture *capture,
                 lb_err *err)
{
    const int64_t dim = cfg->hidden_size, hd = cfg->head_dim;
    const int64_t n_heads = cfg->num_attention_heads, n_kv = cfg->num_key_value_heads;
    const int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, inter = cfg->intermediate_size;
    if (n_seq < 1 || seq_len < 1 || seq_len > ws->max_seq_len || n_seq > ws->max_ntok / seq_len)
        return lb_err_set(err, LB_EINVAL,
                          "forward block: batch %lld x %lld tokens exceeds the workspace "
                          "(%lld tokens, sequences of <= %lld)",
                          (long long)n_seq, (long long)seq_len, (long long)ws->max_ntok,
                          (long long)ws->max_seq_len);
    if (dim != ws->dim || q_dim != ws->q_dim || kv_dim != ws->kv_dim || inter != ws->inter ||
        n_kv < 1 || n_heads % n_kv)
        return lb_err_set(err, LB_EINVAL,
                          "forward block: config does not match the workspace it was made for");
    /* Full causal attention equals sliding-window attention only while the
     * sequence fits in the window. */
    if (cfg->sliding_window > 0 && seq_len > cfg->sliding_window)
        return lb_err_set(err, LB_EINVAL,
                          "forward block: sequences of %lld tokens exceed the model's "
                          "sliding_window %d (not implemented); use a context <= %d",
                          (long long)seq_len, (int)cfg->sliding_window, (int)cfg->sliding_window);
    const int64_t ntok = n_seq * seq_len;
    const double eps = cfg->rms_norm_eps;
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    float *xn = ws->xn;
    float *q = ws->arena, *k = q + ntok * q_dim, *v = k + ntok * kv_dim, *att = v + ntok * kv_dim;

    // attention half
    rms_norm(x, w->attn_norm, xn, ntok, dim, eps);
    if (capture && capture->attn_in)
        memcpy(capture->attn_in, xn, (size_t)(ntok * dim) * sizeof(float));
    linear(xn, w->wq, w->bq, q, ntok, dim, q_dim);
    linear(xn, w->wk, w->bk, k, ntok, dim, kv_dim);
    linear(xn, w->wv, w->bv, v, ntok, dim, kv_dim);
    rope(q, ntok, seq_len, n_heads, hd, ws->rope_cos, ws->rope_sin);
    rope(k, ntok, seq_len, n_kv, hd, ws->rope_cos, ws->rope_sin);
    attention(q, k, v, att, n_seq, seq_len, n_heads, n_kv, hd, ws->scores, ws->nthreads);
    if (capture && capture->attn_out)
        memcpy(capture->attn_out, att, (size_t)(ntok * q_dim) * sizeof(float));
    // x (ntok, dim) += att (ntok, q_dim) @ wo (dim, q_dim)ᵀ
    gemm_rows(att, w->wo, 1.0f, x, ntok, q_dim, dim);
    add_bias(x, w->bo, ntok, dim);

    // MLP half (SwiGLU, Shazeer 2020, eq. 6): the arena now holds gate and up
    float *gate = ws->arena, *up = gate + ntok * inter;
    rms_norm(x, w->ffn_norm, xn, ntok, dim, eps);
    if (capture && capture->mlp_in)
        memcpy(capture->mlp_in, xn, (size_t)(ntok * dim) * sizeof(float));
    linear(xn, w->w_gate, w->b_gate, gate, ntok, dim, inter);
    linear(xn, w->w_up, w->b_up, up, ntok, dim, inter);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < ntok; t++)
        for (int64_t j = 0; j < inter; j++) {
            float g = gate[t * inter + j];
            gate[t * inter + j] = g / (1.0f + expf(-g)) * up[t * inter + j];
        }
    if (capture && capture->mlp_act)
        memcpy(capture->mlp_act, gate, (size_t)(ntok * inter) * sizeof(float));
    // x (ntok, dim) += act (ntok, inter) @ w_down (dim, inter)ᵀ
    gemm_rows(gate, w->w_down, 1.0f, x, ntok, inter, dim);
    add_bias(x, w->b_down, ntok, dim);
    lb_blas_set_threads(blas_threads);
    return LB_OK;
}

void lb_fwd_logits(const lb_config *cfg, const lb_head_weights *head, float *x, int64_t ntok,
                   float *logits)
{
    const int64_t dim = head->dim;
    rms_norm(x, head->final_norm, x, ntok, dim, (double)cfg->rms_norm_eps);
    // logits (ntok, vocab) = x (ntok, dim) @ lm_head (vocab, dim)ᵀ
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    gemm_rows(x, head->lm_head, 0.0f, logits, ntok, dim, head->vocab);
    lb_blas_set_threads(blas_threads);
}

int lb_model_hidden(const lb_model *m, const lb_head_weights *head, const uint32_t *tokens,
                    int64_t n_seq, int64_t seq_len, lb_fwd_workspace *ws, float *x, lb_err *err)
{
    const lb_config *cfg = lb_model_config(m);
    lb_block_weights w = {0};
    int rc = lb_fwd_embed(head, tokens, n_seq * seq_len, x, err);
    for (int32_t layer = 0; rc == LB_OK && layer < (int32_t)cfg->num_hidden_layers; layer++) {
        rc = lb_model_load_block(m, layer, &w, err);
        if (rc == LB_OK)
            rc = lb_fwd_block(cfg, &w, x, n_seq, seq_len, ws, NULL, err);
        lb_block_weights_free(&w);
    }
    return rc;
}

int lb_model_forward(const lb_model *m, const uint32_t *tokens, int64_t n_seq, int64_t seq_len,
                     float *logits, lb_err *err)
{
    const lb_config *cfg = lb_model_config(m);
    lb_head_weights head = {0};
    lb_fwd_workspace *ws = NULL;
    float *x = NULL;
    int64_t ntok, nx;
    int rc;
    if (n_seq < 1 || seq_len < 1 || !mul_ok(n_seq, seq_len, &ntok) ||
        !mul_ok(ntok, (int64_t)cfg->hidden_size, &nx))
        return lb_err_set(err, LB_EINVAL, "forward: bad batch %lld x %lld", (long long)n_seq,
                          (long long)seq_len);
    rc = lb_model_load_head(m, &head, err);
    if (rc)
        goto cleanup;
    rc = lb_fwd_workspace_new(cfg, ntok, seq_len, &ws, err);
    if (rc)
        goto cleanup;
    x = alloc_floats(nx);
    if (!x) {
        rc = lb_err_set(err, LB_ENOMEM, "forward: out of memory for %lld tokens", (long long)ntok);
        goto cleanup;
    }
    rc = lb_model_hidden(m, &head, tokens, n_seq, seq_len, ws, x, err);
    if (rc)
        goto cleanup;
    lb_fwd_logits(cfg, &head, x, ntok, logits);
cleanup:
    free(x);
    lb_fwd_workspace_free(&ws);
    lb_head_weights_free(&head);
    return rc;
}
