/* lb_safetensors: writer/reader round trips, sharded models, hostile headers, fuzzing,
 * and the real stories260K fixture. */
#include "lb_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_config.h"
#include "lb_safetensors.h"

/* ---- helpers ---- */

static char *tdir;

static int setup(void **state)
{
    (void)state;
    tdir = lb_test_mkdtemp();
    return tdir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    lb_test_rmdir(&tdir);
    return 0;
}

static void path_in(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tdir, name);
}

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_whole(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* Writes u64 LE header length, the header text (no padding) and data. */
static void write_st_raw(const char *path, uint64_t hlen, const char *header, const void *data,
                         size_t dlen)
{
    size_t h = strlen(header);
    uint8_t *buf = malloc(8 + h + dlen + 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, h);
    if (dlen)
        memcpy(buf + 8 + h, data, dlen);
    write_file(path, buf, 8 + h + dlen);
    free(buf);
}

static void write_st(const char *path, const char *header, size_t dlen)
{
    uint8_t *data = calloc(dlen + 1, 1);
    assert_non_null(data);
    write_st_raw(path, strlen(header), header, data, dlen);
    free(data);
}

/* The open must fail with `code` and a one-line message naming `name_in_msg`. */
static void expect_open_fail(const char *path, int code, const char *name_in_msg,
                             const char *also)
{
    lb_st *st = (lb_st *)0x1;
    lb_err err = {0};
    int rc = lb_st_open(&st, path, &err);
    if (rc != code || !strstr(err.msg, name_in_msg) || (also && !strstr(err.msg, also)))
        fail_msg("open %s: rc %d (want %d), msg '%s' (want '%s'%s%s)", path, rc, code, err.msg,
                 name_in_msg, also ? " and " : "", also ? also : "");
    assert_null(st);
    assert_int_equal(err.code, code);
    assert_null(strchr(err.msg, '\n'));
}

/* ---- round trips ---- */

static int is_float_dtype(int d)
{
    return d == LB_DTYPE_F32 || d == LB_DTYPE_F16 || d == LB_DTYPE_BF16 || d == LB_DTYPE_F64;
}

/* Slow reference decode of one little-endian element of a float dtype. */
static float ref_to_f32(int d, const uint8_t *p)
{
    if (d == LB_DTYPE_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    if (d == LB_DTYPE_F64) {
        double v;
        memcpy(&v, p, 8);
        return (float)v;
    }
    uint16_t h = (uint16_t)(p[0] | p[1] << 8);
    if (d == LB_DTYPE_BF16) { /* bf16 = top half of an f32 */
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    /* f16: (-1)^s * 2^(e-15) * (1 + m/1024); subnormal 2^-14 * m/1024 */
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0    ? ldexp(m, -24)
               : e == 31 ? (m ? (double)NAN : (double)INFINITY)
                         : ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

static void test_roundtrip_every_dtype(void **state)
{
    (void)state;
    char path[4096];
    path_in(path, sizeof path, "all.safetensors");
    uint64_t rng = 11;
    enum { ND = LB_DTYPE_COUNT };
    uint8_t *data[ND];
    int64_t shape[ND][3];
    size_t nbytes[ND];
    lb_err err = {0};
    lb_st_writer *w = NULL;
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    for (int d = 0; d < ND; d++) {
        shape[d][0] = 2 + d % 3;
        shape[d][1] = 3;
        shape[d][2] = 1 + d % 2;
        size_t n = (size_t)(shape[d][0] * shape[d][1] * shape[d][2]);
        nbytes[d] = n * lb_dtype_size((lb_dtype)d);
        data[d] = malloc(nbytes[d]);
        for (size_t i = 0; i < nbytes[d]; i++)
            data[d][i] = (uint8_t)lb_test_rand_u64(&rng);
        if (d == LB_DTYPE_BOOL)
            for (size_t i = 0; i < nbytes[d]; i++)
                data[d][i] &= 1;
        /* random floats but finite (reads reject NaN/Inf): clear the top exponent bit */
        size_t es = lb_dtype_size((lb_dtype)d);
        for (size_t i = 0; is_float_dtype(d) && i < n; i++)
            if (!isfinite(ref_to_f32(d, data[d] + i * es)))
                data[d][i * es + es - 1] &= 0xbf;
        char name[64];
        snprintf(name, sizeof name, "t.%s", lb_dtype_name((lb_dtype)d));
        assert_int_equal(lb_st_writer_add_tensor(w, name, (lb_dtype)d, 3, shape[d], &err), 0);
    }
    int64_t empty_shape[2] = {0, 4};
    assert_int_equal(lb_st_writer_add_tensor(w, "empty", LB_DTYPE_F32, 2, empty_shape, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "scalar", LB_DTYPE_F64, 0, NULL, &err), 0);
    assert_int_equal(lb_st_writer_set_metadata(w, "format", "pt", &err), 0);
    assert_int_equal(lb_st_writer_set_metadata(w, "lowbit.note", "x", &err), 0);
    assert_int_equal(lb_st_writer_set_metadata(w, "lowbit.note", "replaced \"quoted\"", &err), 0);
    for (int d = 0; d < ND; d++) {
        char name[64];
        snprintf(name, sizeof name, "t.%s", lb_dtype_name((lb_dtype)d));
        assert_int_equal(lb_st_writer_write(w, name, data[d], nbytes[d], &err), 0);
    }
    double scalar = -2.5;
    assert_int_equal(lb_st_writer_write(w, "scalar", &scalar, 8, &err), 0);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_true(file_exists(tmp));
    assert_false(file_exists(path));
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);
    assert_null(w);
    assert_false(file_exists(tmp));

    /* layout: header length is a multiple of 8, padded with spaces */
    size_t fsz;
    uint8_t *raw = read_whole(path, &fsz);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | raw[i];
    assert_int_equal(hlen % 8, 0);
    assert_true(8 + hlen <= fsz);
    assert_int_equal(raw[8], '{');
    size_t last = 8 + hlen - 1;
    while (raw[last] == ' ')
        last--;
    assert_int_equal(raw[last], '}');
    size_t total = sizeof scalar;
    for (int d = 0; d < ND; d++)
        total += nbytes[d];
    assert_int_equal(fsz, 8 + hlen + total);

    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, path, &err), 0);
    assert_int_equal(lb_st_count(st), ND + 2);
    assert_string_equal(lb_st_metadata_get(st, "format"), "pt");
    assert_string_equal(lb_st_metadata_get(st, "lowbit.note"), "replaced \"quoted\"");
    assert_null(lb_st_metadata_get(st, "absent"));
    assert_int_equal(lb_st_metadata_count(st), 2);
    for (int d = 0; d < ND; d++) {
        char name[64];
        snprintf(name, sizeof name, "t.%s", lb_dtype_name((lb_dtype)d));
        const lb_st_tensor *t = lb_st_find(st, name);
        assert_non_null(t);
        assert_ptr_equal(t, lb_st_at(st, d)); /* file order = declaration order */
        assert_string_equal(t->name, name);
        assert_int_equal(t->dtype, d);
        assert_int_equal(t->ndim, 3);
        for (int k = 0; k < 3; k++)
            assert_int_equal(t->shape[k], shape[d][k]);
        assert_int_equal(t->numel, shape[d][0] * shape[d][1] * shape[d][2]);
        assert_int_equal(t->nbytes, nbytes[d]);
        assert_memory_equal(t->data, data[d], nbytes[d]);
        assert_string_equal(t->file, path);
        /* data start is 8-aligned in the file, so each tensor sits at 8 + hlen + begin */
        assert_memory_equal(raw + 8 + hlen + ((const uint8_t *)t->data -
                                               (const uint8_t *)lb_st_at(st, 0)->data),
                            data[d], nbytes[d]);
        /* f32 conversion agrees with an independent decode of the bytes */
        size_t n = (size_t)t->numel;
        float *got = malloc(n * sizeof *got);
        int rc = lb_st_read_f32(st, name, got, t->numel, &err);
        if (is_float_dtype(d)) {
            assert_int_equal(rc, 0);
            for (size_t i = 0; i < n; i++) {
                float want = ref_to_f32(d, data[d] + i * lb_dtype_size((lb_dtype)d));
                assert_memory_equal(&got[i], &want, 4);
            }
        } else {
            assert_int_equal(rc, LB_EFORMAT);
            assert_non_null(strstr(err.msg, name));
            assert_non_null(strstr(err.msg, path));
        }
        free(got);
    }
    const lb_st_tensor *e = lb_st_find(st, "empty");
    assert_non_null(e);
    assert_int_equal(e->numel, 0);
    assert_int_equal(e->nbytes, 0);
    const lb_st_tensor *sc = lb_st_find(st, "scalar");
    assert_int_equal(sc->ndim, 0);
    assert_int_equal(sc->numel, 1);
    float f;
    assert_int_equal(lb_st_read_f32(st, "scalar", &f, 1, &err), 0);
    assert_true(f == -2.5f);
    assert_null(lb_st_at(st, -1));
    assert_null(lb_st_at(st, ND + 2));
    lb_st_free(&st);
    assert_null(st);
    free(raw);
    for (int d = 0; d < ND; d++)
        free(data[d]);
}

static void test_chunked_and_f32_writes(void **state)
{
    (void)state;
    char path[4096];
    path_in(path, sizeof path, "chunks.safetensors");
    enum { N = 40000 }; /* more than one internal conversion chunk */
    float *src = malloc(N * sizeof *src);
    for (int i = 0; i < N; i++)
        src[i] = (float)((i % 2001) - 1000) / 8.0f; /* exact in f16, bf16 needs rounding */
    lb_err err = {0};
    lb_st_writer *w = NULL;
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    int64_t s1[1] = {N}, s2[2] = {N / 100, 100};
    assert_int_equal(lb_st_writer_add_tensor(w, "a.f16", LB_DTYPE_F16, 1, s1, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "b.f32", LB_DTYPE_F32, 2, s2, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "c.f64", LB_DTYPE_F64, 1, s1, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "d.bf16", LB_DTYPE_BF16, 1, s1, &err), 0);
    /* f16 via write_f32 in uneven chunks */
    for (size_t i = 0; i < N;) {
        size_t k = i % 3 == 0 ? 7 : 12345;
        if (k > N - i)
            k = N - i;
        assert_int_equal(lb_st_writer_write_f32(w, "a.f16", src + i, k, &err), 0);
        i += k;
    }
    /* f32 via raw byte chunks, including 0 bytes and a split inside a float */
    const uint8_t *b = (const uint8_t *)src;
    assert_int_equal(lb_st_writer_write(w, "b.f32", b, 0, &err), 0);
    assert_int_equal(lb_st_writer_write(w, "b.f32", b, 3, &err), 0);
    assert_int_equal(lb_st_writer_write(w, "b.f32", b + 3, 4 * N - 3, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "c.f64", src, N, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "d.bf16", src, N, &err), 0);
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);

    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, path, &err), 0);
    float *got = malloc(N * sizeof *got);
    const char *names[] = {"a.f16", "b.f32", "c.f64"};
    for (int k = 0; k < 3; k++) {
        memset(got, 0, N * sizeof *got);
        assert_int_equal(lb_st_read_f32(st, names[k], got, N, &err), 0);
        assert_memory_equal(got, src, N * sizeof *got);
    }
    assert_int_equal(lb_st_read_f32(st, "d.bf16", got, N, &err), 0);
    for (int i = 0; i < N; i++) /* bf16 keeps 8 significant bits: RNE error <= 2^-8 relative */
        assert_true(fabsf(got[i] - src[i]) <= fabsf(src[i]) * 0x1p-8f);
    /* row slices equal the matching part of a full read */
    float rows[7 * 100];
    assert_int_equal(lb_st_read_f32_rows(st, "b.f32", 393, 7, rows, &err), 0);
    assert_memory_equal(rows, src + 393 * 100, sizeof rows);
    assert_int_equal(lb_st_read_f32_rows(st, "b.f32", 0, 0, NULL, &err), 0);
    assert_int_equal(lb_st_read_f32_rows(st, "b.f32", 399, 1, rows, &err), 0);
    assert_memory_equal(rows, src + 399 * 100, 100 * sizeof(float));
    assert_int_equal(lb_st_read_f32_rows(st, "b.f32", 399, 2, rows, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "b.f32"));
    assert_int_equal(lb_st_read_f32_rows(st, "b.f32", -1, 1, rows, &err), LB_EINVAL);
    assert_int_equal(lb_st_read_f32_rows(st, "b.f32", 1, INT64_MAX, rows, &err), LB_EINVAL);
    assert_int_equal(lb_st_read_f32_rows(st, "a.f16", 0, 1, rows, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "2-D"));
    assert_int_equal(lb_st_read_f32_rows(st, "nope", 0, 1, rows, &err), LB_ENOTFOUND);
    /* lookup errors name the file and the tensor */
    assert_int_equal(lb_st_read_f32(st, "model.missing", got, N, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "model.missing"));
    assert_int_equal(lb_st_read_f32(st, "a.f16", got, N - 1, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "a.f16"));
    assert_int_equal(lb_st_read_f32(st, "a.f16", got, -1, &err), 0);
    free(got);
    free(src);
    lb_st_free(&st);
}

