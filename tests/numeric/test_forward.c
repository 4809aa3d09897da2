/* Forward pass: the batched fp32 forward (lb_forward) against a naive
 * one-token-at-a-time double-precision forward written here (llama2.c style),
 * on random-weight toy configs; and the real stories260K fixture against its
 * float64 reference.json. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lb_eval.h"
#include "lb_forward.h"
#include "lb_model.h"
#include "lb_test_model.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

/* ---- toy model with random weights ------------------------------------- */

typedef struct {
    lb_config cfg;
    lb_block_weights *blocks;
    lb_head_weights head;
} toy_model;

static void fill_normal(float *p, int64_t n, float scale, float offset, uint64_t *rng)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = offset + scale * lb_test_rand_normal(rng);
}

static lb_config toy_config(int32_t dim, int32_t n_heads, int32_t n_kv, int32_t head_dim,
                            int32_t inter, int32_t vocab, int32_t layers)
{
    lb_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, "llama");
    c.hidden_size = dim;
    c.intermediate_size = inter;
    c.num_hidden_layers = layers;
    c.num_attention_heads = n_heads;
    c.num_key_value_heads = n_kv;
    c.head_dim = head_dim;
    c.vocab_size = vocab;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    strcpy(c.hidden_act, "silu");
    return c;
}

static void toy_new(toy_model *m, const lb_config *cfg, bool tied, uint64_t seed)
{
    lb_err err = {0};
    uint64_t rng = seed;
    m->cfg = *cfg;
    m->blocks = calloc((size_t)cfg->num_hidden_layers, sizeof *m->blocks);
    assert_non_null(m->blocks);
    int64_t dim = cfg->hidden_size, inter = cfg->intermediate_size;
    int64_t q_dim = lb_config_q_dim(cfg), kv_dim = lb_config_kv_dim(cfg);
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++) {
        lb_block_weights *w = &m->blocks[l];
        assert_int_equal(lb_block_weights_alloc(cfg, w, &err), 0);
        float sd = 1.0f / sqrtf((float)dim), si = 1.0f / sqrtf((float)inter);
        float sq = 1.0f / sqrtf((float)q_dim);
        fill_normal(w->attn_norm, dim, 0.1f, 1.0f, &rng);
        fill_normal(w->ffn_norm, dim, 0.1f, 1.0f, &rng);
        /* larger q/k so attention is far from uniform */
        fill_normal(w->wq, q_dim * dim, 3.0f * sd, 0.0f, &rng);
        fill_normal(w->wk, kv_dim * dim, 3.0f * sd, 0.0f, &rng);
        fill_normal(w->wv, kv_dim * dim, sd, 0.0f, &rng);
        fill_normal(w->wo, dim * q_dim, sq, 0.0f, &rng);
        fill_normal(w->w_gate, inter * dim, sd, 0.0f, &rng);
        fill_normal(w->w_up, inter * dim, sd, 0.0f, &rng);
        fill_normal(w->w_down, dim * inter, si, 0.0f, &rng);
        if (w->bq) {
            fill_normal(w->bq, q_dim, 0.5f, 0.0f, &rng);
            fill_normal(w->bk, kv_dim, 0.5f, 0.0f, &rng);
            fill_normal(w->bv, kv_dim, 0.5f, 0.0f, &rng);
        }
        if (w->bo)
            fill_normal(w->bo, dim, 0.2f, 0.0f, &rng);
        if (w->b_gate) {
            fill_normal(w->b_gate, inter, 0.2f, 0.0f, &rng);
            fill_normal(w->b_up, inter, 0.2f, 0.0f, &rng);
            fill_normal(w->b_down, dim, 0.2f, 0.0f, &rng);
        }
    }
    assert_int_equal(lb_head_weights_alloc(cfg, tied, &m->head, &err), 0);
    fill_normal(m->head.embed, (int64_t)cfg->vocab_size * dim, 1.0f, 0.0f, &rng);
    fill_normal(m->head.final_norm, dim, 0.1f, 1.0f, &rng);
    if (!tied)
        fill_normal(m->head.lm_head, (int64_t)cfg->vocab_size * dim, 0.5f, 0.0f, &rng);
}

static void toy_free(toy_model *m)
{
    for (int32_t l = 0; l < m->cfg.num_hidden_layers; l++)
        lb_block_weights_free(&m->blocks[l]);
    free(m->blocks);
    lb_head_weights_free(&m->head);
}

