/* GPTQ safetensors layout (AutoGPTQ / GPTQModel / transformers, checkpoint_format
 * "gptq") and compressed-tensors "pack-quantized" (vLLM) export of RTN/GPTQ
 * packed checkpoints. Both store lowbit's integer codes and f16 scales as they
 * are, so a loader's dequantization gives exactly lowbit's weights. Layouts:
 * docs/export.md. */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_export.h"
#include "lb_gptq.h"
#include "lb_io_util.h"
#include "lb_model.h"
#include "lb_packed.h"
#include "lb_packed_stage.h"
#include "lb_qpacked_io.h"
#include "lb_quant.h"

#define NAME_CAP 1024

static int is_float(lb_dtype dt)
{
    return dt == LB_DTYPE_F32 || dt == LB_DTYPE_F16 || dt == LB_DTYPE_BF16 || dt == LB_DTYPE_F64;
}

typedef struct {
    char base[NAME_CAP]; /* "X" of "X.weight" */
    const lb_st_tensor *t; /* plain tensor, or NULL for a packed linear */
    int64_t rows, cols, g, ngroups;
    int32_t bits;
    bool sym, perm;
} item;

typedef struct {
    int32_t bits;
    int64_t group; /* 0 = per row */
    bool sym, desc_act, lm_head, any;
} qsettings;

/* Checks p can be written and fills it; settings must agree across linears. */
static int describe(const lb_qpacked *p, const char *base, bool compressed, item *it,
                    qsettings *q, lb_err *err)
{
    const char *fmt = compressed ? "compressed-tensors" : "gptq";
    if (strcmp(p->method, "rtn") && strcmp(p->method, "gptq"))
        return lb_err_set(err, LB_EINVAL,
                          "%s.weight is stored with method %s, which has no %s layout; %s "
                          "exports as: %s (--format gptq/compressed-tensors take rtn and gptq "
                          "at 2, 4 or 8 bits)", base, p->method, fmt, p->method,
                          lb_export_formats_for(p->method));
    if (lb_qpacked_field(p, "rot_kind"))
        return lb_err_set(err, LB_EINVAL,
                          "%s.weight was quantized with --rotate hadamard, which the %s layout "
                          "cannot express; export with --format dense or gguf, or quantize "
                          "with --rotate none", base, fmt);
    if (lb_qpacked_field(p, "kq_type"))
        return lb_err_set(err, LB_EINVAL, "%s.weight holds llama.cpp K-quant blocks (--grid "
                          "q2_k|q3_k|q4_k), which the %s layout cannot express; export with "
                          "--format gguf --direct", base, fmt);
    const lb_qfield *g = lb_qpacked_field(p, "group_size");
    const lb_qfield *c = lb_qpacked_field(p, "codes");
    if (!g || !c || !lb_qpacked_field(p, "scales"))
        return lb_err_set(err, LB_EFORMAT, "%s: packed %s matrix lacks group_size/codes/scales",
                          base, p->method);
    if (c->bits != 2 && c->bits != 4 && c->bits != 8)
        return lb_err_set(err, LB_EINVAL,
                          "%s.weight has %u-bit codes; --format %s takes 2, 4 or 8 bits (use "
                          "--format dense or gguf)", base, c->bits, fmt);
    int64_t gs = (int64_t)lb_qfield_get(g, 0);
    it->rows = p->rows;
    it->cols = p->cols;
    it->g = gs > 0 && gs < p->cols ? gs : p->cols;
    it->ngroups = (p->cols + it->g - 1) / it->g;
    it->bits = (int32_t)c->bits;
    it->sym = !lb_qpacked_field(p, "zeros");
    it->perm = lb_qpacked_field(p, "perm") != NULL;
    if (!q->any) {
        q->any = true;
        q->bits = it->bits;
        q->group = gs;
        q->sym = it->sym;
    } else if (q->bits != it->bits || q->group != gs || q->sym != it->sym) {
        return lb_err_set(err, LB_EINVAL,
                          "%s.weight: %d-bit, group %lld, %s differs from the other linears "
                          "(%d-bit, group %lld, %s); --format %s writes one quantization_config",
                          base, it->bits, (long long)gs, it->sym ? "sym" : "asym", q->bits,
                          (long long)q->group, q->sym ? "sym" : "asym", fmt);
    }
    q->desc_act |= it->perm;
    return 0;
}

