/* GGUF v3 writer (llama architecture) for lowbit models. Written from the GGUF
 * specification (ggml docs/gguf.md) and llama.cpp's tensor naming; see
 * docs/export.md. One tensor is resident at a time. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_config.h"
#include "lb_export.h"
#include "lb_gguf_vocab.h"
#include "lb_io_util.h"
#include "lb_kquant.h"
#include "lb_model.h"
#include "lb_packed.h"
#include "lb_qpacked_io.h"
#include "lb_quant.h"

#define GGUF_ALIGN 32
#define NAME_CAP 256

/* gguf metadata value types */
enum { GT_U32 = 4, GT_I32 = 5, GT_F32 = 6, GT_BOOL = 7, GT_STR = 8, GT_ARR = 9 };

/* ---- growable byte buffer ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} gbuf;

static void gb_put(gbuf *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void gb_u32(gbuf *b, uint32_t v)
{
    uint8_t x[4];
    lb_io_put_le32(x, v);
    gb_put(b, x, 4);
}

static void gb_u64(gbuf *b, uint64_t v)
{
    uint8_t x[8];
    lb_io_put_le64(x, v);
    gb_put(b, x, 8);
}

static void gb_f32(gbuf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    gb_u32(b, u);
}

static void gb_str(gbuf *b, const char *s)
{
    size_t n = strlen(s);
    gb_u64(b, n);
    gb_put(b, s, n);
}

static void kv_u32(gbuf *b, uint64_t *nkv, const char *key, uint32_t v)
{
    gb_str(b, key);
    gb_u32(b, GT_U32);
    gb_u32(b, v);
    (*nkv)++;
}

static void kv_f32(gbuf *b, uint64_t *nkv, const char *key, float v)
{
    gb_str(b, key);
    gb_u32(b, GT_F32);
    gb_f32(b, v);
    (*nkv)++;
}

static void kv_bool(gbuf *b, uint64_t *nkv, const char *key, int v)
{
    uint8_t x = v ? 1 : 0;
    gb_str(b, key);
    gb_u32(b, GT_BOOL);
    gb_put(b, &x, 1);
    (*nkv)++;
}

static void kv_str(gbuf *b, uint64_t *nkv, const char *key, const char *v)
{
    gb_str(b, key);
    gb_u32(b, GT_STR);
    gb_str(b, v);
    (*nkv)++;
}

/* ---- vocabulary (read by lb_gguf_vocab.c) ---- */

