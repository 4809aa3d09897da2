/* lb_config: parse, validate and write HF config.json for llama/mistral/qwen2. */
#include "lb_config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lb_io_util.h"

#define CONFIG_MAX_BYTES ((uint64_t)16 * 1024 * 1024)

static const struct {
    const char *model_type, *architecture;
    lb_arch arch;
} k_archs[] = {
    {"llama", "LlamaForCausalLM", LB_ARCH_LLAMA},
    {"mistral", "MistralForCausalLM", LB_ARCH_MISTRAL},
    {"qwen2", "Qwen2ForCausalLM", LB_ARCH_QWEN2},
};
#define N_ARCHS ((int)(sizeof k_archs / sizeof k_archs[0]))

const char *lb_config_architecture(lb_arch arch)
{
    for (int i = 0; i < N_ARCHS; i++)
        if (k_archs[i].arch == arch)
            return k_archs[i].architecture;
    return NULL;
}

int64_t lb_config_q_dim(const lb_config *cfg)
{
    return (int64_t)cfg->num_attention_heads * cfg->head_dim;
}

int64_t lb_config_kv_dim(const lb_config *cfg)
{
    return (int64_t)cfg->num_key_value_heads * cfg->head_dim;
}

/* ---- typed key readers: 1 = present and set, 0 = absent (or null), <0 = error ---- */

static int get_int(json_t *root, const char *key, int required, int32_t *out, const char *src,
                   lb_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return lb_err_set(err, LB_EFORMAT, "%s: required key \"%s\" is missing", src, key);
        return 0;
    }
    /* HF writes sizes as integers; tolerate 4096.0 but not 4096.5 */
    json_int_t iv;
    if (json_is_integer(v)) {
        iv = json_integer_value(v);
    } else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
               fabs(json_real_value(v)) < 2147483648.0) {
        iv = (json_int_t)json_real_value(v);
    } else {
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" must be an integer", src, key);
    }
    if (iv < INT32_MIN || iv > INT32_MAX)
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" = %lld is out of range", src, key,
                          (long long)iv);
    *out = (int32_t)iv;
    return 1;
}

static int get_real(json_t *root, const char *key, int required, double *out, const char *src,
                    lb_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return lb_err_set(err, LB_EFORMAT, "%s: required key \"%s\" is missing", src, key);
        return 0;
    }
    if (!json_is_number(v))
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" must be a number", src, key);
    *out = json_number_value(v);
    return 1;
}

static int get_bool(json_t *root, const char *key, bool *out, const char *src, lb_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" must be true or false", src, key);
    *out = json_is_true(v);
    return 1;
}

static int get_str(json_t *root, const char *key, char *out, size_t cap, const char *src,
                   lb_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" must be a string", src, key);
    if (strlen(json_string_value(v)) >= cap)
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" value '%.40s' is too long", src, key,
                          json_string_value(v));
    snprintf(out, cap, "%s", json_string_value(v));
    return 1;
}