/* Group of each original column (act-order: groups follow the processing order). */
static int groups_of(const lb_qpacked *p, const item *it, int32_t *gi, lb_err *err)
{
    if (!it->perm) {
        for (int64_t k = 0; k < it->cols; k++)
            gi[k] = (int32_t)(k / it->g);
        return 0;
    }
    int64_t *perm = malloc((size_t)it->cols * sizeof *perm);
    if (!perm)
        return lb_err_set(err, LB_ENOMEM, "export: out of memory");
    int rc = lb_gptq_unpack_perm(p, perm, it->cols, err);
    for (int64_t c = 0; !rc && c < it->cols; c++)
        gi[perm[c]] = (int32_t)(c / it->g);
    free(perm);
    return rc;
}

static int declare(lb_st_writer *w, const item *it, bool compressed, lb_dtype dtype,
                   lb_err *err)
{
    char n[NAME_CAP + 32];
    int rc;
    if (it->t) {
        snprintf(n, sizeof n, "%s", it->base);
        return lb_st_writer_add_tensor(w, n, is_float(it->t->dtype) ? dtype : it->t->dtype,
                                       it->t->ndim, it->t->shape, err);
    }
    const int64_t pf = 32 / it->bits, N = it->rows, K = it->cols, G = it->ngroups;
    if (!compressed) {
        int64_t qw[2] = {(K + pf - 1) / pf, N}, qz[2] = {G, (N + pf - 1) / pf};
        int64_t sc[2] = {G, N}, gx[1] = {K};
        snprintf(n, sizeof n, "%s.qweight", it->base);
        if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_I32, 2, qw, err)))
            return rc;
        snprintf(n, sizeof n, "%s.qzeros", it->base);
        if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_I32, 2, qz, err)))
            return rc;
        snprintf(n, sizeof n, "%s.scales", it->base);
        if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_F16, 2, sc, err)))
            return rc;
        snprintf(n, sizeof n, "%s.g_idx", it->base);
        return lb_st_writer_add_tensor(w, n, LB_DTYPE_I32, 1, gx, err);
    }
    int64_t wp[2] = {N, (K + pf - 1) / pf}, sc[2] = {N, G}, zp[2] = {(N + pf - 1) / pf, G};
    int64_t gx[1] = {K}, two[1] = {2};
    snprintf(n, sizeof n, "%s.weight_packed", it->base);
    if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_I32, 2, wp, err)))
        return rc;
    snprintf(n, sizeof n, "%s.weight_scale", it->base);
    if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_F16, 2, sc, err)))
        return rc;
    snprintf(n, sizeof n, "%s.weight_shape", it->base);
    if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_I64, 1, two, err)))
        return rc;
    if (!it->sym) {
        snprintf(n, sizeof n, "%s.weight_zero_point", it->base);
        if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_I32, 2, zp, err)))
            return rc;
    }
    if (it->perm) {
        snprintf(n, sizeof n, "%s.weight_g_idx", it->base);
        if ((rc = lb_st_writer_add_tensor(w, n, LB_DTYPE_I32, 1, gx, err)))
            return rc;
    }
    return 0;
}

static int put(lb_st_writer *w, const char *base, const char *suffix, const void *data,
               size_t nbytes, lb_err *err)
{
    char n[NAME_CAP + 32];
    snprintf(n, sizeof n, "%s.%s", base, suffix);
    return lb_st_writer_write(w, n, data, nbytes, err);
}

