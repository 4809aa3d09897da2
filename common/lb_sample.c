#include "lb_sample.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void lb_rng_seed(lb_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1b54a32d192ed03ull);
    uint64_t y = splitmix64(&x) ^ stream;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&y);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t lb_rng_next(lb_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double lb_rng_uniform(lb_rng *r)
{
    return (double)(lb_rng_next(r) >> 11) * 0x1.0p-53;
}

void lb_sample_opts_init(lb_sample_opts *o)
{
    o->temperature = 1.0;
    o->top_p = 1.0;
}

int lb_sample_opts_check(const lb_sample_opts *o, lb_err *err)
{
    if (!(o->temperature >= 0.0) || !isfinite(o->temperature))
        return lb_err_set(err, LB_EINVAL, "sampling: temperature %g must be finite and >= 0",
                          o->temperature);
    if (!(o->top_p > 0.0 && o->top_p <= 1.0))
        return lb_err_set(err, LB_EINVAL, "sampling: top-p %g must be in (0, 1]", o->top_p);
    return LB_OK;
}

/* Stable sort of ids by descending p (equal p keep ascending id): bottom-up merge sort. */
static void sort_desc(const double *p, int32_t *idx, int32_t *tmp, int64_t n)
{
    for (int64_t w = 1; w < n; w *= 2)
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int64_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi)
                tmp[o++] = (p[idx[b]] > p[idx[a]]) ? idx[b++] : idx[a++];
            while (a < mid)
                tmp[o++] = idx[a++];
            while (b < hi)
                tmp[o++] = idx[b++];
            memcpy(idx + lo, tmp + lo, (size_t)(hi - lo) * sizeof *idx);
        }
}

int64_t lb_sample_token(const float *logits, int64_t vocab, const lb_sample_opts *o, lb_rng *rng,
                        double *work_p, int32_t *work_idx)
{
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (o->temperature == 0.0)
        return best;
    // p_i = softmax(logits / T), in double
    const double m = (double)logits[best], inv_t = 1.0 / o->temperature;
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; i++) {
        work_p[i] = exp(((double)logits[i] - m) * inv_t);
        sum += work_p[i];
    }
    for (int64_t i = 0; i < vocab; i++)
        work_p[i] /= sum;
    int64_t keep = vocab;
    double mass = 1.0;
    if (o->top_p < 1.0) {
        // nucleus (Holtzman et al. 2020, eq. 2): smallest prefix with mass >= top_p
        int32_t *idx = work_idx;
        for (int64_t i = 0; i < vocab; i++)
            idx[i] = (int32_t)i;
        sort_desc(work_p, idx, idx + vocab, vocab);
        double acc = 0.0;
        keep = 0;
        while (keep < vocab) {
            acc += work_p[idx[keep++]];
            if (acc >= o->top_p)
                break;
        }
        mass = acc;
        double u = lb_rng_uniform(rng) * mass, c = 0.0;
        for (int64_t r = 0; r < keep; r++) {
            c += work_p[idx[r]];
            if (u < c)
                return idx[r];
        }
        return idx[keep - 1];
    }
    double u = lb_rng_uniform(rng) * mass, c = 0.0;
    int64_t last = 0;
    for (int64_t i = 0; i < vocab; i++) {
        if (work_p[i] > 0.0)
            last = i;
        c += work_p[i];
        if (u < c)
            return i;
    }
    return last;
}

/* ---- KV-cached decoder ---- */

struct lb_decoder {
    const lb_config *cfg;
    int64_t n_seq, max_len, pos;
    int64_t dim, q_dim, kv_dim, inter, hd, vocab;
    int32_t layers;
    lb_block_weights *blocks; /* (layers,) resident */
    lb_head_weights head;
    float *kcache, *vcache;   /* (layers, n_seq, max_len, kv_dim) */
    float *x;                 /* (n_seq, dim) residual stream */
    float *scratch;           /* per sequence: xn dim, q q_dim, k kv_dim, v kv_dim, att q_dim,
                                 gate inter, up inter, scores max_len */
    int64_t scratch_per_seq;
    float *rope_cos, *rope_sin; /* (max_len, hd/2) */
};

