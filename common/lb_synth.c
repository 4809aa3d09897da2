/* lb_synth: synthetic LLaMA checkpoints (see lb_synth.h for the statistics). */
#include "lb_synth.h"

#include "lb_io_util.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lb_config.h"
#include "lb_safetensors.h"
#include "lb_time.h"

/* ---- Distribution constants --------------------------------------------- */
#define SYNTH_T_DOF 5.0f           /* Student-t dof: kurtosis 3 + 6/(nu-4) = 9 */
#define SYNTH_ROW_SIGMA 0.3f       /* log-normal per-row scale of projections */
#define SYNTH_EMBED_ROW_SIGMA 0.2f /* per-token scale of the embedding */
#define SYNTH_OUTLIER_FRAC 0.0075  /* share of hidden channels that are outliers */
#define SYNTH_DOMINANT_FRAC 0.03   /* share with a moderately large norm gain */
#define SYNTH_OUTLIER_RESID 6.0f   /* outlier magnitude in the embedding (normal: std 1) */
#define SYNTH_OUTLIER_GAIN 4.0f    /* RMSNorm gain on outlier channels (normal: ~1) */
#define SYNTH_DOMINANT_GAIN 2.5f
#define SYNTH_GAIN_SIGMA 0.2f /* log-normal spread of all norm gains */
#define SYNTH_BRANCH 0.7f     /* residual branch std = this / sqrt(2 * preset layers) */
#define SYNTH_LOGIT_STD 1.5f  /* std of the logits over the vocabulary */
#define SYNTH_FINAL_OUTLIER_GAIN                                                                   \
    0.2f                       /* final norm damps the fixed-sign outliers (else a few             \
                                   tokens win everywhere) */
#define SYNTH_SILU_RMS 0.5965f /* sqrt(E[silu(g)^2]), g ~ N(0,1): rms of silu(gate)*up */

enum { CH_NORMAL = 0, CH_OUTLIER = 1, CH_DOMINANT = 2 };

static const lb_synth_preset presets[] = {
    {"tiny", "hidden 64, inter 172, 2 layers, 8 heads / 4 kv, vocab 512 (fast tests)", 64, 172, 2,
     8, 4, 512, 512, 10000.0, 1e-5},
    {"small", "hidden 256, inter 688, 4 layers, 8 heads / 8 kv, vocab 1024", 256, 688, 4, 8, 8,
     1024, 1024, 10000.0, 1e-5},
    {"k256", "hidden 256, inter 768, 2 layers, 4 heads / 2 kv, vocab 512 (every row a "
     "multiple of 256: K-quant tests)", 256, 768, 2, 4, 2, 512, 512, 10000.0, 1e-5},
    {"llama-7b", "LLaMA-7B shape: hidden 4096, inter 11008, 32 layers, 32 heads, vocab 32000", 4096,
     11008, 32, 32, 32, 32000, 4096, 10000.0, 1e-6},
    {"llama-7b-gqa", "as llama-7b with 8 kv heads (grouped-query attention)", 4096, 11008, 32, 32,
     8, 32000, 4096, 10000.0, 1e-6},
};

int lb_synth_preset_count(void)
{
    return (int)(sizeof presets / sizeof presets[0]);
}

const lb_synth_preset *lb_synth_preset_at(int i)
{
    return i >= 0 && i < lb_synth_preset_count() ? &presets[i] : NULL;
}

const lb_synth_preset *lb_synth_preset_find(const char *name)
{
    for (int i = 0; name && i < lb_synth_preset_count(); i++)
        if (!strcmp(presets[i].name, name))
            return &presets[i];
    return NULL;
}

struct lb_synth {
    lb_synth_preset preset;
    int64_t n_layers;
    uint64_t seed;
    int64_t n_tensors;
    lb_synth_tensor *tensors;
    uint64_t *keys;      /* per tensor: hash(seed, name) */
    uint8_t *channel;    /* (hidden,) CH_* */
    float *outlier_sign; /* (hidden,) +-1 on outlier channels */
    int64_t n_outliers;
    int64_t *outliers;     /* sorted */
    float *r_attn, *r_ffn; /* (n_layers,) expected rms after that layer's norm */
    float r_final;
};

