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
    int64_t chunk_max; /* row_chunk(max_ntok) >= row_chunk(ntok) for any ntok <= max_ntok */
    int nthreads;      /* per-thread buffers allocated */
    float *qkva;       /* q (max_ntok, q_dim), k, v (max_ntok, kv_dim), att (max_ntok, q_dim) */
    float *scratch;    /* per thread: xn (chunk_max, dim), gate, up (chunk_max, inter) */
    int64_t scratch_stride;
    float *scores;   /* per thread: (LB_ATT_ROW_BLOCK, max_seq_len) */
    float *rope_cos; /* (max_seq_len, head_dim / 2) */
    float *rope_sin; /* (max_seq_len, head_dim / 2) */
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

/* Rows per chunk of the row-local phases: a function of ntok only, never of
 * the thread count, so every row goes through the same sgemm call shapes
 * whatever the number of threads (OpenBLAS's own threading changes the bits;
 * see lb_forward.h). Monotone in ntok. */
static int64_t row_chunk(int64_t ntok)
{
    int64_t c = (ntok + 15) / 16;
    c = (c + 15) / 16 * 16;
    return c < 16 ? 16 : c > 512 ? 512 : c;
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
    ws->chunk_max = row_chunk(max_ntok);
    ws->nthreads = omp_get_max_threads();
    if (ws->nthreads < 1)
        ws->nthreads = 1;

    int64_t n_qkva, n_scratch, n_scores, n_rope, t;
    const int64_t rb = max_seq_len < LB_ATT_ROW_BLOCK ? max_seq_len : LB_ATT_ROW_BLOCK;
    int ok = mul_ok(max_ntok, 2 * ws->q_dim + 2 * ws->kv_dim, &n_qkva) &&
             mul_ok(ws->chunk_max, ws->dim + 2 * ws->inter, &ws->scratch_stride) &&
             mul_ok(ws->scratch_stride, ws->nthreads, &n_scratch) && mul_ok(rb, max_seq_len, &t) &&
             mul_ok(t, ws->nthreads, &n_scores) && mul_ok(max_seq_len, hd / 2, &n_rope);
    if (!ok) {
        lb_fwd_workspace_free(&ws);
        return lb_err_set(err, LB_EINVAL, "forward workspace: sizes overflow (max_ntok %lld)",
                          (long long)max_ntok);
    }
    ws->qkva = alloc_floats(n_qkva);
    ws->scratch = alloc_floats(n_scratch);
    ws->scores = alloc_floats(n_scores);
    ws->rope_cos = alloc_floats(n_rope);
    ws->rope_sin = alloc_floats(n_rope);
    if (!ws->qkva || !ws->scratch || !ws->scores || !ws->rope_cos || !ws->rope_sin) {
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
    free((*ws)->qkva);
    free((*ws)->scratch);
    free((*ws)->scores);
    free((*ws)->rope_cos);
    free((*ws)->rope_sin);
    free(*ws);
    *ws = NULL;
}

int lb_fwd_embed(const lb_head_weights *head, const uint32_t *tokens, int64_t ntok, float *x,
                 lb_err *err)
{
    const int64_t dim = head->dim;
    for (int64_t t = 0; t < ntok; t++) {
        if ((int64_t)tokens[t] >= head->vocab)
            return lb_err_set(err, LB_EINVAL,
                              "embedding: token id %u at index %lld is >= vocab size %lld",
                              tokens[t], (long long)t, (long long)head->vocab);
        memcpy(x + t * dim, head->embed + (int64_t)tokens[t] * dim, (size_t)dim * sizeof(float));
    }
    return LB_OK;
}

/* out (rows, dim) = x * rsqrt(mean(x²) + eps) * g, per row (RMSNorm, Zhang &
 * Sennrich 2019, eq. 4). The sum of squares is taken in double, in order.
 * out may equal x. */
static void rms_rows(const float *x, const float *g, float *out, int64_t rows, int64_t dim,
                     double eps)
{
    for (int64_t t = 0; t < rows; t++) {
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

/* y (rows, n) += b (n,) on every row; b may be NULL. */
static void add_bias(float *y, const float *b, int64_t rows, int64_t n)
{
    if (!b)
        return;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t j = 0; j < n; j++)
            y[t * n + j] += b[j];
}

/* y (rows, out) = x (rows, in) @ W (out, in)ᵀ [+ b]; with beta 1 the product is
 * added to y (residual add). */
static void linear(const float *x, const float *w, const float *b, float beta, float *y,
                   int64_t rows, int64_t in, int64_t out_f)
{
    lb_sgemm(false, true, rows, out_f, in, 1.0f, x, in, w, in, beta, y, out_f);
    add_bias(y, b, rows, out_f);
}

/* Rotate-half RoPE (Su et al. 2021, eq. 34, HF layout) on rows [r0, r0+rows)
 * of v (ntok, n_heads * hd): for i < hd/2 the pair (v[i], v[i + hd/2]) of
 * each head is rotated by pos * theta^(-2i/hd), pos = row % seq_len. */
static void rope_rows(float *v, int64_t r0, int64_t rows, int64_t seq_len, int64_t n_heads,
                      int64_t hd, const float *cos_t, const float *sin_t)
{
    const int64_t half = hd / 2, width = n_heads * hd;
    for (int64_t t = r0; t < r0 + rows; t++) {
        const int64_t pos = t % seq_len;
        const float *c = cos_t + pos * half, *s = sin_t + pos * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *p = v + t * width + h * hd;
            for (int64_t i = 0; i < half; i++) {
                float a = p[i], b = p[i + half];
                p[i] = a * c[i] - b * s[i];
                p[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

static void copy_rows(float *dst, const float *src, int64_t r0, int64_t rows, int64_t width)
{
    if (dst)
        memcpy(dst + r0 * width, src, (size_t)(rows * width) * sizeof(float));
}

/* max of r[0..n), n >= 1 (max is exact, so the partial maxima change nothing) */
static float row_max(const float *r, int64_t n)
{
    float m[4] = {r[0], r[0], r[0], r[0]};
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        for (int u = 0; u < 4; u++)
            m[u] = r[j + u] > m[u] ? r[j + u] : m[u];
    for (; j < n; j++)
        m[0] = r[j] > m[0] ? r[j] : m[0];
    float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
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
                const float m = row_max(r, last + 1);
                /* four interleaved partial sums (fixed order: deterministic)
                 * break the add latency chain */
                double sum[4] = {0.0, 0.0, 0.0, 0.0};
                int64_t jj = 0;
                for (; jj + 4 <= last + 1; jj += 4)
                    for (int u = 0; u < 4; u++) {
                        r[jj + u] = expf(r[jj + u] - m);
                        sum[u] += (double)r[jj + u];
                    }
                for (; jj <= last; jj++) {
                    r[jj] = expf(r[jj] - m);
                    sum[0] += (double)r[jj];
                }
                const float inv = (float)(1.0 / ((sum[0] + sum[1]) + (sum[2] + sum[3])));
                for (jj = 0; jj <= last; jj++)
                    r[jj] *= inv;
                for (jj = last + 1; jj < nk; jj++)
                    r[jj] = 0.0f;
            }
            // O[r0:r0+rows] (rows, hd) = P (rows, nk) @ V[0:nk] (nk, hd)
            lb_sgemm(false, false, rows, hd, nk, 1.0f, S, nk, V, kv_dim, 0.0f, O + r0 * q_dim,
                     q_dim);
        }
    }
}

int lb_fwd_block(const lb_config *cfg, const lb_block_weights *w, float *x, int64_t n_seq,
                 int64_t seq_len, lb_fwd_workspace *ws, const lb_fwd_capture *capture, lb_err *err)
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
    const int64_t chunk = row_chunk(ntok), nchunks = (ntok + chunk - 1) / chunk;
    const lb_fwd_capture nocap = {0};
    const lb_fwd_capture *cap = capture ? capture : &nocap;
    float *q = ws->qkva, *k = q + ntok * q_dim, *v = k + ntok * kv_dim, *att = v + ntok * kv_dim;
    /* the current OpenMP setting, capped by the per-thread buffers */
    const int nthreads =
        omp_get_max_threads() < ws->nthreads ? omp_get_max_threads() : ws->nthreads;
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);

    // attention input, row-local: xn = rms(x); q, k, v = xn @ W{q,k,v}ᵀ + b; RoPE on q, k
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t r0 = c * chunk, rows = ntok - r0 < chunk ? ntok - r0 : chunk;
        float *xn = ws->scratch + (int64_t)omp_get_thread_num() * ws->scratch_stride;
        rms_rows(x + r0 * dim, w->attn_norm, xn, rows, dim, eps);
        copy_rows(cap->attn_in, xn, r0, rows, dim);
        linear(xn, w->wq, w->bq, 0.0f, q + r0 * q_dim, rows, dim, q_dim);
        linear(xn, w->wk, w->bk, 0.0f, k + r0 * kv_dim, rows, dim, kv_dim);
        linear(xn, w->wv, w->bv, 0.0f, v + r0 * kv_dim, rows, dim, kv_dim);
        rope_rows(q, r0, rows, seq_len, n_heads, hd, ws->rope_cos, ws->rope_sin);
        rope_rows(k, r0, rows, seq_len, n_kv, hd, ws->rope_cos, ws->rope_sin);
    }

    attention(q, k, v, att, n_seq, seq_len, n_heads, n_kv, hd, ws->scores, nthreads);

    // rest of the block, row-local: x += att @ Woᵀ (+ bo); then the SwiGLU MLP
    // (Shazeer 2020, eq. 6): x += (silu(xn @ Wgᵀ) * (xn @ Wuᵀ)) @ Wdᵀ, xn = rms(x)
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t r0 = c * chunk, rows = ntok - r0 < chunk ? ntok - r0 : chunk;
        float *xn = ws->scratch + (int64_t)omp_get_thread_num() * ws->scratch_stride;
        float *gate = xn + ws->chunk_max * dim, *up = gate + ws->chunk_max * inter;
        float *xr = x + r0 * dim;
        copy_rows(cap->attn_out, att + r0 * q_dim, r0, rows, q_dim);
        linear(att + r0 * q_dim, w->wo, w->bo, 1.0f, xr, rows, q_dim, dim);
        rms_rows(xr, w->ffn_norm, xn, rows, dim, eps);
        copy_rows(cap->mlp_in, xn, r0, rows, dim);
        linear(xn, w->w_gate, w->b_gate, 0.0f, gate, rows, dim, inter);
        linear(xn, w->w_up, w->b_up, 0.0f, up, rows, dim, inter);
        for (int64_t i = 0; i < rows * inter; i++)
            gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        copy_rows(cap->mlp_act, gate, r0, rows, inter);
        linear(gate, w->w_down, w->b_down, 1.0f, xr, rows, inter, dim);
    }
    lb_blas_set_threads(blas_threads);
    return LB_OK;
}