static void put_vocab(gbuf *b, uint64_t *nkv, const lb_gguf_vocab *v)
{
    kv_str(b, nkv, "tokenizer.ggml.model", v->model);
    gb_str(b, "tokenizer.ggml.tokens");
    gb_u32(b, GT_ARR);
    gb_u32(b, GT_STR);
    gb_u64(b, (uint64_t)v->n);
    for (int32_t i = 0; i < v->n; i++)
        gb_str(b, v->tok[i]);
    (*nkv)++;
    gb_str(b, "tokenizer.ggml.scores");
    gb_u32(b, GT_ARR);
    gb_u32(b, GT_F32);
    gb_u64(b, (uint64_t)v->n);
    for (int32_t i = 0; i < v->n; i++)
        gb_f32(b, v->score[i]);
    (*nkv)++;
    gb_str(b, "tokenizer.ggml.token_type");
    gb_u32(b, GT_ARR);
    gb_u32(b, GT_I32);
    gb_u64(b, (uint64_t)v->n);
    for (int32_t i = 0; i < v->n; i++)
        gb_u32(b, (uint32_t)v->type[i]);
    (*nkv)++;
    if (v->merges) {
        gb_str(b, "tokenizer.ggml.merges");
        gb_u32(b, GT_ARR);
        gb_u32(b, GT_STR);
        gb_u64(b, (uint64_t)v->n_merges);
        for (int32_t i = 0; i < v->n_merges; i++)
            gb_str(b, v->merges[i]);
        (*nkv)++;
    }
    if (v->bos >= 0)
        kv_u32(b, nkv, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0)
        kv_u32(b, nkv, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0)
        kv_u32(b, nkv, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    kv_bool(b, nkv, "tokenizer.ggml.add_bos_token", v->bos >= 0);
    kv_bool(b, nkv, "tokenizer.ggml.add_eos_token", 0);
}

/* ---- tensor plan ---- */

typedef struct {
    char gguf[NAME_CAP];
    char hf[NAME_CAP];
    int64_t rows, cols; /* rows = 1 for vectors */
    int ndim;
    int type;           /* ggml type written */
    int32_t perm_heads; /* > 0: permute rows for RoPE (q: heads, k: kv heads) */
    uint64_t nbytes, offset;
} plan_t;

static uint64_t row_bytes(int type, int64_t cols)
{
    switch (type) {
    case LB_GGML_TYPE_F32:
        return (uint64_t)cols * 4;
    case LB_GGML_TYPE_F16:
    case LB_GGML_TYPE_BF16:
        return (uint64_t)cols * 2;
    case LB_GGML_TYPE_Q4_0:
        return (uint64_t)(cols / 32) * 18;
    case LB_GGML_TYPE_Q4_1:
        return (uint64_t)(cols / 32) * 20;
    case LB_GGML_TYPE_Q8_0:
        return (uint64_t)(cols / 32) * 34;
    case LB_GGML_TYPE_Q2_K:
    case LB_GGML_TYPE_Q3_K:
    case LB_GGML_TYPE_Q4_K:
        return (uint64_t)(cols / LB_KQ_QK) * lb_kquant_block_bytes(type);
    }
    return 0;
}

static int dense_type(lb_dtype dt)
{
    return dt == LB_DTYPE_F16 ? LB_GGML_TYPE_F16 : dt == LB_DTYPE_BF16 ? LB_GGML_TYPE_BF16
                                                                      : LB_GGML_TYPE_F32;
}

static bool packed_has(const lb_model *m, const char *hf)
{
    char prefix[NAME_CAP + 8];
    return lb_model_is_packed(m) && !lb_packed_prefix(hf, prefix, sizeof prefix, NULL) &&
           lb_qpacked_io_has(lb_model_tensors(m), prefix);
}

/* The ggml block type the stored grid of hf maps onto exactly, or -1. */
static int direct_type(const lb_model *m, const char *hf, lb_err *err)
{
    if (!packed_has(m, hf))
        return -1;
    char prefix[NAME_CAP + 8];
    lb_qpacked p = {0};
    int t = -1;
    if (lb_packed_prefix(hf, prefix, sizeof prefix, err) ||
        lb_qpacked_io_read(lb_model_tensors(m), prefix, &p, err))
        return -2;
    const lb_qfield *g = lb_qpacked_field(&p, "group_size");
    const lb_qfield *c = lb_qpacked_field(&p, "codes");
    bool uniform = !strcmp(p.method, "rtn") || !strcmp(p.method, "gptq");
    /* --grid q2_k|q3_k|q4_k: the stored ggml blocks themselves */
    if (uniform && !lb_qpacked_field(&p, "rot_kind") && lb_kquant_packed_type(&p) >= 0) {
        t = lb_kquant_packed_type(&p);
        lb_qpacked_free(&p);
        return t;
    }
    /* rotated codes live in the Hadamard basis: only the dequantized weight is right */
    if (uniform && g && c && lb_qpacked_field(&p, "scales") && !lb_qpacked_field(&p, "perm") &&
        !lb_qpacked_field(&p, "rot_kind") &&
        lb_qfield_get(g, 0) == 32 && p.cols % 32 == 0) {
        bool sym = !lb_qpacked_field(&p, "zeros");
        if (c->bits == 4)
            t = sym ? LB_GGML_TYPE_Q4_0 : LB_GGML_TYPE_Q4_1;
        else if (c->bits == 8 && sym)
            t = LB_GGML_TYPE_Q8_0;
    }
    lb_qpacked_free(&p);
    return t;
}

static int plan_add(plan_t *pl, int *n, const char *gguf, const char *hf, int64_t rows,
                    int64_t cols, int ndim, int type, int32_t perm_heads)
{
    plan_t *t = &pl[(*n)++];
    memset(t, 0, sizeof *t);
    snprintf(t->gguf, sizeof t->gguf, "%s", gguf);
    snprintf(t->hf, sizeof t->hf, "%s", hf);
    t->rows = rows;
    t->cols = cols;
    t->ndim = ndim;
    t->type = type;
    t->perm_heads = perm_heads;
    t->nbytes = row_bytes(type, cols) * (uint64_t)rows;
    return 0;
}

/* HF row r of a q/k projection -> GGUF row: llama.cpp's rope pairs adjacent
 * elements (x[2i], x[2i+1]) where HF's rotate-half pairs (x[i], x[i+hd/2]), so
 * within each head HF row j*hd/2 + i goes to 2i + j (convert_hf_to_gguf permute). */
static int64_t src_row(int64_t out_row, int64_t rows, int32_t heads)
{
    if (heads <= 0)
        return out_row;
    int64_t hd = rows / heads, h = out_row / hd, k = out_row % hd;
    return h * hd + (k % 2) * (hd / 2) + k / 2;
}

static int load_f32(const lb_model *m, const char *hf, float *buf, int64_t numel, lb_err *err)
{
    if (packed_has(m, hf))
        return lb_packed_load_weight(lb_model_tensors(m), hf, buf, numel, err);
    return lb_st_read_f32(lb_model_tensors(m), hf, buf, numel, err);
}

/* Q2_K / Q3_K / Q4_K: the stored blocks row by row (q/k rows in llama.cpp's order). */
static int write_kquant(FILE *f, const lb_model *m, const plan_t *t, lb_err *err)
{
    char prefix[NAME_CAP + 8];
    lb_qpacked p = {0};
    int rc = 0;
    if ((rc = lb_packed_prefix(t->hf, prefix, sizeof prefix, err)) ||
        (rc = lb_qpacked_io_read(lb_model_tensors(m), prefix, &p, err)))
        goto fail;
    const lb_qfield *bl = lb_qpacked_field(&p, "kq_blocks");
    const uint64_t rb = row_bytes(t->type, t->cols);
    if (lb_kquant_packed_type(&p) != t->type || !bl || bl->nbytes != rb * (uint64_t)t->rows) {
        rc = lb_err_set(err, LB_EFORMAT, "gguf export: %s K-quant blocks do not match its "
                        "shape", t->hf);
        goto fail;
    }
    for (int64_t orow = 0; orow < t->rows; orow++) {
        int64_t r = src_row(orow, t->rows, t->perm_heads);
        if (fwrite(bl->data + (uint64_t)r * rb, 1, rb, f) != rb) {
            rc = lb_err_set(err, LB_EIO, "gguf export: write failed: %s", strerror(errno));
            goto fail;
        }
    }
fail:
    lb_qpacked_free(&p);
    return rc;
}

/* Q4_0 / Q4_1 / Q8_0 blocks straight from the stored codes and f16 scales. */
static int write_direct(FILE *f, const lb_model *m, const plan_t *t, lb_gguf_summary *s,
                        lb_err *err)
{
    char prefix[NAME_CAP + 8];
    lb_qpacked p = {0};
    uint8_t *row = malloc(row_bytes(t->type, t->cols));
    int rc = 0;
    if (!row)
        return lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
    if ((rc = lb_packed_prefix(t->hf, prefix, sizeof prefix, err)) ||
        (rc = lb_qpacked_io_read(lb_model_tensors(m), prefix, &p, err)))
        goto fail;
    const lb_qfield *codes = lb_qpacked_field(&p, "codes");
    const lb_qfield *scales = lb_qpacked_field(&p, "scales");
    const lb_qfield *zeros = lb_qpacked_field(&p, "zeros");
    const int64_t ng = t->cols / 32;
    for (int64_t orow = 0; orow < t->rows; orow++) {
        int64_t r = src_row(orow, t->rows, t->perm_heads);
        uint8_t *o = row;
        for (int64_t gi = 0; gi < ng; gi++) {
            uint16_t d = (uint16_t)lb_qfield_get(scales, r * ng + gi);
            const int64_t c0 = r * t->cols + gi * 32;
            o[0] = (uint8_t)(d & 0xff);
            o[1] = (uint8_t)(d >> 8);
            if (t->type == LB_GGML_TYPE_Q8_0) {
                for (int j = 0; j < 32; j++)
                    o[2 + j] = (uint8_t)(int8_t)((int32_t)lb_qfield_get(codes, c0 + j) - 128);
                o += 34;
                continue;
            }
            uint8_t *qs = o + 2;
            if (t->type == LB_GGML_TYPE_Q4_1) {
                /* value = d*q + m with m = -d*z: exact only when f16 holds d*z */
                int32_t z = (int32_t)lb_qfield_get(zeros, r * ng + gi);
                float df = lb_f16_to_f32(d);
                uint16_t mh = lb_f32_to_f16(-df * (float)z);
                if (lb_f16_to_f32(mh) != -df * (float)z)
                    s->q4_1_m_inexact++;
                o[2] = (uint8_t)(mh & 0xff);
                o[3] = (uint8_t)(mh >> 8);
                qs = o + 4;
            }
            /* element j in the low nibble of byte j, element j+16 in its high nibble */
            for (int j = 0; j < 16; j++)
                qs[j] = (uint8_t)(lb_qfield_get(codes, c0 + j) |
                                  (lb_qfield_get(codes, c0 + j + 16) << 4));
            o += t->type == LB_GGML_TYPE_Q4_1 ? 20 : 18;
        }
        if (fwrite(row, 1, row_bytes(t->type, t->cols), f) != row_bytes(t->type, t->cols)) {
            rc = lb_err_set(err, LB_EIO, "gguf export: write failed: %s", strerror(errno));
            goto fail;
        }
    }
fail:
    lb_qpacked_free(&p);
    free(row);
    return rc;
}

static int write_dense(FILE *f, const lb_model *m, const plan_t *t, lb_err *err)
{
    const int64_t numel = t->rows * t->cols;
    float *buf = malloc((size_t)numel * sizeof *buf);
    uint8_t *out = malloc((size_t)t->nbytes);
    int rc = 0;
    if (!buf || !out) {
        rc = lb_err_set(err, LB_ENOMEM, "gguf export: cannot allocate %s", t->hf);
        goto fail;
    }
    if ((rc = load_f32(m, t->hf, buf, numel, err)))
        goto fail;
    for (int64_t orow = 0; orow < t->rows; orow++) {
        const float *src = buf + src_row(orow, t->rows, t->perm_heads) * t->cols;
        for (int64_t c = 0; c < t->cols; c++) {
            int64_t i = orow * t->cols + c;
            if (t->type == LB_GGML_TYPE_F32) {
                memcpy(out + 4 * i, &src[c], 4); /* GGUF is little-endian, like the host */
            } else {
                uint16_t h = t->type == LB_GGML_TYPE_F16 ? lb_f32_to_f16(src[c])
                                                         : lb_f32_to_bf16(src[c]);
                out[2 * i] = (uint8_t)(h & 0xff);
                out[2 * i + 1] = (uint8_t)(h >> 8);
            }
        }
    }
    if (fwrite(out, 1, (size_t)t->nbytes, f) != t->nbytes)
        rc = lb_err_set(err, LB_EIO, "gguf export: write failed: %s", strerror(errno));
fail:
    free(buf);
    free(out);
    return rc;
}

static int write_pad(FILE *f, uint64_t pos)
{
    static const uint8_t zero[GGUF_ALIGN];
    size_t pad = (size_t)((GGUF_ALIGN - pos % GGUF_ALIGN) % GGUF_ALIGN);
    return fwrite(zero, 1, pad, f) == pad ? 0 : -1;
}

/* The tensor plan, in llama.cpp's order: *pl_out (n_out entries, caller frees) with
 * each linear dense or, with opts->direct, in its packed ggml type. */
static int build_plan(const lb_model *m, const lb_config *cfg, const lb_gguf_opts *opts,
                      plan_t **pl_out, int *n_out, lb_gguf_summary *s, lb_err *err)
{
    const int32_t L = cfg->num_hidden_layers;
    plan_t *pl = calloc((size_t)(3 + 9 * L), sizeof *pl);
    int rc = LB_OK, n = 0;
    if (!pl)
        return lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
    const int dt = dense_type(opts->dtype);
    plan_add(pl, &n, "token_embd.weight", "model.embed_tokens.weight", cfg->vocab_size,
             cfg->hidden_size, 2, dt, 0);
    for (int32_t l = 0; l < L; l++) {
        static const char *const gname[LB_LINEAR_COUNT] = {
            "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        char g[NAME_CAP], h[NAME_CAP];
        snprintf(g, sizeof g, "blk.%d.attn_norm.weight", l);
        snprintf(h, sizeof h, "model.layers.%d.input_layernorm.weight", l);
        plan_add(pl, &n, g, h, 1, cfg->hidden_size, 1, LB_GGML_TYPE_F32, 0);
        for (int w = 0; w < LB_LINEAR_COUNT; w++) {
            int64_t rows, cols;
            lb_linear_shape(cfg, (lb_linear)w, &rows, &cols);
            snprintf(g, sizeof g, "blk.%d.%s.weight", l, gname[w]);
            if ((rc = lb_model_linear_tensor_name(h, sizeof h, l, (lb_linear)w, err)))
                goto out;
            int type = opts->direct ? direct_type(m, h, err) : -1;
            if (type == -2) {
                rc = err ? err->code : LB_EFORMAT;
                goto out;
            }
            if (type >= 0)
                s->direct++;
            else
                s->dense++;
            int32_t heads = w == LB_LINEAR_Q   ? cfg->num_attention_heads
                            : w == LB_LINEAR_K ? cfg->num_key_value_heads
                                               : 0;
            plan_add(pl, &n, g, h, rows, cols, 2, type >= 0 ? type : dt, heads);
        }
        snprintf(g, sizeof g, "blk.%d.ffn_norm.weight", l);
        snprintf(h, sizeof h, "model.layers.%d.post_attention_layernorm.weight", l);
        plan_add(pl, &n, g, h, 1, cfg->hidden_size, 1, LB_GGML_TYPE_F32, 0);
    }
    plan_add(pl, &n, "output_norm.weight", "model.norm.weight", 1, cfg->hidden_size, 1,
             LB_GGML_TYPE_F32, 0);
    if (!cfg->tie_word_embeddings) {
        int type = opts->direct ? direct_type(m, "lm_head.weight", err) : -1;
        if (type == -2) {
            rc = err ? err->code : LB_EFORMAT;
            goto out;
        }
        plan_add(pl, &n, "output.weight", "lm_head.weight", cfg->vocab_size, cfg->hidden_size,
                 2, type >= 0 ? type : dt, 0);
    }
out:
    if (rc) {
        free(pl);
        return rc;
    }
    *pl_out = pl;
    *n_out = n;
    return LB_OK;
}

/* The GGUF header: magic, version, counts (kv count patched in), metadata, tensor
 * infos. Out of memory shows as hb->oom. */
static void put_header(gbuf *hb, const lb_config *cfg, const lb_gguf_opts *opts,
                       const lb_gguf_vocab *v, const plan_t *pl, int n)
{
    uint64_t nkv = 0;
    gb_put(hb, "GGUF", 4);
    gb_u32(hb, 3);
    gb_u64(hb, (uint64_t)n);
    gb_u64(hb, 0);
    kv_str(hb, &nkv, "general.architecture", "llama");
    kv_str(hb, &nkv, "general.name", "lowbit export");
    kv_u32(hb, &nkv, "general.alignment", GGUF_ALIGN);
    kv_u32(hb, &nkv, "general.file_type",
           opts->dtype == LB_DTYPE_F16 ? 1 : opts->dtype == LB_DTYPE_BF16 ? 32 : 0);
    kv_u32(hb, &nkv, "llama.context_length", (uint32_t)cfg->max_position_embeddings);
    kv_u32(hb, &nkv, "llama.embedding_length", (uint32_t)cfg->hidden_size);
    kv_u32(hb, &nkv, "llama.block_count", (uint32_t)cfg->num_hidden_layers);
    kv_u32(hb, &nkv, "llama.feed_forward_length", (uint32_t)cfg->intermediate_size);
    kv_u32(hb, &nkv, "llama.attention.head_count", (uint32_t)cfg->num_attention_heads);
    kv_u32(hb, &nkv, "llama.attention.head_count_kv", (uint32_t)cfg->num_key_value_heads);
    kv_u32(hb, &nkv, "llama.attention.key_length", (uint32_t)cfg->head_dim);
    kv_u32(hb, &nkv, "llama.attention.value_length", (uint32_t)cfg->head_dim);
    kv_u32(hb, &nkv, "llama.rope.dimension_count", (uint32_t)cfg->head_dim);
    kv_f32(hb, &nkv, "llama.rope.freq_base", (float)cfg->rope_theta);
    kv_f32(hb, &nkv, "llama.attention.layer_norm_rms_epsilon", (float)cfg->rms_norm_eps);
    kv_u32(hb, &nkv, "llama.vocab_size", (uint32_t)cfg->vocab_size);
    put_vocab(hb, &nkv, v);
    lb_io_put_le64(hb->p + 16, nkv);
    for (int i = 0; i < n; i++) {
        gb_str(hb, pl[i].gguf);
        gb_u32(hb, (uint32_t)pl[i].ndim);
        gb_u64(hb, (uint64_t)pl[i].cols); /* ne0: the contiguous dimension */
        if (pl[i].ndim == 2)
            gb_u64(hb, (uint64_t)pl[i].rows);
        gb_u32(hb, (uint32_t)pl[i].type);
        gb_u64(hb, pl[i].offset);
    }
}

int lb_gguf_export(const char *in_dir, const char *out_path, const lb_gguf_opts *opts,
                   lb_gguf_summary *summary, lb_err *err)
{
    lb_model *m = NULL;
    lb_gguf_vocab v = {0};
    plan_t *pl = NULL;
    gbuf hb = {0};
    FILE *f = NULL;
    char *tmp = NULL, *tok_path = NULL;
    lb_gguf_summary s = {0};
    int rc, n = 0;
    if (!in_dir || !out_path || !opts)
        return lb_err_set(err, LB_EINVAL, "gguf export: missing --model or --out");
    if (opts->dtype != LB_DTYPE_F32 && opts->dtype != LB_DTYPE_F16 &&
        opts->dtype != LB_DTYPE_BF16)
        return lb_err_set(err, LB_EINVAL, "gguf export: --dtype must be f32, f16 or bf16");
    if ((rc = lb_packed_model_open(&m, in_dir, err)))
        goto fail;
    const lb_config *cfg = lb_model_config(m);
    if (cfg->arch == LB_ARCH_QWEN2 || cfg->attention_bias || cfg->o_bias || cfg->mlp_bias) {
        rc = lb_err_set(err, LB_EINVAL,
                        "gguf export: %s with biases is not supported yet; export llama/"
                        "mistral models without biases, or use --format dense",
                        cfg->model_type);
        goto fail;
    }
    /* vocabulary */
    tok_path = lb_io_path_join(in_dir, "tokenizer.json");
    if (!tok_path) {
        rc = lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
        goto fail;
    }
    rc = access(tok_path, R_OK) == 0 ? lb_gguf_vocab_from_tokenizer_json(&v, tok_path, cfg, err)
                                     : lb_gguf_vocab_synthetic(&v, cfg, err);
    if (rc)
        goto fail;

    if ((rc = build_plan(m, cfg, opts, &pl, &n, &s, err)))
        goto fail;
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        pl[i].offset = off;
        off += pl[i].nbytes;
        off += (GGUF_ALIGN - off % GGUF_ALIGN) % GGUF_ALIGN;
    }

    put_header(&hb, cfg, opts, &v, pl, n);
    if (hb.oom) {
        rc = lb_err_set(err, LB_ENOMEM, "gguf export: out of memory for the header");
        goto fail;
    }

    size_t tl = strlen(out_path) + 5;
    tmp = malloc(tl);
    if (!tmp) {
        rc = lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
        goto fail;
    }
    snprintf(tmp, tl, "%s.tmp", out_path);
    f = fopen(tmp, "wb");
    if (!f) {
        rc = lb_err_set(err, LB_EIO, "cannot create %s: %s (does its directory exist?)", tmp,
                        strerror(errno));
        goto fail;
    }
    if (fwrite(hb.p, 1, hb.n, f) != hb.n || write_pad(f, hb.n)) {
        rc = lb_err_set(err, LB_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        const plan_t *t = &pl[i];
        rc = t->type == LB_GGML_TYPE_Q4_0 || t->type == LB_GGML_TYPE_Q4_1 ||
                     t->type == LB_GGML_TYPE_Q8_0
                 ? write_direct(f, m, t, &s, err)
             : lb_kquant_block_bytes(t->type) ? write_kquant(f, m, t, err)
                                              : write_dense(f, m, t, err);
        if (rc || write_pad(f, t->offset + t->nbytes)) {
            rc = rc ? rc : lb_err_set(err, LB_EIO, "%s: write failed", tmp);
            goto fail;
        }
    }
    long end = ftell(f);
    if (fflush(f) || fsync(fileno(f)) || fclose(f)) {
        f = NULL;
        rc = lb_err_set(err, LB_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, out_path)) {
        rc = lb_err_set(err, LB_EIO, "cannot rename %s to %s: %s", tmp, out_path,
                        strerror(errno));
        goto fail;
    }
    s.tensors = n;
    s.file_bytes = end > 0 ? (uint64_t)end : 0;
    if (summary)
        *summary = s;
fail:
    if (f) {
        fclose(f);
        unlink(tmp);
    } else if (rc && tmp) {
        unlink(tmp);
    }
    if (rc)
        lb_err_prefix(err, "gguf export %s -> %s", in_dir, out_path);
    free(tmp);
    free(tok_path);
    free(hb.p);
    free(pl);
    lb_gguf_vocab_free(&v);
    lb_model_free(&m);
    return rc;
}