/* ---- Counter-based RNG: every value is a function of (key, index, attempt) --- */
static inline uint64_t mix64(uint64_t z)
{
    /* splitmix64 finalizer */
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t draw64(uint64_t key, uint64_t idx, uint64_t attempt)
{
    return mix64(mix64(key ^ idx) ^ (attempt * 0xd1b54a32d192ed03ull));
}

static uint64_t key_of(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return mix64(mix64(seed) ^ h);
}

/* Uniform in [0, 1) from 24 bits. */
static inline float uniform01(uint64_t key, uint64_t idx)
{
    return (float)(draw64(key, idx, 0) >> 40) * 0x1p-24f;
}

/* Standard normal (Box-Muller on one 64-bit draw). */
static inline float normal01(uint64_t key, uint64_t idx)
{
    uint64_t r = draw64(key, idx, 0);
    float u1 = (float)((r >> 40) + 1) * 0x1p-24f; /* (0, 1] */
    float u2 = (float)(r & 0xffffffull) * 0x1p-24f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

/* Student-t with SYNTH_T_DOF dof scaled to unit variance, by Bailey's polar
 * method (Math. Comp. 62, 1994): T = U sqrt(nu (W^(-2/nu) - 1) / W). */
static inline float student_t_unit(uint64_t key, uint64_t idx)
{
    const float nu = SYNTH_T_DOF;
    const float unit = 0.7745966692f; /* sqrt((nu - 2) / nu) */
    for (uint64_t a = 0; a < 64; a++) {
        uint64_t r = draw64(key, idx, a);
        float u = (float)(int32_t)(uint32_t)(r >> 32) * 0x1p-31f;
        float v = (float)(int32_t)(uint32_t)r * 0x1p-31f;
        float w = u * u + v * v;
        if (w > 0.0f && w < 1.0f)
            return unit * u * sqrtf(nu * (powf(w, -2.0f / nu) - 1.0f) / w);
    }
    return 0.0f; /* probability (1 - pi/4)^64 ~ 1e-43 */
}

/* Log-normal scale with E[s^2] = 1. */
static inline float lognormal_unit(uint64_t key, uint64_t idx, float sigma)
{
    return expf(sigma * normal01(key, idx) - sigma * sigma);
}

/* Sub-streams of one tensor key. */
#define SUB_ROWS 0x524f5753ull  /* per-row scales */
#define SUB_ELEMS 0x454c454dull /* elements */

/* Norm gain of channel c for a norm tensor with key k. final: model.norm. */
static float norm_gain(const lb_synth *s, uint64_t k, int64_t c, bool final)
{
    float g = expf(SYNTH_GAIN_SIGMA * normal01(k ^ SUB_ELEMS, (uint64_t)c));
    if (s->channel[c] == CH_OUTLIER)
        g *= final ? SYNTH_FINAL_OUTLIER_GAIN : SYNTH_OUTLIER_GAIN;
    else if (s->channel[c] == CH_DOMINANT)
        g *= SYNTH_DOMINANT_GAIN;
    return g;
}

/* Mean square of the embedding's channel c (normal: 1; outlier: A^2 E[(0.8+0.4u)^2]). */
static float embed_ms(const lb_synth *s, int64_t c)
{
    return s->channel[c] == CH_OUTLIER
               ? SYNTH_OUTLIER_RESID * SYNTH_OUTLIER_RESID * (0.64f + 0.32f + 0.16f / 3.0f)
               : 1.0f;
}

/* Expected rms of g * x / rms(x) with x distributed like the embedding: weights
 * reading a norm's output are divided by it so projections start at unit scale. */
static float normed_rms(const lb_synth *s, uint64_t k, bool final)
{
    double num = 0.0, den = 0.0;
    for (int64_t c = 0; c < s->preset.hidden; c++) {
        double g = (double)norm_gain(s, k, c, final);
        double m = (double)embed_ms(s, c);
        num += g * g * m;
        den += m;
    }
    return (float)sqrt(num / den);
}

static int add_tensor(lb_synth *s, lb_synth_kind kind, int64_t layer, const char *suffix,
                      int64_t rows, int64_t cols)
{
    lb_synth_tensor *t = &s->tensors[s->n_tensors];
    int n = layer >= 0 ? snprintf(t->name, sizeof t->name, "model.layers.%lld.%s", (long long)layer,
                                  suffix)
                       : snprintf(t->name, sizeof t->name, "%s", suffix);
    if (n < 0 || (size_t)n >= sizeof t->name)
        return LB_EINVAL;
    t->kind = kind;
    t->layer = layer;
    t->rows = rows;
    t->cols = cols;
    s->keys[s->n_tensors] = key_of(s->seed, t->name);
    s->n_tensors++;
    return 0;
}

int lb_synth_new(const lb_synth_preset *preset, int64_t n_layers, uint64_t seed, lb_synth **out,
                 lb_err *err)
{
    lb_synth *s = NULL;
    if (!out)
        return lb_err_set(err, LB_EINVAL, "lb_synth_new: out is NULL");
    *out = NULL;
    if (!preset)
        return lb_err_set(err, LB_EINVAL, "lb_synth_new: no preset given");
    if (n_layers == 0)
        n_layers = preset->n_layers;
    if (n_layers < 1 || n_layers > 1024)
        return lb_err_set(err, LB_EINVAL,
                          "synth: --layers %lld is out of range; use 1..1024 (preset %s "
                          "default %lld)",
                          (long long)n_layers, preset->name, (long long)preset->n_layers);
    if (preset->hidden % preset->n_heads || preset->n_heads % preset->n_kv_heads)
        return lb_err_set(err, LB_EINVAL, "synth: preset %s has inconsistent head counts",
                          preset->name);

    s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->preset = *preset;
    s->n_layers = n_layers;
    s->seed = seed;
    const int64_t h = preset->hidden;
    const int64_t max_tensors = 9 * n_layers + 3;
    s->tensors = calloc((size_t)max_tensors, sizeof *s->tensors);
    s->keys = calloc((size_t)max_tensors, sizeof *s->keys);
    s->channel = calloc((size_t)h, 1);
    s->outlier_sign = calloc((size_t)h, sizeof *s->outlier_sign);
    s->r_attn = calloc((size_t)n_layers, sizeof *s->r_attn);
    s->r_ffn = calloc((size_t)n_layers, sizeof *s->r_ffn);
    int64_t *perm = malloc((size_t)h * sizeof *perm);
    if (!s->tensors || !s->keys || !s->channel || !s->outlier_sign || !s->r_attn || !s->r_ffn ||
        !perm) {
        free(perm);
        goto nomem;
    }

    /* Outlier and dominant channels: a partial Fisher-Yates shuffle keyed by the seed. */
    int64_t n_out = (int64_t)llround((double)h * SYNTH_OUTLIER_FRAC);
    int64_t n_dom = (int64_t)llround((double)h * SYNTH_DOMINANT_FRAC);
    if (n_out < 1)
        n_out = 1;
    if (n_dom < 1)
        n_dom = 1;
    uint64_t ck = key_of(seed, "lowbit.synth.channels");
    for (int64_t i = 0; i < h; i++)
        perm[i] = i;
    for (int64_t i = 0; i < n_out + n_dom && i < h; i++) {
        int64_t j = i + (int64_t)(draw64(ck, (uint64_t)i, 0) % (uint64_t)(h - i));
        int64_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (int64_t i = 0; i < n_out + n_dom && i < h; i++)
        s->channel[perm[i]] = i < n_out ? CH_OUTLIER : CH_DOMINANT;
    free(perm);
    s->outliers = malloc((size_t)n_out * sizeof *s->outliers);
    if (!s->outliers)
        goto nomem;
    for (int64_t c = 0; c < h; c++) {
        if (s->channel[c] != CH_OUTLIER)
            continue;
        s->outliers[s->n_outliers++] = c;
        /* Massive activations keep one sign across tokens. */
        s->outlier_sign[c] = (draw64(ck ^ 0x5349474eull, (uint64_t)c, 0) & 1) ? 1.0f : -1.0f;
    }

    const int64_t hd = h / preset->n_heads;
    const int64_t kv = preset->n_kv_heads * hd;
    const int64_t ff = preset->intermediate;
    int rc = add_tensor(s, LB_SYNTH_EMBED, -1, "model.embed_tokens.weight", preset->vocab, h);
    for (int64_t l = 0; l < n_layers && !rc; l++) {
        rc |= add_tensor(s, LB_SYNTH_ATTN_NORM, l, "input_layernorm.weight", 1, h);
        s->r_attn[l] = normed_rms(s, s->keys[s->n_tensors - 1], false);
        rc |= add_tensor(s, LB_SYNTH_Q, l, "self_attn.q_proj.weight", h, h);
        rc |= add_tensor(s, LB_SYNTH_K, l, "self_attn.k_proj.weight", kv, h);
        rc |= add_tensor(s, LB_SYNTH_V, l, "self_attn.v_proj.weight", kv, h);
        rc |= add_tensor(s, LB_SYNTH_O, l, "self_attn.o_proj.weight", h, h);
        rc |= add_tensor(s, LB_SYNTH_FFN_NORM, l, "post_attention_layernorm.weight", 1, h);
        s->r_ffn[l] = normed_rms(s, s->keys[s->n_tensors - 1], false);
        rc |= add_tensor(s, LB_SYNTH_GATE, l, "mlp.gate_proj.weight", ff, h);
        rc |= add_tensor(s, LB_SYNTH_UP, l, "mlp.up_proj.weight", ff, h);
        rc |= add_tensor(s, LB_SYNTH_DOWN, l, "mlp.down_proj.weight", h, ff);
    }
    rc |= add_tensor(s, LB_SYNTH_FINAL_NORM, -1, "model.norm.weight", 1, h);
    s->r_final = normed_rms(s, s->keys[s->n_tensors - 1], true);
    rc |= add_tensor(s, LB_SYNTH_LM_HEAD, -1, "lm_head.weight", preset->vocab, h);
    if (rc) {
        lb_synth_free(&s);
        return lb_err_set(err, LB_EINVAL, "synth: tensor name too long (layers %lld)",
                          (long long)n_layers);
    }
    *out = s;
    return 0;
nomem:
    lb_synth_free(&s);
    return lb_err_set(err, LB_ENOMEM, "synth: out of memory creating the %s generator",
                      preset->name);
}

void lb_synth_free(lb_synth **sp)
{
    if (!sp || !*sp)
        return;
    lb_synth *s = *sp;
    free(s->tensors);
    free(s->keys);
    free(s->channel);
    free(s->outlier_sign);
    free(s->outliers);
    free(s->r_attn);
    free(s->r_ffn);
    free(s);
    *sp = NULL;
}

const lb_synth_preset *lb_synth_get_preset(const lb_synth *s)
{
    return &s->preset;
}
int64_t lb_synth_n_layers(const lb_synth *s)
{
    return s->n_layers;
}
uint64_t lb_synth_seed(const lb_synth *s)
{
    return s->seed;
}
int64_t lb_synth_n_tensors(const lb_synth *s)
{
    return s->n_tensors;
}

const lb_synth_tensor *lb_synth_tensor_at(const lb_synth *s, int64_t i)
{
    return i >= 0 && i < s->n_tensors ? &s->tensors[i] : NULL;
}

int64_t lb_synth_n_params(const lb_synth *s)
{
    int64_t n = 0;
    for (int64_t i = 0; i < s->n_tensors; i++)
        n += s->tensors[i].rows * s->tensors[i].cols;
    return n;
}

const int64_t *lb_synth_outlier_channels(const lb_synth *s, int64_t *n)
{
    if (n)
        *n = s->n_outliers;
    return s->outliers;
}

/* Std of a projection before the per-row scale: c / (sqrt(fan_in) * rms of its input). */
static float proj_std(const lb_synth *s, const lb_synth_tensor *t)
{
    const float branch = SYNTH_BRANCH / sqrtf(2.0f * (float)s->preset.n_layers);
    const float fan = sqrtf((float)t->cols);
    switch (t->kind) {
    case LB_SYNTH_Q:
    case LB_SYNTH_K:
    case LB_SYNTH_V:
        return 1.0f / (fan * s->r_attn[t->layer]);
    case LB_SYNTH_GATE:
    case LB_SYNTH_UP:
        return 1.0f / (fan * s->r_ffn[t->layer]);
    case LB_SYNTH_O: /* input: attention output, ~unit like v */
        return branch / fan;
    case LB_SYNTH_DOWN: /* input: silu(gate) * up */
        return branch / (fan * SYNTH_SILU_RMS);
    case LB_SYNTH_LM_HEAD:
        return SYNTH_LOGIT_STD / (fan * s->r_final);
    default:
        return 0.0f;
    }
}

int lb_synth_fill(const lb_synth *s, int64_t ti, int64_t row0, int64_t nrows, float *out,
                  lb_err *err)
{
    const lb_synth_tensor *t = lb_synth_tensor_at(s, ti);
    if (!t || !out || row0 < 0 || nrows < 0 || row0 > t->rows || nrows > t->rows - row0)
        return lb_err_set(err, LB_EINVAL, "lb_synth_fill: bad tensor %lld or rows [%lld, +%lld)",
                          (long long)ti, (long long)row0, (long long)nrows);
    const uint64_t k = s->keys[ti];
    const int64_t cols = t->cols;

    if (t->kind == LB_SYNTH_ATTN_NORM || t->kind == LB_SYNTH_FFN_NORM ||
        t->kind == LB_SYNTH_FINAL_NORM) {
        for (int64_t c = 0; c < nrows * cols; c++)
            out[c] = norm_gain(s, k, c, t->kind == LB_SYNTH_FINAL_NORM);
        return 0;
    }
    if (t->kind == LB_SYNTH_EMBED) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < nrows; r++) {
            const uint64_t row = (uint64_t)(row0 + r);
            const float sc = lognormal_unit(k ^ SUB_ROWS, row, SYNTH_EMBED_ROW_SIGMA);
            float *o = out + r * cols;
            for (int64_t c = 0; c < cols; c++) {
                const uint64_t idx = row * (uint64_t)cols + (uint64_t)c;
                if (s->channel[c] == CH_OUTLIER)
                    o[c] = s->outlier_sign[c] * SYNTH_OUTLIER_RESID *
                           (0.8f + 0.4f * uniform01(k ^ SUB_ELEMS, idx));
                else
                    o[c] = sc * student_t_unit(k ^ SUB_ELEMS, idx);
            }
        }
        return 0;
    }
    const float std = proj_std(s, t);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrows; r++) {
        const uint64_t row = (uint64_t)(row0 + r);
        const float sc = std * lognormal_unit(k ^ SUB_ROWS, row, SYNTH_ROW_SIGMA);
        float *o = out + r * cols;
        for (int64_t c = 0; c < cols; c++)
            o[c] = sc * student_t_unit(k ^ SUB_ELEMS, row * (uint64_t)cols + (uint64_t)c);
    }
    return 0;
}

