#include "lb_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_qpacked_io.h"
#include "lb_quant.h"
#include "lb_safetensors.h"

/* A packed matrix with every field kind, odd bit widths, 1-4 dims and odd
 * counts, filled with random bit patterns (float fields with finite values). */
static void make_packed(lb_qpacked *p, uint64_t seed)
{
    lb_err err = {0};
    memset(p, 0, sizeof *p);
    snprintf(p->method, sizeof p->method, "rtn");
    p->rows = 7;
    p->cols = 13;
    static const struct {
        const char *name;
        lb_qfield_kind kind;
        uint32_t bits;
        int32_t ndim;
        int64_t shape[4];
    } spec[] = {
        {"codes", LB_QFIELD_UINT, 3, 2, {7, 13}},   {"b1", LB_QFIELD_UINT, 1, 1, {5}},
        {"b5", LB_QFIELD_UINT, 5, 3, {3, 1, 7}},    {"b7", LB_QFIELD_UINT, 7, 4, {1, 2, 3, 3}},
        {"b13", LB_QFIELD_UINT, 13, 1, {11}},       {"b32", LB_QFIELD_UINT, 32, 1, {3}},
        {"i3", LB_QFIELD_INT, 3, 2, {3, 3}},        {"i17", LB_QFIELD_INT, 17, 1, {9}},
        {"scales", LB_QFIELD_F16, 16, 2, {7, 1}},   {"bf", LB_QFIELD_BF16, 16, 1, {5}},
        {"f", LB_QFIELD_F32, 32, 1, {4}},           {"empty", LB_QFIELD_UINT, 2, 1, {0}},
    };
    size_t n = sizeof spec / sizeof spec[0];
    for (size_t i = 0; i < n; i++)
        assert_non_null(lb_qpacked_add_field(p, spec[i].name, spec[i].kind, spec[i].bits,
                                             spec[i].ndim, spec[i].shape, &err));
    uint64_t rng = seed;
    for (int32_t i = 0; i < p->nfields; i++) {
        lb_qfield *f = &p->fields[i];
        for (int64_t j = 0; j < f->count; j++) {
            if (f->kind == LB_QFIELD_UINT || f->kind == LB_QFIELD_INT)
                lb_qfield_put(f, j, (uint32_t)lb_test_rand_u64(&rng) &
                                        (f->bits == 32 ? 0xffffffffu : (1u << f->bits) - 1u));
            else
                lb_qfield_put_float(f, j, lb_test_rand_normal(&rng));
        }
    }
}

static void assert_packed_equal(const lb_qpacked *a, const lb_qpacked *b)
{
    assert_string_equal(a->method, b->method);
    assert_int_equal(a->rows, b->rows);
    assert_int_equal(a->cols, b->cols);
    assert_int_equal(a->nfields, b->nfields);
    for (int32_t i = 0; i < a->nfields; i++) {
        const lb_qfield *x = &a->fields[i], *y = &b->fields[i];
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->kind, y->kind);
        assert_int_equal(x->bits, y->bits);
        assert_int_equal(x->ndim, y->ndim);
        for (int32_t d = 0; d < LB_QFIELD_MAX_DIMS; d++)
            assert_int_equal(d < x->ndim ? x->shape[d] : 0, d < y->ndim ? y->shape[d] : 0);
        assert_int_equal(x->count, y->count);
        assert_int_equal(x->nbytes, y->nbytes);
        if (x->nbytes)
            assert_memory_equal(x->data, y->data, x->nbytes);
    }
}

