/* lb_model: a LLaMA-family model on disk (config.json + safetensors) and its
 * weights converted to f32 one transformer block at a time.
 *
 * The whole-model pipeline keeps only ONE block resident, so nothing here loads
 * all weights: lb_model_open reads the config and maps the safetensors (no
 * conversion), lb_model_load_block converts one block, lb_model_load_head the
 * embedding, final norm and lm_head. All matrices are in Hugging Face's
 * row-major (out_features, in_features) layout. */
#ifndef LB_MODEL_H
#define LB_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"
#include "lb_safetensors.h"

typedef struct lb_model lb_model;

/* One transformer block in f32. dim = hidden_size, q_dim = n_heads * head_dim,
 * kv_dim = n_kv_heads * head_dim, inter = intermediate_size. */
typedef struct lb_block_weights {
    float *attn_norm; /* (dim,)            input_layernorm */
    float *wq;        /* (q_dim, dim)      self_attn.q_proj */
    float *wk;        /* (kv_dim, dim)     self_attn.k_proj */
    float *wv;        /* (kv_dim, dim)     self_attn.v_proj */
    float *bq;        /* (q_dim,)  NULL unless cfg.attention_bias (qwen2) */
    float *bk;        /* (kv_dim,) NULL unless cfg.attention_bias */
    float *bv;        /* (kv_dim,) NULL unless cfg.attention_bias */
    float *wo;        /* (dim, q_dim)      self_attn.o_proj */
    float *bo;        /* (dim,)    NULL unless cfg.o_bias (llama attention_bias) */
    float *ffn_norm;  /* (dim,)            post_attention_layernorm */
    float *w_gate;    /* (inter, dim)      mlp.gate_proj */
    float *w_up;      /* (inter, dim)      mlp.up_proj */
    float *w_down;    /* (dim, inter)      mlp.down_proj */
    float *b_gate;    /* (inter,)  NULL unless cfg.mlp_bias */
    float *b_up;      /* (inter,)  NULL unless cfg.mlp_bias */
    float *b_down;    /* (dim,)    NULL unless cfg.mlp_bias */
} lb_block_weights;

/* Embedding, final norm and output projection in f32. */
typedef struct lb_head_weights {
    int64_t vocab;
    int64_t dim;
    float *embed;      /* (vocab, dim) model.embed_tokens */
    float *final_norm; /* (dim,)       model.norm */
    float *lm_head;    /* (vocab, dim) lm_head; == embed (not separately owned) when tied */
} lb_head_weights;

/* The seven linear layers of a block, in the order a quantizer visits them. */
typedef enum {
    LB_LINEAR_Q = 0,
    LB_LINEAR_K,
    LB_LINEAR_V,
    LB_LINEAR_O,
    LB_LINEAR_GATE,
    LB_LINEAR_UP,
    LB_LINEAR_DOWN,
    LB_LINEAR_COUNT
} lb_linear;

/* HF name of a block's linear relative to the layer, e.g. "self_attn.q_proj"
 * (append ".weight"). NULL for an invalid value. */
const char *lb_linear_name(lb_linear which);

/* Shape (rows = out_features, cols = in_features) of a linear for cfg. */
void lb_linear_shape(const lb_config *cfg, lb_linear which, int64_t *rows, int64_t *cols);

/* Pointer to the (rows, cols) weight matrix of `which` inside w (borrowed). */
float *lb_block_linear(const lb_block_weights *w, lb_linear which);

/* Opens a model directory (config.json + model.safetensors or a sharded
 * index). Validates the config and that every tensor the config implies is
 * present with the expected shape and a float dtype; converts nothing.
 * Returns 0 and sets *out (free with lb_model_free), or LB_E* with err set. */
int lb_model_open(lb_model **out, const char *dir, lb_err *err);

/* Frees the model and sets *m = NULL. Accepts NULL and *m == NULL. */
void lb_model_free(lb_model **m);

/* The model's config (borrowed, valid until lb_model_free). */
const lb_config *lb_model_config(const lb_model *m);

