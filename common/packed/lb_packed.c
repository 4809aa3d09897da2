/* Packed checkpoint: merger (lb_packed_write), reader hooks for lb_model and
 * manifest verification. Layout in lb_packed.h and docs/packed-format.md. */
#include "lb_packed.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_io_util.h"
#include "lb_packed_stage.h"
#include "lb_qpacked_io.h"
#include "lb_rotate.h"
#include "lb_sha256.h"

#define NAME_CAP 1024
#define MANIFEST "manifest.json"
#define MANIFEST_MAX ((uint64_t)256 << 20)

/* Small files of an HF directory copied along (when present). */
static const char *const extra_files[] = {
    "tokenizer.json",          "tokenizer.model",       "tokenizer_config.json",
    "special_tokens_map.json", "generation_config.json", NULL,
};

int lb_packed_prefix(const char *name, char *buf, size_t size, lb_err *err)
{
    size_t n = strlen(name);
    size_t stem = n > 7 && !strcmp(name + n - 7, ".weight") ? n - 7 : n;
    int len = snprintf(buf, size, "%.*s.q", (int)stem, name);
    if (len < 0 || (size_t)len >= size)
        return lb_err_set(err, LB_EINVAL, "tensor name '%.64s' too long", name);
    return 0;
}

/* ---- merger ---- */

static const lb_packed_entry *entry_for(const lb_packed_entry *e, int64_t n, const char *name)
{
    for (int64_t i = 0; i < n; i++)
        if (!strcmp(e[i].name, name))
            return &e[i];
    return NULL;
}

/* The entry's packed matrix: borrowed when in memory, else loaded into *tmp. */
static int entry_packed(const lb_packed_entry *e, lb_qpacked *tmp, const lb_qpacked **out,
                        lb_err *err)
{
    if (e->packed) {
        *out = e->packed;
        return 0;
    }
    if (!e->packed_path)
        return lb_err_set(err, LB_EINVAL, "entry '%s': neither packed data nor a path", e->name);
    int rc = lb_qpacked_io_load(e->packed_path, tmp, err);
    *out = rc ? NULL : tmp;
    return rc;
}

static int check_entry(const lb_packed_entry *e, const lb_st_tensor *t, const lb_qpacked *p,
                       lb_err *err)
{
    int rc = lb_qpacked_io_check(p, err);
    if (rc)
        return lb_err_prefix(err, "%s", e->name), rc;
    if (t->ndim != 2 || t->shape[0] != p->rows || t->shape[1] != p->cols)
        return lb_err_set(err, LB_EINVAL, "%s: packed matrix is %lld x %lld; the source tensor "
                          "has another shape", e->name, (long long)p->rows, (long long)p->cols);
    if (!lb_qmethod_find(p->method))
        return lb_err_set(err, LB_EINVAL, "%s: method '%s' is not in this build's registry",
                          e->name, p->method);
    return 0;
}

static char *sha_hex_dup(lb_sha256 *s)
{
    uint8_t d[LB_SHA256_DIGEST];
    char hex[LB_SHA256_HEX];
    lb_sha256_final(s, d);
    lb_sha256_to_hex(d, hex);
    return strdup(hex);
}

#define LM_HEAD "lm_head.weight"

/* A quantized lm_head for a tied source whose file has no lm_head.weight: the
 * entry to append after the source tensors, else NULL. */
static const lb_packed_entry *appended_head(const lb_model *src, const lb_packed_entry *e,
                                            int64_t n)
{
    if (!lb_model_config(src)->tie_word_embeddings || lb_st_find(lb_model_tensors(src), LM_HEAD))
        return NULL;
    return entry_for(e, n, LM_HEAD);
}