/* ---- naive reference: one token at a time, double, KV cache ------------- */

static void naive_rmsnorm(const double *x, const float *g, double *o, int64_t n, double eps)
{
    double ss = 0;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        o[i] = x[i] * inv * (double)g[i];
}

// W (rows, cols) @ x (cols,) [+ b] -> y (rows,)
static void naive_matvec(const float *w, const float *b, const double *x, double *y, int64_t rows,
                         int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        double s = b ? (double)b[r] : 0.0;
        for (int64_t c = 0; c < cols; c++)
            s += (double)w[r * cols + c] * x[c];
        y[r] = s;
    }
}

static void naive_rope(double *v, int64_t n_heads, int64_t hd, int64_t pos, double theta)
{
    for (int64_t h = 0; h < n_heads; h++)
        for (int64_t i = 0; i < hd / 2; i++) {
            double a = (double)pos * pow(theta, -2.0 * (double)i / (double)hd);
            double x0 = v[h * hd + i], x1 = v[h * hd + i + hd / 2];
            v[h * hd + i] = x0 * cos(a) - x1 * sin(a);
            v[h * hd + i + hd / 2] = x1 * cos(a) + x0 * sin(a);
        }
}

/* Captured inputs of layer cap_layer's linears, (seq_len, width) each. */
typedef struct {
    int32_t layer;
    double *attn_in, *attn_out, *mlp_in, *mlp_act;
} naive_capture;

/* One sequence: tokens (seq_len,) -> logits (seq_len, vocab). */
static void naive_forward(const toy_model *m, const uint32_t *tokens, int64_t seq_len,
                          double *logits, naive_capture *cap)
{
    const lb_config *c = &m->cfg;
    const int64_t dim = c->hidden_size, hd = c->head_dim, nh = c->num_attention_heads;
    const int64_t nkv = c->num_key_value_heads, inter = c->intermediate_size;
    const int64_t qd = nh * hd, kvd = nkv * hd, L = c->num_hidden_layers, V = c->vocab_size;
    double *kc = calloc((size_t)(L * seq_len * kvd), sizeof(double));
    double *vc = calloc((size_t)(L * seq_len * kvd), sizeof(double));
    double *x = calloc((size_t)dim, sizeof(double)), *xn = calloc((size_t)dim, sizeof(double));
    double *q = calloc((size_t)qd, sizeof(double)), *att = calloc((size_t)qd, sizeof(double));
    double *o = calloc((size_t)dim, sizeof(double)), *sc = calloc((size_t)seq_len, sizeof(double));
    double *g = calloc((size_t)inter, sizeof(double)), *u = calloc((size_t)inter, sizeof(double));
    for (int64_t pos = 0; pos < seq_len; pos++) {
        for (int64_t i = 0; i < dim; i++)
            x[i] = (double)m->head.embed[(int64_t)tokens[pos] * dim + i];
        for (int64_t l = 0; l < L; l++) {
            const lb_block_weights *w = &m->blocks[l];
            double *kr = kc + (l * seq_len + pos) * kvd, *vr = vc + (l * seq_len + pos) * kvd;
            naive_rmsnorm(x, w->attn_norm, xn, dim, c->rms_norm_eps);
            if (cap && l == cap->layer)
                memcpy(cap->attn_in + pos * dim, xn, (size_t)dim * sizeof(double));
            naive_matvec(w->wq, w->bq, xn, q, qd, dim);
            naive_matvec(w->wk, w->bk, xn, kr, kvd, dim);
            naive_matvec(w->wv, w->bv, xn, vr, kvd, dim);
            naive_rope(q, nh, hd, pos, c->rope_theta);
            naive_rope(kr, nkv, hd, pos, c->rope_theta);
            for (int64_t h = 0; h < nh; h++) {
                int64_t kvh = h / (nh / nkv);
                double mx = -INFINITY, sum = 0;
                for (int64_t t = 0; t <= pos; t++) {
                    double s = 0;
                    for (int64_t i = 0; i < hd; i++)
                        s += q[h * hd + i] * kc[(l * seq_len + t) * kvd + kvh * hd + i];
                    sc[t] = s / sqrt((double)hd);
                    mx = sc[t] > mx ? sc[t] : mx;
                }
                for (int64_t t = 0; t <= pos; t++) {
                    sc[t] = exp(sc[t] - mx);
                    sum += sc[t];
                }
                for (int64_t i = 0; i < hd; i++) {
                    double a = 0;
                    for (int64_t t = 0; t <= pos; t++)
                        a += sc[t] / sum * vc[(l * seq_len + t) * kvd + kvh * hd + i];
                    att[h * hd + i] = a;
                }
            }
            if (cap && l == cap->layer)
                memcpy(cap->attn_out + pos * qd, att, (size_t)qd * sizeof(double));
            naive_matvec(w->wo, w->bo, att, o, dim, qd);
            for (int64_t i = 0; i < dim; i++)
                x[i] += o[i];
            naive_rmsnorm(x, w->ffn_norm, xn, dim, c->rms_norm_eps);
            if (cap && l == cap->layer)
                memcpy(cap->mlp_in + pos * dim, xn, (size_t)dim * sizeof(double));
            naive_matvec(w->w_gate, w->b_gate, xn, g, inter, dim);
            naive_matvec(w->w_up, w->b_up, xn, u, inter, dim);
            for (int64_t i = 0; i < inter; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            if (cap && l == cap->layer)
                memcpy(cap->mlp_act + pos * inter, g, (size_t)inter * sizeof(double));
            naive_matvec(w->w_down, w->b_down, g, o, dim, inter);
            for (int64_t i = 0; i < dim; i++)
                x[i] += o[i];
        }
        naive_rmsnorm(x, m->head.final_norm, xn, dim, c->rms_norm_eps);
        naive_matvec(m->head.lm_head, NULL, xn, logits + pos * V, V, dim);
    }
    free(kc);
    free(vc);
    free(x);
    free(xn);
    free(q);
    free(att);
    free(o);
    free(sc);
    free(g);
    free(u);
}

static double max_abs_diff(const float *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) /* NaN propagates as a failure */
            m = isnan(d) ? (double)INFINITY : d;
    }
    return m;
}

