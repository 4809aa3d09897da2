#include "lb_model.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_io_util.h"

struct lb_model {
    lb_config cfg;
    lb_st *st;
    char *dir;
    const lb_model_packed_ops *packed; /* non-NULL for a packed checkpoint */
};

bool lb_model_is_packed(const lb_model *m)
{
    return m && m->packed;
}

/* Per-block tensors: HF name suffix, where it goes, and when it exists. */
enum { NEED_ALWAYS, NEED_QKV_BIAS, NEED_O_BIAS, NEED_MLP_BIAS };
enum { DIM_MODEL, DIM_Q, DIM_KV, DIM_INTER };
typedef struct {
    const char *suffix;
    size_t offset; /* of the float * in lb_block_weights */
    int need;
    int rows; /* DIM_* */
    int cols; /* DIM_*, or -1 for a 1-D tensor */
} block_field;

/* clang-format off */
#define FIELD(s, f, need, r, c) {s, offsetof(lb_block_weights, f), need, r, c}
/* clang-format on */
static const block_field block_fields[] = {
    FIELD("input_layernorm.weight", attn_norm, NEED_ALWAYS, DIM_MODEL, -1),
    FIELD("self_attn.q_proj.weight", wq, NEED_ALWAYS, DIM_Q, DIM_MODEL),
    FIELD("self_attn.k_proj.weight", wk, NEED_ALWAYS, DIM_KV, DIM_MODEL),
    FIELD("self_attn.v_proj.weight", wv, NEED_ALWAYS, DIM_KV, DIM_MODEL),
    FIELD("self_attn.q_proj.bias", bq, NEED_QKV_BIAS, DIM_Q, -1),
    FIELD("self_attn.k_proj.bias", bk, NEED_QKV_BIAS, DIM_KV, -1),
    FIELD("self_attn.v_proj.bias", bv, NEED_QKV_BIAS, DIM_KV, -1),
    FIELD("self_attn.o_proj.weight", wo, NEED_ALWAYS, DIM_MODEL, DIM_Q),
    FIELD("self_attn.o_proj.bias", bo, NEED_O_BIAS, DIM_MODEL, -1),
    FIELD("post_attention_layernorm.weight", ffn_norm, NEED_ALWAYS, DIM_MODEL, -1),
    FIELD("mlp.gate_proj.weight", w_gate, NEED_ALWAYS, DIM_INTER, DIM_MODEL),
    FIELD("mlp.up_proj.weight", w_up, NEED_ALWAYS, DIM_INTER, DIM_MODEL),
    FIELD("mlp.down_proj.weight", w_down, NEED_ALWAYS, DIM_MODEL, DIM_INTER),
    FIELD("mlp.gate_proj.bias", b_gate, NEED_MLP_BIAS, DIM_INTER, -1),
    FIELD("mlp.up_proj.bias", b_up, NEED_MLP_BIAS, DIM_INTER, -1),
    FIELD("mlp.down_proj.bias", b_down, NEED_MLP_BIAS, DIM_MODEL, -1),
};
#define N_BLOCK_FIELDS ((int)(sizeof block_fields / sizeof block_fields[0]))