static void test_non_finite_rejected(void **state)
{
    (void)state;
    char path[4096];
    path_in(path, sizeof path, "nan.safetensors");
    lb_err err = {0};
    lb_st_writer *w = NULL;
    int64_t s[2] = {2, 3};
    float a[6] = {1, 2, 3, 4, NAN, 6}, b[6] = {1, -INFINITY, 3, 4, 5, 6};
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "a", LB_DTYPE_F16, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "b", LB_DTYPE_BF16, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "c", LB_DTYPE_F32, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "a", a, 6, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "b", b, 6, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "c", a, 6, &err), 0);
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);
    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, path, &err), 0);
    float out[6];
    const char *names[] = {"a", "c"};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(lb_st_read_f32(st, names[k], out, 6, &err), LB_ENUMERIC);
        assert_non_null(strstr(err.msg, path));
        assert_non_null(strstr(err.msg, "NaN at element 4"));
        /* row 0 is clean, row 1 holds the NaN */
        assert_int_equal(lb_st_read_f32_rows(st, names[k], 0, 1, out, &err), 0);
        assert_int_equal(lb_st_read_f32_rows(st, names[k], 1, 1, out, &err), LB_ENUMERIC);
        assert_non_null(strstr(err.msg, "element 4"));
    }
    assert_int_equal(lb_st_read_f32(st, "b", out, 6, &err), LB_ENUMERIC);
    assert_non_null(strstr(err.msg, "Inf at element 1"));
    assert_non_null(strstr(err.msg, "'b'"));
    lb_st_free(&st);
}