/* Writes model.safetensors into path; fills the manifest's "tensors" object. */
static int write_tensors(const char *path, const lb_model *src, const lb_packed_entry *entries,
                         int64_t n, json_t *tensors, json_t *per_tensor,
                         lb_packed_summary *sum, lb_err *err)
{
    const lb_st *st = lb_model_tensors(src);
    const lb_config *cfg = lb_model_config(src);
    lb_st_writer *w = NULL;
    lb_qpacked tmp = {0};
    char prefix[NAME_CAP];
    /* the appended lm_head (if any) is visited as tensor `count` */
    const lb_packed_entry *head = appended_head(src, entries, n);
    lb_st_tensor head_t;
    memset(&head_t, 0, sizeof head_t);
    head_t.name = LM_HEAD;
    head_t.dtype = LB_DTYPE_F32;
    head_t.ndim = 2;
    head_t.shape[0] = cfg->vocab_size;
    head_t.shape[1] = cfg->hidden_size;
    head_t.numel = head_t.shape[0] * head_t.shape[1];
    int rc = lb_st_writer_new(&w, path, err);
    if (rc)
        return rc;
    char ver[16];
    snprintf(ver, sizeof ver, "%d", LB_PACKED_FORMAT_VERSION);
    if ((rc = lb_st_writer_set_metadata(w, "format", "pt", err)) ||
        (rc = lb_st_writer_set_metadata(w, "lowbit_format", ver, err)))
        goto fail;
    int64_t count = lb_st_count(st), matched = 0, total = count + (head ? 1 : 0);
    /* pass 1: declarations, in source file order */
    for (int64_t i = 0; i < total; i++) {
        const lb_st_tensor *t = i < count ? lb_st_at(st, i) : &head_t;
        const lb_packed_entry *e = i < count ? entry_for(entries, n, t->name) : head;
        if (!e) {
            if ((rc = lb_st_writer_add_tensor(w, t->name, t->dtype, t->ndim, t->shape, err)))
                goto fail;
            continue;
        }
        const lb_qpacked *p = NULL;
        matched++;
        if ((rc = entry_packed(e, &tmp, &p, err)) || (rc = check_entry(e, t, p, err)) ||
            (rc = lb_packed_prefix(t->name, prefix, sizeof prefix, err)) ||
            (rc = lb_qpacked_io_declare(w, prefix, p, err)))
            goto fail;
        lb_qpacked_free(&tmp);
    }
    if (matched != n) {
        for (int64_t j = 0; j < n; j++)
            if (!lb_st_find(st, entries[j].name) && &entries[j] != head) {
                rc = lb_err_set(err, LB_EINVAL, "%s: no tensor '%s' to replace",
                                lb_model_dir(src), entries[j].name);
                goto fail;
            }
        rc = lb_err_set(err, LB_EINVAL, "a quantized tensor is listed twice");
        goto fail;
    }
    /* pass 2: bytes, checksums, manifest entries */
    for (int64_t i = 0; i < total; i++) {
        const lb_st_tensor *t = i < count ? lb_st_at(st, i) : &head_t;
        const lb_packed_entry *e = i < count ? entry_for(entries, n, t->name) : head;
        lb_sha256 sh;
        lb_sha256_init(&sh);
        json_t *jt;
        if (!e) {
            if ((rc = lb_st_writer_write(w, t->name, t->data, t->nbytes, err)))
                goto fail;
            lb_sha256_update(&sh, t->data, t->nbytes);
            json_t *shape = json_array();
            for (int32_t d = 0; d < t->ndim; d++)
                json_array_append_new(shape, json_integer(t->shape[d]));
            char *hex = sha_hex_dup(&sh);
            jt = json_pack("{s:s, s:s, s:o, s:I, s:s*}", "stored", "plain", "dtype",
                           lb_dtype_name(t->dtype), "shape", shape, "bytes",
                           (json_int_t)t->nbytes, "sha256", hex);
            free(hex);
        } else {
            const lb_qpacked *p = NULL;
            if ((rc = entry_packed(e, &tmp, &p, err)) ||
                (rc = lb_packed_prefix(t->name, prefix, sizeof prefix, err)) ||
                (rc = lb_qpacked_io_check(p, err)) ||
                (rc = lb_qpacked_io_write(w, prefix, p, err)))
                goto fail;
            json_t *fields = json_array();
            for (int32_t f = 0; f < p->nfields; f++) {
                const lb_qfield *q = &p->fields[f];
                char fhex[LB_SHA256_HEX];
                lb_sha256_hex(q->data, q->nbytes, fhex);
                lb_sha256_update(&sh, q->data, q->nbytes);
                json_array_append_new(fields, json_pack("{s:s, s:I, s:s}", "name", q->name,
                                                        "bytes", (json_int_t)q->nbytes,
                                                        "sha256", fhex));
            }
            uint64_t bytes = lb_qpacked_io_nbytes(p);
            int64_t weights = p->rows * p->cols;
            double bpw = 8.0 * (double)bytes / (double)weights;
            char *hex = sha_hex_dup(&sh);
            jt = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:f, s:s*, s:o}", "stored",
                           "packed", "prefix", prefix, "method", p->method, "options",
                           e->options ? e->options : "", "rows", (json_int_t)p->rows, "cols",
                           (json_int_t)p->cols, "bytes", (json_int_t)bytes, "bpw", bpw,
                           "sha256", hex, "fields", fields);
            free(hex);
            json_object_set_new(per_tensor, t->name,
                                json_pack("{s:s, s:s, s:f}", "method", p->method, "options",
                                          e->options ? e->options : "", "bpw", bpw));
            sum->n_quantized++;
            sum->quantized_weights += weights;
            sum->quantized_bytes += bytes;
            if (!strcmp(t->name, LM_HEAD)) {
                sum->lm_head_packed = true;
                sum->lm_head_bpw = bpw;
            }
            lb_qpacked_free(&tmp);
        }
        if (!jt || json_object_set_new(tensors, t->name, jt)) {
            rc = lb_err_set(err, LB_ENOMEM, "manifest: out of memory");
            goto fail;
        }
    }
    rc = lb_st_writer_finish(w, err);