/* Two packed matrices and an ordinary tensor in one file; both read back exactly. */
static void test_round_trip_multi(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    char path[4096];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    lb_qpacked a, b, ra = {0}, rb = {0};
    make_packed(&a, 1);
    make_packed(&b, 2);
    snprintf(b.method, sizeof b.method, "gptq");
    lb_err err = {0};
    lb_st_writer *w = NULL;
    float plain[3] = {1.f, 2.f, 3.f};
    int64_t three = 3;
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    assert_int_equal(lb_qpacked_io_declare(w, "layers.0.q_proj.q", &a, &err), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "norm.weight", LB_DTYPE_F32, 1, &three, &err), 0);
    assert_int_equal(lb_qpacked_io_declare(w, "layers.0.up_proj.q", &b, &err), 0);
    assert_int_equal(lb_qpacked_io_write(w, "layers.0.q_proj.q", &a, &err), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "norm.weight", plain, 3, &err), 0);
    assert_int_equal(lb_qpacked_io_write(w, "layers.0.up_proj.q", &b, &err), 0);
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);

    lb_st *st = NULL;
    assert_int_equal(lb_st_open(&st, path, &err), 0);
    assert_true(lb_qpacked_io_has(st, "layers.0.q_proj.q"));
    assert_false(lb_qpacked_io_has(st, "layers.0.k_proj.q"));
    assert_int_equal(lb_qpacked_io_read(st, "layers.0.q_proj.q", &ra, &err), 0);
    assert_int_equal(lb_qpacked_io_read(st, "layers.0.up_proj.q", &rb, &err), 0);
    assert_packed_equal(&a, &ra);
    assert_packed_equal(&b, &rb);
    assert_int_equal(lb_qpacked_io_nbytes(&ra), lb_qpacked_io_nbytes(&a));
    lb_qpacked_free(&ra);
    assert_int_equal(lb_qpacked_io_read(st, "layers.0.k_proj.q", &ra, &err), LB_ENOTFOUND);
    assert_int_equal(ra.nfields, 0);
    assert_null(ra.fields);
    lb_st_free(&st);
    lb_qpacked_free(&a);
    lb_qpacked_free(&b);
    lb_qpacked_free(&rb);
    lb_test_rmdir(&dir);
}

/* A real method's output: save/load, then dequantize gives W_hat bit for bit. */
static void test_rtn_save_load_dequantize(void **state)
{
    (void)state;
    const lb_qmethod *m = lb_qmethod_find("rtn");
    assert_non_null(m);
    int64_t rows = 9, cols = 37;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    float *back = malloc((size_t)(rows * cols) * sizeof *back);
    float *H = calloc((size_t)(cols * cols), sizeof *H);
    uint64_t rng = 5;
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = lb_test_rand_normal(&rng);
    for (int64_t i = 0; i < cols; i++)
        H[i * cols + i] = 1.f;
    for (int bits = 2; bits <= 3; bits++) {
        lb_qopts o;
        lb_qopts_init(&o);
        o.bits = bits;
        o.group_size = bits == 3 ? 16 : 0; /* ragged last group */
        lb_qresult res = {0};
        lb_err err = {0};
        assert_int_equal(m->quantize(W, rows, cols, H, &o, &res, &err), 0);
        char *dir = lb_test_mkdtemp();
        char path[4096];
        snprintf(path, sizeof path, "%s/a.safetensors", dir);
        assert_int_equal(lb_qpacked_io_save(path, &res.packed, &err), 0);
        lb_qpacked rp = {0};
        assert_int_equal(lb_qpacked_io_load(path, &rp, &err), 0);
        assert_packed_equal(&res.packed, &rp);
        assert_int_equal(m->dequantize(&rp, back, &err), 0);
        assert_memory_equal(back, res.W_hat, (size_t)(rows * cols) * sizeof *back);
        lb_qpacked_free(&rp);
        lb_qresult_free(&res);
        lb_test_rmdir(&dir);
    }
    free(W);
    free(back);
    free(H);
}

/* The writer refuses malformed packed matrices before anything is stored. */
static void test_declare_rejects_bad_packed(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    char path[4096];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    lb_qpacked p;
    lb_err err = {0};
    lb_st_writer *w = NULL;
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);

    make_packed(&p, 3);
    p.fields[2].nbytes -= 1;
    assert_int_equal(lb_qpacked_io_declare(w, "a", &p, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "b5"));
    p.fields[2].nbytes += 1;
    snprintf(p.fields[1].name, sizeof p.fields[1].name, "a.b");
    assert_int_equal(lb_qpacked_io_declare(w, "a", &p, &err), LB_EINVAL);
    snprintf(p.fields[1].name, sizeof p.fields[1].name, "codes"); /* duplicate */
    assert_int_equal(lb_qpacked_io_declare(w, "a", &p, &err), LB_EINVAL);
    snprintf(p.fields[1].name, sizeof p.fields[1].name, "b1");
    p.fields[3].bits = 33;
    assert_int_equal(lb_qpacked_io_declare(w, "a", &p, &err), LB_EINVAL);
    p.fields[3].bits = 7;
    p.rows = 0;
    assert_int_equal(lb_qpacked_io_declare(w, "a", &p, &err), LB_EINVAL);
    p.rows = 7;
    p.method[0] = '\0';
    assert_int_equal(lb_qpacked_io_declare(w, "a", &p, &err), LB_EINVAL);
    lb_qpacked_free(&p);
    lb_st_writer_free(&w);
    lb_test_rmdir(&dir);
}