static const char *const linear_names[LB_LINEAR_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

static int64_t dim_of(const lb_config *cfg, int which)
{
    switch (which) {
    case DIM_MODEL:
        return cfg->hidden_size;
    case DIM_Q:
        return (int64_t)cfg->num_attention_heads * cfg->head_dim;
    case DIM_KV:
        return (int64_t)cfg->num_key_value_heads * cfg->head_dim;
    case DIM_INTER:
        return cfg->intermediate_size;
    default:
        return 0;
    }
}

static int field_needed(const lb_config *cfg, const block_field *f)
{
    switch (f->need) {
    case NEED_QKV_BIAS:
        return cfg->attention_bias;
    case NEED_O_BIAS:
        return cfg->o_bias;
    case NEED_MLP_BIAS:
        return cfg->mlp_bias;
    default:
        return 1;
    }
}

static float **field_ptr(lb_block_weights *w, const block_field *f)
{
    return (float **)(void *)((char *)w + f->offset);
}

const char *lb_linear_name(lb_linear which)
{
    return (unsigned)which < LB_LINEAR_COUNT ? linear_names[which] : NULL;
}

void lb_linear_shape(const lb_config *cfg, lb_linear which, int64_t *rows, int64_t *cols)
{
    static const int r[LB_LINEAR_COUNT] = {DIM_Q,     DIM_KV,    DIM_KV,   DIM_MODEL,
                                           DIM_INTER, DIM_INTER, DIM_MODEL};
    static const int c[LB_LINEAR_COUNT] = {DIM_MODEL, DIM_MODEL, DIM_MODEL, DIM_Q,
                                           DIM_MODEL, DIM_MODEL, DIM_INTER};
    if ((unsigned)which >= LB_LINEAR_COUNT) {
        *rows = *cols = 0;
        return;
    }
    *rows = dim_of(cfg, r[which]);
    *cols = dim_of(cfg, c[which]);
}

float *lb_block_linear(const lb_block_weights *w, lb_linear which)
{
    switch (which) {
    case LB_LINEAR_Q:
        return w->wq;
    case LB_LINEAR_K:
        return w->wk;
    case LB_LINEAR_V:
        return w->wv;
    case LB_LINEAR_O:
        return w->wo;
    case LB_LINEAR_GATE:
        return w->w_gate;
    case LB_LINEAR_UP:
        return w->w_up;
    case LB_LINEAR_DOWN:
        return w->w_down;
    default:
        return NULL;
    }
}

int lb_model_linear_tensor_name(char *buf, size_t size, int32_t layer, lb_linear which, lb_err *err)
{
    const char *n = lb_linear_name(which);
    if (!n)
        return lb_err_set(err, LB_EINVAL, "invalid linear index %d", (int)which);
    int len = snprintf(buf, size, "model.layers.%d.%s.weight", (int)layer, n);
    if (len < 0 || (size_t)len >= size)
        return lb_err_set(err, LB_EINVAL, "tensor name buffer too small");
    return LB_OK;
}

static int block_tensor_name(char *buf, size_t size, int32_t layer, const char *suffix)
{
    int len = snprintf(buf, size, "model.layers.%d.%s", (int)layer, suffix);
    return len >= 0 && (size_t)len < size;
}

static int is_float_dtype(lb_dtype dt)
{
    return dt == LB_DTYPE_F32 || dt == LB_DTYPE_F16 || dt == LB_DTYPE_BF16 || dt == LB_DTYPE_F64;
}

/* Checks that tensor `name` exists, is a float tensor and has shape (rows,)
 * when cols < 0, else (rows, cols). */
static int check_tensor(const lb_model *m, const char *name, int64_t rows, int64_t cols,
                        lb_err *err)
{
    const lb_st_tensor *t = lb_st_find(m->st, name);
    int64_t prow, pcol;
    if (!t && m->packed && cols >= 0 && m->packed->find(m->st, name, &prow, &pcol)) {
        if (prow != rows || pcol != cols)
            return lb_err_set(err, LB_EFORMAT,
                              "%s: packed tensor '%s' is [%lld, %lld]; config.json implies "
                              "[%lld, %lld]", m->dir, name, (long long)prow, (long long)pcol,
                              (long long)rows, (long long)cols);
        return LB_OK;
    }
    if (!t)
        return lb_err_set(err, LB_ENOTFOUND,
                          "%s: tensor '%s' is missing; the weights do not match config.json",
                          m->dir, name);
    if (!is_float_dtype(t->dtype))
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s' has dtype %s; expected a float type",
                          t->file, name, lb_dtype_name(t->dtype) ? lb_dtype_name(t->dtype) : "?");
    int ok = cols < 0 ? (t->ndim == 1 && t->shape[0] == rows)
                      : (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols);
    if (!ok) {
        char got[96] = "";
        size_t len = 0;
        for (int32_t i = 0; i < t->ndim && len + 24 < sizeof got; i++)
            len += (size_t)snprintf(got + len, sizeof got - len, "%s%lld", i ? ", " : "",
                                    (long long)t->shape[i]);
        if (cols < 0)
            return lb_err_set(err, LB_EFORMAT,
                              "%s: tensor '%s' has shape [%s]; config.json implies [%lld]", t->file,
                              name, got, (long long)rows);
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s' has shape [%s]; config.json implies [%lld, %lld]",
                          t->file, name, got, (long long)rows, (long long)cols);
    }
    return LB_OK;
}

