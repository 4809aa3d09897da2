/* lb_tokens: load token ids from raw .u32 or .npy files. */
#include "lb_tokens.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_io_util.h"

/* Token files are small next to models; this only guards against nonsense. */
#define TOKENS_MAX_BYTES ((uint64_t)16 * 1024 * 1024 * 1024)

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

/* ---- .npy header: a Python dict literal such as
 *   {'descr': '<u4', 'fortran_order': False, 'shape': (128, 256), } ---- */

typedef struct {
    const char *p, *end;
} npy_lex;

static void skip_ws(npy_lex *l)
{
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t' || *l->p == '\n' || *l->p == '\r'))
        l->p++;
}

static int eat(npy_lex *l, char c)
{
    skip_ws(l);
    if (l->p < l->end && *l->p == c) {
        l->p++;
        return 1;
    }
    return 0;
}

/* Quoted string into out (cap bytes); 0 ok, -1 error. */
static int lex_str(npy_lex *l, char *out, size_t cap)
{
    skip_ws(l);
    if (l->p >= l->end || (*l->p != '\'' && *l->p != '"'))
        return -1;
    char q = *l->p++;
    size_t n = 0;
    while (l->p < l->end && *l->p != q) {
        if (n + 1 >= cap)
            return -1;
        out[n++] = *l->p++;
    }
    if (l->p >= l->end)
        return -1;
    l->p++;
    out[n] = '\0';
    return 0;
}

static int lex_word(npy_lex *l, const char *w)
{
    skip_ws(l);
    size_t n = strlen(w);
    if ((size_t)(l->end - l->p) >= n && !memcmp(l->p, w, n)) {
        l->p += n;
        return 1;
    }
    return 0;
}

/* (d0, d1, ...) with an optional trailing comma; dims >= 0. */
static int lex_shape(npy_lex *l, int64_t *shape, int *ndim)
{
    *ndim = 0;
    if (!eat(l, '('))
        return -1;
    for (;;) {
        if (eat(l, ')'))
            return 0;
        skip_ws(l);
        if (l->p >= l->end || *l->p < '0' || *l->p > '9')
            return -1;
        int64_t v = 0;
        while (l->p < l->end && *l->p >= '0' && *l->p <= '9') {
            if (v > (INT64_MAX - 9) / 10)
                return -1;
            v = v * 10 + (*l->p++ - '0');
        }
        if (*ndim >= 8)
            return -1;
        shape[(*ndim)++] = v;
        if (eat(l, ','))
            continue;
        if (eat(l, ')'))
            return 0;
        return -1;
    }
}

typedef enum { NPY_U2, NPY_U4, NPY_I4, NPY_I8 } npy_kind;

static int parse_npy(const char *path, const uint8_t *buf, size_t size, uint32_t **out,
                     int64_t *n, int64_t *rows, lb_err *err)
{
    static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (size < 10 || memcmp(buf, magic, 6))
        return lb_err_set(err, LB_EFORMAT, "%s: not a .npy file (bad magic or truncated)", path);
    int major = buf[6];
    size_t hlen, hstart;
    if (major == 1) {
        hlen = lb_io_get_le16(buf + 8);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12)
            return lb_err_set(err, LB_EFORMAT, "%s: truncated .npy header", path);
        hlen = lb_io_get_le32(buf + 8);
        hstart = 12;
    } else {
        return lb_err_set(err, LB_EFORMAT, "%s: .npy format version %d is not supported (1-3)",
                          path, major);
    }
    if (hlen > size - hstart)
        return lb_err_set(err, LB_EFORMAT, "%s: .npy header length %zu runs past the file end",
                          path, hlen);
    npy_lex l = {(const char *)buf + hstart, (const char *)buf + hstart + hlen};
    char descr[16] = "", key[32];
    int have_descr = 0, have_fo = 0, have_shape = 0, fortran = 0, ndim = 0;
    int64_t shape[8];
    if (!eat(&l, '{'))
        goto bad_header;
    while (!eat(&l, '}')) {
        if (lex_str(&l, key, sizeof key) || !eat(&l, ':'))
            goto bad_header;
        if (!strcmp(key, "descr")) {
            if (lex_str(&l, descr, sizeof descr))
                goto bad_header;
            have_descr = 1;
        } else if (!strcmp(key, "fortran_order")) {
            if (lex_word(&l, "True"))
                fortran = 1;
            else if (!lex_word(&l, "False"))
                goto bad_header;
            have_fo = 1;
        } else if (!strcmp(key, "shape")) {
            if (lex_shape(&l, shape, &ndim))
                goto bad_header;
            have_shape = 1;
        } else {
            goto bad_header;
        }
        if (!eat(&l, ',')) {
            if (!eat(&l, '}'))
                goto bad_header;
            break;
        }
    }
    if (!have_descr || !have_fo || !have_shape)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: .npy header lacks 'descr', 'fortran_order' or 'shape'", path);
    if (fortran)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: .npy is in Fortran order; save it with np.ascontiguousarray", path);
    npy_kind kind;
    size_t es;
    if (!strcmp(descr, "<u2"))
        kind = NPY_U2, es = 2;
    else if (!strcmp(descr, "<u4"))
        kind = NPY_U4, es = 4;
    else if (!strcmp(descr, "<i4"))
        kind = NPY_I4, es = 4;
    else if (!strcmp(descr, "<i8"))
        kind = NPY_I8, es = 8;
    else
        return lb_err_set(err, LB_EFORMAT,
                          "%s: .npy dtype '%s' is not supported (use <u2, <u4, <i4 or <i8)", path,
                          descr);
    if (ndim < 1 || ndim > 2)
        return lb_err_set(err, LB_EFORMAT, "%s: .npy array is %d-D; token files must be 1-D or 2-D",
                          path, ndim);
    uint64_t numel = 1, nbytes;
    for (int d = 0; d < ndim; d++)
        if (lb_io_mul_u64(numel, (uint64_t)shape[d], &numel))
            return lb_err_set(err, LB_EFORMAT, "%s: .npy shape overflows", path);
    if (lb_io_mul_u64(numel, es, &nbytes))
        return lb_err_set(err, LB_EFORMAT, "%s: .npy shape overflows", path);
    if (nbytes != size - hstart - hlen)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: .npy shape needs %llu data bytes but the file has %zu; the file is "
                          "truncated or corrupt",
                          path, (unsigned long long)nbytes, size - hstart - hlen);
    const uint8_t *data = buf + hstart + hlen;
    uint32_t *ids = malloc(numel ? (size_t)numel * sizeof *ids : 1);
    if (!ids)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory for %llu tokens", path,
                          (unsigned long long)numel);
    for (uint64_t i = 0; i < numel; i++) {
        const uint8_t *q = data + i * es;
        int64_t v;
        switch (kind) {
        case NPY_U2: v = lb_io_get_le16(q); break;
        case NPY_U4: v = lb_io_get_le32(q); break;
        case NPY_I4: v = (int32_t)lb_io_get_le32(q); break;
        default: v = (int64_t)lb_io_get_le64(q); break;
        }
        if (v < 0 || v > (int64_t)UINT32_MAX) {
            free(ids);
            return lb_err_set(err, LB_EFORMAT,
                              "%s: value %lld at index %llu is %s; token ids must be in "
                              "[0, 4294967295]",
                              path, (long long)v, (unsigned long long)i,
                              v < 0 ? "negative" : "too large");
        }
        ids[i] = (uint32_t)v;
    }
    *out = ids;
    *n = (int64_t)numel;
    if (rows)
        *rows = ndim == 2 ? shape[0] : 1;
    return 0;
