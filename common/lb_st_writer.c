/* lb_st_writer: streaming safetensors writer (declare, then stream bytes). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_io_util.h"
#include "lb_safetensors.h"

typedef struct {
    char *name;
    lb_dtype dtype;
    int32_t ndim;
    int64_t shape[LB_ST_MAX_DIMS];
    uint64_t begin, nbytes, written;
} wr_tensor;

struct lb_st_writer {
    char *path, *tmp;
    FILE *f;
    wr_tensor *t;
    int64_t n, cap;
    int64_t cur;             /* tensor being streamed */
    char **mkeys, **mvals;
    int64_t nmeta, mcap;
    uint64_t data_size;      /* sum of declared nbytes */
    int header_written;
    int done;                /* finished, failed, or poisoned by an I/O error */
};

int lb_st_writer_new(lb_st_writer **out, const char *path, lb_err *err)
{
    if (!out || !path)
        return lb_err_set(err, LB_EINVAL, "lb_st_writer_new: NULL argument");
    *out = NULL;
    lb_st_writer *w = calloc(1, sizeof *w);
    size_t pl = strlen(path);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(pl + 5))) {
        if (w)
            free(w->path);
        free(w);
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    }
    memcpy(w->tmp, path, pl);
    memcpy(w->tmp + pl, ".tmp", 5);
    w->f = fopen(w->tmp, "wb");
    if (!w->f) {
        int rc = lb_err_set(err, LB_EIO, "%s: cannot create: %s", w->tmp, strerror(errno));
        free(w->tmp);
        free(w->path);
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

/* JSON strings must be UTF-8; jansson refuses to build them otherwise. */
static int utf8_ok(const char *s)
{
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

static int check_open(lb_st_writer *w, const char *what, lb_err *err)
{
    if (!w)
        return lb_err_set(err, LB_EINVAL, "%s: NULL writer", what);
    if (w->done)
        return lb_err_set(err, LB_ESTATE, "%s: %s: writer already finished or failed", w->path,
                          what);
    return 0;
}

int lb_st_writer_add_tensor(lb_st_writer *w, const char *name, lb_dtype dtype, int32_t ndim,
                            const int64_t *shape, lb_err *err)
{
    int rc = check_open(w, "add_tensor", err);
    if (rc)
        return rc;
    if (w->header_written)
        return lb_err_set(err, LB_ESTATE, "%s: tensor '%s' declared after data was written",
                          w->path, name ? name : "(null)");
    if (!name || !*name || !strcmp(name, "__metadata__"))
        return lb_err_set(err, LB_EINVAL, "%s: invalid tensor name '%s'", w->path,
                          name ? name : "(null)");
    if (!utf8_ok(name))
        return lb_err_set(err, LB_EINVAL, "%s: tensor name '%s' is not valid UTF-8", w->path,
                          name);
    if (!lb_dtype_name(dtype))
        return lb_err_set(err, LB_EINVAL, "%s: tensor '%s': invalid dtype %d", w->path, name,
                          (int)dtype);
    if (ndim < 0 || ndim > LB_ST_MAX_DIMS || (ndim > 0 && !shape))
        return lb_err_set(err, LB_EINVAL, "%s: tensor '%s': ndim %d outside 0..%d", w->path,
                          name, (int)ndim, LB_ST_MAX_DIMS);
    for (int64_t i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return lb_err_set(err, LB_EINVAL, "%s: tensor '%s' declared twice", w->path, name);
    uint64_t numel = 1, nbytes, end;
    for (int32_t d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return lb_err_set(err, LB_EINVAL, "%s: tensor '%s': negative dimension", w->path,
                              name);
        if (lb_io_mul_u64(numel, (uint64_t)shape[d], &numel) || numel > (uint64_t)INT64_MAX)
            return lb_err_set(err, LB_EINVAL, "%s: tensor '%s': element count overflows",
                              w->path, name);
    }
    if (lb_io_mul_u64(numel, lb_dtype_size(dtype), &nbytes) ||
        lb_io_add_u64(w->data_size, nbytes, &end) || end > (uint64_t)INT64_MAX)
        return lb_err_set(err, LB_EINVAL, "%s: tensor '%s': byte size overflows", w->path, name);
    if (w->n == w->cap) {
        int64_t cap = w->cap ? w->cap * 2 : 64;
        wr_tensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t)
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", w->path);
        w->t = t;
        w->cap = cap;
    }
    wr_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", w->path);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->begin = w->data_size;
    t->nbytes = nbytes;
    w->data_size = end;
    w->n++;
    return 0;
}

int lb_st_writer_set_metadata(lb_st_writer *w, const char *key, const char *value, lb_err *err)
{
    int rc = check_open(w, "set_metadata", err);
    if (rc)
        return rc;
    if (!key || !value)
        return lb_err_set(err, LB_EINVAL, "%s: metadata key/value is NULL", w->path);
    if (w->header_written)
        return lb_err_set(err, LB_ESTATE, "%s: metadata '%s' set after data was written",
                          w->path, key);
    if (!utf8_ok(key) || !utf8_ok(value) || !strcmp(key, ""))
        return lb_err_set(err, LB_EINVAL, "%s: metadata key/value is empty or not valid UTF-8",
                          w->path);
    char *v = strdup(value);
    if (!v)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", w->path);
    for (int64_t i = 0; i < w->nmeta; i++)
        if (!strcmp(w->mkeys[i], key)) {
            free(w->mvals[i]);
            w->mvals[i] = v;
            return 0;
        }
    if (w->nmeta == w->mcap) {
        int64_t cap = w->mcap ? w->mcap * 2 : 8;
        char **k = realloc(w->mkeys, (size_t)cap * sizeof *k);
        if (k)
            w->mkeys = k;
        char **vv = k ? realloc(w->mvals, (size_t)cap * sizeof *vv) : NULL;
        if (!vv) {
            free(v);
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", w->path);
        }
        w->mvals = vv;
        w->mcap = cap;
    }
    if (!(w->mkeys[w->nmeta] = strdup(key))) {
        free(v);
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", w->path);
    }
    w->mvals[w->nmeta++] = v;
    return 0;
}

/* Builds the header JSON: "__metadata__" first, then tensors in declaration order. */
static char *header_json(const lb_st_writer *w)
{
    json_t *root = json_object();
    char *s = NULL;
    if (!root)
        return NULL;
    if (w->nmeta) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m))
            goto done;
        for (int64_t i = 0; i < w->nmeta; i++)
            if (json_object_set_new(m, w->mkeys[i], json_string(w->mvals[i])))
                goto done;
    }
    for (int64_t i = 0; i < w->n; i++) {
        const wr_tensor *t = &w->t[i];
        json_t *shape = json_array();
        int ok = shape != NULL;
        for (int32_t d = 0; ok && d < t->ndim; d++)
            ok = !json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        if (!ok) {
            json_decref(shape);
            goto done;
        }
        /* "o" hands shape to the new object (freed by json_pack even on failure) */
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", lb_dtype_name(t->dtype), "shape",
                              shape, "data_offsets", (json_int_t)t->begin,
                              (json_int_t)(t->begin + t->nbytes));
        if (!e || json_object_set_new(root, t->name, e))
            goto done;
    }
    s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