/* fp32 batched forward vs naive double forward. Tolerance: logits and captured
 * activations within 2e-4 absolute (their magnitudes are O(1..10); fp32
 * rounding through 2 layers gives ~1e-5 here). */
static void check_toy(const lb_config *cfg, bool tied, int64_t n_seq, int64_t seq_len,
                      uint64_t seed)
{
    lb_err err = {0};
    toy_model m;
    toy_new(&m, cfg, tied, seed);
    const int64_t ntok = n_seq * seq_len, dim = cfg->hidden_size, V = cfg->vocab_size;
    const int64_t qd = lb_config_q_dim(cfg), inter = cfg->intermediate_size;
    const int32_t cap_layer = cfg->num_hidden_layers - 1;
    uint32_t *tok = malloc((size_t)ntok * sizeof(uint32_t));
    uint64_t rng = seed ^ 0x5555;
    for (int64_t i = 0; i < ntok; i++)
        tok[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)V);

    float *x = malloc((size_t)(ntok * dim) * sizeof(float));
    float *logits = malloc((size_t)(ntok * V) * sizeof(float));
    lb_fwd_capture cap = {
        .attn_in = malloc((size_t)(ntok * dim) * sizeof(float)),
        .attn_out = malloc((size_t)(ntok * qd) * sizeof(float)),
        .mlp_in = malloc((size_t)(ntok * dim) * sizeof(float)),
        .mlp_act = malloc((size_t)(ntok * inter) * sizeof(float)),
    };
    lb_fwd_workspace *ws = NULL;
    /* workspace larger than the batch: the block must handle ntok < max_ntok */
    assert_int_equal(lb_fwd_workspace_new(cfg, ntok + 5, seq_len + 3, &ws, &err), 0);
    assert_int_equal(lb_fwd_embed(&m.head, tok, ntok, x, &err), 0);
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++)
        assert_int_equal(lb_fwd_block(cfg, &m.blocks[l], x, n_seq, seq_len, ws,
                                      l == cap_layer ? &cap : NULL, &err),
                         0);
    lb_fwd_logits(cfg, &m.head, x, ntok, logits);

    double *ref = malloc((size_t)(seq_len * V) * sizeof(double));
    naive_capture nc = {
        .layer = cap_layer,
        .attn_in = malloc((size_t)(seq_len * dim) * sizeof(double)),
        .attn_out = malloc((size_t)(seq_len * qd) * sizeof(double)),
        .mlp_in = malloc((size_t)(seq_len * dim) * sizeof(double)),
        .mlp_act = malloc((size_t)(seq_len * inter) * sizeof(double)),
    };
    double worst = 0, lmax = 0;
    for (int64_t s = 0; s < n_seq; s++) {
        naive_forward(&m, tok + s * seq_len, seq_len, ref, &nc);
        for (int64_t i = 0; i < seq_len * V; i++)
            lmax = fmax(lmax, fabs(ref[i]));
        double d[5] = {
            max_abs_diff(logits + s * seq_len * V, ref, seq_len * V),
            max_abs_diff(cap.attn_in + s * seq_len * dim, nc.attn_in, seq_len * dim),
            max_abs_diff(cap.attn_out + s * seq_len * qd, nc.attn_out, seq_len * qd),
            max_abs_diff(cap.mlp_in + s * seq_len * dim, nc.mlp_in, seq_len * dim),
            max_abs_diff(cap.mlp_act + s * seq_len * inter, nc.mlp_act, seq_len * inter),
        };
        for (int i = 0; i < 5; i++) {
            if (!(d[i] <= 2e-4))
                fail_msg("seq %lld: %s differs from the naive forward by %g (tolerance 2e-4)",
                         (long long)s,
                         (const char *[]){"logits", "attn_in", "attn_out", "mlp_in", "mlp_act"}[i],
                         d[i]);
            worst = fmax(worst, d[i]);
        }
    }
    /* the check is not vacuous: logits are O(1) and vary */
    assert_true(lmax > 0.5);
    print_message("[   INFO   ] toy forward: max |fp32 - naive f64| = %.3g (max |logit| %.3g)\n",
                  worst, lmax);

    free(nc.attn_in);
    free(nc.attn_out);
    free(nc.mlp_in);
    free(nc.mlp_act);
    free(ref);
    free(cap.attn_in);
    free(cap.attn_out);
    free(cap.mlp_in);
    free(cap.mlp_act);
    free(x);
    free(logits);
    free(tok);
    lb_fwd_workspace_free(&ws);
    assert_null(ws);
    toy_free(&m);
}