/* bos/eos: an int, or (llama 3) a list whose first element counts. */
static int get_token_id(json_t *root, const char *key, int32_t *out, const char *src,
                        lb_err *err)
{
    json_t *v = json_object_get(root, key);
    if (json_is_array(v) && json_array_size(v) > 0)
        v = json_array_get(v, 0);
    if (!v || json_is_null(v) || json_is_array(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" must be a non-negative integer", src,
                          key);
    *out = (int32_t)json_integer_value(v);
    return 1;
}

int lb_config_validate(const lb_config *cfg, lb_err *err)
{
    if (!cfg)
        return lb_err_set(err, LB_EINVAL, "lb_config_validate: NULL config");
    const char *src = "config.json";
    /* Upper bounds: far above any released LLaMA-family model (hidden 16384,
     * intermediate 53248, 126 layers, vocab 256000), low enough that sizes
     * derived from them (hidden * vocab, heads * head_dim) cannot overflow or
     * ask for absurd buffers before a tensor shape is checked. */
    const struct {
        const char *key;
        int32_t v, max;
    } pos[] = {
        {"hidden_size", cfg->hidden_size, LB_CONFIG_MAX_HIDDEN},
        {"intermediate_size", cfg->intermediate_size, LB_CONFIG_MAX_INTERMEDIATE},
        {"num_hidden_layers", cfg->num_hidden_layers, LB_CONFIG_MAX_LAYERS},
        {"num_attention_heads", cfg->num_attention_heads, LB_CONFIG_MAX_HEADS},
        {"num_key_value_heads", cfg->num_key_value_heads, LB_CONFIG_MAX_HEADS},
        {"head_dim", cfg->head_dim, LB_CONFIG_MAX_HEAD_DIM},
        {"vocab_size", cfg->vocab_size, LB_CONFIG_MAX_VOCAB},
        {"max_position_embeddings", cfg->max_position_embeddings, INT32_MAX},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
        if (pos[i].v <= 0)
            return lb_err_set(err, LB_EFORMAT, "%s: key \"%s\" = %d must be positive", src,
                              pos[i].key, (int)pos[i].v);
        if (pos[i].v > pos[i].max)
            return lb_err_set(err, LB_EFORMAT,
                              "%s: key \"%s\" = %d exceeds lowbit's limit %d (docs/io-formats.md)",
                              src, pos[i].key, (int)pos[i].v, (int)pos[i].max);
    }
    if (!lb_config_architecture(cfg->arch))
        return lb_err_set(err, LB_EFORMAT, "%s: invalid architecture %d", src, (int)cfg->arch);
    if (cfg->num_attention_heads % cfg->num_key_value_heads)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: key \"num_key_value_heads\" = %d does not divide "
                          "num_attention_heads = %d",
                          src, (int)cfg->num_key_value_heads, (int)cfg->num_attention_heads);
    if (cfg->head_dim % 2)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: key \"head_dim\" = %d must be even (RoPE rotates pairs)", src,
                          (int)cfg->head_dim);
    if (!(cfg->rms_norm_eps > 0.0) || !isfinite(cfg->rms_norm_eps))
        return lb_err_set(err, LB_EFORMAT, "%s: key \"rms_norm_eps\" = %g must be > 0 and finite",
                          src, cfg->rms_norm_eps);
    if (!(cfg->rope_theta > 0.0) || !isfinite(cfg->rope_theta))
        return lb_err_set(err, LB_EFORMAT, "%s: key \"rope_theta\" = %g must be > 0 and finite",
                          src, cfg->rope_theta);
    if (cfg->sliding_window < 0)
        return lb_err_set(err, LB_EFORMAT, "%s: key \"sliding_window\" = %d must be >= 0", src,
                          (int)cfg->sliding_window);
    if (strcmp(cfg->hidden_act, "silu"))
        return lb_err_set(err, LB_EFORMAT,
                          "%s: key \"hidden_act\" = '%s' is not supported (only silu)", src,
                          cfg->hidden_act);
    if (cfg->bos_token_id >= cfg->vocab_size || cfg->eos_token_id >= cfg->vocab_size)
        return lb_err_set(err, LB_EFORMAT, "%s: bos/eos token id is >= vocab_size %d", src,
                          (int)cfg->vocab_size);
    return 0;
}