done:
    json_decref(root);
    return s;
}

static int fail_io(lb_st_writer *w, const char *what, lb_err *err)
{
    w->done = 1;
    return lb_err_set(err, LB_EIO, "%s: %s failed: %s; check free disk space", w->tmp, what,
                      strerror(errno));
}

static int write_header(lb_st_writer *w, lb_err *err)
{
    char *js = header_json(w);
    if (!js) {
        w->done = 1;
        return lb_err_set(err, LB_ENOMEM, "%s: building the header failed (out of memory)",
                          w->path);
    }
    size_t len = strlen(js);
    size_t padded = (len + 7) & ~(size_t)7; /* data area starts 8-aligned, as HF pads */
    uint8_t lenbuf[8];
    lb_io_put_le64(lenbuf, (uint64_t)padded);
    int ok = fwrite(lenbuf, 1, 8, w->f) == 8 && fwrite(js, 1, len, w->f) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', w->f) != EOF;
    free(js);
    if (!ok)
        return fail_io(w, "writing the header", err);
    w->header_written = 1;
    return 0;
}

/* Finds the tensor a write of nbytes to `name` continues: the one in progress,
 * or the next declared one once all before it are complete. OUT: *idx. */
static int select_tensor(lb_st_writer *w, const char *name, size_t nbytes, int64_t *idx,
                         lb_err *err)
{
    int64_t c = -1;
    for (int64_t i = 0; i < w->n && c < 0; i++)
        if (!strcmp(w->t[i].name, name))
            c = i;
    if (c < 0)
        return lb_err_set(err, LB_ENOTFOUND, "%s: tensor '%s' was never declared", w->path, name);
    if (c < w->cur)
        return lb_err_set(err, LB_ESTATE,
                          "%s: tensor '%s' written out of declaration order or after it was "
                          "complete",
                          w->path, name);
    /* every tensor before it (including empty ones) must be complete */
    for (int64_t i = w->cur; i < c; i++)
        if (w->t[i].written != w->t[i].nbytes)
            return lb_err_set(err, LB_ESTATE,
                              "%s: write of '%s' but tensor '%s' still lacks %llu of %llu bytes",
                              w->path, name, w->t[i].name,
                              (unsigned long long)(w->t[i].nbytes - w->t[i].written),
                              (unsigned long long)w->t[i].nbytes);
    const wr_tensor *t = &w->t[c];
    if (nbytes > t->nbytes - t->written)
        return lb_err_set(err, LB_ESTATE,
                          "%s: tensor '%s': %zu bytes written but only %llu of its %llu remain",
                          w->path, name, nbytes, (unsigned long long)(t->nbytes - t->written),
                          (unsigned long long)t->nbytes);
    *idx = c;
    return 0;
}