/* Hand-built files: one field "codes" (uint, 3 bits, shape [2,3] -> 3 bytes). */
typedef struct {
    const char *meta;     /* metadata value (NULL: no entry) */
    lb_dtype dtype;       /* of the tensor "p.codes" */
    int64_t numel;        /* -1: no tensor */
    const void *bytes;
    int want;
    const char *needle;   /* expected in the message */
} bad_case;

#define GOOD_FIELD "\"name\":\"codes\",\"kind\":\"uint\",\"bits\":3,\"shape\":[2,3],\"count\":6,\"nbytes\":3"
#define META(fields) "{\"version\":1,\"method\":\"rtn\",\"rows\":2,\"cols\":3,\"fields\":[" fields "]}"

static int write_case(const char *path, const bad_case *c)
{
    lb_err err = {0};
    lb_st_writer *w = NULL;
    int rc = lb_st_writer_new(&w, path, &err);
    if (!rc && c->numel >= 0)
        rc = lb_st_writer_add_tensor(w, "p.codes", c->dtype, 1, &c->numel, &err);
    if (!rc && c->meta)
        rc = lb_st_writer_set_metadata(w, "p.__qpacked__", c->meta, &err);
    if (!rc && c->numel >= 0)
        rc = lb_st_writer_write(w, "p.codes", c->bytes,
                                (size_t)c->numel * lb_dtype_size(c->dtype), &err);
    if (!rc)
        rc = lb_st_writer_finish(w, &err);
    lb_st_writer_free(&w);
    return rc;
}