/* Writes one packed linear. Codes/zeros are lowbit's unsigned values c, z in
 * [0, 2^b): GPTQ stores c and z - 1 (its loaders add the 1 back, modulo 2^b);
 * compressed-tensors stores c = q + 2^(b-1) and z = zp + 2^(b-1) for its signed
 * q and zp, so (q - zp) = (c - z) in both. */
static int write_linear(lb_st_writer *w, const lb_st *st, const item *it, bool compressed,
                        lb_err *err)
{
    char prefix[NAME_CAP + 8];
    lb_qpacked p = {0};
    const int64_t b = it->bits, pf = 32 / b, N = it->rows, K = it->cols, G = it->ngroups;
    const int64_t kp = (K + pf - 1) / pf, np = (N + pf - 1) / pf;
    uint32_t *qw = NULL, *qz = NULL;
    uint16_t *sc = NULL;
    int32_t *gi = NULL;
    int rc;
    snprintf(prefix, sizeof prefix, "%s.q", it->base);
    if ((rc = lb_qpacked_io_read(st, prefix, &p, err)))
        return rc;
    const lb_qfield *codes = lb_qpacked_field(&p, "codes");
    const lb_qfield *scales = lb_qpacked_field(&p, "scales");
    const lb_qfield *zeros = lb_qpacked_field(&p, "zeros");
    const uint32_t mask = (1u << b) - 1u, zsym = 1u << (b - 1);
    qw = calloc((size_t)(N * kp), sizeof *qw);
    qz = calloc((size_t)(G * np), sizeof *qz);
    sc = malloc((size_t)(N * G) * sizeof *sc);
    gi = malloc((size_t)K * sizeof *gi);
    if (!qw || !qz || !sc || !gi) {
        rc = lb_err_set(err, LB_ENOMEM, "export: cannot allocate %s", it->base);
        goto fail;
    }
    if ((rc = groups_of(&p, it, gi, err)))
        goto fail;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            uint32_t c = lb_qfield_get(codes, n * K + k);
            /* GPTQ: qweight[k / pf][n]; compressed-tensors: weight_packed[n][k / pf] */
            int64_t at = compressed ? n * kp + k / pf : (k / pf) * N + n;
            qw[at] |= c << (b * (k % pf));
        }
    for (int64_t gg = 0; gg < G; gg++)
        for (int64_t n = 0; n < N; n++) {
            uint32_t z = zeros ? lb_qfield_get(zeros, n * G + gg) : zsym;
            uint16_t s = (uint16_t)lb_qfield_get(scales, n * G + gg);
            if (compressed) {
                sc[n * G + gg] = s;
                qz[(n / pf) * G + gg] |= z << (b * (n % pf));
            } else {
                sc[gg * N + n] = s;
                qz[gg * np + n / pf] |= ((z - 1u) & mask) << (b * (n % pf));
            }
        }
    if (!compressed) {
        if ((rc = put(w, it->base, "qweight", qw, (size_t)(N * kp) * 4, err)) ||
            (rc = put(w, it->base, "qzeros", qz, (size_t)(G * np) * 4, err)) ||
            (rc = put(w, it->base, "scales", sc, (size_t)(N * G) * 2, err)) ||
            (rc = put(w, it->base, "g_idx", gi, (size_t)K * 4, err)))
            goto fail;
    } else {
        int64_t shape[2] = {N, K};
        if ((rc = put(w, it->base, "weight_packed", qw, (size_t)(N * kp) * 4, err)) ||
            (rc = put(w, it->base, "weight_scale", sc, (size_t)(N * G) * 2, err)) ||
            (rc = put(w, it->base, "weight_shape", shape, sizeof shape, err)) ||
            (!it->sym &&
             (rc = put(w, it->base, "weight_zero_point", qz, (size_t)(G * np) * 4, err))) ||
            (it->perm && (rc = put(w, it->base, "weight_g_idx", gi, (size_t)K * 4, err))))
            goto fail;
    }
fail:
    lb_qpacked_free(&p);
    free(qw);
    free(qz);
    free(sc);
    free(gi);
    return rc;
}