fail:
    lb_qpacked_free(&tmp);
    lb_st_writer_free(&w);
    return rc;
}

static int write_json(lb_packed_stage *stg, const char *name, json_t *root, char hex[LB_SHA256_HEX],
                      lb_err *err)
{
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    char *path = lb_packed_stage_file(stg, name);
    int rc;
    if (!text || !path) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", name);
    } else {
        size_t len = strlen(text);
        text[len] = '\0';
        if (hex)
            lb_sha256_hex(text, len, hex);
        rc = lb_io_write_atomic(path, text, len, err);
    }
    free(text);
    free(path);
    return rc;
}

/* manifest.json and config.json of a checkpoint are read whole: bounded so a
 * hostile file cannot make the verifier allocate gigabytes (a real manifest
 * is ~200 bytes per tensor). */
#define JSON_MAX_BYTES ((uint64_t)64 << 20)

static json_t *load_json(const char *dir, const char *name, lb_err *err)
{
    char *path = lb_io_path_join(dir, name);
    json_error_t jerr;
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    if (!path) {
        lb_err_set(err, LB_ENOMEM, "%s/%s: out of memory", dir, name);
        return NULL;
    }
    if (lb_io_read_file(path, JSON_MAX_BYTES, &text, &len, err) != 0) {
        free(path);
        return NULL;
    }
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        lb_err_set(err, LB_EFORMAT, "%s/%s: %s", dir, name, jerr.text);
    else if (!json_is_object(root)) {
        lb_err_set(err, LB_EFORMAT, "%s/%s: not a JSON object", dir, name);
        json_decref(root);
        root = NULL;
    }
    free(path);
    return root;
}

static int file_size(const char *path, uint64_t *size, lb_err *err)
{
    struct stat sb;
    if (stat(path, &sb))
        return lb_err_set(err, errno == ENOENT ? LB_ENOTFOUND : LB_EIO, "%s: %s", path,
                          strerror(errno));
    *size = (uint64_t)sb.st_size;
    return 0;
}