static void test_writer_misuse(void **state)
{
    (void)state;
    char path[4096], tmp[4200];
    path_in(path, sizeof path, "misuse.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    lb_err err = {0};
    lb_st_writer *w = NULL;
    int64_t s[2] = {2, 3}, neg[1] = {-1}, huge[3] = {INT64_MAX / 2, 4, 1};
    uint8_t buf[64] = {0};
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "x", LB_DTYPE_F32, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "x", LB_DTYPE_F32, 2, s, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "", LB_DTYPE_F32, 2, s, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "__metadata__", LB_DTYPE_F32, 2, s, &err),
                     LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "n", LB_DTYPE_F32, 1, neg, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "h", LB_DTYPE_F32, 3, huge, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "d", LB_DTYPE_COUNT, 2, s, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "nd", LB_DTYPE_F32, 9, s, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "bad\xff", LB_DTYPE_F32, 2, s, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_add_tensor(w, "y", LB_DTYPE_I32, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "z", LB_DTYPE_F16, 2, s, &err), 0);
    /* order: y before x is complete */
    assert_int_equal(lb_st_writer_write(w, "x", buf, 8, &err), 0);
    assert_int_equal(lb_st_writer_write(w, "y", buf, 4, &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "'x'"));
    /* overrun */
    assert_int_equal(lb_st_writer_write(w, "x", buf, 17, &err), LB_ESTATE);
    assert_int_equal(lb_st_writer_write(w, "undeclared", buf, 1, &err), LB_ENOTFOUND);
    /* declarations are closed once data flows */
    assert_int_equal(lb_st_writer_add_tensor(w, "late", LB_DTYPE_F32, 2, s, &err), LB_ESTATE);
    assert_int_equal(lb_st_writer_set_metadata(w, "k", "v", &err), LB_ESTATE);
    assert_int_equal(lb_st_writer_write(w, "x", buf, 16, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "y", (const float *)buf, 6, &err), LB_EINVAL);
    assert_int_equal(lb_st_writer_write(w, "y", buf, 24, &err), 0);
    assert_int_equal(lb_st_writer_write(w, "x", buf, 1, &err), LB_ESTATE); /* x is done */
    /* write_f32 that would overrun writes nothing */
    float fz[7] = {0};
    assert_int_equal(lb_st_writer_write_f32(w, "z", fz, 7, &err), LB_ESTATE);
    assert_int_equal(lb_st_writer_write_f32(w, "z", fz, 5, &err), 0);
    /* finish with z short by one element: error, nothing left behind */
    assert_int_equal(lb_st_writer_finish(w, &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "'z'"));
    assert_false(file_exists(tmp));
    assert_false(file_exists(path));
    assert_int_equal(lb_st_writer_write(w, "z", buf, 2, &err), LB_ESTATE);
    lb_st_writer_free(&w);
    assert_null(w);

    /* an abandoned writer removes its temp file */
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "x", LB_DTYPE_F32, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_write(w, "x", buf, 8, &err), 0);
    assert_true(file_exists(tmp));
    lb_st_writer_free(&w);
    assert_false(file_exists(tmp));
    assert_false(file_exists(path));

    /* a writer into a missing directory fails with the path */
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", tdir);
    assert_int_equal(lb_st_writer_new(&w, bad, &err), LB_EIO);
    assert_null(w);
    assert_non_null(strstr(err.msg, "no/such/dir"));

    /* no tensors at all is a valid (empty) file */
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);
    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, path, &err), 0);
    assert_int_equal(lb_st_count(st), 0);
    assert_null(lb_st_find(st, "x"));
    lb_st_free(&st);
}