static json_t *quant_config(const qsettings *q, bool compressed)
{
    if (!compressed)
        return json_pack("{s:s, s:i, s:I, s:b, s:b, s:b, s:b, s:f, s:s, s:b, s:s}",
                         "quant_method", "gptq", "bits", q->bits, "group_size",
                         (json_int_t)(q->group > 0 ? q->group : -1), "desc_act", q->desc_act,
                         "sym", q->sym, "static_groups", 0, "true_sequential", 1,
                         "damp_percent", 0.01, "checkpoint_format", "gptq", "lm_head",
                         q->lm_head, "quantizer", "lowbit");
    json_t *weights = json_pack(
        "{s:i, s:s, s:b, s:s, s:o, s:b, s:o, s:s}", "num_bits", q->bits, "type", "int",
        "symmetric", q->sym, "strategy", q->group > 0 ? "group" : "channel", "group_size",
        q->group > 0 ? json_integer(q->group) : json_null(), "dynamic", 0, "actorder",
        q->desc_act ? json_string("group") : json_null(), "observer", "minmax");
    json_t *group = json_pack("{s:[s], s:o, s:n, s:n, s:s}", "targets", "Linear", "weights",
                              weights, "input_activations", "output_activations", "format",
                              "pack-quantized");
    json_t *ignore = q->lm_head ? json_array() : json_pack("[s]", "lm_head");
    return json_pack("{s:s, s:s, s:s, s:{s:o}, s:o, s:n, s:n}", "quant_method",
                     "compressed-tensors", "format", "pack-quantized", "quantization_status",
                     "compressed", "config_groups", "group_0", group, "ignore", ignore,
                     "kv_cache_scheme", "global_compression_ratio");
}

