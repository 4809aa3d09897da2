/* Packed matrices <-> safetensors tensors + one JSON metadata entry. */
#include "lb_qpacked_io.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"

#define NAME_CAP 1024

static const char *const kind_names[] = {"uint", "int", "f16", "bf16", "f32"};

static int kind_parse(const char *s, lb_qfield_kind *out)
{
    for (int k = 0; k <= (int)LB_QFIELD_F32; k++)
        if (!strcmp(s, kind_names[k])) {
            *out = (lb_qfield_kind)k;
            return 0;
        }
    return -1;
}

/* Field names become tensor-name suffixes: keep them to [A-Za-z0-9_], not "__*". */
static bool name_ok(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n == 0 || n >= cap || (s[0] == '_' && s[1] == '_'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* count elements of bits bits -> bytes, or -1 when count/bits are out of range. */
static int64_t field_bytes(int64_t count, uint32_t bits)
{
    if (count < 0 || bits < 1 || bits > 32 || count > INT64_MAX / 32)
        return -1;
    return (int64_t)(((uint64_t)count * bits + 7u) / 8u);
}

static uint32_t kind_bits_fixed(lb_qfield_kind k)
{
    return k == LB_QFIELD_F32 ? 32u : (k == LB_QFIELD_F16 || k == LB_QFIELD_BF16) ? 16u : 0u;
}

static int check_field_desc(const char *name, lb_qfield_kind kind, uint32_t bits, int32_t ndim,
                            const int64_t *shape, int64_t count, int64_t nbytes, int code,
                            lb_err *err)
{
    if ((unsigned)kind > (unsigned)LB_QFIELD_F32)
        return lb_err_set(err, code, "field '%s': unknown kind %d", name, (int)kind);
    uint32_t fixed = kind_bits_fixed(kind);
    if (fixed ? bits != fixed : (bits < 1 || bits > 32))
        return lb_err_set(err, code, "field '%s': %u bits invalid for kind %s", name, bits,
                          kind_names[kind]);
    if (ndim < 1 || ndim > LB_QFIELD_MAX_DIMS)
        return lb_err_set(err, code, "field '%s': ndim %d outside 1..%d", name, ndim,
                          LB_QFIELD_MAX_DIMS);
    int64_t prod = 1;
    for (int32_t d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && prod > INT64_MAX / 32 / shape[d]))
            return lb_err_set(err, code, "field '%s': shape dim %d (%lld) invalid or overflowing",
                              name, d, (long long)shape[d]);
        prod *= shape[d];
    }
    if (prod != count)
        return lb_err_set(err, code, "field '%s': count %lld != product of shape %lld", name,
                          (long long)count, (long long)prod);
    if (field_bytes(count, bits) != nbytes)
        return lb_err_set(err, code, "field '%s': %lld bytes, expected ceil(%lld*%u/8)", name,
                          (long long)nbytes, (long long)count, bits);
    return 0;
}

int lb_qpacked_io_check(const lb_qpacked *p, lb_err *err)
{
    if (!p)
        return lb_err_set(err, LB_EINVAL, "packed matrix: NULL");
    if (!name_ok(p->method, sizeof p->method))
        return lb_err_set(err, LB_EINVAL, "packed matrix: method name missing or invalid");
    if (p->rows <= 0 || p->cols <= 0 || p->rows > INT64_MAX / p->cols)
        return lb_err_set(err, LB_EINVAL, "packed matrix: invalid shape %lld x %lld",
                          (long long)p->rows, (long long)p->cols);
    if (p->nfields < 1 || p->nfields > LB_QPACKED_IO_MAX_FIELDS || !p->fields)
        return lb_err_set(err, LB_EINVAL, "packed matrix: %d fields (want 1..%d)", p->nfields,
                          LB_QPACKED_IO_MAX_FIELDS);
    for (int32_t i = 0; i < p->nfields; i++) {
        const lb_qfield *f = &p->fields[i];
        if (!name_ok(f->name, sizeof f->name))
            return lb_err_set(err, LB_EINVAL, "packed field %d: name invalid (want [A-Za-z0-9_-], "
                              "not starting with __)", i);
        for (int32_t j = 0; j < i; j++)
            if (!strcmp(p->fields[j].name, f->name))
                return lb_err_set(err, LB_EINVAL, "packed field '%s' appears twice", f->name);
        if (f->nbytes > (size_t)INT64_MAX)
            return lb_err_set(err, LB_EINVAL, "packed field '%s': size overflow", f->name);
        int rc = check_field_desc(f->name, f->kind, f->bits, f->ndim, f->shape, f->count,
                                  (int64_t)f->nbytes, LB_EINVAL, err);
        if (rc)
            return rc;
        if (f->nbytes && !f->data)
            return lb_err_set(err, LB_EINVAL, "packed field '%s': no data", f->name);
    }
    return 0;
}

