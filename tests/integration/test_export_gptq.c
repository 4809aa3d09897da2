/* GPTQ-layout and compressed-tensors exports round-trip exactly: stories260K
 * quantized with RTN/GPTQ at 2, 4 and 8 bits (sym/asym, per row/group 32,
 * act-order), exported with `lowbit export --format gptq|compressed-tensors`, and
 * dequantized by tests/export_check.py (independent float64 NumPy code written
 * from the formats' documentation), which must reproduce the dense f32 export
 * bit for bit. Needs python3 with NumPy (Debian python3-numpy): skipped without
 * it, a failure under CI=true. Also: methods without such a layout are refused
 * with one line naming the method and the formats it supports. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_test_util.h"

static char *tmpdir;
static char model_dir[4096], calib[4096];

static const char *python(void)
{
    static const char *const cands[] = {"/usr/bin/python3", "python3"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        char *out = NULL;
        int rc = lb_test_run(&out, "%s -c 'import numpy' 2>&1", cands[i]);
        free(out);
        if (rc == 0)
            return cands[i];
    }
    lb_test_need_that(0, "python3 with NumPy not found; run deploy/install-deps.sh");
    return NULL;
}

#define run_lowbit(out, fmt, ...) lb_test_run(out, "%s " fmt, lb_test_lowbit_bin(), __VA_ARGS__)

static void quantize(const char *name, const char *args)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "%s quantize --model %s --calib %s --out %s/%s %s --ctx 128 "
                         "--nsamples 8 --threads 2", lb_test_lowbit_bin(), model_dir, calib,
                         tmpdir, name, args);
    if (rc)
        fail_msg("quantize %s: exit %d: %s", name, rc, out ? out : "");
    free(out);
}

static int setup(void **state)
{
    (void)state;
    if (!lb_test_shared_path(model_dir, sizeof model_dir, "models/stories260K") ||
        !lb_test_shared_path(calib, sizeof calib, "data/stories260K-calib.u32"))
        return 0;
    tmpdir = lb_test_mkdtemp();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lb_test_rmdir(&tmpdir);
    return 0;
}

/* Exports name as `format` and checks it against name's dense f32 export with
 * ref (the checkpoint whose dense export is the reference). Returns the exit status. */
static int check(const char *py, const char *name, const char *format, const char *ref)
{
    char *out = NULL;
    char src[4300], dst[4400], dense[4400];
    snprintf(src, sizeof src, "%s/%s", tmpdir, name);
    snprintf(dst, sizeof dst, "%s/%s-%s", tmpdir, name, format);
    snprintf(dense, sizeof dense, "%s/%s-dense", tmpdir, ref);
    if (access(dense, F_OK) != 0) {
        char rsrc[4300];
        snprintf(rsrc, sizeof rsrc, "%s/%s", tmpdir, ref);
        if (run_lowbit(&out, "export --model %s --out %s --dtype f32", rsrc, dense))
            fail_msg("dense export of %s: %s", ref, out ? out : "");
        free(out);
        out = NULL;
    }
    if (access(dst, F_OK) != 0) {
        if (run_lowbit(&out, "export --model %s --out %s --format %s", src, dst, format))
            fail_msg("export %s as %s: %s", name, format, out ? out : "");
        free(out);
        out = NULL;
    }
    const char *srcdir = getenv("LOWBIT_SOURCE_DIR");
    int rc = lb_test_run(&out, "%s %s/tests/export_check.py %s %s %s", py,
                         srcdir ? srcdir : ".", format, dst, dense);
    printf("%s", out ? out : "");
    free(out);
    return rc;
}

static void roundtrip(const char *name, const char *args)
{
    char p[4096];
    LB_TEST_REQUIRE_SHARED(p, "models/stories260K");
    const char *py = python();
    if (!py)
        skip();
    quantize(name, args);
    assert_int_equal(check(py, name, "gptq", name), 0);
    assert_int_equal(check(py, name, "compressed-tensors", name), 0);
}

static void test_rtn2_sym_per_row(void **state)
{
    (void)state;
    roundtrip("rtn2", "--method rtn --bits 2 --sym");
}

static void test_rtn4_sym_g32(void **state)
{
    (void)state;
    roundtrip("rtn4", "--method rtn --bits 4 --group-size 32 --sym");
}

static void test_rtn8_asym_g32(void **state)
{
    (void)state;
    roundtrip("rtn8", "--method rtn --bits 8 --group-size 32");
}