int lb_gptq_export(const char *in_dir, const char *out_dir, bool compressed, lb_dtype dtype,
                   lb_err *err)
{
    lb_model *m = NULL;
    lb_packed_stage stg = {0};
    lb_st_writer *w = NULL;
    item *items = NULL;
    json_t *cfg = NULL, *qc = NULL;
    char *cfg_in = NULL, *cfg_out = NULL, *st_path = NULL, *text = NULL, *qc_out = NULL,
         *qtext = NULL;
    char rin[PATH_MAX], rout[PATH_MAX];
    qsettings q = {0};
    int64_t n = 0;
    int rc;
    if (!in_dir || !out_dir)
        return lb_err_set(err, LB_EINVAL, "export: missing --model or --out");
    if (dtype != LB_DTYPE_F16 && dtype != LB_DTYPE_BF16)
        return lb_err_set(err, LB_EINVAL, "export: --format %s takes --dtype f16 or bf16",
                          compressed ? "compressed-tensors" : "gptq");
    if (realpath(in_dir, rin) && realpath(out_dir, rout) && !strcmp(rin, rout))
        return lb_err_set(err, LB_EINVAL, "export: --out %s is the input directory; pick another",
                          out_dir);
    if ((rc = lb_packed_model_open(&m, in_dir, err)))
        goto fail;
    if (!lb_model_is_packed(m)) {
        rc = lb_err_set(err, LB_EINVAL, "export: %s is not a packed lowbit checkpoint; "
                        "quantize it with --method rtn or gptq first", in_dir);
        goto fail;
    }
    const lb_st *st = lb_model_tensors(m);
    int64_t count = lb_st_count(st);
    items = calloc((size_t)(count ? count : 1), sizeof *items);
    if (!items) {
        rc = lb_err_set(err, LB_ENOMEM, "export: out of memory");
        goto fail;
    }
    char prefix[NAME_CAP], base[NAME_CAP], last[NAME_CAP] = "";
    for (int64_t i = 0; i < count; i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        if (lb_qpacked_io_field_of(st, t->name, prefix, base, sizeof base)) {
            if (!strcmp(prefix, last))
                continue; /* further fields of the same matrix */
            snprintf(last, sizeof last, "%s", prefix);
            lb_qpacked p = {0};
            if ((rc = lb_qpacked_io_read(st, prefix, &p, err)))
                goto fail;
            snprintf(items[n].base, NAME_CAP, "%s", base);
            rc = describe(&p, base, compressed, &items[n], &q, err);
            lb_qpacked_free(&p);
            if (rc)
                goto fail;
            q.lm_head |= !strcmp(base, "lm_head");
            n++;
            continue;
        }
        snprintf(items[n].base, NAME_CAP, "%s", t->name);
        items[n++].t = t;
    }
    if (!q.any) {
        rc = lb_err_set(err, LB_EINVAL, "export: %s holds no packed linear", in_dir);
        goto fail;
    }
    cfg_in = lb_io_path_join(in_dir, "config.json");
    json_error_t jerr;
    cfg = cfg_in ? json_load_file(cfg_in, 0, &jerr) : NULL;
    if (!json_is_object(cfg)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: cannot re-read config.json", in_dir);
        goto fail;
    }
    qc = quant_config(&q, compressed);
    if (!qc) {
        rc = lb_err_set(err, LB_ENOMEM, "export: out of memory");
        goto fail;
    }
    json_object_set(cfg, "quantization_config", qc);
    json_object_set_new(cfg, "torch_dtype",
                        json_string(dtype == LB_DTYPE_F16 ? "float16" : "bfloat16"));
    if ((rc = lb_packed_stage_open(&stg, out_dir, err)))
        goto fail;
    st_path = lb_packed_stage_file(&stg, "model.safetensors");
    cfg_out = lb_packed_stage_file(&stg, "config.json");
    qc_out = compressed ? NULL : lb_packed_stage_file(&stg, "quantize_config.json");
    text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    qtext = json_dumps(qc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!st_path || !cfg_out || !text || !qtext || (!compressed && !qc_out)) {
        rc = lb_err_set(err, LB_ENOMEM, "export: out of memory");
        goto fail;
    }
    if ((rc = lb_st_writer_new(&w, st_path, err)) ||
        (rc = lb_st_writer_set_metadata(w, "format", "pt", err)))
        goto fail;
    for (int64_t i = 0; i < n; i++)
        if ((rc = declare(w, &items[i], compressed, dtype, err)))
            goto fail;
    for (int64_t i = 0; i < n; i++) {
        const item *it = &items[i];
        if (!it->t) {
            rc = write_linear(w, st, it, compressed, err);
        } else if (!is_float(it->t->dtype)) {
            rc = lb_st_writer_write(w, it->base, it->t->data, it->t->nbytes, err);
        } else {
            float *buf = malloc((size_t)(it->t->numel ? it->t->numel : 1) * sizeof *buf);
            rc = !buf ? lb_err_set(err, LB_ENOMEM, "export: cannot allocate %s", it->base)
                      : lb_st_read_f32(st, it->base, buf, it->t->numel, err);
            if (!rc)
                rc = lb_st_writer_write_f32(w, it->base, buf, (size_t)it->t->numel, err);
            free(buf);
        }
        if (rc)
            goto fail;
    }
    if ((rc = lb_st_writer_finish(w, err)) ||
        (rc = lb_io_write_atomic(cfg_out, text, strlen(text), err)) ||
        (qc_out && (rc = lb_io_write_atomic(qc_out, qtext, strlen(qtext), err))))
        goto fail;
    rc = lb_packed_stage_finish_export(&stg, in_dir, err);
fail:
    if (rc)
        lb_err_prefix(err, "export %s -> %s", in_dir, out_dir);
    lb_st_writer_free(&w);
    lb_packed_stage_abort(&stg);
    lb_model_free(&m);
    json_decref(cfg);
    json_decref(qc);
    free(items);
    free(cfg_in);
    free(cfg_out);
    free(qc_out);
    free(st_path);
    free(text);
    free(qtext);
    return rc;
}