/* Writes a small F32 model file with given tensors (name, rows, cols), values i + base. */
static void write_small(const char *path, const char *const *names, int n, float base)
{
    lb_err err = {0};
    lb_st_writer *w = NULL;
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    int64_t s[2] = {3, 4};
    for (int i = 0; i < n; i++)
        assert_int_equal(lb_st_writer_add_tensor(w, names[i], LB_DTYPE_F32, 2, s, &err), 0);
    assert_int_equal(lb_st_writer_set_metadata(w, "format", "pt", &err), 0);
    for (int i = 0; i < n; i++) {
        float v[12];
        for (int k = 0; k < 12; k++)
            v[k] = base + (float)(i * 12 + k);
        assert_int_equal(lb_st_writer_write_f32(w, names[i], v, 12, &err), 0);
    }
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);
}

static void write_text(const char *path, const char *text)
{
    write_file(path, text, strlen(text));
}

static void test_sharded_and_directories(void **state)
{
    (void)state;
    char dir[4096], p1[4200], p2[4200], idx[4200];
    path_in(dir, sizeof dir, "sharded");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    const char *n1[] = {"model.embed_tokens.weight", "model.layers.0.q.weight"};
    const char *n2[] = {"model.layers.1.q.weight", "model.norm.weight", "lm_head.weight"};
    write_small(p1, n1, 2, 0.0f);
    write_small(p2, n2, 3, 1000.0f);
    write_text(idx, "{\"metadata\": {\"total_size\": 240, \"origin\": \"test\"}, \"weight_map\": {"
                    "\"lm_head.weight\": \"model-00002-of-00002.safetensors\","
                    "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
                    "\"model.layers.0.q.weight\": \"model-00001-of-00002.safetensors\","
                    "\"model.layers.1.q.weight\": \"model-00002-of-00002.safetensors\","
                    "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}");
    lb_err err = {0};
    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, dir, &err), 0);
    assert_int_equal(lb_st_count(st), 5);
    assert_string_equal(lb_st_at(st, 0)->name, n1[0]);
    assert_string_equal(lb_st_at(st, 1)->name, n1[1]);
    assert_string_equal(lb_st_at(st, 2)->name, n2[0]);
    assert_string_equal(lb_st_at(st, 4)->name, n2[2]);
    assert_string_equal(lb_st_find(st, "lm_head.weight")->file, p2);
    assert_string_equal(lb_st_find(st, "model.layers.0.q.weight")->file, p1);
    assert_string_equal(lb_st_metadata_get(st, "origin"), "test");
    assert_string_equal(lb_st_metadata_get(st, "format"), "pt");
    assert_null(lb_st_metadata_get(st, "total_size")); /* not a string */
    float v[12];
    assert_int_equal(lb_st_read_f32(st, "model.norm.weight", v, 12, &err), 0);
    for (int k = 0; k < 12; k++)
        assert_true(v[k] == 1000.0f + (float)(12 + k));
    assert_int_equal(lb_st_read_f32_rows(st, "model.layers.0.q.weight", 2, 1, v, &err), 0);
    for (int k = 0; k < 4; k++)
        assert_true(v[k] == (float)(12 + 8 + k));
    lb_st_free(&st);
    /* the index file itself opens the same model */
    assert_int_equal(lb_st_open(&st, idx, &err), 0);
    assert_int_equal(lb_st_count(st), 5);
    assert_string_equal(lb_st_find(st, "lm_head.weight")->file, p2);
    lb_st_free(&st);

    /* the index names a tensor its shard lacks */
    write_text(idx, "{\"weight_map\": {"
                    "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
                    "\"model.ghost.weight\": \"model-00002-of-00002.safetensors\"}}");
    expect_open_fail(dir, LB_EFORMAT, idx, "model.ghost.weight");
    /* the index maps a tensor to the wrong shard */
    write_text(idx, "{\"weight_map\": {"
                    "\"model.norm.weight\": \"model-00001-of-00002.safetensors\","
                    "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"}}");
    expect_open_fail(dir, LB_EFORMAT, idx, "model.norm.weight");
    /* a missing shard */
    write_text(idx, "{\"weight_map\": {"
                    "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
                    "\"model.x\": \"model-00003-of-00003.safetensors\"}}");
    expect_open_fail(dir, LB_ENOTFOUND, idx, "model-00003-of-00003.safetensors");
    /* escaping the directory, bad JSON, no weight_map, empty map */
    write_text(idx, "{\"weight_map\": {\"a\": \"../model-00001-of-00002.safetensors\"}}");
    expect_open_fail(dir, LB_EFORMAT, idx, "relative");
    write_text(idx, "{\"weight_map\": {\"a\": \"/etc/passwd\"}}");
    expect_open_fail(dir, LB_EFORMAT, idx, "relative");
    write_text(idx, "{\"weight_map\": ");
    expect_open_fail(dir, LB_EFORMAT, idx, "JSON");
    write_text(idx, "{\"weights\": {}}");
    expect_open_fail(dir, LB_EFORMAT, idx, "weight_map");
    write_text(idx, "{\"weight_map\": {}}");
    expect_open_fail(dir, LB_EFORMAT, idx, "empty");
    /* the same tensor in two shards */
    const char *dup[] = {"model.embed_tokens.weight"};
    write_small(p2, dup, 1, 5.0f);
    write_text(idx, "{\"weight_map\": {"
                    "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
                    "\"model.x\": \"model-00002-of-00002.safetensors\"}}");
    expect_open_fail(dir, LB_EFORMAT, dir, "model.embed_tokens.weight");
    /* a corrupt shard reports the shard's path */
    write_text(p2, "garbage!");
    expect_open_fail(dir, LB_EFORMAT, p2, NULL);

    /* a directory with a single model.safetensors */
    char d2[4096], single[4200];
    path_in(d2, sizeof d2, "single");
    assert_int_equal(mkdir(d2, 0755), 0);
    expect_open_fail(d2, LB_ENOTFOUND, d2, "model.safetensors");
    snprintf(single, sizeof single, "%s/model.safetensors", d2);
    write_small(single, n2, 3, 0.0f);
    assert_int_equal(lb_st_open(&st, d2, &err), 0);
    assert_int_equal(lb_st_count(st), 3);
    assert_string_equal(lb_st_path(st), d2);
    lb_st_free(&st);
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/nothing.safetensors", tdir);
    expect_open_fail(missing, LB_ENOTFOUND, missing, NULL);
}