static int make_name(char *buf, const char *prefix, const char *suffix, lb_err *err)
{
    int n = snprintf(buf, NAME_CAP, "%s%s", prefix, suffix);
    if (n < 0 || n >= NAME_CAP)
        return lb_err_set(err, LB_EINVAL, "packed tensor name '%.64s...' too long", prefix);
    return 0;
}

static json_t *describe(const lb_qpacked *p)
{
    json_t *fields = json_array();
    json_t *root = json_pack("{s:i, s:s, s:I, s:I, s:o}", "version", LB_QPACKED_IO_VERSION,
                             "method", p->method, "rows", (json_int_t)p->rows, "cols",
                             (json_int_t)p->cols, "fields", fields);
    if (!root)
        return NULL;
    for (int32_t i = 0; i < p->nfields; i++) {
        const lb_qfield *f = &p->fields[i];
        json_t *shape = json_array();
        for (int32_t d = 0; d < f->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)f->shape[d]));
        json_t *fd = json_pack("{s:s, s:s, s:i, s:o, s:I, s:I}", "name", f->name, "kind",
                               kind_names[f->kind], "bits", (int)f->bits, "shape", shape,
                               "count", (json_int_t)f->count, "nbytes", (json_int_t)f->nbytes);
        if (!fd || json_array_append_new(fields, fd)) {
            json_decref(root);
            return NULL;
        }
    }
    return root;
}

int lb_qpacked_io_declare(lb_st_writer *w, const char *prefix, const lb_qpacked *p,
                          lb_err *err)
{
    char name[NAME_CAP];
    char *text = NULL;
    json_t *root = NULL;
    int rc;
    if (!w || !prefix || !*prefix)
        return lb_err_set(err, LB_EINVAL, "packed declare: writer or prefix missing");
    if ((rc = lb_qpacked_io_check(p, err)))
        goto fail;
    for (int32_t i = 0; i < p->nfields; i++) {
        const lb_qfield *f = &p->fields[i];
        int n = snprintf(name, sizeof name, "%s.%s", prefix, f->name);
        if (n < 0 || n >= (int)sizeof name) {
            rc = lb_err_set(err, LB_EINVAL, "packed tensor name under '%.64s' too long", prefix);
            goto fail;
        }
        int64_t shape[1] = {(int64_t)f->nbytes};
        if ((rc = lb_st_writer_add_tensor(w, name, LB_DTYPE_U8, 1, shape, err)))
            goto fail;
    }
    root = describe(p);
    text = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (!text) {
        rc = lb_err_set(err, LB_ENOMEM, "packed declare '%s': out of memory", prefix);
        goto fail;
    }
    if ((rc = make_name(name, prefix, LB_QPACKED_IO_META_SUFFIX, err)))
        goto fail;
    rc = lb_st_writer_set_metadata(w, name, text, err);
fail:
    if (rc)
        lb_err_prefix(err, "packed matrix '%s'", prefix ? prefix : "?");
    free(text);
    json_decref(root);
    return rc;
}

int lb_qpacked_io_write(lb_st_writer *w, const char *prefix, const lb_qpacked *p,
                        lb_err *err)
{
    char name[NAME_CAP];
    if (!w || !prefix || !p)
        return lb_err_set(err, LB_EINVAL, "packed write: NULL argument");
    for (int32_t i = 0; i < p->nfields; i++) {
        const lb_qfield *f = &p->fields[i];
        int n = snprintf(name, sizeof name, "%s.%s", prefix, f->name);
        if (n < 0 || n >= (int)sizeof name)
            return lb_err_set(err, LB_EINVAL, "packed tensor name under '%.64s' too long", prefix);
        int rc = lb_st_writer_write(w, name, f->data, f->nbytes, err);
        if (rc)
            return rc;
    }
    return 0;
}

