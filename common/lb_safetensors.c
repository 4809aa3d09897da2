/* lb_safetensors reader: mmap each shard, validate its header fully, index by name. */
#include "lb_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_io_util.h"

typedef struct {
    char *path;
    int fd;
    void *map;              /* NULL for an empty mapping */
    size_t size;            /* file size */
    const uint8_t *data;    /* start of the data area */
    uint64_t data_len;
} st_shard;

typedef struct {
    lb_st_tensor t;         /* public view; t.name owned here */
    int32_t shard;
    uint64_t begin, end;    /* data_offsets within the shard's data area */
} st_entry;

struct lb_st {
    char *path;
    st_shard *shards;
    int32_t nshards;
    st_entry *entries;
    int64_t count, cap;
    int64_t *slots;         /* open addressing: entry index + 1, 0 = empty */
    size_t nslots;
    char **meta_keys, **meta_vals;
    int64_t nmeta, meta_cap;
};

/* ---- small helpers ---- */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static int64_t find_index(const lb_st *st, const char *name)
{
    if (!st->nslots)
        return -1;
    size_t mask = st->nslots - 1;
    for (size_t i = (size_t)hash_name(name) & mask;; i = (i + 1) & mask) {
        int64_t v = st->slots[i];
        if (!v)
            return -1;
        if (!strcmp(st->entries[v - 1].t.name, name))
            return v - 1;
    }
}

static int meta_add(lb_st *st, const char *key, const char *val)
{
    for (int64_t i = 0; i < st->nmeta; i++)
        if (!strcmp(st->meta_keys[i], key))
            return 0; /* first one wins */
    if (st->nmeta == st->meta_cap) {
        int64_t cap = st->meta_cap ? st->meta_cap * 2 : 8;
        char **k = realloc(st->meta_keys, (size_t)cap * sizeof *k);
        if (!k)
            return LB_ENOMEM;
        st->meta_keys = k;
        char **v = realloc(st->meta_vals, (size_t)cap * sizeof *v);
        if (!v)
            return LB_ENOMEM;
        st->meta_vals = v;
        st->meta_cap = cap;
    }
    char *kk = strdup(key), *vv = strdup(val);
    if (!kk || !vv) {
        free(kk);
        free(vv);
        return LB_ENOMEM;
    }
    st->meta_keys[st->nmeta] = kk;
    st->meta_vals[st->nmeta] = vv;
    st->nmeta++;
    return 0;
}

