#include "lb_test_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_safetensors.h"
#include "lb_test_util.h"

lb_config lb_test_model_config(int32_t dim, int32_t n_heads, int32_t n_kv, int32_t head_dim,
                               int32_t inter, int32_t vocab, int32_t layers)
{
    lb_config c;
    memset(&c, 0, sizeof c);
    c.arch = LB_ARCH_LLAMA;
    strcpy(c.model_type, "llama");
    c.hidden_size = dim;
    c.intermediate_size = inter;
    c.num_hidden_layers = layers;
    c.num_attention_heads = n_heads;
    c.num_key_value_heads = n_kv;
    c.head_dim = head_dim;
    c.vocab_size = vocab;
    c.max_position_embeddings = 128;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    strcpy(c.hidden_act, "silu");
    c.bos_token_id = -1;
    c.eos_token_id = -1;
    return c;
}

typedef struct {
    char name[128];
    int32_t ndim;
    int64_t shape[2];
    float scale, offset;
} tensor_spec;

static int add_spec(tensor_spec *s, int *n, const char *name, int64_t rows, int64_t cols,
                    float offset)
{
    tensor_spec *t = &s[(*n)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->offset = offset;
    t->scale = cols > 0 ? 1.0f / sqrtf((float)cols) : (offset != 0.0f ? 0.1f : 0.3f);
    return 0;
}

int lb_test_model_write(const char *dir, const lb_config *cfg, uint64_t seed,
                        const char *skip_tensor, const char *bad_shape_tensor, lb_err *err)
{
    const int64_t d = cfg->hidden_size, in = cfg->intermediate_size, V = cfg->vocab_size;
    const int64_t q = (int64_t)cfg->num_attention_heads * cfg->head_dim;
    const int64_t kv = (int64_t)cfg->num_key_value_heads * cfg->head_dim;
    int cap = 8 + 16 * cfg->num_hidden_layers, n = 0;
    tensor_spec *s = calloc((size_t)cap, sizeof *s);
    char path[4096], name[128];
    if (!s)
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    add_spec(s, &n, "model.embed_tokens.weight", V, d, 0.0f);
    s[0].scale = 1.0f;
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++) {
#define L(suffix, r, c, off)                                                                       \
    do {                                                                                           \
        snprintf(name, sizeof name, "model.layers.%d." suffix, (int)l);                            \
        add_spec(s, &n, name, r, c, off);                                                          \
    } while (0)
        L("input_layernorm.weight", d, 0, 1.0f);
        L("self_attn.q_proj.weight", q, d, 0.0f);
        L("self_attn.k_proj.weight", kv, d, 0.0f);
        L("self_attn.v_proj.weight", kv, d, 0.0f);
        if (cfg->attention_bias) {
            L("self_attn.q_proj.bias", q, 0, 0.0f);
            L("self_attn.k_proj.bias", kv, 0, 0.0f);
            L("self_attn.v_proj.bias", kv, 0, 0.0f);
        }
        L("self_attn.o_proj.weight", d, q, 0.0f);
        if (cfg->o_bias)
            L("self_attn.o_proj.bias", d, 0, 0.0f);
        L("post_attention_layernorm.weight", d, 0, 1.0f);
        L("mlp.gate_proj.weight", in, d, 0.0f);
        L("mlp.up_proj.weight", in, d, 0.0f);
        L("mlp.down_proj.weight", d, in, 0.0f);
        if (cfg->mlp_bias) {
            L("mlp.gate_proj.bias", in, 0, 0.0f);
            L("mlp.up_proj.bias", in, 0, 0.0f);
            L("mlp.down_proj.bias", d, 0, 0.0f);
        }
#undef L
    }
    add_spec(s, &n, "model.norm.weight", d, 0, 1.0f);
    if (!cfg->tie_word_embeddings)
        add_spec(s, &n, "lm_head.weight", V, d, 0.0f);

    lb_st_writer *w = NULL;
    float *buf = NULL;
    int rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    rc = lb_config_write(cfg, path, err);
    if (rc)
        goto cleanup;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = lb_st_writer_new(&w, path, err);
    for (int i = 0; !rc && i < n; i++) {
        if (skip_tensor && !strcmp(s[i].name, skip_tensor))
            continue;
        if (bad_shape_tensor && !strcmp(s[i].name, bad_shape_tensor))
            s[i].shape[0]++;
        rc = lb_st_writer_add_tensor(w, s[i].name, LB_DTYPE_F32, s[i].ndim, s[i].shape, err);
    }
    rc = rc ? rc : lb_st_writer_set_metadata(w, "generator", "lb_test_model", err);
    uint64_t rng = seed;
    for (int i = 0; !rc && i < n; i++) {
        if (skip_tensor && !strcmp(s[i].name, skip_tensor))
            continue;
        int64_t numel = s[i].shape[0] * (s[i].ndim == 2 ? s[i].shape[1] : 1);
        free(buf);
        buf = malloc((size_t)numel * sizeof(float));
        if (!buf) {
            rc = lb_err_set(err, LB_ENOMEM, "out of memory");
            break;
        }
        for (int64_t j = 0; j < numel; j++)
            buf[j] = s[i].offset + s[i].scale * lb_test_rand_normal(&rng);
        rc = lb_st_writer_write_f32(w, s[i].name, buf, (size_t)numel, err);
    }
    if (!rc)
        rc = lb_st_writer_finish(w, err);
cleanup:
    lb_st_writer_free(&w);
    free(buf);
    free(s);
    return rc;
}