int lb_packed_write(const char *out_dir, const lb_model *src, const lb_packed_entry *entries,
                    int64_t n, const lb_packed_info *info, lb_packed_summary *summary,
                    lb_err *err)
{
    lb_packed_stage stg = {0};
    lb_packed_summary sum = {0};
    json_t *cfg = NULL, *manifest = NULL, *qc = NULL, *extra = NULL;
    json_t *tensors = json_object(), *per_tensor = json_object(), *files = json_object();
    char *st_path = NULL;
    int rc;
    if (!out_dir || !src || (n && !entries) || n < 0 || !info || !info->method) {
        rc = lb_err_set(err, LB_EINVAL, "lb_packed_write: missing argument");
        goto fail;
    }
    char rsrc[PATH_MAX], rout[PATH_MAX];
    if (realpath(lb_model_dir(src), rsrc) && realpath(out_dir, rout) && !strcmp(rsrc, rout)) {
        rc = lb_err_set(err, LB_EINVAL, "the output directory is the source model's; pick another");
        goto fail;
    }
    if (lb_model_is_packed(src)) {
        rc = lb_err_set(err, LB_EINVAL, "%s: already a packed checkpoint; quantize the fp model",
                        lb_model_dir(src));
        goto fail;
    }
    for (int64_t i = 0; i < n; i++)
        if (!entries[i].name) {
            rc = lb_err_set(err, LB_EINVAL, "lb_packed_write: entry %lld has no name", (long long)i);
            goto fail;
        }
    if (info->extra_json) {
        json_error_t jerr;
        extra = json_loads(info->extra_json, 0, &jerr);
        if (!json_is_object(extra)) {
            rc = lb_err_set(err, LB_EINVAL, "quantization_config extras are not a JSON object: %s",
                            extra ? "not an object" : jerr.text);
            goto fail;
        }
    }
    if (!tensors || !per_tensor || !files) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto fail;
    }
    if (!(cfg = load_json(lb_model_dir(src), "config.json", err))) {
        rc = err ? err->code : LB_EFORMAT;
        goto fail;
    }
    if ((rc = lb_packed_stage_open(&stg, out_dir, err)))
        goto fail;
    st_path = lb_packed_stage_file(&stg, "model.safetensors");
    if (!st_path) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = write_tensors(st_path, src, entries, n, tensors, per_tensor, &sum, err)))
        goto fail;
    char hex[LB_SHA256_HEX];
    if ((rc = file_size(st_path, &sum.file_bytes, err)) ||
        (rc = lb_sha256_file(st_path, hex, err)))
        goto fail;
    sum.bpw = sum.quantized_weights
                  ? 8.0 * (double)sum.quantized_bytes / (double)sum.quantized_weights : 0.0;
    json_object_set_new(files, "model.safetensors",
                        json_pack("{s:I, s:s}", "bytes", (json_int_t)sum.file_bytes, "sha256", hex));

    /* config.json: the source config (every key kept) + quantization_config */
    qc = json_pack("{s:s, s:i, s:s, s:f}", "quant_method", "lowbit", "format_version",
                   LB_PACKED_FORMAT_VERSION, "method", info->method, "bits", info->bits);
    /* a quantized lm_head of a tied model is its own tensor from now on */
    bool untie = sum.lm_head_packed && lb_model_config(src)->tie_word_embeddings;
    if (!qc || (extra && json_object_update_missing(qc, extra)) ||
        json_object_set(qc, "per_tensor", per_tensor) ||
        (untie && json_object_set_new(cfg, "tie_word_embeddings", json_false())) ||
        json_object_set(cfg, "quantization_config", qc)) {
        rc = lb_err_set(err, LB_ENOMEM, "config.json: out of memory");
        goto fail;
    }
    if ((rc = write_json(&stg, "config.json", cfg, hex, err)))
        goto fail;
    {
        char *p = lb_io_path_join(stg.tmp, "config.json");
        uint64_t csize = 0;
        rc = p ? file_size(p, &csize, err) : lb_err_set(err, LB_ENOMEM, "out of memory");
        free(p);
        if (rc)
            goto fail;
        json_object_set_new(files, "config.json",
                            json_pack("{s:I, s:s}", "bytes", (json_int_t)csize, "sha256", hex));
    }
    for (int i = 0; extra_files[i]; i++) {
        int copied = 0;
        if ((rc = lb_packed_stage_copy_if_present(&stg, lb_model_dir(src), extra_files[i],
                                                  &copied, err)))
            goto fail;
        if (copied) {
            char *p = lb_io_path_join(stg.tmp, extra_files[i]);
            uint64_t fsz = 0;
            rc = p ? file_size(p, &fsz, err) : lb_err_set(err, LB_ENOMEM, "out of memory");
            if (!rc)
                rc = lb_sha256_file(p, hex, err);
            free(p);
            if (rc)
                goto fail;
            json_object_set_new(files, extra_files[i],
                                json_pack("{s:I, s:s}", "bytes", (json_int_t)fsz, "sha256", hex));
        }
    }
    manifest = json_pack("{s:i, s:s, s:f, s:{s:I, s:I, s:I, s:f}, s:O, s:O}", "lowbit_format",
                         LB_PACKED_FORMAT_VERSION, "method", info->method, "bits", info->bits,
                         "quantized", "linears", (json_int_t)sum.n_quantized, "weights",
                         (json_int_t)sum.quantized_weights, "bytes",
                         (json_int_t)sum.quantized_bytes, "bpw", sum.bpw, "files", files,
                         "tensors", tensors);
    /* only with a quantized lm_head, so checkpoints without one keep their bytes */
    if (!manifest || (sum.lm_head_packed &&
                      json_object_set_new(json_object_get(manifest, "quantized"),
                                          "lm_head_included", json_true()))) {
        rc = lb_err_set(err, LB_ENOMEM, "manifest: out of memory");
        goto fail;
    }
    if ((rc = write_json(&stg, MANIFEST, manifest, NULL, err)))
        goto fail;
    if ((rc = lb_packed_stage_commit(&stg, MANIFEST, err)))
        goto fail;
    if (summary)
        *summary = sum;