static int entry_push(lb_st *st, st_entry **out)
{
    if (st->count == st->cap) {
        int64_t cap = st->cap ? st->cap * 2 : 64;
        st_entry *e = realloc(st->entries, (size_t)cap * sizeof *e);
        if (!e)
            return LB_ENOMEM;
        st->entries = e;
        st->cap = cap;
    }
    *out = &st->entries[st->count++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* Reads a JSON integer that must be >= 0. */
static int json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* ---- one shard ---- */

static int map_shard(st_shard *sh, lb_err *err)
{
    struct stat sb;
    sh->fd = open(sh->path, O_RDONLY | O_CLOEXEC);
    if (sh->fd < 0)
        return lb_err_set(err, errno == ENOENT ? LB_ENOTFOUND : LB_EIO, "%s: cannot open: %s",
                          sh->path, strerror(errno));
    if (fstat(sh->fd, &sb) != 0)
        return lb_err_set(err, LB_EIO, "%s: fstat failed: %s", sh->path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return lb_err_set(err, LB_EFORMAT, "%s: not a regular file", sh->path);
    sh->size = (size_t)sb.st_size;
    if (sh->size < 8)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: truncated: %zu bytes, shorter than the 8-byte header length; "
                          "re-download or re-export the file",
                          sh->path, sh->size);
    sh->map = mmap(NULL, sh->size, PROT_READ, MAP_PRIVATE, sh->fd, 0);
    if (sh->map == MAP_FAILED) {
        sh->map = NULL;
        return lb_err_set(err, LB_EIO, "%s: mmap failed: %s", sh->path, strerror(errno));
    }
    return 0;
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Validates one tensor entry of shard `si` and appends it. */
static int parse_tensor(lb_st *st, int32_t si, const char *name, json_t *v, lb_err *err)
{
    st_shard *sh = &st->shards[si];
    const char *f = sh->path;
    if (!json_is_object(v))
        return lb_err_set(err, LB_EFORMAT, "%s: header entry '%s' is not an object", f, name);
    json_t *jdt = json_object_get(v, "dtype"), *jshape = json_object_get(v, "shape"),
           *joff = json_object_get(v, "data_offsets");
    if (!jdt || !jshape || !joff)
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s' lacks \"%s\"; the header is corrupt",
                          f, name, !jdt ? "dtype" : !jshape ? "shape" : "data_offsets");
    if (!json_is_string(jdt))
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s': dtype is not a string", f, name);
    lb_dtype dt;
    if (lb_dtype_parse(json_string_value(jdt), &dt) != 0)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s': unknown dtype '%.32s' (supported: F32 F16 BF16 F64 "
                          "and integer/bool types)",
                          f, name, json_string_value(jdt));
    if (!json_is_array(jshape))
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s': shape is not an array", f, name);
    size_t ndim = json_array_size(jshape);
    if (ndim > LB_ST_MAX_DIMS)
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s': %zu dims, at most %d supported", f,
                          name, ndim, LB_ST_MAX_DIMS);
    st_entry tmp;
    memset(&tmp, 0, sizeof tmp);
    uint64_t numel = 1;
    for (size_t d = 0; d < ndim; d++) {
        json_t *jd = json_array_get(jshape, d);
        if (!json_is_integer(jd))
            return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s': shape[%zu] is not an integer", f,
                              name, d);
        json_int_t dim = json_integer_value(jd);
        if (dim < 0)
            return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s': negative dimension %lld", f,
                              name, (long long)dim);
        tmp.t.shape[d] = (int64_t)dim;
        if (lb_io_mul_u64(numel, (uint64_t)dim, &numel) || numel > (uint64_t)INT64_MAX)
            return lb_err_set(err, LB_EFORMAT,
                              "%s: tensor '%s': element count of the shape overflows", f, name);
    }
    uint64_t nbytes;
    if (lb_io_mul_u64(numel, lb_dtype_size(dt), &nbytes) || nbytes > (uint64_t)SIZE_MAX)
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s': byte size of the shape overflows", f,
                          name);
    if (!json_is_array(joff) || json_array_size(joff) != 2 ||
        json_u64(json_array_get(joff, 0), &tmp.begin) ||
        json_u64(json_array_get(joff, 1), &tmp.end))
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s': data_offsets must be two non-negative integers", f,
                          name);
    if (tmp.end < tmp.begin)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s': data_offsets end %llu < begin %llu", f, name,
                          (unsigned long long)tmp.end, (unsigned long long)tmp.begin);
    if (tmp.end > sh->data_len)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s': data_offsets end %llu is past the data area (%llu "
                          "bytes); the file is truncated or corrupt",
                          f, name, (unsigned long long)tmp.end,
                          (unsigned long long)sh->data_len);
    if (tmp.end - tmp.begin != nbytes)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s': shape x %s needs %llu bytes but data_offsets span "
                          "%llu",
                          f, name, lb_dtype_name(dt), (unsigned long long)nbytes,
                          (unsigned long long)(tmp.end - tmp.begin));
    st_entry *e;
    int rc = entry_push(st, &e);
    if (rc)
        return lb_err_set(err, rc, "%s: out of memory", f);
    *e = tmp;
    e->t.name = strdup(name);
    if (!e->t.name) {
        st->count--;
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", f);
    }
    e->t.dtype = dt;
    e->t.ndim = (int32_t)ndim;
    e->t.numel = (int64_t)numel;
    e->t.nbytes = (size_t)nbytes;
    e->t.data = sh->data + tmp.begin;
    e->t.file = sh->path;
    e->shard = si;
    return 0;
}