static int check_all_tensors(const lb_model *m, lb_err *err)
{
    const lb_config *cfg = &m->cfg;
    char name[256];
    int rc;
    for (int32_t layer = 0; layer < cfg->num_hidden_layers; layer++)
        for (int i = 0; i < N_BLOCK_FIELDS; i++) {
            const block_field *f = &block_fields[i];
            if (!field_needed(cfg, f))
                continue;
            if (!block_tensor_name(name, sizeof name, layer, f->suffix))
                return lb_err_set(err, LB_EINVAL, "tensor name too long");
            rc = check_tensor(m, name, dim_of(cfg, f->rows),
                              f->cols < 0 ? -1 : dim_of(cfg, f->cols), err);
            if (rc)
                return rc;
        }
    rc = check_tensor(m, "model.embed_tokens.weight", cfg->vocab_size, cfg->hidden_size, err);
    if (!rc)
        rc = check_tensor(m, "model.norm.weight", cfg->hidden_size, -1, err);
    if (!rc && !cfg->tie_word_embeddings)
        rc = check_tensor(m, "lm_head.weight", cfg->vocab_size, cfg->hidden_size, err);
    return rc;
}

/* A lowbit quantization_config in config.json selects the packed reader. */
static int detect_packed(lb_model *m, const lb_model_packed_ops *ops, lb_err *err)
{
    char *path = lb_io_path_join(m->dir, "config.json");
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", m->dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    int rc = LB_OK;
    char *text = NULL;
    json_t *q = root ? json_object_get(root, "quantization_config") : NULL;
    if (!q || json_is_null(q))
        goto done; /* a plain checkpoint (lb_config_load already parsed the file) */
    const char *qm = json_string_value(json_object_get(q, "quant_method"));
    if (!json_is_object(q) || !qm || strcmp(qm, "lowbit")) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s: quantization_config with quant_method '%s' is not supported; lowbit "
                        "reads fp checkpoints and its own packed ones (quant_method \"lowbit\")",
                        path, qm ? qm : "?");
        goto done;
    }
    if (!ops) {
        rc = lb_err_set(err, LB_ESTATE,
                        "%s: packed lowbit checkpoint, but this program opened it without the "
                        "packed reader (open it with lb_packed_model_open)", path);
        goto done;
    }
    text = json_dumps(q, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    rc = ops->check(m->dir, m->st, text, err);
    if (!rc)
        m->packed = ops;
done:
    free(text);
    json_decref(root);
    free(path);
    return rc;
}

int lb_model_open(lb_model **out, const char *dir, lb_err *err)
{
    return lb_model_open_with(out, dir, NULL, err);
}

int lb_model_open_with(lb_model **out, const char *dir, const lb_model_packed_ops *packed,
                       lb_err *err)
{
    *out = NULL;
    lb_model *m = calloc(1, sizeof *m);
    if (!m)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", dir);
    int rc;
    m->dir = strdup(dir);
    if (!m->dir) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    rc = lb_config_load(&m->cfg, dir, err);
    if (rc)
        goto fail;
    const lb_config *cfg = &m->cfg;
    if (cfg->head_dim < 2 || cfg->head_dim % 2 || cfg->num_key_value_heads < 1 ||
        cfg->num_attention_heads % cfg->num_key_value_heads) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s/config.json: head_dim %d must be even and num_attention_heads %d a "
                        "multiple of num_key_value_heads %d",
                        dir, (int)cfg->head_dim, (int)cfg->num_attention_heads,
                        (int)cfg->num_key_value_heads);
        goto fail;
    }
    rc = lb_st_open(&m->st, dir, err);
    if (rc)
        goto fail;
    rc = detect_packed(m, packed, err);
    if (rc)
        goto fail;
    rc = check_all_tensors(m, err);
    if (rc)
        goto fail;
    *out = m;
    return LB_OK;
fail:
    lb_model_free(&m);
    return rc;
}

void lb_model_free(lb_model **m)
{
    if (!m || !*m)
        return;
    lb_st_free(&(*m)->st);
    free((*m)->dir);
    free(*m);
    *m = NULL;
}

const lb_config *lb_model_config(const lb_model *m)
{
    return &m->cfg;
}

const lb_st *lb_model_tensors(const lb_model *m)
{
    return m->st;
}

const char *lb_model_dir(const lb_model *m)
{
    return m->dir;
}