fail:
    if (rc)
        lb_err_prefix(err, "packed checkpoint %s", out_dir ? out_dir : "?");
    lb_packed_stage_abort(&stg);
    free(st_path);
    json_decref(cfg);
    json_decref(qc);
    json_decref(extra);
    json_decref(manifest);
    json_decref(tensors);
    json_decref(per_tensor);
    json_decref(files);
    return rc;
}

/* ---- reader hooks for lb_model ---- */

static int64_t json_i64(json_t *obj, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static int ops_check(const char *dir, const lb_st *st, const char *qconfig_json, lb_err *err)
{
    (void)st;
    json_error_t jerr;
    json_t *qc = json_loads(qconfig_json, 0, &jerr);
    json_t *man = NULL;
    char *path = NULL;
    int rc = 0;
    int64_t ver = json_i64(qc, "format_version", -1);
    if (ver != LB_PACKED_FORMAT_VERSION) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/config.json: quantization_config format_version %lld "
                        "unsupported (this build reads %d)", dir, (long long)ver,
                        LB_PACKED_FORMAT_VERSION);
        goto done;
    }
    if (!(man = load_json(dir, MANIFEST, err))) {
        rc = err ? err->code : LB_EFORMAT;
        if (rc == LB_ENOTFOUND)
            rc = lb_err_set(err, LB_ENOTFOUND, "%s: %s missing: the checkpoint is incomplete (an "
                            "interrupted write?); re-run the merge", dir, MANIFEST);
        goto done;
    }
    if (json_i64(man, "lowbit_format", -1) != LB_PACKED_FORMAT_VERSION) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/%s: lowbit_format is not %d", dir, MANIFEST,
                        LB_PACKED_FORMAT_VERSION);
        goto done;
    }
    /* A cheap completeness check; lb_packed_verify recomputes the checksums. */
    int64_t want = json_i64(json_object_get(json_object_get(man, "files"), "model.safetensors"),
                            "bytes", -1);
    uint64_t have = 0;
    path = lb_io_path_join(dir, "model.safetensors");
    if (!path) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = file_size(path, &have, err)))
        goto done;
    if (want < 0 || (uint64_t)want != have)
        rc = lb_err_set(err, LB_EFORMAT, "%s: model.safetensors has %llu bytes, %s says %lld; the "
                        "checkpoint is damaged (run `lowbit verify`)", dir,
                        (unsigned long long)have, MANIFEST, (long long)want);
done:
    json_decref(qc);
    json_decref(man);
    free(path);
    return rc;
}

static int ops_find(const lb_st *st, const char *name, int64_t *rows, int64_t *cols)
{
    char prefix[NAME_CAP], key[NAME_CAP + 16];
    if (lb_packed_prefix(name, prefix, sizeof prefix, NULL))
        return 0;
    snprintf(key, sizeof key, "%s%s", prefix, LB_QPACKED_IO_META_SUFFIX);
    const char *text = lb_st_metadata_get(st, key);
    if (!text)
        return 0;
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    *rows = json_i64(root, "rows", -1);
    *cols = json_i64(root, "cols", -1);
    json_decref(root);
    return 1;
}

int lb_packed_load_weight(const lb_st *st, const char *name, float *dst, int64_t numel,
                          lb_err *err)
{
    char prefix[NAME_CAP];
    lb_qpacked p = {0};
    int rc = lb_packed_prefix(name, prefix, sizeof prefix, err);
    if (!rc)
        rc = lb_qpacked_io_read(st, prefix, &p, err);
    if (rc)
        return rc;
    const lb_qmethod *m = lb_qmethod_find(p.method);
    if (!m) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: '%s' uses method '%s', which this build lacks",
                        lb_st_path(st), name, p.method);
    } else if (p.rows * p.cols != numel) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: packed '%s' holds %lld weights, expected %lld",
                        lb_st_path(st), name, (long long)(p.rows * p.cols), (long long)numel);
    } else if ((rc = lb_qmethod_dequantize(m, &p, dst, err))) {
        lb_err_prefix(err, "%s: dequantizing '%s'", lb_st_path(st), name);
    } else {
        for (int64_t i = 0; i < numel; i++)
            if (!isfinite(dst[i])) {
                rc = lb_err_set(err, LB_ENUMERIC, "%s: '%s' dequantizes to NaN/Inf at element "
                                "%lld", lb_st_path(st), name, (long long)i);
                break;
            }
    }
    lb_qpacked_free(&p);
    return rc;
}