void lb_decoder_free(lb_decoder **dp)
{
    if (!dp || !*dp)
        return;
    lb_decoder *d = *dp;
    if (d->blocks)
        for (int32_t l = 0; l < d->layers; l++)
            lb_block_weights_free(&d->blocks[l]);
    free(d->blocks);
    lb_head_weights_free(&d->head);
    free(d->kcache);
    free(d->vcache);
    free(d->x);
    free(d->scratch);
    free(d->rope_cos);
    free(d->rope_sin);
    free(d);
    *dp = NULL;
}

static float *falloc(int64_t n)
{
    if (n <= 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return NULL;
    return malloc((size_t)n * sizeof(float));
}

int lb_decoder_new(const lb_model *m, int64_t n_seq, int64_t max_len, lb_decoder **out,
                   lb_err *err)
{
    *out = NULL;
    const lb_config *cfg = lb_model_config(m);
    if (n_seq < 1 || max_len < 1 || max_len > cfg->max_position_embeddings ||
        (cfg->sliding_window > 0 && max_len > cfg->sliding_window))
        return lb_err_set(err, LB_EINVAL,
                          "decoder: %lld sequences of %lld tokens; the length must be 1..%d "
                          "(max_position_embeddings / sliding_window of the model)",
                          (long long)n_seq, (long long)max_len,
                          (int)(cfg->sliding_window > 0 &&
                                        cfg->sliding_window < cfg->max_position_embeddings
                                    ? cfg->sliding_window
                                    : cfg->max_position_embeddings));
    lb_decoder *d = calloc(1, sizeof *d);
    if (!d)
        return lb_err_set(err, LB_ENOMEM, "decoder: out of memory");
    int rc = LB_OK;
    d->cfg = cfg;
    d->n_seq = n_seq;
    d->max_len = max_len;
    d->dim = cfg->hidden_size;
    d->hd = cfg->head_dim;
    d->q_dim = (int64_t)cfg->num_attention_heads * d->hd;
    d->kv_dim = (int64_t)cfg->num_key_value_heads * d->hd;
    d->inter = cfg->intermediate_size;
    d->vocab = cfg->vocab_size;
    d->layers = cfg->num_hidden_layers;
    d->blocks = calloc((size_t)d->layers, sizeof *d->blocks);
    if (!d->blocks) {
        rc = lb_err_set(err, LB_ENOMEM, "decoder: out of memory");
        goto fail;
    }
    for (int32_t l = 0; l < d->layers; l++)
        if ((rc = lb_model_load_block(m, l, &d->blocks[l], err)))
            goto fail;
    if ((rc = lb_model_load_head(m, &d->head, err)))
        goto fail;
    /* sizes are bounded by the validated config; the product check guards the cache */
    const int64_t per_layer = n_seq * max_len;
    if (per_layer / max_len != n_seq || d->kv_dim > INT64_MAX / per_layer / d->layers) {
        rc = lb_err_set(err, LB_EINVAL, "decoder: cache size overflows");
        goto fail;
    }
    const int64_t ncache = per_layer * d->kv_dim * d->layers;
    d->scratch_per_seq = d->dim + 2 * d->q_dim + 2 * d->kv_dim + 2 * d->inter + max_len;
    d->kcache = falloc(ncache);
    d->vcache = falloc(ncache);
    d->x = falloc(n_seq * d->dim);
    d->scratch = falloc(n_seq * d->scratch_per_seq);
    d->rope_cos = falloc(max_len * (d->hd / 2));
    d->rope_sin = falloc(max_len * (d->hd / 2));
    if (!d->kcache || !d->vcache || !d->x || !d->scratch || !d->rope_cos || !d->rope_sin) {
        rc = lb_err_set(err, LB_ENOMEM,
                        "decoder: out of memory for the KV cache of %lld x %lld tokens; lower "
                        "--batch",
                        (long long)n_seq, (long long)max_len);
        goto fail;
    }
    /* same tables as lb_forward: angle = pos * theta^(-2i/hd), in double, rounded once */
    const int64_t half = d->hd / 2;
    for (int64_t p = 0; p < max_len; p++)
        for (int64_t i = 0; i < half; i++) {
            double a = (double)p * pow(cfg->rope_theta, -2.0 * (double)i / (double)d->hd);
            d->rope_cos[p * half + i] = (float)cos(a);
            d->rope_sin[p * half + i] = (float)sin(a);
        }
    *out = d;
    return LB_OK;
fail:
    lb_decoder_free(&d);
    return rc;
}

int64_t lb_decoder_vocab(const lb_decoder *d)
{
    return d->vocab;
}

static void rms_row(const float *x, const float *g, float *o, int64_t dim, double eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < dim; i++)
        ss += (double)x[i] * (double)x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)dim + eps));
    for (int64_t i = 0; i < dim; i++)
        o[i] = x[i] * inv * g[i];
}