/* ---- hostile single files ---- */

static void test_hostile_headers(void **state)
{
    (void)state;
    char p[4096];
    path_in(p, sizeof p, "bad.safetensors");
    /* shorter than the length field */
    for (size_t n = 0; n < 8; n++) {
        uint8_t z[8] = {16, 0, 0, 0, 0, 0, 0, 0};
        write_file(p, z, n);
        expect_open_fail(p, LB_EFORMAT, p, "truncated");
    }
    /* header length beyond the file, absurd, or huge */
    write_st_raw(p, 200, "{}", NULL, 0);
    expect_open_fail(p, LB_EFORMAT, p, "past the end");
    write_st_raw(p, 100000001, "{}", NULL, 0);
    expect_open_fail(p, LB_EFORMAT, p, "absurd");
    write_st_raw(p, UINT64_MAX, "{}", NULL, 0);
    expect_open_fail(p, LB_EFORMAT, p, "absurd");
    write_st_raw(p, UINT64_MAX - 3, "{}", NULL, 0);
    expect_open_fail(p, LB_EFORMAT, p, "absurd");
    /* header cut in the middle of the JSON */
    const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_st_raw(p, strlen(good), good, NULL, 0); /* header fine, data missing */
    expect_open_fail(p, LB_EFORMAT, p, "past the data area");
    write_st_raw(p, 19, "{\"a\":{\"dtype\":\"F32\"", NULL, 0);
    expect_open_fail(p, LB_EFORMAT, p, "JSON");

    struct {
        const char *header;
        size_t dlen;
        const char *want;
    } cases[] = {
        {"not json at all", 0, "not valid JSON"},
        {"[1,2,3]", 0, "not an object"},
        {"\"str\"", 0, "not an object"},
        {"{\"a\": 5}", 0, "not an object"},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8,
         "unknown dtype 'F8_E4M3'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}", 8, "negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "not an array"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
         "dims"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "end 0 < begin 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8, "two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":\"0-8\"}}", 8, "two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "past the data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8,
         "JSON"}, /* beyond int64: jansson rejects the number */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "needs 12 bytes but data_offsets span 8"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "needs 4 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
         "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,2],\"data_offsets\":[0,8]}}", 8,
         "overflows"},
        /* numel fits int64 but numel * 8 does not */
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8,
         "byte size"},
        /* shape product 2^62 * 4 wraps to 0 in 64 bits: must still be caught */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 8,
         "byte size"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         16, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         16, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
         16, "duplicate"},
        {"{\"__metadata__\": {\"k\": 5}}", 0, "not a string"},
        {"{\"__metadata__\": [1]}", 0, "__metadata__"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_st(p, cases[i].header, cases[i].dlen);
        expect_open_fail(p, LB_EFORMAT, p, cases[i].want);
    }
    /* a NUL byte inside the header */
    {
        uint8_t b[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', 0, '}', ' '};
        write_file(p, b, 12);
        expect_open_fail(p, LB_EFORMAT, p, "JSON");
    }
    /* deep nesting must not recurse without bound */
    {
        enum { DEPTH = 200000 };
        char *deep = malloc(2 * DEPTH + 8);
        size_t k = 0;
        deep[k++] = '{';
        memcpy(deep + k, "\"a\":", 4);
        k += 4;
        for (int i = 0; i < DEPTH; i++)
            deep[k++] = '[';
        deep[k] = '\0';
        write_st(p, deep, 0);
        expect_open_fail(p, LB_EFORMAT, p, "JSON");
        free(deep);
    }
    /* gaps between tensors and unordered offsets are fine */
    write_st(p,
             "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]}}",
             20);
    lb_st *st = NULL;
    lb_err err = {0};
    assert_int_equal(lb_st_open(&st, p, &err), 0);
    assert_int_equal(lb_st_count(st), 3);
    assert_string_equal(lb_st_at(st, 0)->name, "a"); /* file order */
    assert_string_equal(lb_st_at(st, 2)->name, "b");
    lb_st_free(&st);
    /* a directory given as a file inside an index is caught; so is a FIFO-like non-file */
    expect_open_fail("/proc/self/nonexistent", LB_ENOTFOUND, "/proc/self/nonexistent", NULL);
}