/* Maps shard si, parses and validates its header, appends its tensors. */
static int load_shard(lb_st *st, int32_t si, lb_err *err)
{
    st_shard *sh = &st->shards[si];
    json_t *root = NULL;
    int rc = map_shard(sh, err);
    if (rc)
        goto done;
    const uint8_t *p = sh->map;
    uint64_t hlen = lb_io_get_le64(p);
    if (hlen > LB_ST_MAX_HEADER) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s: header length %llu is absurd (> 100 MB); not a safetensors file or "
                        "corrupt",
                        sh->path, (unsigned long long)hlen);
        goto done;
    }
    if (hlen > sh->size - 8) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s: header length %llu runs past the end of the file (%zu bytes); the "
                        "file is truncated, re-download it",
                        sh->path, (unsigned long long)hlen, sh->size);
        goto done;
    }
    sh->data = p + 8 + hlen;
    sh->data_len = sh->size - 8 - hlen;
    json_error_t jerr;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                      &jerr);
    if (!root) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: header is not valid JSON (line %d col %d: %.80s)",
                        sh->path, jerr.line, jerr.column, jerr.text);
        goto done;
    }
    if (!json_is_object(root)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: header is JSON but not an object", sh->path);
        goto done;
    }
    int64_t first = st->count;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                rc = lb_err_set(err, LB_EFORMAT, "%s: __metadata__ is not an object", sh->path);
                goto done;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv)
            {
                if (!json_is_string(mv)) {
                    rc = lb_err_set(err, LB_EFORMAT,
                                    "%s: __metadata__ value of '%.64s' is not a string", sh->path,
                                    mk);
                    goto done;
                }
                if ((rc = meta_add(st, mk, json_string_value(mv)))) {
                    lb_err_set(err, rc, "%s: out of memory", sh->path);
                    goto done;
                }
            }
            continue;
        }
        if ((rc = parse_tensor(st, si, key, val, err)))
            goto done;
    }
    /* Overlap check within this shard: sort by offset, then every non-empty
     * span must begin at or after the furthest end so far. */
    if (st->count > first)
        qsort(st->entries + first, (size_t)(st->count - first), sizeof *st->entries,
              cmp_entry_offset);
    uint64_t max_end = 0;
    const char *max_name = NULL;
    for (int64_t i = first; i < st->count; i++) {
        st_entry *e = &st->entries[i];
        if (e->end == e->begin)
            continue;
        if (max_name && e->begin < max_end) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "%s: tensors '%s' and '%s' overlap in the data area; the header is "
                            "corrupt",
                            sh->path, max_name, e->t.name);
            goto done;
        }
        max_end = e->end;
        max_name = e->t.name;
    }
done:
    json_decref(root);
    return rc;
}

static int build_hash(lb_st *st, lb_err *err)
{
    size_t n = 16;
    while (n < (size_t)st->count * 2)
        n *= 2;
    st->slots = calloc(n, sizeof *st->slots);
    if (!st->slots)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", st->path);
    st->nslots = n;
    for (int64_t i = 0; i < st->count; i++) {
        const char *name = st->entries[i].t.name;
        size_t mask = n - 1, j = (size_t)hash_name(name) & mask;
        for (; st->slots[j]; j = (j + 1) & mask) {
            const st_entry *o = &st->entries[st->slots[j] - 1];
            if (!strcmp(o->t.name, name))
                return lb_err_set(err, LB_EFORMAT,
                                  "%s: tensor '%s' appears in both %s and %s; the shards are "
                                  "inconsistent",
                                  st->path, name, o->t.file, st->entries[i].t.file);
        }
        st->slots[j] = i + 1;
    }
    return 0;
}

static int add_shard(lb_st *st, const char *path, lb_err *err)
{
    st_shard *s = realloc(st->shards, (size_t)(st->nshards + 1) * sizeof *s);
    if (!s)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    st->shards = s;
    memset(&s[st->nshards], 0, sizeof *s);
    s[st->nshards].fd = -1;
    s[st->nshards].path = strdup(path);
    if (!s[st->nshards].path)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    st->nshards++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name from an index must stay inside the model directory. */
static int shard_name_ok(const char *s)
{
    if (!*s || s[0] == '/')
        return 0;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if ((len == 2 && p[0] == '.' && p[1] == '.') || len == 0)
            return 0;
        p += len + (q ? 1 : 0);
    }
    return 1;
}