static void test_read_rejects_corrupt(void **state)
{
    (void)state;
    static const uint8_t bytes[64] = {0x5a, 0x13, 0x07};
    float nan_f[2] = {1.0f, NAN};
    const bad_case cases[] = {
        {META("{" GOOD_FIELD "}"), LB_DTYPE_U8, 3, bytes, 0, NULL},
        {NULL, LB_DTYPE_U8, 3, bytes, LB_ENOTFOUND, "absent"},
        {"not json", LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "not a packed"},
        {"{\"version\":2,\"method\":\"rtn\",\"rows\":2,\"cols\":3,\"fields\":[{" GOOD_FIELD "}]}",
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "version 2"},
        {"{\"version\":1,\"method\":\"rtn\",\"rows\":-2,\"cols\":3,\"fields\":[{" GOOD_FIELD "}]}",
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "rows"},
        {META(""), LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "fields"},
        {META("{\"name\":\"codes\",\"kind\":\"u4\",\"bits\":3,\"shape\":[2,3],\"count\":6,\"nbytes\":3}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "field 0"},
        {META("{\"name\":\"codes\",\"kind\":\"uint\",\"bits\":33,\"shape\":[2,3],\"count\":6,\"nbytes\":3}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "field 0"},
        {META("{\"name\":\"codes\",\"kind\":\"f16\",\"bits\":3,\"shape\":[2,3],\"count\":6,\"nbytes\":3}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "invalid for kind"},
        {META("{\"name\":\"codes\",\"kind\":\"uint\",\"bits\":3,\"shape\":[2,4],\"count\":6,\"nbytes\":3}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "product"},
        {META("{\"name\":\"codes\",\"kind\":\"uint\",\"bits\":3,\"shape\":[2,3],\"count\":6,\"nbytes\":4}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "ceil"},
        {META("{\"name\":\"codes\",\"kind\":\"uint\",\"bits\":3,\"shape\":[4611686018427387904,4],"
              "\"count\":0,\"nbytes\":0}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "overflowing"},
        {META("{\"name\":\"codes\",\"kind\":\"uint\",\"bits\":3,\"shape\":[2,-3],\"count\":6,\"nbytes\":3}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "shape entry"},
        {META("{\"name\":\"../x\",\"kind\":\"uint\",\"bits\":3,\"shape\":[2,3],\"count\":6,\"nbytes\":3}"),
         LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "field 0"},
        {META("{" GOOD_FIELD "},{" GOOD_FIELD "}"), LB_DTYPE_U8, 3, bytes, LB_EFORMAT, "twice"},
        {META("{" GOOD_FIELD "}"), LB_DTYPE_U8, -1, bytes, LB_ENOTFOUND, "p.codes"},
        {META("{" GOOD_FIELD "}"), LB_DTYPE_U8, 2, bytes, LB_EFORMAT, "want U8 [3]"},
        {META("{" GOOD_FIELD "}"), LB_DTYPE_U8, 4, bytes, LB_EFORMAT, "want U8 [3]"},
        {META("{" GOOD_FIELD "}"), LB_DTYPE_I8, 3, bytes, LB_EFORMAT, "I8"},
        {META("{\"name\":\"codes\",\"kind\":\"f32\",\"bits\":32,\"shape\":[2],\"count\":2,\"nbytes\":8}"),
         LB_DTYPE_U8, 8, nan_f, LB_ENUMERIC, "NaN"},
    };
    char *dir = lb_test_mkdtemp();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/c%zu.safetensors", dir, i);
        assert_int_equal(write_case(path, &cases[i]), 0);
        lb_st *st = NULL;
        lb_err err = {0};
        assert_int_equal(lb_st_open(&st, path, &err), 0);
        lb_qpacked out = {0};
        int rc = lb_qpacked_io_read(st, "p", &out, &err);
        if (rc != cases[i].want || (cases[i].needle && !strstr(err.msg, cases[i].needle)))
            print_message("case %zu: rc %d (want %d): %s\n", i, rc, cases[i].want, err.msg);
        assert_int_equal(rc, cases[i].want);
        if (rc) {
            assert_non_null(strstr(err.msg, cases[i].needle));
            assert_non_null(strstr(err.msg, path)); /* names the file */
            assert_int_equal(out.nfields, 0);
        } else {
            assert_int_equal(out.nfields, 1);
            assert_memory_equal(out.fields[0].data, bytes, 3);
        }
        lb_qpacked_free(&out);
        lb_st_free(&st);
    }
    lb_test_rmdir(&dir);
}


/* Random mutations of a valid file's header (where the metadata lives): every
 * read either fails with an error or returns a well-formed packed matrix
 * (ASan/UBSan builds check that nothing is touched out of bounds). */
static void test_mutated_headers(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    char path[4096];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    lb_qpacked p;
    lb_err err = {0};
    make_packed(&p, 11);
    assert_int_equal(lb_qpacked_io_save(path, &p, &err), 0);
    lb_qpacked_free(&p);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *orig = malloc((size_t)size), *buf = malloc((size_t)size);
    assert_int_equal(fread(orig, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)orig[i] << (8 * i);
    assert_true(hlen + 8 <= (uint64_t)size);
    static const char subst[] = "0123456789-[]{}\",:eE.";
    uint64_t rng = 2024;
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(buf, orig, (size_t)size);
        int nmut = 1 + (int)(lb_test_rand_u64(&rng) % 3);
        for (int k = 0; k < nmut; k++) {
            uint64_t at = 8 + lb_test_rand_u64(&rng) % hlen;
            buf[at] = (uint8_t)subst[lb_test_rand_u64(&rng) % (sizeof subst - 1)];
        }
        f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(buf, 1, (size_t)size, f), (size_t)size);
        fclose(f);
        lb_qpacked out = {0};
        int rc = lb_qpacked_io_load(path, &out, &err);
        if (rc == 0) {
            assert_int_equal(lb_qpacked_io_check(&out, &err), 0);
            ok++;
        } else {
            assert_true(rc < 0);
            assert_true(strlen(err.msg) > 0);
            assert_int_equal(out.nfields, 0);
            failed++;
        }
        lb_qpacked_free(&out);
    }
    assert_true(failed > 0);
    print_message("mutations: %d read fine, %d rejected\n", ok, failed);
    free(orig);
    free(buf);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_multi),
        cmocka_unit_test(test_rtn_save_load_dequantize),
        cmocka_unit_test(test_declare_rejects_bad_packed),
        cmocka_unit_test(test_read_rejects_corrupt),
        cmocka_unit_test(test_mutated_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