/* The mapped safetensors (borrowed, valid until lb_model_free). */
const lb_st *lb_model_tensors(const lb_model *m);

/* The directory the model was opened from (borrowed). */
const char *lb_model_dir(const lb_model *m);

/* Allocates zero-filled f32 arrays for every field of a block (biases only
 * when cfg->attention_bias / o_bias / mlp_bias). OUT: *out. Returns 0 or LB_ENOMEM/LB_EINVAL.
 * On failure *out is left empty (all NULL). Free with lb_block_weights_free. */
int lb_block_weights_alloc(const lb_config *cfg, lb_block_weights *out, lb_err *err);

/* Frees every array of w and zeroes the struct. Accepts NULL and an empty struct. */
void lb_block_weights_free(lb_block_weights *w);

/* Converts block `layer` (0-based) to f32. OUT: *out, owned by the caller
 * (lb_block_weights_free); its previous contents are overwritten, not freed.
 * Checks every value is finite (LB_ENUMERIC naming the tensor otherwise).
 * On failure *out is left empty. */
int lb_model_load_block(const lb_model *m, int32_t layer, lb_block_weights *out, lb_err *err);

/* Allocates zero-filled head arrays (lm_head aliases embed when tied).
 * OUT: *out. Free with lb_head_weights_free. */
int lb_head_weights_alloc(const lb_config *cfg, bool tied, lb_head_weights *out, lb_err *err);

/* Frees the head arrays (lm_head only when it is not embed) and zeroes the struct. */
void lb_head_weights_free(lb_head_weights *h);

/* Converts embedding, final norm and lm_head (the embedding when
 * tie_word_embeddings) to f32. OUT: *out, owned (lb_head_weights_free). */
int lb_model_load_head(const lb_model *m, lb_head_weights *out, lb_err *err);

/* Formats the full tensor name of a block linear, e.g.
 * "model.layers.3.self_attn.q_proj.weight", into buf. Returns 0, or
 * LB_EINVAL when it does not fit. */
int lb_model_linear_tensor_name(char *buf, size_t size, int32_t layer, lb_linear which,
                                lb_err *err);

/* ---- Packed checkpoints (docs/packed-format.md) ---------------------------
 * A directory whose config.json has "quantization_config" with "quant_method":
 * "lowbit" stores the quantized linears as packed fields. Decoding them needs
 * the method registry of liblowbit_quant, which liblowbit_common may not link,
 * so the caller passes these operations to lb_model_open_with
 * (lb_packed_model_open() in common/packed/lb_packed.h does). lb_model_open
 * rejects a packed checkpoint with a clear message. */
typedef struct lb_model_packed_ops {
    /* Checks the checkpoint as a whole (format version, manifest, file sizes).
     * qconfig_json is the compact "quantization_config" object. Returns 0 or LB_E*. */
    int (*check)(const char *dir, const lb_st *st, const char *qconfig_json, lb_err *err);
    /* 1 and the shape when weight `name` (e.g. "model.layers.0.mlp.up_proj.weight")
     * is stored packed in st; 0 when it is not. */
    int (*find)(const lb_st *st, const char *name, int64_t *rows, int64_t *cols);
    /* Dequantizes packed weight `name` into dst (numel = rows * cols floats),
     * exactly as the method's dequantize defines it. Returns 0 or LB_E*. */
    int (*load)(const lb_st *st, const char *name, float *dst, int64_t numel, lb_err *err);
} lb_model_packed_ops;

/* lb_model_open that also accepts a packed checkpoint, read through `packed`
 * (NULL: refuse one, as lb_model_open). packed must outlive the model. */
int lb_model_open_with(lb_model **out, const char *dir, const lb_model_packed_ops *packed,
                       lb_err *err);

/* True when m was opened from a packed checkpoint. lb_model_load_block and
 * lb_model_load_head then dequantize packed linears one tensor at a time. */
bool lb_model_is_packed(const lb_model *m);

#endif