bool lb_qpacked_io_has(const lb_st *st, const char *prefix)
{
    char key[NAME_CAP];
    if (!st || !prefix || make_name(key, prefix, LB_QPACKED_IO_META_SUFFIX, NULL))
        return false;
    return lb_st_metadata_get(st, key) != NULL;
}

bool lb_qpacked_io_field_of(const lb_st *st, const char *name, char *prefix, char *base,
                            size_t cap)
{
    const char *dot = strrchr(name, '.');
    size_t pl = dot ? (size_t)(dot - name) : 0;
    if (pl < 2 || pl >= cap || strncmp(dot - 2, ".q", 2))
        return false;
    memcpy(prefix, name, pl);
    prefix[pl] = '\0';
    if (!lb_qpacked_io_has(st, prefix))
        return false;
    snprintf(base, cap, "%.*s", (int)(pl - 2), prefix);
    return true;
}

/* Integer member of a JSON object within [lo, hi]. */
static int get_i64(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return -1;
    *out = (int64_t)x;
    return 0;
}

static int read_field(const lb_st *st, const char *prefix, json_t *fd, int32_t idx,
                      lb_qpacked *out, lb_err *err)
{
    char tname[NAME_CAP];
    const char *fname = json_string_value(json_object_get(fd, "name"));
    const char *kname = json_string_value(json_object_get(fd, "kind"));
    lb_qfield_kind kind;
    int64_t bits, count, nbytes, shape[LB_QFIELD_MAX_DIMS] = {0};
    json_t *jshape = json_object_get(fd, "shape");
    if (!json_is_object(fd) || !fname || !name_ok(fname, LB_QFIELD_NAME_MAX) || !kname ||
        kind_parse(kname, &kind) || get_i64(fd, "bits", 1, 32, &bits) ||
        get_i64(fd, "count", 0, INT64_MAX, &count) ||
        get_i64(fd, "nbytes", 0, INT64_MAX, &nbytes) || !json_is_array(jshape) ||
        json_array_size(jshape) < 1 || json_array_size(jshape) > LB_QFIELD_MAX_DIMS)
        return lb_err_set(err, LB_EFORMAT, "field %d: missing or invalid name/kind/bits/shape/"
                          "count/nbytes", idx);
    int32_t ndim = (int32_t)json_array_size(jshape);
    for (int32_t d = 0; d < ndim; d++) {
        json_t *v = json_array_get(jshape, (size_t)d);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return lb_err_set(err, LB_EFORMAT, "field '%s': shape entry %d invalid", fname, d);
        shape[d] = (int64_t)json_integer_value(v);
    }
    int rc = check_field_desc(fname, kind, (uint32_t)bits, ndim, shape, count, nbytes,
                              LB_EFORMAT, err);
    if (rc)
        return rc;
    int n = snprintf(tname, sizeof tname, "%s.%s", prefix, fname);
    if (n < 0 || n >= (int)sizeof tname)
        return lb_err_set(err, LB_EFORMAT, "field '%s': tensor name too long", fname);
    const lb_st_tensor *t = lb_st_find(st, tname);
    if (!t)
        return lb_err_set(err, LB_ENOTFOUND, "tensor '%s' missing", tname);
    /* Check the stored bytes before allocating anything sized by metadata. */
    if (t->dtype != LB_DTYPE_U8 || t->ndim != 1 || t->numel != nbytes ||
        t->nbytes != (size_t)nbytes)
        return lb_err_set(err, LB_EFORMAT, "tensor '%s': want U8 [%lld], file has %s with %lld "
                          "elements", tname, (long long)nbytes,
                          lb_dtype_name(t->dtype) ? lb_dtype_name(t->dtype) : "?",
                          (long long)t->numel);
    lb_qfield *f = lb_qpacked_add_field(out, fname, kind, (uint32_t)bits, ndim, shape, err);
    if (!f)
        return err && err->code ? err->code : LB_EFORMAT;
    if (f->nbytes != (size_t)nbytes)
        return lb_err_set(err, LB_EFORMAT, "field '%s': size mismatch", fname);
    if (nbytes)
        memcpy(f->data, t->data, (size_t)nbytes);
    if (kind == LB_QFIELD_F16 || kind == LB_QFIELD_BF16 || kind == LB_QFIELD_F32)
        for (int64_t i = 0; i < count; i++)
            if (!isfinite(lb_qfield_get_float(f, i)))
                return lb_err_set(err, LB_ENUMERIC, "field '%s': element %lld is NaN/Inf", fname,
                                  (long long)i);
    return 0;
}