bad_header:
    return lb_err_set(err, LB_EFORMAT,
                      "%s: .npy header is not a dict with 'descr', 'fortran_order', 'shape'",
                      path);
}

int lb_tokens_load_rows(const char *path, uint32_t **out, int64_t *n, int64_t *rows, lb_err *err)
{
    if (!path || !out || !n)
        return lb_err_set(err, LB_EINVAL, "lb_tokens_load: NULL argument");
    *out = NULL;
    *n = 0;
    const void *map = NULL;
    size_t size = 0;
    int rc = lb_io_map(path, &map, &size, err);
    if (rc)
        return rc;
    if ((uint64_t)size > TOKENS_MAX_BYTES) {
        lb_io_unmap(map, size);
        return lb_err_set(err, LB_EFORMAT, "%s: %zu bytes is too large for a token file", path,
                          size);
    }
    const uint8_t *buf = map;
    if (has_suffix(path, ".npy")) {
        rc = parse_npy(path, buf, size, out, n, rows, err);
    } else if (size % 4) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s: %zu bytes is not a multiple of 4; expected raw little-endian uint32 "
                        "token ids (or give a .npy file)",
                        path, size);
    } else {
        size_t cnt = size / 4;
        uint32_t *ids = malloc(cnt ? cnt * sizeof *ids : 1);
        if (!ids) {
            rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        } else {
            for (size_t i = 0; i < cnt; i++)
                ids[i] = lb_io_get_le32(buf + 4 * i);
            *out = ids;
            *n = (int64_t)cnt;
            if (rows)
                *rows = 1;
        }
    }
    lb_io_unmap(map, size);
    return rc;
}

int lb_tokens_load(const char *path, uint32_t **out, int64_t *n, lb_err *err)
{
    return lb_tokens_load_rows(path, out, n, NULL, err);
}

int lb_tokens_check_vocab(const uint32_t *tokens, int64_t n, int64_t vocab, const char *path,
                          lb_err *err)
{
    if (n > 0 && !tokens)
        return lb_err_set(err, LB_EINVAL, "lb_tokens_check_vocab: NULL tokens");
    for (int64_t i = 0; i < n; i++)
        if ((int64_t)tokens[i] >= vocab)
            return lb_err_set(err, LB_EFORMAT,
                              "%s: token id %u at index %lld is >= vocab size %lld; the tokens do "
                              "not belong to this model",
                              path ? path : "tokens", tokens[i], (long long)i, (long long)vocab);
    return 0;
}

int lb_tokens_write_u32(const char *path, const uint32_t *tokens, int64_t n, lb_err *err)
{
    if (!path || n < 0 || (n > 0 && !tokens) || (uint64_t)n > SIZE_MAX / 4)
        return lb_err_set(err, LB_EINVAL, "lb_tokens_write_u32: bad argument");
    uint8_t *buf = malloc(n ? (size_t)n * 4 : 1);
    if (!buf)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    for (int64_t i = 0; i < n; i++)
        lb_io_put_le32(buf + 4 * i, tokens[i]);
    int rc = lb_io_write_atomic(path, buf, (size_t)n * 4, err);
    free(buf);
    return rc;
}