/* GQA (6 heads over 2 kv heads), qwen2-style q/k/v biases, head_dim 10 != 48/6,
 * untied lm_head. */
static void test_toy_gqa_qwen2_bias(void **state)
{
    (void)state;
    lb_config cfg = toy_config(48, 6, 2, 10, 40, 37, 2);
    cfg.attention_bias = true;
    check_toy(&cfg, false, 3, 9, 11);
}

/* llama attention_bias (q/k/v/o biases) + mlp_bias, no GQA, tied embeddings. */
static void test_toy_llama_all_biases(void **state)
{
    (void)state;
    lb_config cfg = toy_config(32, 4, 4, 8, 24, 29, 3);
    cfg.attention_bias = true;
    cfg.o_bias = true;
    cfg.mlp_bias = true;
    cfg.tie_word_embeddings = true;
    check_toy(&cfg, true, 2, 12, 12);
}

/* Plain llama: one sequence of length 1 and a batch of single tokens. */
static void test_toy_short_sequences(void **state)
{
    (void)state;
    lb_config cfg = toy_config(16, 2, 1, 8, 20, 11, 1);
    check_toy(&cfg, false, 1, 1, 13);
    check_toy(&cfg, false, 5, 1, 14);
}

/* Long sequences: RoPE angles at positions up to 299, chunked projections
 * over 600 rows (several row chunks), attention over 300 keys. */