int lb_st_writer_write(lb_st_writer *w, const char *name, const void *data, size_t nbytes,
                       lb_err *err)
{
    int rc = check_open(w, "write", err);
    int64_t c;
    if (rc)
        return rc;
    if (!name || (nbytes && !data))
        return lb_err_set(err, LB_EINVAL, "%s: write: NULL name or data", w->path);
    if ((rc = select_tensor(w, name, nbytes, &c, err)))
        return rc;
    if (!w->header_written && (rc = write_header(w, err)))
        return rc;
    w->cur = c;
    if (nbytes && fwrite(data, 1, nbytes, w->f) != nbytes)
        return fail_io(w, "write", err);
    w->t[c].written += nbytes;
    return 0;
}

int lb_st_writer_write_f32(lb_st_writer *w, const char *name, const float *src, size_t n,
                           lb_err *err)
{
    int rc = check_open(w, "write_f32", err);
    int64_t c;
    if (rc)
        return rc;
    if (!name || (n && !src))
        return lb_err_set(err, LB_EINVAL, "%s: write_f32: NULL name or data", w->path);
    /* the dtype of the named tensor decides the byte count */
    const wr_tensor *t = NULL;
    for (int64_t i = 0; i < w->n && !t; i++)
        if (!strcmp(w->t[i].name, name))
            t = &w->t[i];
    if (!t)
        return lb_err_set(err, LB_ENOTFOUND, "%s: tensor '%s' was never declared", w->path, name);
    lb_dtype dt = t->dtype;
    if (dt != LB_DTYPE_F32 && dt != LB_DTYPE_F16 && dt != LB_DTYPE_BF16 && dt != LB_DTYPE_F64)
        return lb_err_set(err, LB_EINVAL, "%s: tensor '%s' is %s; write_f32 needs a float dtype",
                          w->path, name, lb_dtype_name(dt));
    size_t es = lb_dtype_size(dt);
    if (n > SIZE_MAX / es)
        return lb_err_set(err, LB_EINVAL, "%s: tensor '%s': size overflows", w->path, name);
    if (dt == LB_DTYPE_F32)
        return lb_st_writer_write(w, name, src, n * es, err);
    /* validate the whole call first so a bad one writes nothing */
    if ((rc = select_tensor(w, name, n * es, &c, err)))
        return rc;
    enum { CHUNK = 16384 };
    uint8_t *buf = malloc(CHUNK * es);
    if (!buf)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", w->path);
    for (size_t i = 0; !rc && i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        lb_dtype_from_f32(dt, src + i, buf, k);
        rc = lb_st_writer_write(w, name, buf, k * es, err);
    }
    free(buf);
    return rc;
}

int lb_st_writer_finish(lb_st_writer *w, lb_err *err)
{
    int rc = check_open(w, "finish", err);
    if (rc)
        return rc;
    if (!w->header_written && (rc = write_header(w, err)))
        goto fail;
    for (int64_t i = 0; i < w->n; i++)
        if (w->t[i].written != w->t[i].nbytes) {
            rc = lb_err_set(err, LB_ESTATE,
                            "%s: tensor '%s' got %llu of its %llu bytes; write all tensors "
                            "before finish",
                            w->path, w->t[i].name, (unsigned long long)w->t[i].written,
                            (unsigned long long)w->t[i].nbytes);
            goto fail;
        }
    if (fflush(w->f) != 0) {
        rc = fail_io(w, "flush", err);
        goto fail;
    }
    if (fsync(fileno(w->f)) != 0) {
        rc = fail_io(w, "fsync", err);
        goto fail;
    }
    FILE *f = w->f;
    w->f = NULL;
    if (fclose(f) != 0) {
        rc = fail_io(w, "close", err);
        goto fail;
    }
    if (rename(w->tmp, w->path) != 0) {
        rc = fail_io(w, "rename to the final path", err);
        goto fail;
    }
    w->done = 1;
    return lb_io_fsync_parent(w->path, err);
fail:
    w->done = 1;
    if (w->f) {
        fclose(w->f);
        w->f = NULL;
    }
    unlink(w->tmp);
    return rc;
}

void lb_st_writer_free(lb_st_writer **wp)
{
    if (!wp || !*wp)
        return;
    lb_st_writer *w = *wp;
    if (w->f) { /* unfinished: drop the partial file */
        fclose(w->f);
        unlink(w->tmp);
    }
    for (int64_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (int64_t i = 0; i < w->nmeta; i++) {
        free(w->mkeys[i]);
        free(w->mvals[i]);
    }
    free(w->t);
    free(w->mkeys);
    free(w->mvals);
    free(w->tmp);
    free(w->path);
    free(w);
    *wp = NULL;
}