static int parse_root(lb_config *c, json_t *root, const char *src, lb_err *err)
{
    int rc;
    char mt[32] = "";
    if (!json_is_object(root))
        return lb_err_set(err, LB_EFORMAT, "%s: not a JSON object", src);
    if ((rc = get_str(root, "model_type", mt, sizeof mt, src, err)) < 0)
        return rc;
    if (rc == 0)
        return lb_err_set(err, LB_EFORMAT, "%s: required key \"model_type\" is missing", src);
    int ai = -1;
    for (int i = 0; i < N_ARCHS; i++)
        if (!strcmp(mt, k_archs[i].model_type))
            ai = i;
    if (ai < 0)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: key \"model_type\" = '%s' is not supported (llama, mistral, qwen2)",
                          src, mt);
    c->arch = k_archs[ai].arch;
    snprintf(c->model_type, sizeof c->model_type, "%.*s", (int)sizeof c->model_type - 1, mt);

    if ((rc = get_int(root, "hidden_size", 1, &c->hidden_size, src, err)) < 0 ||
        (rc = get_int(root, "intermediate_size", 1, &c->intermediate_size, src, err)) < 0 ||
        (rc = get_int(root, "num_hidden_layers", 1, &c->num_hidden_layers, src, err)) < 0 ||
        (rc = get_int(root, "num_attention_heads", 1, &c->num_attention_heads, src, err)) < 0 ||
        (rc = get_int(root, "vocab_size", 1, &c->vocab_size, src, err)) < 0 ||
        (rc = get_int(root, "max_position_embeddings", 1, &c->max_position_embeddings, src,
                      err)) < 0 ||
        (rc = get_real(root, "rms_norm_eps", 1, &c->rms_norm_eps, src, err)) < 0)
        return rc;
    /* every size must be positive before it is divided by */
    if (c->num_attention_heads <= 0)
        return lb_err_set(err, LB_EFORMAT, "%s: key \"num_attention_heads\" = %d must be positive",
                          src, (int)c->num_attention_heads);
    c->num_key_value_heads = c->num_attention_heads;
    if ((rc = get_int(root, "num_key_value_heads", 0, &c->num_key_value_heads, src, err)) < 0)
        return rc;
    if ((rc = get_int(root, "head_dim", 0, &c->head_dim, src, err)) < 0)
        return rc;
    if (rc == 0) {
        if (c->hidden_size % c->num_attention_heads)
            return lb_err_set(err, LB_EFORMAT,
                              "%s: key \"num_attention_heads\" = %d does not divide hidden_size "
                              "= %d (and no head_dim is given)",
                              src, (int)c->num_attention_heads, (int)c->hidden_size);
        c->head_dim = c->hidden_size / c->num_attention_heads;
    }
    c->rope_theta = 10000.0;
    if ((rc = get_real(root, "rope_theta", 0, &c->rope_theta, src, err)) < 0)
        return rc;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs))
        return lb_err_set(err, LB_EFORMAT,
                          "%s: key \"rope_scaling\" is set; RoPE scaling is not supported", src);
    c->tie_word_embeddings = false;
    if ((rc = get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, src, err)) < 0)
        return rc;
    c->attention_bias = false;
    if ((rc = get_bool(root, "attention_bias", &c->attention_bias, src, err)) < 0)
        return rc;
    if (c->arch == LB_ARCH_QWEN2) {
        /* Qwen2Attention: q/k/v always biased, o_proj never (config key ignored by HF) */
        c->attention_bias = true;
        c->o_bias = false;
    } else {
        c->o_bias = c->attention_bias;
    }
    c->mlp_bias = false;
    if ((rc = get_bool(root, "mlp_bias", &c->mlp_bias, src, err)) < 0)
        return rc;
    c->sliding_window = 0;
    if (c->arch != LB_ARCH_LLAMA) {
        int32_t sw = 0;
        bool use_sw = c->arch == LB_ARCH_MISTRAL; /* qwen2 gates it with use_sliding_window */
        if ((rc = get_bool(root, "use_sliding_window", &use_sw, src, err)) < 0 ||
            (rc = get_int(root, "sliding_window", 0, &sw, src, err)) < 0)
            return rc;
        if (use_sw)
            c->sliding_window = sw;
    }
    snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    if ((rc = get_str(root, "hidden_act", c->hidden_act, sizeof c->hidden_act, src, err)) < 0)
        return rc;
    c->bos_token_id = c->eos_token_id = -1;
    if ((rc = get_token_id(root, "bos_token_id", &c->bos_token_id, src, err)) < 0 ||
        (rc = get_token_id(root, "eos_token_id", &c->eos_token_id, src, err)) < 0)
        return rc;
    if ((rc = get_str(root, "torch_dtype", c->torch_dtype, sizeof c->torch_dtype, src, err)) < 0)
        return rc;
    /* newer transformers write "dtype" instead */
    if (rc == 0 && (rc = get_str(root, "dtype", c->torch_dtype, sizeof c->torch_dtype, src,
                                 err)) < 0)
        return rc;
    if ((rc = lb_config_validate(c, err)) < 0) {
        /* validate names "config.json"; put the real source in front */
        if (strncmp(err ? err->msg : "", "config.json: ", 13) == 0 && err) {
            char rest[sizeof err->msg];
            snprintf(rest, sizeof rest, "%s", err->msg + 13);
            lb_err_set(err, rc, "%s: %s", src, rest);
        }
        return rc;
    }
    return 0;
}

int lb_config_parse(lb_config *cfg, const char *json, const char *source_name, lb_err *err)
{
    const char *src = source_name ? source_name : "config.json";
    if (!cfg || !json)
        return lb_err_set(err, LB_EINVAL, "lb_config_parse: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return lb_err_set(err, LB_EFORMAT, "%s: not valid JSON (line %d col %d: %.80s)", src,
                          jerr.line, jerr.column, jerr.text);
    int rc = parse_root(cfg, root, src, err);
    json_decref(root);
    return rc;
}