/* ---- Writing a checkpoint ------------------------------------------------- */
/* 0: dir ready (created or empty, or force); else LB_ESTATE / LB_EIO. */
static int prepare_dir(const char *dir, bool force, lb_err *err)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT)
            return lb_err_set(err, LB_EIO, "synth: cannot create output dir %s: %s", dir,
                              strerror(errno));
        /* parents too: quickstart's out/ does not exist on a fresh clone */
        return lb_io_mkdir_p(dir, err) ? lb_err_prefix(err, "synth") : 0;
    }
    if (!S_ISDIR(st.st_mode))
        return lb_err_set(err, LB_ESTATE, "synth: --out %s exists and is not a directory", dir);
    DIR *d = opendir(dir);
    if (!d)
        return lb_err_set(err, LB_EIO, "synth: cannot read output dir %s: %s", dir,
                          strerror(errno));
    bool empty = true;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            empty = false;
            break;
        }
    closedir(d);
    if (!empty && !force)
        return lb_err_set(err, LB_ESTATE,
                          "synth: output dir %s is not empty; choose a new --out or pass "
                          "--force to overwrite its config.json and model.safetensors",
                          dir);
    return 0;
}

static int write_config(const lb_synth *s, const char *path, lb_dtype dt, lb_err *err)
{
    const lb_synth_preset *p = &s->preset;
    lb_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.arch = LB_ARCH_LLAMA;
    snprintf(cfg.model_type, sizeof cfg.model_type, "llama");
    cfg.hidden_size = (int32_t)p->hidden;
    cfg.intermediate_size = (int32_t)p->intermediate;
    cfg.num_hidden_layers = (int32_t)s->n_layers;
    cfg.num_attention_heads = (int32_t)p->n_heads;
    cfg.num_key_value_heads = (int32_t)p->n_kv_heads;
    cfg.head_dim = (int32_t)(p->hidden / p->n_heads);
    cfg.vocab_size = (int32_t)p->vocab;
    cfg.max_position_embeddings = (int32_t)p->max_position;
    cfg.rms_norm_eps = p->rms_eps;
    cfg.rope_theta = p->rope_theta;
    cfg.tie_word_embeddings = false;
    snprintf(cfg.hidden_act, sizeof cfg.hidden_act, "silu");
    cfg.bos_token_id = 1;
    cfg.eos_token_id = 2;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s",
             dt == LB_DTYPE_BF16 ? "bfloat16" : "float32");
    return lb_config_write(&cfg, path, err);
}