static void test_toy_long_sequence(void **state)
{
    (void)state;
    lb_config cfg = toy_config(16, 4, 2, 6, 12, 13, 1);
    check_toy(&cfg, false, 2, 300, 15);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_config cfg = toy_config(16, 2, 1, 8, 20, 11, 1);
    toy_model m;
    toy_new(&m, &cfg, false, 3);
    lb_fwd_workspace *ws = NULL;
    assert_int_equal(lb_fwd_workspace_new(&cfg, 8, 4, &ws, &err), 0);
    float x[16 * 12] = {0};
    uint32_t tok[3] = {1, 11, 2};
    assert_int_equal(lb_fwd_embed(&m.head, tok, 3, x, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "index 1"));
    /* seq_len above the workspace's, and a batch above max_ntok */
    assert_int_equal(lb_fwd_block(&cfg, &m.blocks[0], x, 1, 5, ws, NULL, &err), LB_EINVAL);
    assert_int_equal(lb_fwd_block(&cfg, &m.blocks[0], x, 3, 3, ws, NULL, &err), LB_EINVAL);
    lb_config other = toy_config(16, 2, 2, 8, 20, 11, 1);
    assert_int_equal(lb_fwd_block(&other, &m.blocks[0], x, 1, 4, ws, NULL, &err), LB_EINVAL);
    lb_config windowed = cfg;
    windowed.sliding_window = 3;
    assert_int_equal(lb_fwd_block(&windowed, &m.blocks[0], x, 1, 4, ws, NULL, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "sliding_window"));
    windowed.sliding_window = 4;
    assert_int_equal(lb_fwd_block(&windowed, &m.blocks[0], x, 1, 4, ws, NULL, &err), 0);
    lb_config odd = toy_config(15, 3, 1, 5, 20, 11, 1);
    lb_fwd_workspace *ws2 = NULL;
    assert_int_equal(lb_fwd_workspace_new(&odd, 8, 4, &ws2, &err), LB_EINVAL);
    assert_null(ws2);
    lb_fwd_workspace_free(&ws);
    lb_fwd_workspace_free(&ws);
    toy_free(&m);
}

/* ---- models on disk: loader + streamed forward --------------------------- */

static void read_named(const lb_st *st, const char *name, float *dst, int64_t numel)
{
    lb_err err = {0};
    if (lb_st_read_f32(st, name, dst, numel, &err))
        fail_msg("%s", err.msg);
}

/* Fills a toy_model straight from the safetensors by HF name (independent of
 * lb_model's own name table). */
static void toy_from_disk(toy_model *m, const lb_model *model)
{
    const lb_config *cfg = lb_model_config(model);
    const lb_st *st = lb_model_tensors(model);
    lb_err err = {0};
    char n[160];
    const int64_t d = cfg->hidden_size, in = cfg->intermediate_size, V = cfg->vocab_size;
    const int64_t q = lb_config_q_dim(cfg), kv = lb_config_kv_dim(cfg);
    m->cfg = *cfg;
    m->blocks = calloc((size_t)cfg->num_hidden_layers, sizeof *m->blocks);
    assert_non_null(m->blocks);
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++) {
        lb_block_weights *w = &m->blocks[l];
        assert_int_equal(lb_block_weights_alloc(cfg, w, &err), 0);
#define R(field, suffix, numel)                                                                    \
    do {                                                                                           \
        snprintf(n, sizeof n, "model.layers.%d." suffix, (int)l);                                  \
        read_named(st, n, w->field, numel);                                                        \
    } while (0)
        R(attn_norm, "input_layernorm.weight", d);
        R(wq, "self_attn.q_proj.weight", q * d);
        R(wk, "self_attn.k_proj.weight", kv * d);
        R(wv, "self_attn.v_proj.weight", kv * d);
        if (cfg->attention_bias) {
            R(bq, "self_attn.q_proj.bias", q);
            R(bk, "self_attn.k_proj.bias", kv);
            R(bv, "self_attn.v_proj.bias", kv);
        }
        R(wo, "self_attn.o_proj.weight", d * q);
        if (cfg->o_bias)
            R(bo, "self_attn.o_proj.bias", d);
        R(ffn_norm, "post_attention_layernorm.weight", d);
        R(w_gate, "mlp.gate_proj.weight", in * d);
        R(w_up, "mlp.up_proj.weight", in * d);
        R(w_down, "mlp.down_proj.weight", d * in);
        if (cfg->mlp_bias) {
            R(b_gate, "mlp.gate_proj.bias", in);
            R(b_up, "mlp.up_proj.bias", in);
            R(b_down, "mlp.down_proj.bias", d);
        }
#undef R
    }
    assert_int_equal(lb_head_weights_alloc(cfg, cfg->tie_word_embeddings, &m->head, &err), 0);
    read_named(st, "model.embed_tokens.weight", m->head.embed, V * d);
    read_named(st, "model.norm.weight", m->head.final_norm, d);
    if (!cfg->tie_word_embeddings)
        read_named(st, "lm_head.weight", m->head.lm_head, V * d);
}