int lb_config_load(lb_config *cfg, const char *dir_or_file, lb_err *err)
{
    if (!cfg || !dir_or_file)
        return lb_err_set(err, LB_EINVAL, "lb_config_load: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    struct stat sb;
    char *path = NULL, *text = NULL;
    size_t len;
    int rc;
    if (stat(dir_or_file, &sb) == 0 && S_ISDIR(sb.st_mode))
        path = lb_io_path_join(dir_or_file, "config.json");
    else
        path = strdup(dir_or_file);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", dir_or_file);
    rc = lb_io_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
    if (rc == 0 && strlen(text) != len)
        rc = lb_err_set(err, LB_EFORMAT, "%s: contains a NUL byte; not a JSON text file", path);
    if (rc == 0)
        rc = lb_config_parse(cfg, text, path, err);
    free(text);
    free(path);
    return rc;
}

/* Fewest significant digits that round-trip v, but all integer digits of
 * values in [1, 1e16) so that 10000 prints as 10000.0, not 1e4. */
static int shortest_precision(double v)
{
    char buf[40];
    int p0 = 1;
    for (double a = fabs(v); a >= 10.0 && a < 1e16; a /= 10.0)
        p0++;
    for (int p = p0; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return p;
    }
    return 17;
}

int lb_config_write(const lb_config *cfg, const char *path, lb_err *err)
{
    int rc = lb_config_validate(cfg, err);
    if (rc)
        return rc;
    json_t *root = json_object();
    char *text = NULL;
    if (!root)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    json_t *arch = json_pack("[s]", lb_config_architecture(cfg->arch));
    int bad = json_object_set_new(root, "architectures", arch);
    bad |= json_object_set_new(root, "model_type", json_string(cfg->model_type));
#define SET_INT(k) bad |= json_object_set_new(root, #k, json_integer(cfg->k))
    SET_INT(hidden_size);
    SET_INT(intermediate_size);
    SET_INT(num_hidden_layers);
    SET_INT(num_attention_heads);
    SET_INT(num_key_value_heads);
    SET_INT(head_dim);
    SET_INT(vocab_size);
    SET_INT(max_position_embeddings);
#undef SET_INT
    bad |= json_object_set_new(root, "rms_norm_eps", json_real(cfg->rms_norm_eps));
    bad |= json_object_set_new(root, "rope_theta", json_real(cfg->rope_theta));
    bad |= json_object_set_new(root, "hidden_act", json_string(cfg->hidden_act));
    bad |= json_object_set_new(root, "tie_word_embeddings",
                               json_boolean(cfg->tie_word_embeddings));
    if (cfg->arch != LB_ARCH_QWEN2)
        bad |= json_object_set_new(root, "attention_bias", json_boolean(cfg->attention_bias));
    if (cfg->arch == LB_ARCH_LLAMA)
        bad |= json_object_set_new(root, "mlp_bias", json_boolean(cfg->mlp_bias));
    if (cfg->arch == LB_ARCH_MISTRAL)
        bad |= json_object_set_new(
            root, "sliding_window",
            cfg->sliding_window ? json_integer(cfg->sliding_window) : json_null());
    if (cfg->arch == LB_ARCH_QWEN2) {
        bad |= json_object_set_new(root, "use_sliding_window",
                                   json_boolean(cfg->sliding_window > 0));
        if (cfg->sliding_window)
            bad |= json_object_set_new(root, "sliding_window", json_integer(cfg->sliding_window));
    }
    if (cfg->bos_token_id >= 0)
        bad |= json_object_set_new(root, "bos_token_id", json_integer(cfg->bos_token_id));
    if (cfg->eos_token_id >= 0)
        bad |= json_object_set_new(root, "eos_token_id", json_integer(cfg->eos_token_id));
    if (cfg->torch_dtype[0])
        bad |= json_object_set_new(root, "torch_dtype", json_string(cfg->torch_dtype));
    /* shortest precision that round-trips both reals: 1e-05, not 1.0000000000000001e-05 */
    int prec = shortest_precision(cfg->rms_norm_eps);
    if (shortest_precision(cfg->rope_theta) > prec)
        prec = shortest_precision(cfg->rope_theta);
    if (!bad)
        text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(prec));
    json_decref(root);
    if (!text)
        return lb_err_set(err, LB_ENOMEM, "%s: building config JSON failed", path);
    size_t n = strlen(text);
    char *buf = realloc(text, n + 2);
    if (!buf) {
        free(text);
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    }
    buf[n] = '\n';
    buf[n + 1] = '\0';
    rc = lb_io_write_atomic(path, buf, n + 1, err);
    free(buf);
    return rc;
}
