/* lb_tokens: raw .u32 and .npy token files (written here byte by byte), bad files,
 * vocabulary checks and the shared calibration/eval fixtures. */
#include "lb_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_tokens.h"

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

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Builds a .npy: magic, version, header length (u16 for v1, u32 for v2/3), the
 * dict padded with spaces and '\n' to a multiple of 64, then `data`. */
static void write_npy(const char *path, int version, const char *dict, const void *data,
                      size_t dlen)
{
    size_t lenfield = version == 1 ? 2 : 4, pre = 6 + 2 + lenfield, dl = strlen(dict);
    size_t hlen = dl + 1;
    while ((pre + hlen) % 64)
        hlen++;
    uint8_t *buf = calloc(pre + hlen + dlen + 1, 1);
    assert_non_null(buf);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (uint8_t)version;
    buf[7] = 0;
    for (size_t i = 0; i < lenfield; i++)
        buf[8 + i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + pre, dict, dl);
    memset(buf + pre + dl, ' ', hlen - dl - 1);
    buf[pre + hlen - 1] = '\n';
    if (dlen)
        memcpy(buf + pre + hlen, data, dlen);
    write_file(path, buf, pre + hlen + dlen);
    free(buf);
}

static void put_le(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void expect_fail(const char *path, int code, const char *what)
{
    uint32_t *t = (uint32_t *)0x1;
    int64_t n = 77;
    lb_err err = {0};
    int rc = lb_tokens_load(path, &t, &n, &err);
    if (rc != code || !strstr(err.msg, path) || (what && !strstr(err.msg, what)))
        fail_msg("%s: rc %d (want %d) msg '%s' (want '%s')", path, rc, code, err.msg,
                 what ? what : "");
    assert_null(t);
    assert_int_equal(n, 0);
    assert_null(strchr(err.msg, '\n'));
}

static void test_u32_round_trip(void **state)
{
    (void)state;
    char p[4200];
    snprintf(p, sizeof p, "%s/a.u32", tdir);
    uint32_t ids[1000];
    uint64_t rng = 3;
    for (int i = 0; i < 1000; i++)
        ids[i] = (uint32_t)lb_test_rand_u64(&rng);
    ids[0] = 0;
    ids[1] = UINT32_MAX;
    lb_err err = {0};
    assert_int_equal(lb_tokens_write_u32(p, ids, 1000, &err), 0);
    /* the bytes on disk are little-endian u32 */
    FILE *f = fopen(p, "rb");
    uint8_t raw[8];
    assert_int_equal(fread(raw, 1, 8, f), 8);
    fclose(f);
    assert_memory_equal(raw, "\0\0\0\0\xff\xff\xff\xff", 8);
    uint32_t *got = NULL;
    int64_t n = 0, rows = 0;
    assert_int_equal(lb_tokens_load_rows(p, &got, &n, &rows, &err), 0);
    assert_int_equal(n, 1000);
    assert_int_equal(rows, 1);
    assert_memory_equal(got, ids, sizeof ids);
    free(got);
    /* other extensions are raw too; an empty file holds no tokens */
    snprintf(p, sizeof p, "%s/b.bin", tdir);
    write_file(p, "\x05\x00\x00\x00\x00\x01\x00\x00", 8);
    assert_int_equal(lb_tokens_load(p, &got, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(got[0], 5);
    assert_int_equal(got[1], 256);
    free(got);
    write_file(p, "", 0);
    assert_int_equal(lb_tokens_load(p, &got, &n, &err), 0);
    assert_int_equal(n, 0);
    free(got);
    /* lengths that are not a multiple of 4 */
    for (size_t len = 1; len < 8; len++) {
        if (len == 4)
            continue;
        write_file(p, "\1\2\3\4\5\6\7", len);
        expect_fail(p, LB_EFORMAT, "multiple of 4");
    }
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/none.u32", tdir);
    expect_fail(missing, LB_ENOTFOUND, NULL);
}

static void test_npy_dtypes_and_versions(void **state)
{
    (void)state;
    const struct {
        const char *descr;
        size_t es;
    } dts[] = {{"<u2", 2}, {"<u4", 4}, {"<i4", 4}, {"<i8", 8}};
    uint32_t want[6] = {0, 1, 511, 65535, 7, 300};
    lb_err err = {0};
    for (int v = 1; v <= 3; v++)
        for (size_t d = 0; d < 4; d++)
            for (int twod = 0; twod < 2; twod++) {
                char p[4200], dict[200];
                snprintf(p, sizeof p, "%s/t%d%zu%d.npy", tdir, v, d, twod);
                snprintf(dict, sizeof dict,
                         "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", dts[d].descr,
                         twod ? "(2, 3)" : "(6,)");
                uint8_t data[48];
                for (int i = 0; i < 6; i++)
                    put_le(data + (size_t)i * dts[d].es, want[i], dts[d].es);
                write_npy(p, v, dict, data, 6 * dts[d].es);
                uint32_t *got = NULL;
                int64_t n = 0, rows = 0;
                if (lb_tokens_load_rows(p, &got, &n, &rows, &err))
                    fail_msg("%s: %s", p, err.msg);
                assert_int_equal(n, 6);
                assert_int_equal(rows, twod ? 2 : 1);
                assert_memory_equal(got, want, sizeof want);
                free(got);
            }
    /* numpy's own spelling: no trailing comma, double quotes, 1-tuple, big values */
    char p[4200];
    snprintf(p, sizeof p, "%s/q.npy", tdir);
    uint8_t big[8];
    put_le(big, 4000000000u, 4);
    write_npy(p, 1, "{\"descr\":\"<u4\",\"shape\":(1,),\"fortran_order\":False}", big, 4);
    uint32_t *got = NULL;
    int64_t n = 0;
    assert_int_equal(lb_tokens_load(p, &got, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(got[0], 4000000000u);
    free(got);
    /* UINT32_MAX itself fits in i8 */
    put_le(big, UINT32_MAX, 8);
    write_npy(p, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", big, 8);
    assert_int_equal(lb_tokens_load(p, &got, &n, &err), 0);
    assert_int_equal(got[0], UINT32_MAX);
    free(got);
    /* an empty array */
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (0,), }", NULL, 0);
    assert_int_equal(lb_tokens_load(p, &got, &n, &err), 0);
    assert_int_equal(n, 0);
    free(got);
}

static void test_npy_bad(void **state)
{
    (void)state;
    char p[4200];
    snprintf(p, sizeof p, "%s/bad.npy", tdir);
    uint8_t d[64];
    memset(d, 0, sizeof d);
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': True, 'shape': (2, 2), }", d, 16);
    expect_fail(p, LB_EFORMAT, "Fortran");
    write_npy(p, 1, "{'descr': '>u4', 'fortran_order': False, 'shape': (4,), }", d, 16);
    expect_fail(p, LB_EFORMAT, "'>u4'");
    write_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", d, 16);
    expect_fail(p, LB_EFORMAT, "'<f4'");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (2, 2, 1), }", d, 16);
    expect_fail(p, LB_EFORMAT, "3-D");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (), }", d, 4);
    expect_fail(p, LB_EFORMAT, "0-D");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (5,), }", d, 16);
    expect_fail(p, LB_EFORMAT, "truncated");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (3,), }", d, 16);
    expect_fail(p, LB_EFORMAT, "needs 12 data bytes");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, "
                    "'shape': (4294967296, 4294967296), }",
              d, 16);
    expect_fail(p, LB_EFORMAT, "overflows");
    write_npy(p, 1, "{'descr': '<u4', 'shape': (4,), }", d, 16);
    expect_fail(p, LB_EFORMAT, "lacks");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (4,), 'x': 1}", d, 16);
    expect_fail(p, LB_EFORMAT, "header");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': Maybe, 'shape': (4,)}", d, 16);
    expect_fail(p, LB_EFORMAT, "header");
    write_npy(p, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (4,", d, 16);
    expect_fail(p, LB_EFORMAT, "header");
    write_npy(p, 1, "not a dict", d, 16);
    expect_fail(p, LB_EFORMAT, "header");
    write_npy(p, 4, "{'descr': '<u4', 'fortran_order': False, 'shape': (4,), }", d, 16);
    expect_fail(p, LB_EFORMAT, "version 4");
    /* negative and too large values name the index */
    put_le(d, 5, 4);
    put_le(d + 4, (uint32_t)-2, 4);
    write_npy(p, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", d, 8);
    expect_fail(p, LB_EFORMAT, "value -2 at index 1 is negative");
    put_le(d, 1, 8);
    put_le(d + 8, 1, 8);
    put_le(d + 16, (uint64_t)UINT32_MAX + 1, 8);
    write_npy(p, 2, "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", d, 24);
    expect_fail(p, LB_EFORMAT, "value 4294967296 at index 2 is too large");
    /* bad magic, header length past the end, tiny files */
    write_file(p, "\x93NUMPZ\x01\x00\x10\x00", 10);
    expect_fail(p, LB_EFORMAT, "magic");
    write_file(p, "\x93NUMPY\x01\x00\xff\x00{}", 12);
    expect_fail(p, LB_EFORMAT, "past the file end");
    write_file(p, "\x93NUMPY\x02\x00\x10\x00", 10);
    expect_fail(p, LB_EFORMAT, "truncated");
    for (size_t len = 0; len < 10; len++) {
        write_file(p, "\x93NUMPY\x01\x00\x00", len);
        expect_fail(p, LB_EFORMAT, NULL);
    }
    /* every truncation of a valid file fails cleanly */
    char good[4200];
    snprintf(good, sizeof good, "%s/good.npy", tdir);
    write_npy(good, 1, "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }", d, 6);
    FILE *f = fopen(good, "rb");
    uint8_t whole[256];
    size_t sz = fread(whole, 1, sizeof whole, f);
    fclose(f);
    assert_int_equal(sz % 64, 6); /* padded header + 3 u2 values */
    for (size_t len = 0; len < sz; len++) {
        write_file(p, whole, len);
        expect_fail(p, LB_EFORMAT, NULL);
    }
}

static void test_npy_byte_flips(void **state)
{
    (void)state;
    char good[4200], p[4200];
    snprintf(good, sizeof good, "%s/flip-src.npy", tdir);
    snprintf(p, sizeof p, "%s/flip.npy", tdir);
    uint8_t d[24];
    for (int i = 0; i < 6; i++)
        put_le(d + 4 * i, (uint64_t)i * 77, 4);
    write_npy(good, 1, "{'descr': '<u4', 'fortran_order': False, 'shape': (2, 3), }", d, 24);
    FILE *f = fopen(good, "rb");
    uint8_t orig[256], mut[256];
    size_t sz = fread(orig, 1, sizeof orig, f);
    fclose(f);
    uint64_t rng = 99;
    int ok = 0, bad = 0;
    for (int c = 0; c < 300; c++) {
        memcpy(mut, orig, sz);
        for (int k = 0; k < 1 + c % 3; k++) {
            uint64_t r = lb_test_rand_u64(&rng);
            size_t pos = (size_t)((r >> 8) % (sz - 24)); /* the header */
            mut[pos] = (r & 1) ? (uint8_t)(r >> 40) : (uint8_t)(mut[pos] ^ (1u << (r >> 4 & 7)));
        }
        write_file(p, mut, sz);
        uint32_t *t = NULL;
        int64_t n = -1, rows = -1;
        lb_err err = {0};
        if (lb_tokens_load_rows(p, &t, &n, &rows, &err) == 0) {
            /* accepted: the element count must match the data that is there */
            assert_true(n >= 0 && rows >= 0);
            for (int64_t i = 0; i < n; i++)
                (void)t[i];
            ok++;
        } else {
            assert_non_null(strstr(err.msg, p));
            assert_null(t);
            bad++;
        }
        free(t);
    }
    print_message("npy flips: %d accepted, %d rejected\n", ok, bad);
    assert_true(bad > 0);
}

static void test_check_vocab(void **state)
{
    (void)state;
    uint32_t ids[5] = {0, 3, 511, 512, 900};
    lb_err err = {0};
    assert_int_equal(lb_tokens_check_vocab(ids, 3, 512, "x.u32", &err), 0);
    assert_int_equal(lb_tokens_check_vocab(ids, 5, 512, "x.u32", &err), LB_EFORMAT);
    assert_string_equal(err.msg, "x.u32: token id 512 at index 3 is >= vocab size 512; the "
                                 "tokens do not belong to this model");
    assert_int_equal(lb_tokens_check_vocab(ids, 0, 1, "x.u32", &err), 0);
    assert_int_equal(lb_tokens_check_vocab(NULL, 0, 1, "x.u32", &err), 0);
}

static void test_fixture_tokens(void **state)
{
    (void)state;
    char calib[4096], eval[4096];
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    LB_TEST_REQUIRE_SHARED(eval, "data/stories260K-eval.u32");
    uint32_t *t = NULL;
    int64_t n = 0;
    lb_err err = {0};
    assert_int_equal(lb_tokens_load(calib, &t, &n, &err), 0);
    assert_int_equal(n, 128 * 256);
    assert_int_equal(lb_tokens_check_vocab(t, n, 512, calib, &err), 0);
    /* the model's vocabulary is 512: a smaller one must be rejected */
    assert_int_equal(lb_tokens_check_vocab(t, n, 8, calib, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, calib));
    free(t);
    assert_int_equal(lb_tokens_load(eval, &t, &n, &err), 0);
    assert_int_equal(n, 64 * 256);
    assert_int_equal(lb_tokens_check_vocab(t, n, 512, eval, &err), 0);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u32_round_trip),
        cmocka_unit_test(test_npy_dtypes_and_versions),
        cmocka_unit_test(test_npy_bad),
        cmocka_unit_test(test_npy_byte_flips),
        cmocka_unit_test(test_check_vocab),
        cmocka_unit_test(test_fixture_tokens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