static void check_disk_model(const lb_config *cfg, uint64_t seed)
{
    lb_err err = {0};
    char *dir = lb_test_mkdtemp();
    assert_non_null(dir);
    if (lb_test_model_write(dir, cfg, seed, NULL, NULL, &err))
        fail_msg("%s", err.msg);
    lb_model *model = NULL;
    if (lb_model_open(&model, dir, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(lb_model_config(model)->attention_bias, cfg->attention_bias);
    toy_model m;
    toy_from_disk(&m, model);
    const int64_t n_seq = 2, seq_len = 11, V = cfg->vocab_size;
    uint32_t tok[22];
    uint64_t rng = seed;
    for (int i = 0; i < 22; i++)
        tok[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)V);
    float *logits = malloc((size_t)(n_seq * seq_len * V) * sizeof(float));
    double *ref = malloc((size_t)(seq_len * V) * sizeof(double));
    if (lb_model_forward(model, tok, n_seq, seq_len, logits, &err))
        fail_msg("%s", err.msg);
    for (int64_t s = 0; s < n_seq; s++) {
        naive_forward(&m, tok + s * seq_len, seq_len, ref, NULL);
        double d = max_abs_diff(logits + s * seq_len * V, ref, seq_len * V);
        if (!(d <= 2e-4))
            fail_msg("model on disk: logits differ from the naive forward by %g", d);
    }
    /* lb_model_load_block gives exactly the tensors on disk */
    lb_block_weights w = {0};
    int32_t last = cfg->num_hidden_layers - 1;
    assert_int_equal(lb_model_load_block(model, last, &w, &err), 0);
    for (int k = 0; k < LB_LINEAR_COUNT; k++) {
        int64_t rows, cols;
        lb_linear_shape(cfg, (lb_linear)k, &rows, &cols);
        char name[160];
        assert_int_equal(lb_model_linear_tensor_name(name, sizeof name, last, (lb_linear)k, &err),
                         0);
        float *want = malloc((size_t)(rows * cols) * sizeof(float));
        read_named(lb_model_tensors(model), name, want, rows * cols);
        assert_memory_equal(lb_block_linear(&w, (lb_linear)k), want,
                            (size_t)(rows * cols) * sizeof(float));
        free(want);
    }
    assert_true((w.bq != NULL) == cfg->attention_bias);
    assert_true((w.bo != NULL) == cfg->o_bias);
    assert_true((w.b_down != NULL) == cfg->mlp_bias);
    lb_block_weights_free(&w);
    assert_null(w.wq);
    assert_int_equal(lb_model_load_block(model, cfg->num_hidden_layers, &w, &err), LB_EINVAL);
    assert_null(w.wq);
    free(logits);
    free(ref);
    toy_free(&m);
    lb_model_free(&model);
    lb_test_rmdir(&dir);
}

static void test_linear_table(void **state)
{
    (void)state;
    lb_config cfg = toy_config(48, 6, 2, 10, 40, 37, 2);
    const int64_t want[LB_LINEAR_COUNT][2] = {{60, 48}, {20, 48}, {20, 48}, {48, 60},
                                              {40, 48}, {40, 48}, {48, 40}};
    const char *names[LB_LINEAR_COUNT] = {"self_attn.q_proj", "self_attn.k_proj",
                                          "self_attn.v_proj", "self_attn.o_proj",
                                          "mlp.gate_proj",    "mlp.up_proj",
                                          "mlp.down_proj"};
    lb_block_weights w = {0};
    lb_err err = {0};
    assert_int_equal(lb_block_weights_alloc(&cfg, &w, &err), 0);
    float *const ptrs[LB_LINEAR_COUNT] = {w.wq, w.wk, w.wv, w.wo, w.w_gate, w.w_up, w.w_down};
    for (int k = 0; k < LB_LINEAR_COUNT; k++) {
        int64_t r, c;
        lb_linear_shape(&cfg, (lb_linear)k, &r, &c);
        assert_int_equal(r, want[k][0]);
        assert_int_equal(c, want[k][1]);
        assert_string_equal(lb_linear_name((lb_linear)k), names[k]);
        assert_ptr_equal(lb_block_linear(&w, (lb_linear)k), ptrs[k]);
    }
    assert_null(lb_linear_name(LB_LINEAR_COUNT));
    assert_null(lb_block_linear(&w, LB_LINEAR_COUNT));
    char buf[40];
    assert_int_equal(lb_model_linear_tensor_name(buf, sizeof buf, 12, LB_LINEAR_DOWN, &err), 0);
    assert_string_equal(buf, "model.layers.12.mlp.down_proj.weight");
    assert_int_equal(lb_model_linear_tensor_name(buf, 20, 12, LB_LINEAR_DOWN, &err), LB_EINVAL);
    assert_null(w.bo);
    lb_block_weights_free(&w);
    assert_null(w.wq);
    lb_block_weights_free(&w);
}

static void test_disk_qwen2(void **state)
{
    (void)state;
    lb_config cfg = lb_test_model_config(24, 4, 2, 10, 30, 41, 2);
    cfg.arch = LB_ARCH_QWEN2;
    strcpy(cfg.model_type, "qwen2");
    cfg.attention_bias = true;
    check_disk_model(&cfg, 21);
}

static void test_disk_llama_tied_biases(void **state)
{
    (void)state;
    lb_config cfg = lb_test_model_config(16, 2, 2, 8, 20, 19, 2);
    cfg.tie_word_embeddings = true;
    cfg.attention_bias = true;
    cfg.o_bias = true;
    cfg.mlp_bias = true;
    check_disk_model(&cfg, 22);
}

/* Overwrites element `index` of an F32 tensor in dir/model.safetensors with NaN. */
static void poke_nan(const char *dir, const char *name, int64_t index)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    unsigned char len8[8];
    assert_int_equal(fread(len8, 1, 8, f), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    char *hdr = calloc(1, (size_t)hlen + 1);
    assert_int_equal(fread(hdr, 1, (size_t)hlen, f), hlen);
    json_error_t jerr;
    json_t *root = json_loads(hdr, 0, &jerr);
    assert_non_null(root);
    json_t *offs = json_object_get(json_object_get(root, name), "data_offsets");
    assert_non_null(offs);
    long pos =
        (long)(8 + hlen) + (long)json_integer_value(json_array_get(offs, 0)) + (long)index * 4;
    float nan = NAN;
    assert_int_equal(fseek(f, pos, SEEK_SET), 0);
    assert_int_equal(fwrite(&nan, 4, 1, f), 1);
    fclose(f);
    json_decref(root);
    free(hdr);
}

static void test_disk_errors(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_config cfg = lb_test_model_config(16, 2, 1, 8, 20, 19, 2);
    char *dir = lb_test_mkdtemp();
    lb_model *model = NULL;
    assert_int_equal(
        lb_test_model_write(dir, &cfg, 1, "model.layers.1.mlp.up_proj.weight", NULL, &err), 0);
    assert_int_equal(lb_model_open(&model, dir, &err), LB_ENOTFOUND);
    assert_null(model);
    assert_non_null(strstr(err.msg, "model.layers.1.mlp.up_proj.weight"));
    assert_non_null(strstr(err.msg, dir));

    assert_int_equal(
        lb_test_model_write(dir, &cfg, 1, NULL, "model.layers.0.self_attn.k_proj.weight", &err), 0);
    assert_int_equal(lb_model_open(&model, dir, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "model.layers.0.self_attn.k_proj.weight"));
    assert_non_null(strstr(err.msg, "[9, 16]"));

    /* untied model without lm_head */
    assert_int_equal(lb_test_model_write(dir, &cfg, 1, "lm_head.weight", NULL, &err), 0);
    assert_int_equal(lb_model_open(&model, dir, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "lm_head.weight"));

    /* a NaN in a weight: open succeeds (no conversion), loading the block fails */
    assert_int_equal(lb_test_model_write(dir, &cfg, 1, NULL, NULL, &err), 0);
    poke_nan(dir, "model.layers.1.self_attn.o_proj.weight", 5);
    assert_int_equal(lb_model_open(&model, dir, &err), 0);
    lb_block_weights w = {0};
    assert_int_equal(lb_model_load_block(model, 0, &w, &err), 0);
    lb_block_weights_free(&w);
    assert_int_equal(lb_model_load_block(model, 1, &w, &err), LB_ENUMERIC);
    assert_non_null(strstr(err.msg, "model.layers.1.self_attn.o_proj.weight"));
    assert_non_null(strstr(err.msg, "element 5"));
    assert_null(w.wq);
    float *logits = malloc(4 * 19 * sizeof(float));
    uint32_t tok[4] = {1, 2, 3, 4};
    assert_int_equal(lb_model_forward(model, tok, 1, 4, logits, &err), LB_ENUMERIC);
    free(logits);
    lb_model_free(&model);
    lb_test_rmdir(&dir);

    assert_int_equal(lb_model_open(&model, "/nonexistent/lowbit-model", &err) < 0, 1);
    assert_null(model);
    lb_model_free(&model);
}

/* ---- the real fixture vs reference.json -------------------------------- */

static void test_fixture_reference(void **state)
{
    (void)state;
    char dir[4096], tpath[4096], rpath[4200];
    LB_TEST_REQUIRE_SHARED(dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(tpath, "data/stories260K-eval.u32");
    snprintf(rpath, sizeof rpath, "%s/reference.json", dir);
    lb_err err = {0};
    json_error_t jerr;
    json_t *ref = json_load_file(rpath, 0, &jerr);
    assert_non_null(ref);
    json_t *l0 = json_object_get(ref, "logits_seq0");
    json_t *argmax = json_object_get(l0, "argmax");
    json_t *positions = json_object_get(l0, "positions");
    json_t *first8 = json_object_get(l0, "first8");
    assert_int_equal(json_array_size(argmax), 16);

    lb_model *m = NULL;
    if (lb_model_open(&m, dir, &err))
        fail_msg("%s", err.msg);
    const lb_config *cfg = lb_model_config(m);
    assert_int_equal(cfg->vocab_size, 512);
    uint32_t *tok = NULL;
    int64_t n = 0;
    assert_int_equal(lb_tokens_load(tpath, &tok, &n, &err), 0);
    assert_true(n >= 16);
    float *logits = malloc((size_t)16 * 512 * sizeof(float));
    assert_int_equal(lb_model_forward(m, tok, 1, 16, logits, &err), 0);
    for (int64_t p = 0; p < 16; p++) {
        int64_t am = 0;
        for (int64_t v = 1; v < 512; v++)
            if (logits[p * 512 + v] > logits[p * 512 + am])
                am = v;
        assert_int_equal(am, json_integer_value(json_array_get(argmax, (size_t)p)));
    }
    double worst = 0;
    for (size_t i = 0; i < json_array_size(positions); i++) {
        int64_t p = json_integer_value(json_array_get(positions, i));
        json_t *row = json_array_get(first8, i);
        assert_int_equal(json_array_size(row), 8);
        for (size_t j = 0; j < 8; j++) {
            double want = json_real_value(json_array_get(row, j));
            double d = fabs((double)logits[p * 512 + (int64_t)j] - want);
            if (!(d <= 1e-4))
                fail_msg("logit [%lld][%zu] = %.7f, reference %.7f", (long long)p, j,
                         (double)logits[p * 512 + (int64_t)j], want);
            worst = fmax(worst, d);
        }
    }
    print_message("[   INFO   ] stories260K: max |logit - reference| = %.3g\n", worst);

    /* eval ppl over the whole eval file, ctx 256 */
    lb_eval_opts opts = {.ctx = 256, .batch = 8};
    lb_eval_result r;
    if (lb_eval_run(m, NULL, tok, n, &opts, &r, &err))
        fail_msg("%s", err.msg);
    double want_ppl = json_real_value(json_object_get(ref, "eval_ppl"));
    assert_int_equal(r.tokens_scored, json_integer_value(json_object_get(ref, "tokens_scored")));
    assert_int_equal(r.windows, 64);
    assert_int_equal(r.tokens_dropped, 0);
    assert_false(r.has_ref);
    print_message("[   INFO   ] stories260K eval ppl %.6f (reference %.6f)\n", r.ppl, want_ppl);
    assert_true(fabs(r.ppl - want_ppl) <= 1e-4 * want_ppl);

    free(logits);
    free(tok);
    json_decref(ref);
    lb_model_free(&m);
    assert_null(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_toy_gqa_qwen2_bias),     cmocka_unit_test(test_toy_llama_all_biases),
        cmocka_unit_test(test_toy_short_sequences),    cmocka_unit_test(test_toy_long_sequence),
        cmocka_unit_test(test_bad_arguments),          cmocka_unit_test(test_linear_table),
        cmocka_unit_test(test_disk_qwen2),
        cmocka_unit_test(test_disk_llama_tied_biases), cmocka_unit_test(test_disk_errors),
        cmocka_unit_test(test_fixture_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
