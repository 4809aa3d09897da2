/* lb_config: HF config.json of LLaMA-family decoders (llama, mistral, qwen2). */
#ifndef LB_CONFIG_H
#define LB_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"

typedef enum {
    LB_ARCH_LLAMA = 0, /* LlamaForCausalLM */
    LB_ARCH_MISTRAL,   /* MistralForCausalLM (llama layout; sliding_window recorded) */
    LB_ARCH_QWEN2,     /* Qwen2ForCausalLM (q/k/v projections carry biases) */
} lb_arch;

typedef struct {
    lb_arch arch;
    char model_type[16];          /* "llama", "mistral" or "qwen2" */
    int32_t hidden_size;          /* d_model */
    int32_t intermediate_size;    /* MLP width */
    int32_t num_hidden_layers;
    int32_t num_attention_heads;
    int32_t num_key_value_heads;  /* default num_attention_heads (no GQA) */
    int32_t head_dim;             /* explicit "head_dim", else hidden / heads */
    int32_t vocab_size;
    int32_t max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;            /* default 10000 */
    bool tie_word_embeddings;     /* default false; lm_head shares embed_tokens */
    bool attention_bias;          /* q/k/v projections have biases (llama "attention_bias";
                                     qwen2: always true) */
    bool o_bias;                  /* o_proj has a bias (llama attention_bias; qwen2: false) */
    bool mlp_bias;                /* llama "mlp_bias"; default false */
    int32_t sliding_window;       /* mistral/qwen2 window when active, else 0 */
    char hidden_act[16];          /* always "silu" after a successful load */
    int32_t bos_token_id;         /* -1 when absent */
    int32_t eos_token_id;         /* -1 when absent (first id when a list) */
    char torch_dtype[16];         /* e.g. "float32", "bfloat16"; "" when absent */
} lb_config;

/* Reads dir_or_file (a model directory holding config.json, or the file) and
 * parses it as lb_config_parse does. Errors: LB_EIO / LB_ENOTFOUND (missing
 * file), LB_EFORMAT (bad JSON, missing or invalid key). cfg is zeroed first. */
int lb_config_load(lb_config *cfg, const char *dir_or_file, lb_err *err);

/* Parses config JSON text. source_name (e.g. the path) prefixes error messages.
 * Required: model_type, hidden_size, intermediate_size, num_hidden_layers,
 * num_attention_heads, vocab_size, max_position_embeddings, rms_norm_eps.
 * Unsupported (-> LB_EFORMAT): other model types, hidden_act != silu, a
 * non-null rope_scaling. Calls lb_config_validate. Returns 0 or LB_EFORMAT /
 * LB_EINVAL / LB_ENOMEM with one line "source: key: problem". */
int lb_config_parse(lb_config *cfg, const char *json, const char *source_name, lb_err *err);

/* Limits (docs/io-formats.md, "Limits"): a config beyond them is refused. */
#define LB_CONFIG_MAX_HIDDEN 131072
#define LB_CONFIG_MAX_INTERMEDIATE 1048576
#define LB_CONFIG_MAX_LAYERS 4096
#define LB_CONFIG_MAX_HEADS 4096
#define LB_CONFIG_MAX_HEAD_DIM 8192
#define LB_CONFIG_MAX_VOCAB 16777216

/* Checks sizes > 0 and within the limits above, heads * head_dim sanity, heads % kv_heads == 0,
 * head_dim even (RoPE pairs), eps > 0 and finite, theta > 0 and finite.
 * Returns 0 or LB_EFORMAT naming the key. */
int lb_config_validate(const lb_config *cfg, lb_err *err);

/* Writes an HF-compatible config.json (architectures, model_type and every
 * field above) to path, atomically (path.tmp + rename). Returns 0 or
 * LB_EINVAL (invalid cfg) / LB_EIO. */
int lb_config_write(const lb_config *cfg, const char *path, lb_err *err);

/* "LlamaForCausalLM" etc.; NULL for an invalid arch. */
const char *lb_config_architecture(lb_arch arch);

/* Widths of the attention projections: q = heads * head_dim, kv = kv_heads * head_dim. */
int64_t lb_config_q_dim(const lb_config *cfg);
int64_t lb_config_kv_dim(const lb_config *cfg);

#endif