// y (n,) = W (n, k) @ x (k,) [+ b], one BLAS call per row vector
static void matvec(const float *W, const float *b, const float *x, float *y, int64_t n, int64_t k,
                   float beta)
{
    lb_sgemm(false, true, 1, n, k, 1.0f, x, k, W, k, beta, y, n);
    if (b)
        for (int64_t i = 0; i < n; i++)
            y[i] += b[i];
}

static void rope_row(float *v, int64_t n_heads, int64_t hd, const float *c, const float *s)
{
    const int64_t half = hd / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *p = v + h * hd;
        for (int64_t i = 0; i < half; i++) {
            float a = p[i], b = p[i + half];
            p[i] = a * c[i] - b * s[i];
            p[i + half] = b * c[i] + a * s[i];
        }
    }
}

int lb_decoder_step(lb_decoder *d, const uint32_t *tokens, float *logits, lb_err *err)
{
    if (d->pos >= d->max_len)
        return lb_err_set(err, LB_EINVAL, "decoder: cache of %lld positions is full",
                          (long long)d->max_len);
    for (int64_t s = 0; s < d->n_seq; s++)
        if ((int64_t)tokens[s] >= d->vocab)
            return lb_err_set(err, LB_EINVAL, "decoder: token id %u is >= vocab size %lld",
                              tokens[s], (long long)d->vocab);
    const int64_t pos = d->pos, dim = d->dim, hd = d->hd, q_dim = d->q_dim,
                  kv_dim = d->kv_dim, inter = d->inter, half = hd / 2;
    const int64_t n_heads = q_dim / hd, n_kv = kv_dim / hd, group = n_heads / n_kv;
    const double eps = d->cfg->rms_norm_eps;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int blas_threads = lb_blas_get_threads();
    lb_blas_set_threads(1);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t s = 0; s < d->n_seq; s++) {
        float *x = d->x + s * dim, *xn = d->scratch + s * d->scratch_per_seq;
        float *q = xn + dim, *k = q + q_dim, *v = k + kv_dim, *att = v + kv_dim;
        float *gate = att + q_dim, *up = gate + inter, *sc = up + inter;
        memcpy(x, d->head.embed + (int64_t)tokens[s] * dim, (size_t)dim * sizeof(float));
        const float *rc = d->rope_cos + pos * half, *rs = d->rope_sin + pos * half;
        for (int32_t l = 0; l < d->layers; l++) {
            const lb_block_weights *w = &d->blocks[l];
            float *K = d->kcache + ((int64_t)l * d->n_seq + s) * d->max_len * kv_dim;
            float *V = d->vcache + ((int64_t)l * d->n_seq + s) * d->max_len * kv_dim;
            rms_row(x, w->attn_norm, xn, dim, eps);
            matvec(w->wq, w->bq, xn, q, q_dim, dim, 0.0f);
            matvec(w->wk, w->bk, xn, K + pos * kv_dim, kv_dim, dim, 0.0f);
            matvec(w->wv, w->bv, xn, V + pos * kv_dim, kv_dim, dim, 0.0f);
            rope_row(q, n_heads, hd, rc, rs);
            rope_row(K + pos * kv_dim, n_kv, hd, rc, rs);
            for (int64_t h = 0; h < n_heads; h++) {
                const int64_t kvh = h / group;
                float mx = -INFINITY;
                for (int64_t j = 0; j <= pos; j++) {
                    float dot = 0.0f;
                    for (int64_t i = 0; i < hd; i++)
                        dot += q[h * hd + i] * K[j * kv_dim + kvh * hd + i];
                    sc[j] = dot * scale;
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                double sum = 0.0;
                for (int64_t j = 0; j <= pos; j++) {
                    sc[j] = expf(sc[j] - mx);
                    sum += (double)sc[j];
                }
                const float inv = (float)(1.0 / sum);
                float *o = att + h * hd;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int64_t j = 0; j <= pos; j++) {
                    const float p = sc[j] * inv;
                    for (int64_t i = 0; i < hd; i++)
                        o[i] += p * V[j * kv_dim + kvh * hd + i];
                }
            }
            matvec(w->wo, w->bo, att, x, dim, q_dim, 1.0f);
            rms_row(x, w->ffn_norm, xn, dim, eps);
            matvec(w->w_gate, w->b_gate, xn, gate, inter, dim, 0.0f);
            matvec(w->w_up, w->b_up, xn, up, inter, dim, 0.0f);
            for (int64_t j = 0; j < inter; j++)
                gate[j] = gate[j] / (1.0f + expf(-gate[j])) * up[j];
            matvec(w->w_down, w->b_down, gate, x, dim, inter, 1.0f);
        }
        rms_row(x, d->head.final_norm, xn, dim, eps);
        matvec(d->head.lm_head, NULL, xn, logits + s * d->vocab, d->vocab, dim, 0.0f);
    }
    lb_blas_set_threads(blas_threads);
    d->pos++;
    return LB_OK;
}