int lb_synth_write(const lb_synth *s, const char *dir, const lb_synth_write_opts *opts,
                   lb_synth_write_stats *stats, lb_err *err)
{
    lb_st_writer *w = NULL;
    float *buf = NULL;
    char path[4096], val[128];
    const double t0 = lb_now_s();
    int rc;
    if (!s || !dir || !opts)
        return lb_err_set(err, LB_EINVAL, "lb_synth_write: NULL argument");
    if (opts->dtype != LB_DTYPE_BF16 && opts->dtype != LB_DTYPE_F32)
        return lb_err_set(err, LB_EINVAL, "synth: dtype must be bf16 or f32");
    if ((rc = prepare_dir(dir, opts->force, err)))
        return rc;
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return lb_err_set(err, LB_EINVAL, "synth: output path %s is too long", dir);
    if ((rc = write_config(s, path, opts->dtype, err)))
        return rc;
    /* A stale shard index would win over the new model.safetensors in every reader. */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (unlink(path) != 0 && errno != ENOENT)
        return lb_err_set(err, LB_EIO, "synth: cannot remove the stale %s: %s", path,
                          strerror(errno));

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((rc = lb_st_writer_new(&w, path, err)))
        goto fail;
    for (int64_t i = 0; i < s->n_tensors; i++) {
        const lb_synth_tensor *t = &s->tensors[i];
        int64_t shape[2] = {t->rows, t->cols};
        bool vec = t->rows == 1 && (t->kind == LB_SYNTH_ATTN_NORM || t->kind == LB_SYNTH_FFN_NORM ||
                                    t->kind == LB_SYNTH_FINAL_NORM);
        if ((rc = lb_st_writer_add_tensor(w, t->name, opts->dtype, vec ? 1 : 2,
                                          vec ? &shape[1] : shape, err)))
            goto fail;
    }
    snprintf(val, sizeof val, "%llu", (unsigned long long)s->seed);
    if ((rc = lb_st_writer_set_metadata(w, "format", "pt", err)) ||
        (rc = lb_st_writer_set_metadata(w, "generator", "lowbit synth " LB_VERSION, err)) ||
        (rc = lb_st_writer_set_metadata(w, "preset", s->preset.name, err)) ||
        (rc = lb_st_writer_set_metadata(w, "seed", val, err)) ||
        (rc = lb_st_writer_set_metadata(
             w, "description",
             "synthetic weights: Student-t(5) projections, outlier channels in the "
             "embedding and RMSNorm gains; not a trained model",
             err)))
        goto fail;
    snprintf(val, sizeof val, "%lld", (long long)s->n_layers);
    if ((rc = lb_st_writer_set_metadata(w, "layers", val, err)))
        goto fail;

    /* One chunk buffer for all tensors: ~16 MiB of f32 unless asked otherwise. */
    int64_t max_cols =
        s->preset.intermediate > s->preset.hidden ? s->preset.intermediate : s->preset.hidden;
    int64_t chunk = opts->chunk_rows > 0 ? opts->chunk_rows : (4 << 20) / max_cols;
    if (chunk < 1)
        chunk = 1;
    buf = malloc((size_t)chunk * (size_t)max_cols * sizeof *buf);
    if (!buf) {
        rc = lb_err_set(err, LB_ENOMEM, "synth: out of memory for a %lld-row chunk",
                        (long long)chunk);
        goto fail;
    }
    for (int64_t i = 0; i < s->n_tensors; i++) {
        const lb_synth_tensor *t = &s->tensors[i];
        const double ts = lb_now_s();
        for (int64_t r = 0; r < t->rows; r += chunk) {
            int64_t n = t->rows - r < chunk ? t->rows - r : chunk;
            if ((rc = lb_synth_fill(s, i, r, n, buf, err)) ||
                (rc = lb_st_writer_write_f32(w, t->name, buf, (size_t)(n * t->cols), err)))
                goto fail;
        }
        if (opts->progress)
            opts->progress(opts->progress_ctx, t, i, s->n_tensors, lb_now_s() - ts);
    }
    if ((rc = lb_st_writer_finish(w, err)))
        goto fail;
    lb_st_writer_free(&w);
    free(buf);
    if (stats) {
        struct stat st;
        stats->params = lb_synth_n_params(s);
        stats->file_bytes = stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
        stats->seconds = lb_now_s() - t0;
    }
    return 0;
fail:
    lb_st_writer_free(&w);
    free(buf);
    return rc;
}