static const lb_model_packed_ops packed_ops = {
    .check = ops_check,
    .find = ops_find,
    .load = lb_packed_load_weight,
};

int lb_packed_model_open(lb_model **out, const char *dir, lb_err *err)
{
    return lb_model_open_with(out, dir, &packed_ops, err);
}

/* ---- verification ---- */

static int verify_hash(const char *what, const char *want, const char *have, const char *dir,
                       lb_err *err)
{
    if (!want || strcmp(want, have))
        return lb_err_set(err, LB_EFORMAT, "%s: %s checksum mismatch (manifest %.16s..., "
                          "stored %.16s...): the checkpoint is corrupt", dir, what,
                          want ? want : "(none)", have);
    return 0;
}

static int verify_packed(const char *dir, const lb_st *st, const char *name, json_t *jt,
                         int64_t *ntensors, lb_packed_summary *sum, lb_err *err)
{
    const char *prefix = json_string_value(json_object_get(jt, "prefix"));
    json_t *fields = json_object_get(jt, "fields");
    lb_qpacked p = {0};
    int rc;
    if (!prefix || !json_is_array(fields))
        return lb_err_set(err, LB_EFORMAT, "%s/%s: entry '%s' lacks prefix/fields", dir, MANIFEST,
                          name);
    if ((rc = lb_qpacked_io_read(st, prefix, &p, err)))
        return rc;
    lb_sha256 sh;
    lb_sha256_init(&sh);
    if (json_array_size(fields) != (size_t)p.nfields) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: '%s' has %d fields, the manifest lists %zu", dir,
                        name, p.nfields, json_array_size(fields));
        goto done;
    }
    for (int32_t f = 0; f < p.nfields; f++) {
        char hex[LB_SHA256_HEX], what[NAME_CAP + 40];
        json_t *jf = json_array_get(fields, (size_t)f);
        lb_sha256_hex(p.fields[f].data, p.fields[f].nbytes, hex);
        lb_sha256_update(&sh, p.fields[f].data, p.fields[f].nbytes);
        snprintf(what, sizeof what, "tensor %s field %s", name, p.fields[f].name);
        if ((rc = verify_hash(what, json_string_value(json_object_get(jf, "sha256")), hex, dir,
                              err)))
            goto done;
    }
    uint64_t bytes = lb_qpacked_io_nbytes(&p);
    int64_t weights = p.rows * p.cols;
    double bpw = 8.0 * (double)bytes / (double)weights;
    uint8_t d[LB_SHA256_DIGEST];
    char hex[LB_SHA256_HEX];
    lb_sha256_final(&sh, d);
    lb_sha256_to_hex(d, hex);
    if ((rc = verify_hash(name, json_string_value(json_object_get(jt, "sha256")), hex, dir, err)))
        goto done;
    if (json_i64(jt, "bytes", -1) != (int64_t)bytes ||
        fabs(json_number_value(json_object_get(jt, "bpw")) - bpw) > 1e-9 * (bpw + 1.0)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: '%s' stores %llu bytes (%.6f bpw); the manifest "
                        "disagrees", dir, name, (unsigned long long)bytes, bpw);
        goto done;
    }
    *ntensors += p.nfields;
    if (!strcmp(name, LM_HEAD)) {
        sum->lm_head_packed = true;
        sum->lm_head_bpw = bpw;
    }
    sum->n_quantized++;
    sum->quantized_weights += weights;
    sum->quantized_bytes += bytes;
done:
    lb_qpacked_free(&p);
    return rc;
}