int lb_gen_calib(const lb_model *m, int64_t n, int64_t len, uint64_t seed,
                 const lb_sample_opts *opts, int64_t batch, uint32_t *tokens,
                 void (*progress)(void *user, int64_t done, int64_t total), void *user,
                 lb_err *err)
{
    int rc = lb_sample_opts_check(opts, err);
    if (rc)
        return rc;
    if (n < 1 || len < 1 || batch < 1)
        return lb_err_set(err, LB_EINVAL, "gen-calib: --n %lld, --len %lld and batch %lld must "
                          "be >= 1", (long long)n, (long long)len, (long long)batch);
    const int64_t vocab = lb_model_config(m)->vocab_size;
    if (batch > n)
        batch = n;
    lb_decoder *d = NULL;
    float *logits = falloc(batch * vocab);
    double *wp = malloc((size_t)(batch * vocab) * sizeof *wp);
    int32_t *wi = malloc((size_t)(batch * vocab) * 2 * sizeof *wi);
    lb_rng *rng = malloc((size_t)batch * sizeof *rng);
    uint32_t *cur = malloc((size_t)batch * sizeof *cur);
    if (!logits || !wp || !wi || !rng || !cur) {
        rc = lb_err_set(err, LB_ENOMEM, "gen-calib: out of memory");
        goto cleanup;
    }
    for (int64_t s0 = 0; s0 < n; s0 += batch) {
        const int64_t nb = n - s0 < batch ? n - s0 : batch;
        lb_decoder_free(&d);
        if ((rc = lb_decoder_new(m, nb, len, &d, err)))
            goto cleanup;
        for (int64_t s = 0; s < nb; s++) {
            lb_rng_seed(&rng[s], seed, (uint64_t)(s0 + s));
            cur[s] = (uint32_t)(lb_rng_next(&rng[s]) % (uint64_t)vocab);
            tokens[(s0 + s) * len] = cur[s];
        }
        for (int64_t t = 1; t < len; t++) {
            if ((rc = lb_decoder_step(d, cur, logits, err)))
                goto cleanup;
#pragma omp parallel for schedule(static)
            for (int64_t s = 0; s < nb; s++) {
                cur[s] = (uint32_t)lb_sample_token(logits + s * vocab, vocab, opts, &rng[s],
                                                   wp + s * vocab, wi + 2 * s * vocab);
                tokens[(s0 + s) * len + t] = cur[s];
            }
        }
        if (progress)
            progress(user, s0 + nb, n);
    }
cleanup:
    lb_decoder_free(&d);
    free(logits);
    free(wp);
    free(wi);
    free(rng);
    free(cur);
    return rc;
}