int lb_qpacked_io_read(const lb_st *st, const char *prefix, lb_qpacked *out, lb_err *err)
{
    char key[NAME_CAP];
    json_t *root = NULL;
    int rc;
    if (!st || !prefix || !out)
        return lb_err_set(err, LB_EINVAL, "packed read: NULL argument");
    memset(out, 0, sizeof *out);
    if ((rc = make_name(key, prefix, LB_QPACKED_IO_META_SUFFIX, err)))
        goto fail;
    const char *text = lb_st_metadata_get(st, key);
    if (!text) {
        rc = lb_err_set(err, LB_ENOTFOUND, "no packed matrix (metadata '%s' absent)", key);
        goto fail;
    }
    json_error_t jerr;
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    int64_t version, rows, cols;
    const char *method = root ? json_string_value(json_object_get(root, "method")) : NULL;
    json_t *fields = root ? json_object_get(root, "fields") : NULL;
    if (!json_is_object(root) || get_i64(root, "version", 0, INT32_MAX, &version)) {
        rc = lb_err_set(err, LB_EFORMAT, "metadata '%s' is not a packed description", key);
        goto fail;
    }
    if (version != LB_QPACKED_IO_VERSION) {
        rc = lb_err_set(err, LB_EFORMAT, "packed format version %lld unsupported (this build "
                        "reads %d); re-run with a matching lowbit", (long long)version,
                        LB_QPACKED_IO_VERSION);
        goto fail;
    }
    if (!method || !name_ok(method, sizeof out->method) ||
        get_i64(root, "rows", 1, INT64_MAX, &rows) || get_i64(root, "cols", 1, INT64_MAX, &cols) ||
        rows > INT64_MAX / cols || !json_is_array(fields) || json_array_size(fields) < 1 ||
        json_array_size(fields) > LB_QPACKED_IO_MAX_FIELDS) {
        rc = lb_err_set(err, LB_EFORMAT, "metadata '%s': invalid method/rows/cols/fields", key);
        goto fail;
    }
    snprintf(out->method, sizeof out->method, "%s", method);
    out->rows = rows;
    out->cols = cols;
    for (size_t i = 0; i < json_array_size(fields); i++) {
        json_t *fd = json_array_get(fields, i);
        const char *fname = json_string_value(json_object_get(fd, "name"));
        if (fname && lb_qpacked_field(out, fname)) {
            rc = lb_err_set(err, LB_EFORMAT, "field '%s' listed twice", fname);
            goto fail;
        }
        if ((rc = read_field(st, prefix, fd, (int32_t)i, out, err)))
            goto fail;
    }
fail:
    json_decref(root);
    if (rc) {
        lb_err_prefix(err, "%s: packed matrix '%s'", lb_st_path(st) ? lb_st_path(st) : "?",
                      prefix);
        lb_qpacked_free(out);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

int lb_qpacked_io_save(const char *path, const lb_qpacked *p, lb_err *err)
{
    lb_st_writer *w = NULL;
    int rc = lb_st_writer_new(&w, path, err);
    if (!rc)
        rc = lb_qpacked_io_declare(w, "q", p, err);
    if (!rc)
        rc = lb_qpacked_io_write(w, "q", p, err);
    if (!rc)
        rc = lb_st_writer_finish(w, err);
    lb_st_writer_free(&w);
    return rc;
}

int lb_qpacked_io_load(const char *path, lb_qpacked *out, lb_err *err)
{
    lb_st *st = NULL;
    if (out)
        memset(out, 0, sizeof *out);
    int rc = lb_st_open(&st, path, err);
    if (!rc)
        rc = lb_qpacked_io_read(st, "q", out, err);
    lb_st_free(&st);
    return rc;
}

uint64_t lb_qpacked_io_nbytes(const lb_qpacked *p)
{
    uint64_t n = 0;
    for (int32_t i = 0; p && i < p->nfields; i++)
        n += p->fields[i].nbytes;
    return n;
}