int lb_packed_verify(const char *dir, lb_packed_summary *summary, lb_err *err)
{
    lb_st *st = NULL;
    lb_packed_summary sum = {0};
    json_t *man = load_json(dir, MANIFEST, err);
    char *path = NULL;
    int rc = 0;
    if (!man)
        return err ? err->code : LB_EFORMAT;
    if (json_i64(man, "lowbit_format", -1) != LB_PACKED_FORMAT_VERSION) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/%s: lowbit_format is not %d", dir, MANIFEST,
                        LB_PACKED_FORMAT_VERSION);
        goto done;
    }
    /* whole files first: a flipped byte anywhere shows up here */
    json_t *files = json_object_get(man, "files");
    const char *fname;
    json_t *jf;
    if (!json_object_get(files, "model.safetensors") || !json_object_get(files, "config.json")) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/%s: files entry incomplete", dir, MANIFEST);
        goto done;
    }
    json_object_foreach(files, fname, jf) {
        char hex[LB_SHA256_HEX];
        uint64_t size = 0;
        free(path);
        path = lb_io_path_join(dir, fname);
        if (!path || strchr(fname, '/')) {
            rc = lb_err_set(err, LB_EFORMAT, "%s/%s: bad file name '%s'", dir, MANIFEST, fname);
            goto done;
        }
        if ((rc = file_size(path, &size, err)))
            goto done;
        if (json_i64(jf, "bytes", -1) != (int64_t)size) {
            rc = lb_err_set(err, LB_EFORMAT, "%s: %s has %llu bytes, the manifest says %lld", dir,
                            fname, (unsigned long long)size, (long long)json_i64(jf, "bytes", -1));
            goto done;
        }
        if ((rc = lb_sha256_file(path, hex, err)) ||
            (rc = verify_hash(fname, json_string_value(json_object_get(jf, "sha256")), hex, dir,
                              err)))
            goto done;
    }
    /* then each tensor, so a mismatch is named precisely */
    if ((rc = lb_st_open(&st, dir, err)))
        goto done;
    json_t *tensors = json_object_get(man, "tensors");
    const char *name;
    json_t *jt;
    int64_t ntensors = 0;
    if (!json_is_object(tensors)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/%s: no tensors object", dir, MANIFEST);
        goto done;
    }
    json_object_foreach(tensors, name, jt) {
        const char *stored = json_string_value(json_object_get(jt, "stored"));
        if (stored && !strcmp(stored, "packed")) {
            if ((rc = verify_packed(dir, st, name, jt, &ntensors, &sum, err)))
                goto done;
            continue;
        }
        const lb_st_tensor *t = lb_st_find(st, name);
        if (!stored || strcmp(stored, "plain") || !t) {
            rc = lb_err_set(err, LB_EFORMAT, "%s: manifest tensor '%s' is not in the file", dir,
                            name);
            goto done;
        }
        char hex[LB_SHA256_HEX];
        lb_sha256_hex(t->data, t->nbytes, hex);
        if ((rc = verify_hash(name, json_string_value(json_object_get(jt, "sha256")), hex, dir,
                              err)))
            goto done;
        ntensors++;
    }
    if (ntensors != lb_st_count(st)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: the file holds %lld tensors, the manifest accounts "
                        "for %lld", dir, (long long)lb_st_count(st), (long long)ntensors);
        goto done;
    }
    sum.bpw = sum.quantized_weights
                  ? 8.0 * (double)sum.quantized_bytes / (double)sum.quantized_weights : 0.0;
    json_t *q = json_object_get(man, "quantized");
    if (json_i64(q, "bytes", -1) != (int64_t)sum.quantized_bytes ||
        json_i64(q, "weights", -1) != sum.quantized_weights) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/%s: model-wide byte/weight counts disagree with the "
                        "tensors", dir, MANIFEST);
        goto done;
    }
    if (json_is_true(json_object_get(q, "lm_head_included")) != sum.lm_head_packed) {
        rc = lb_err_set(err, LB_EFORMAT, "%s/%s: quantized.lm_head_included disagrees with how "
                        "lm_head.weight is stored", dir, MANIFEST);
        goto done;
    }
    {
        uint64_t size = 0;
        free(path);
        path = lb_io_path_join(dir, "model.safetensors");
        rc = path ? file_size(path, &size, err) : lb_err_set(err, LB_ENOMEM, "out of memory");
        if (rc)
            goto done;
        sum.file_bytes = size;
    }
    if (summary)
        *summary = sum;
done:
    lb_st_free(&st);
    json_decref(man);
    free(path);
    return rc;
}