static int open_index(lb_st *st, const char *dir, const char *index_path, lb_err *err)
{
    json_t *root = NULL;
    const char **names = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = lb_io_read_file(index_path, LB_ST_MAX_HEADER, &text, &len, err);
    if (rc)
        goto done;
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: not valid JSON (line %d col %d: %.80s)", index_path,
                        jerr.line, jerr.column, jerr.text);
        goto done;
    }
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: no \"weight_map\" object; not a safetensors index",
                        index_path);
        goto done;
    }
    json_t *md = json_object_get(root, "metadata");
    if (json_is_object(md)) {
        const char *k;
        json_t *v;
        json_object_foreach(md, k, v)
        {
            if (json_is_string(v) && (rc = meta_add(st, k, json_string_value(v)))) {
                lb_err_set(err, rc, "%s: out of memory", index_path);
                goto done;
            }
        }
    }
    size_t nw = json_object_size(wm), nu = 0;
    names = calloc(nw ? nw : 1, sizeof *names);
    if (!names) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", index_path);
        goto done;
    }
    const char *tname;
    json_t *v;
    json_object_foreach(wm, tname, v)
    {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "%s: weight_map entry '%s' must be a relative shard file name inside "
                            "the model directory",
                            index_path, tname);
            goto done;
        }
        names[nu++] = json_string_value(v);
    }
    if (nu == 0) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: weight_map is empty", index_path);
        goto done;
    }
    qsort(names, nu, sizeof *names, cmp_str);
    size_t nuniq = 0;
    for (size_t i = 0; i < nu; i++)
        if (i == 0 || strcmp(names[i], names[nuniq - 1]))
            names[nuniq++] = names[i];
    for (size_t i = 0; i < nuniq; i++) {
        char *p = lb_io_path_join(dir, names[i]);
        if (!p) {
            rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", index_path);
            goto done;
        }
        rc = add_shard(st, p, err);
        free(p);
        if (rc)
            goto done;
        if ((rc = load_shard(st, st->nshards - 1, err))) {
            if (rc == LB_ENOTFOUND)
                lb_err_set(err, rc, "%s: names shard '%s', which is missing; download it",
                           index_path, names[i]);
            goto done;
        }
    }
    if ((rc = build_hash(st, err)))
        goto done;
    json_object_foreach(wm, tname, v)
    {
        const char *want = json_string_value(v);
        const char **k = bsearch(&want, names, nuniq, sizeof *names, cmp_str);
        int64_t ei = find_index(st, tname);
        if (ei < 0 || !k || st->entries[ei].shard != (int32_t)(k - names)) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "%s: maps tensor '%s' to %s, but that shard has no such tensor; the "
                            "index and shards disagree",
                            index_path, tname, want);
            goto done;
        }
    }
done:
    json_decref(root);
    free(names);
    free(text);
    return rc;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

int lb_st_open(lb_st **out, const char *path, lb_err *err)
{
    char *index = NULL, *single = NULL;
    int rc = 0;
    if (!out || !path)
        return lb_err_set(err, LB_EINVAL, "lb_st_open: NULL argument");
    *out = NULL;
    lb_st *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        rc = lb_err_set(err, errno == ENOENT ? LB_ENOTFOUND : LB_EIO, "%s: cannot open: %s", path,
                        strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        index = lb_io_path_join(path, "model.safetensors.index.json");
        single = lb_io_path_join(path, "model.safetensors");
        if (!index || !single) {
            rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        if (access(index, F_OK) == 0) {
            if ((rc = open_index(st, path, index, err)))
                goto fail;
        } else if (access(single, F_OK) == 0) {
            if ((rc = add_shard(st, single, err)) || (rc = load_shard(st, 0, err)) ||
                (rc = build_hash(st, err)))
                goto fail;
        } else {
            rc = lb_err_set(err, LB_ENOTFOUND,
                            "%s: no model.safetensors or model.safetensors.index.json here; "
                            "give a Hugging Face model directory or a .safetensors file",
                            path);
            goto fail;
        }
    } else if (has_suffix(path, ".index.json")) {
        /* the index file itself: shards live beside it */
        const char *slash = strrchr(path, '/');
        index = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
        if (!index) {
            rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        if ((rc = open_index(st, index, path, err)))
            goto fail;
    } else {
        if ((rc = add_shard(st, path, err)) || (rc = load_shard(st, 0, err)) ||
            (rc = build_hash(st, err)))
            goto fail;
    }
    /* entries are in file order already: each shard was sorted, shards in order */
    free(index);
    free(single);
    *out = st;
    return 0;
fail:
    free(index);
    free(single);
    lb_st_free(&st);
    return rc;
}

void lb_st_free(lb_st **stp)
{
    if (!stp || !*stp)
        return;
    lb_st *st = *stp;
    for (int32_t i = 0; i < st->nshards; i++) {
        if (st->shards[i].map)
            munmap(st->shards[i].map, st->shards[i].size);
        if (st->shards[i].fd >= 0)
            close(st->shards[i].fd);
        free(st->shards[i].path);
    }
    for (int64_t i = 0; i < st->count; i++)
        free((char *)st->entries[i].t.name);
    for (int64_t i = 0; i < st->nmeta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_vals[i]);
    }
    free(st->meta_keys);
    free(st->meta_vals);
    free(st->shards);
    free(st->entries);
    free(st->slots);
    free(st->path);
    free(st);
    *stp = NULL;
}

const char *lb_st_path(const lb_st *st)
{
    return st ? st->path : NULL;
}

int64_t lb_st_count(const lb_st *st)
{
    return st ? st->count : 0;
}

const lb_st_tensor *lb_st_at(const lb_st *st, int64_t i)
{
    if (!st || i < 0 || i >= st->count)
        return NULL;
    return &st->entries[i].t;
}

const lb_st_tensor *lb_st_find(const lb_st *st, const char *name)
{
    if (!st || !name)
        return NULL;
    int64_t i = find_index(st, name);
    return i < 0 ? NULL : &st->entries[i].t;
}

const char *lb_st_metadata_get(const lb_st *st, const char *key)
{
    if (!st || !key)
        return NULL;
    for (int64_t i = 0; i < st->nmeta; i++)
        if (!strcmp(st->meta_keys[i], key))
            return st->meta_vals[i];
    return NULL;
}

int64_t lb_st_metadata_count(const lb_st *st)
{
    return st ? st->nmeta : 0;
}

int lb_st_metadata_at(const lb_st *st, int64_t i, const char **key, const char **value)
{
    if (!st || i < 0 || i >= st->nmeta)
        return LB_EINVAL;
    if (key)
        *key = st->meta_keys[i];
    if (value)
        *value = st->meta_vals[i];
    return 0;
}

static int float_tensor(const lb_st *st, const char *name, const lb_st_tensor **out, lb_err *err)
{
    if (!st || !name)
        return lb_err_set(err, LB_EINVAL, "lb_st_read_f32: NULL argument");
    const lb_st_tensor *t = lb_st_find(st, name);
    if (!t)
        return lb_err_set(err, LB_ENOTFOUND,
                          "%s: no tensor '%s'; the checkpoint does not match the expected "
                          "architecture",
                          st->path, name);
    if (t->dtype != LB_DTYPE_F32 && t->dtype != LB_DTYPE_F16 && t->dtype != LB_DTYPE_BF16 &&
        t->dtype != LB_DTYPE_F64)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s' has dtype %s; expected a float type (F32/F16/BF16/F64)",
                          t->file, name, lb_dtype_name(t->dtype));
    *out = t;
    return 0;
}