/* ---- fuzz-ish: truncations and byte flips of a valid file ---- */

static void touch_all(const lb_st *st)
{
    /* reads every byte of every tensor so ASan sees any bad pointer */
    volatile uint8_t sink = 0;
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        assert_non_null(t);
        assert_ptr_equal(lb_st_find(st, t->name), t);
        for (size_t k = 0; k < t->nbytes; k++)
            sink ^= ((const uint8_t *)t->data)[k];
        if (t->dtype == LB_DTYPE_F32 || t->dtype == LB_DTYPE_F16 || t->dtype == LB_DTYPE_BF16 ||
            t->dtype == LB_DTYPE_F64) {
            float *buf = malloc((size_t)t->numel * sizeof *buf + 1);
            lb_err err = {0};
            int rc = lb_st_read_f32(st, t->name, buf, t->numel, &err);
            assert_true(rc == 0 || rc == LB_ENUMERIC); /* a flipped bit may make a NaN */
            free(buf);
        }
    }
    (void)sink;
}

static void test_fuzz_truncate_and_flip(void **state)
{
    (void)state;
    char good[4096], p[4096];
    path_in(good, sizeof good, "fuzz-src.safetensors");
    path_in(p, sizeof p, "fuzz.safetensors");
    lb_err err = {0};
    lb_st_writer *w = NULL;
    assert_int_equal(lb_st_writer_new(&w, good, &err), 0);
    int64_t s1[2] = {3, 5}, s2[1] = {7}, s3[3] = {2, 2, 2};
    assert_int_equal(lb_st_writer_add_tensor(w, "w.f16", LB_DTYPE_F16, 2, s1, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "b.f32", LB_DTYPE_F32, 1, s2, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "i.i64", LB_DTYPE_I64, 3, s3, &err), 0);
    assert_int_equal(lb_st_writer_set_metadata(w, "format", "pt", &err), 0);
    float v[15];
    for (int i = 0; i < 15; i++)
        v[i] = (float)i * 0.25f;
    int64_t iv[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(lb_st_writer_write_f32(w, "w.f16", v, 15, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "b.f32", v, 7, &err), 0);
    assert_int_equal(lb_st_writer_write(w, "i.i64", iv, sizeof iv, &err), 0);
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);
    size_t size;
    uint8_t *orig = read_whole(good, &size);

    /* every truncation must fail cleanly, naming the file */
    for (size_t n = 0; n < size; n++) {
        write_file(p, orig, n);
        lb_st *st = NULL;
        lb_err_clear(&err);
        int rc = lb_st_open(&st, p, &err);
        if (rc == 0)
            fail_msg("truncation to %zu of %zu bytes was accepted", n, size);
        assert_null(st);
        assert_non_null(strstr(err.msg, p));
    }
    /* random byte flips: succeed (and stay in bounds) or fail with a message */
    uint64_t rng = 12345;
    uint8_t *mut = malloc(size);
    int ok = 0, bad = 0;
    for (int c = 0; c < 400; c++) {
        memcpy(mut, orig, size);
        int flips = 1 + (int)(lb_test_rand_u64(&rng) % 4);
        for (int f = 0; f < flips; f++) {
            uint64_t r = lb_test_rand_u64(&rng);
            /* half the flips hit the length field and header, where parsing happens */
            size_t pos = (r & 1) ? (size_t)((r >> 8) % (size < 120 ? size : 120))
                                 : (size_t)((r >> 8) % size);
            if (r >> 4 & 1)
                mut[pos] = (uint8_t)(r >> 40); /* random byte */
            else
                mut[pos] ^= (uint8_t)(1u << (r >> 5 & 7)); /* one bit */
        }
        write_file(p, mut, size);
        lb_st *st = NULL;
        lb_err_clear(&err);
        if (lb_st_open(&st, p, &err) == 0) {
            touch_all(st);
            lb_st_free(&st);
            ok++;
        } else {
            assert_null(st);
            assert_non_null(strstr(err.msg, p));
            assert_null(strchr(err.msg, '\n'));
            bad++;
        }
    }
    print_message("fuzz: %d accepted, %d rejected\n", ok, bad);
    assert_true(ok > 0 && bad > 0); /* both paths exercised */
    free(mut);
    free(orig);
}