static void test_gptq2_asym_g32(void **state)
{
    (void)state;
    roundtrip("gptq2", "--method gptq --bits 2 --group-size 32");
}

static void test_gptq4_act_order(void **state)
{
    (void)state;
    roundtrip("gptq4act", "--method gptq --bits 4 --group-size 32 --act-order");
}

/* The checker can fail: another checkpoint's weights are not these. */
static void test_checker_detects_mismatch(void **state)
{
    (void)state;
    char p[4096];
    LB_TEST_REQUIRE_SHARED(p, "models/stories260K");
    const char *py = python();
    if (!py)
        skip();
    quantize("rtn4b", "--method rtn --bits 4 --group-size 32 --sym");
    quantize("rtn4c", "--method rtn --bits 4 --group-size 32");
    assert_int_equal(check(py, "rtn4b", "gptq", "rtn4b"), 0);
    assert_int_not_equal(check(py, "rtn4b", "gptq", "rtn4c"), 0);
    assert_int_not_equal(check(py, "rtn4b", "compressed-tensors", "rtn4c"), 0);
}

static void test_refuses_other_methods(void **state)
{
    (void)state;
    char p[4096];
    LB_TEST_REQUIRE_SHARED(p, "models/stories260K");
    quantize("claq", "--method claq --bits 2.1");
    quantize("rtn3", "--method rtn --bits 3 --group-size 32");
    char src[4300], dst[4400];
    snprintf(src, sizeof src, "%s/claq", tmpdir);
    snprintf(dst, sizeof dst, "%s/claq-gptq --format gptq", tmpdir);
    char *out = NULL;
    assert_int_equal(run_lowbit(&out, "export --model %s --out %s", src, dst), 1);
    assert_non_null(strstr(out, "method claq, which has no gptq layout"));
    assert_non_null(strstr(out, "claq exports as: dense, gguf"));
    assert_null(strchr(strchr(out, '\n') + 1, '\n')); /* one line */
    free(out);
    snprintf(dst, sizeof dst, "%s/claq-ct --format compressed-tensors", tmpdir);
    assert_int_equal(run_lowbit(&out, "export --model %s --out %s", src, dst), 1);
    assert_non_null(strstr(out, "no compressed-tensors layout"));
    free(out);
    assert_int_not_equal(access(dst, F_OK), 0);
    /* CLAQ still exports as GGUF F16 */
    snprintf(dst, sizeof dst, "%s/claq.gguf --format gguf --dtype f16", tmpdir);
    assert_int_equal(run_lowbit(&out, "export --model %s --out %s", src, dst), 0);
    free(out);
    snprintf(src, sizeof src, "%s/rtn3", tmpdir);
    snprintf(dst, sizeof dst, "%s/rtn3-gptq --format gptq", tmpdir);
    assert_int_equal(run_lowbit(&out, "export --model %s --out %s", src, dst), 1);
    assert_non_null(strstr(out, "3-bit codes; --format gptq takes 2, 4 or 8 bits"));
    free(out);
}

/* Rotated codes live in the Hadamard basis: the GPTQ layout cannot hold them. */
static void test_refuses_rotated(void **state)
{
    (void)state;
    char p[4096];
    LB_TEST_REQUIRE_SHARED(p, "models/stories260K");
    quantize("rtn4r", "--method rtn --bits 4 --group-size 32 --rotate hadamard");
    char src[4300], dst[4400];
    snprintf(src, sizeof src, "%s/rtn4r", tmpdir);
    snprintf(dst, sizeof dst, "%s/rtn4r-gptq --format gptq", tmpdir);
    char *out = NULL;
    assert_int_equal(run_lowbit(&out, "export --model %s --out %s", src, dst), 1);
    assert_non_null(strstr(out, "--rotate hadamard, which the gptq layout cannot express"));
    assert_null(strchr(strchr(out, '\n') + 1, '\n')); /* one line */
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rtn2_sym_per_row),  cmocka_unit_test(test_rtn4_sym_g32),
        cmocka_unit_test(test_rtn8_asym_g32),     cmocka_unit_test(test_gptq2_asym_g32),
        cmocka_unit_test(test_gptq4_act_order),   cmocka_unit_test(test_checker_detects_mismatch),
        cmocka_unit_test(test_refuses_other_methods), cmocka_unit_test(test_refuses_rotated),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