static float *alloc_zero(int64_t n)
{
    if (n <= 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return NULL;
    return calloc((size_t)n, sizeof(float));
}

static int64_t field_numel(const lb_config *cfg, const block_field *f)
{
    int64_t r = dim_of(cfg, f->rows);
    return f->cols < 0 ? r : r * dim_of(cfg, f->cols); /* < 2^62: both are int32 */
}

int lb_block_weights_alloc(const lb_config *cfg, lb_block_weights *out, lb_err *err)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < N_BLOCK_FIELDS; i++) {
        const block_field *f = &block_fields[i];
        if (!field_needed(cfg, f))
            continue;
        float *p = alloc_zero(field_numel(cfg, f));
        if (!p) {
            lb_block_weights_free(out);
            return lb_err_set(err, LB_ENOMEM, "block weights: cannot allocate %s (%lld floats)",
                              f->suffix, (long long)field_numel(cfg, f));
        }
        *field_ptr(out, f) = p;
    }
    return LB_OK;
}

void lb_block_weights_free(lb_block_weights *w)
{
    if (!w)
        return;
    for (int i = 0; i < N_BLOCK_FIELDS; i++) {
        float **p = field_ptr(w, &block_fields[i]);
        free(*p);
        *p = NULL;
    }
}

/* lb_st_read_f32 also rejects NaN/Inf (LB_ENUMERIC naming tensor and element). */
static int read_tensor(const lb_model *m, const char *name, float *dst, int64_t numel, lb_err *err)
{
    int64_t rows, cols;
    if (m->packed && !lb_st_find(m->st, name) && m->packed->find(m->st, name, &rows, &cols))
        return m->packed->load(m->st, name, dst, numel, err);
    return lb_st_read_f32(m->st, name, dst, numel, err);
}

int lb_model_load_block(const lb_model *m, int32_t layer, lb_block_weights *out, lb_err *err)
{
    const lb_config *cfg = &m->cfg;
    memset(out, 0, sizeof *out);
    if (layer < 0 || layer >= cfg->num_hidden_layers)
        return lb_err_set(err, LB_EINVAL, "%s: layer %d out of range (model has %d layers)", m->dir,
                          (int)layer, (int)cfg->num_hidden_layers);
    int rc = lb_block_weights_alloc(cfg, out, err);
    if (rc)
        return rc;
    char name[256];
    for (int i = 0; i < N_BLOCK_FIELDS; i++) {
        const block_field *f = &block_fields[i];
        if (!field_needed(cfg, f))
            continue;
        if (!block_tensor_name(name, sizeof name, layer, f->suffix)) {
            rc = lb_err_set(err, LB_EINVAL, "tensor name too long");
            break;
        }
        rc = read_tensor(m, name, *field_ptr(out, f), field_numel(cfg, f), err);
        if (rc)
            break;
    }
    if (rc)
        lb_block_weights_free(out);
    return rc;
}

int lb_head_weights_alloc(const lb_config *cfg, bool tied, lb_head_weights *out, lb_err *err)
{
    memset(out, 0, sizeof *out);
    out->vocab = cfg->vocab_size;
    out->dim = cfg->hidden_size;
    int64_t n = out->vocab * out->dim;
    out->embed = alloc_zero(n);
    out->final_norm = alloc_zero(out->dim);
    out->lm_head = tied ? out->embed : alloc_zero(n);
    if (!out->embed || !out->final_norm || !out->lm_head) {
        lb_head_weights_free(out);
        return lb_err_set(err, LB_ENOMEM, "head weights: cannot allocate %lld x %lld floats",
                          (long long)out->vocab, (long long)out->dim);
    }
    return LB_OK;
}

void lb_head_weights_free(lb_head_weights *h)
{
    if (!h)
        return;
    if (h->lm_head != h->embed)
        free(h->lm_head);
    free(h->embed);
    free(h->final_norm);
    memset(h, 0, sizeof *h);
}

int lb_model_load_head(const lb_model *m, lb_head_weights *out, lb_err *err)
{
    const lb_config *cfg = &m->cfg;
    int rc = lb_head_weights_alloc(cfg, cfg->tie_word_embeddings, out, err);
    if (rc)
        return rc;
    int64_t n = out->vocab * out->dim;
    rc = read_tensor(m, "model.embed_tokens.weight", out->embed, n, err);
    if (!rc)
        rc = read_tensor(m, "model.norm.weight", out->final_norm, out->dim, err);
    if (!rc && !cfg->tie_word_embeddings)
        rc = read_tensor(m, "lm_head.weight", out->lm_head, n, err);
    if (rc)
        lb_head_weights_free(out);
    return rc;
}