void lb_fwd_logits(const lb_config *cfg, const lb_head_weights *head, float *x, int64_t ntok,
                   float *logits)
{
    const int64_t dim = head->dim, vocab = head->vocab;
    const int64_t chunk = row_chunk(ntok), nchunks = (ntok + chunk - 1) / chunk;
    const double eps = cfg->rms_norm_eps;
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
    // logits (ntok, vocab) = rms(x) (ntok, dim) @ lm_head (vocab, dim)ᵀ, per row chunk
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t r0 = c * chunk, rows = ntok - r0 < chunk ? ntok - r0 : chunk;
        rms_rows(x + r0 * dim, head->final_norm, x + r0 * dim, rows, dim, eps);
        linear(x + r0 * dim, head->lm_head, NULL, 0.0f, logits + r0 * vocab, rows, dim, vocab);
    }
    lb_blas_set_threads(blas_threads);
}

void lb_fwd_final_norm(const lb_config *cfg, const float *final_norm, float *x, int64_t ntok,
                       int64_t dim)
{
    const int64_t chunk = row_chunk(ntok), nchunks = (ntok + chunk - 1) / chunk;
    const double eps = cfg->rms_norm_eps;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t r0 = c * chunk, rows = ntok - r0 < chunk ? ntok - r0 : chunk;
        rms_rows(x + r0 * dim, final_norm, x + r0 * dim, rows, dim, eps);
    }
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