/* ---- the real fixture ---- */

static void test_fixture_stories260k(void **state)
{
    (void)state;
    char dir[4096];
    LB_TEST_REQUIRE_SHARED(dir, "models/stories260K");
    lb_config cfg;
    lb_err err = {0};
    assert_int_equal(lb_config_load(&cfg, dir, &err), 0);
    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, dir, &err), 0);
    assert_string_equal(lb_st_metadata_get(st, "format"), "pt");
    int64_t h = cfg.hidden_size, q = lb_config_q_dim(&cfg), kv = lb_config_kv_dim(&cfg),
            ff = cfg.intermediate_size;
    struct {
        const char *fmt;
        int64_t r, c; /* c == 0: 1-D */
    } per_layer[] = {
        {"model.layers.%d.input_layernorm.weight", h, 0},
        {"model.layers.%d.post_attention_layernorm.weight", h, 0},
        {"model.layers.%d.self_attn.q_proj.weight", q, h},
        {"model.layers.%d.self_attn.k_proj.weight", kv, h},
        {"model.layers.%d.self_attn.v_proj.weight", kv, h},
        {"model.layers.%d.self_attn.o_proj.weight", h, q},
        {"model.layers.%d.mlp.gate_proj.weight", ff, h},
        {"model.layers.%d.mlp.up_proj.weight", ff, h},
        {"model.layers.%d.mlp.down_proj.weight", h, ff},
    };
    int64_t expect_count =
        2 + 9 * (int64_t)cfg.num_hidden_layers + (cfg.tie_word_embeddings ? 0 : 1);
    assert_int_equal(lb_st_count(st), expect_count);
    const lb_st_tensor *emb = lb_st_find(st, "model.embed_tokens.weight");
    assert_non_null(emb);
    assert_int_equal(emb->ndim, 2);
    assert_int_equal(emb->shape[0], cfg.vocab_size);
    assert_int_equal(emb->shape[1], h);
    const lb_st_tensor *norm = lb_st_find(st, "model.norm.weight");
    assert_non_null(norm);
    assert_int_equal(norm->ndim, 1);
    assert_int_equal(norm->shape[0], h);
    assert_null(lb_st_find(st, "lm_head.weight"));
    for (int l = 0; l < cfg.num_hidden_layers; l++)
        for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++) {
            char name[128];
            snprintf(name, sizeof name, per_layer[k].fmt, l);
            const lb_st_tensor *t = lb_st_find(st, name);
            if (!t)
                fail_msg("fixture lacks %s", name);
            assert_int_equal(t->dtype, LB_DTYPE_F32);
            assert_int_equal(t->ndim, per_layer[k].c ? 2 : 1);
            assert_int_equal(t->shape[0], per_layer[k].r);
            if (per_layer[k].c)
                assert_int_equal(t->shape[1], per_layer[k].c);
        }
    /* every tensor converts, is finite, and not all zero */
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        float *buf = malloc((size_t)t->numel * sizeof *buf);
        assert_int_equal(lb_st_read_f32(st, t->name, buf, t->numel, &err), 0);
        double sum = 0.0;
        for (int64_t k = 0; k < t->numel; k++) {
            assert_true(isfinite(buf[k]));
            sum += fabs((double)buf[k]);
        }
        assert_true(sum > 0.0);
        free(buf);
    }
    lb_st_free(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_every_dtype),
        cmocka_unit_test(test_chunked_and_f32_writes),
        cmocka_unit_test(test_non_finite_rejected),
        cmocka_unit_test(test_writer_misuse),
        cmocka_unit_test(test_sharded_and_directories),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_fuzz_truncate_and_flip),
        cmocka_unit_test(test_fixture_stories260k),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