/* Weights enter the program here: a NaN/Inf means a corrupt checkpoint. */
static int scan_finite(const lb_st_tensor *t, const float *v, size_t n, size_t base,
                       lb_err *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return lb_err_set(err, LB_ENUMERIC,
                              "%s: tensor '%s' holds %s at element %zu; the checkpoint is corrupt",
                              t->file, t->name, isnan(v[i]) ? "NaN" : "Inf", base + i);
    return 0;
}

int lb_st_read_f32(const lb_st *st, const char *name, float *dst, int64_t expect_numel,
                   lb_err *err)
{
    const lb_st_tensor *t;
    int rc = float_tensor(st, name, &t, err);
    if (rc)
        return rc;
    if (expect_numel >= 0 && expect_numel != t->numel)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: tensor '%s' has %lld elements, expected %lld; config.json and "
                          "weights disagree",
                          t->file, name, (long long)t->numel, (long long)expect_numel);
    if (t->numel == 0)
        return 0;
    if (!dst)
        return lb_err_set(err, LB_EINVAL, "lb_st_read_f32: NULL destination");
    lb_dtype_to_f32(t->dtype, t->data, dst, (size_t)t->numel);
    return scan_finite(t, dst, (size_t)t->numel, 0, err);
}

int lb_st_read_f32_rows(const lb_st *st, const char *name, int64_t row0, int64_t nrows,
                        float *dst, lb_err *err)
{
    const lb_st_tensor *t;
    int rc = float_tensor(st, name, &t, err);
    if (rc)
        return rc;
    if (t->ndim != 2)
        return lb_err_set(err, LB_EFORMAT, "%s: tensor '%s' is %d-D; row reads need 2-D",
                          t->file, name, (int)t->ndim);
    int64_t rows = t->shape[0], cols = t->shape[1];
    if (row0 < 0 || nrows < 0 || row0 > rows || nrows > rows - row0)
        return lb_err_set(err, LB_EINVAL,
                          "%s: tensor '%s': rows [%lld, %lld+%lld) outside its %lld rows",
                          t->file, name, (long long)row0, (long long)row0, (long long)nrows,
                          (long long)rows);
    if (!nrows || !cols)
        return 0;
    if (!dst)
        return lb_err_set(err, LB_EINVAL, "lb_st_read_f32_rows: NULL destination");
    /* products are bounded by numel, which was checked against the file */
    size_t es = lb_dtype_size(t->dtype);
    const uint8_t *src = (const uint8_t *)t->data + (size_t)row0 * (size_t)cols * es;
    lb_dtype_to_f32(t->dtype, src, dst, (size_t)nrows * (size_t)cols);
    return scan_finite(t, dst, (size_t)nrows * (size_t)cols, (size_t)row0 * (size_t)cols, err);
}
