#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_quant.h"

/* Reference bit stream: bit k of element i lives at stream bit i*bits + k, stream
 * bit b is bit (b % 8) of byte b / 8. */
static uint32_t ref_get(const uint8_t *data, uint32_t bits, int64_t i)
{
    uint32_t v = 0;
    for (uint32_t k = 0; k < bits; k++) {
        uint64_t b = (uint64_t)i * bits + k;
        v |= (uint32_t)((data[b / 8] >> (b % 8)) & 1u) << k;
    }
    return v;
}

static void test_bitstream_all_widths(void **state)
{
    (void)state;
    uint64_t rng = 42;
    for (uint32_t bits = 1; bits <= 32; bits++) {
        lb_qpacked p = {0};
        lb_err err = {0};
        int64_t shape[2] = {7, 13};
        lb_qfield *f = lb_qpacked_add_field(&p, "codes", LB_QFIELD_UINT, bits, 2, shape, &err);
        assert_non_null(f);
        assert_int_equal(f->count, 91);
        assert_int_equal(f->nbytes, (91 * bits + 7) / 8);
        uint32_t *want = calloc(91, sizeof *want);
        /* write in a scrambled order so neighbours are overwritten after being set */
        for (int pass = 0; pass < 2; pass++)
            for (int64_t j = 0; j < 91; j++) {
                int64_t i = (j * 37 + pass) % 91;
                uint32_t v = (uint32_t)lb_test_rand_u64(&rng);
                if (bits < 32)
                    v &= (1u << bits) - 1u;
                want[i] = v;
                lb_qfield_put(f, i, v);
            }
        for (int64_t i = 0; i < 91; i++) {
            assert_int_equal(lb_qfield_get(f, i), want[i]);
            assert_int_equal(ref_get(f->data, bits, i), want[i]);
        }
        /* out of range is ignored */
        lb_qfield_put(f, 91, 1);
        assert_int_equal(lb_qfield_get(f, 91), 0);
        free(want);
        assert_int_equal(lb_qpacked_bits(&p), 8 * f->nbytes);
        lb_qpacked_free(&p);
    }
}

static void test_int_and_float_fields(void **state)
{
    (void)state;
    lb_qpacked p = {0};
    lb_err err = {0};
    p.rows = 4;
    p.cols = 8;
    int64_t n = 16;
    /* add every field first: each add may move the array (documented) */
    assert_non_null(lb_qpacked_add_field(&p, "zeros", LB_QFIELD_INT, 3, 1, &n, &err));
    assert_non_null(lb_qpacked_add_field(&p, "scales", LB_QFIELD_F16, 16, 1, &n, &err));
    assert_non_null(lb_qpacked_add_field(&p, "bscales", LB_QFIELD_BF16, 16, 1, &n, &err));
    assert_non_null(lb_qpacked_add_field(&p, "fscales", LB_QFIELD_F32, 32, 1, &n, &err));
    lb_qfield *fi = &p.fields[0], *fh = &p.fields[1], *fb = &p.fields[2], *ff = &p.fields[3];
    for (int64_t i = 0; i < n; i++) {
        lb_qfield_put_int(fi, i, (int32_t)(i % 8) - 4);
        float v = 0.1f * (float)(i + 1) - 0.77f;
        float sh = lb_qfield_put_float(fh, i, v);
        float sb = lb_qfield_put_float(fb, i, v);
        float sf = lb_qfield_put_float(ff, i, v);
        assert_true(sh == lb_f16_to_f32(lb_f32_to_f16(v)));
        assert_true(sb == lb_bf16_to_f32(lb_f32_to_bf16(v)));
        assert_true(sf == v);
    }
    for (int64_t i = 0; i < n; i++) {
        float v = 0.1f * (float)(i + 1) - 0.77f;
        assert_int_equal(lb_qfield_get_int(fi, i), (int32_t)(i % 8) - 4);
        assert_true(lb_qfield_get_float(fh, i) == lb_f16_to_f32(lb_f32_to_f16(v)));
        assert_true(lb_qfield_get_float(fb, i) == lb_bf16_to_f32(lb_f32_to_bf16(v)));
        assert_true(lb_qfield_get_float(ff, i) == v);
    }
    assert_true(isnan(lb_qfield_get_float(fi, 0)));
    /* 16*3 bits = 6 bytes, 3 float fields = 32 + 32 + 64 bytes */
    assert_int_equal(lb_qpacked_bits(&p), 8 * (6 + 32 + 32 + 64));
    assert_true(lb_qpacked_bpw(&p) == 8.0 * (6 + 32 + 32 + 64) / 32.0);
    assert_non_null(lb_qpacked_field(&p, "scales"));
    assert_null(lb_qpacked_field(&p, "nope"));
    lb_qpacked_free(&p);
    assert_int_equal(p.nfields, 0);
}

static void test_add_field_rejects(void **state)
{
    (void)state;
    lb_qpacked p = {0};
    lb_err err = {0};
    int64_t n = 4;
    assert_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_UINT, 0, 1, &n, &err));
    assert_int_equal(err.code, LB_EINVAL);
    assert_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_UINT, 33, 1, &n, &err));
    assert_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_F16, 8, 1, &n, &err));
    assert_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_UINT, 4, 0, &n, &err));
    int64_t huge[2] = {INT64_MAX / 4, 8};
    assert_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_UINT, 4, 2, huge, &err));
    assert_non_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_UINT, 4, 1, &n, &err));
    assert_null(lb_qpacked_add_field(&p, "a", LB_QFIELD_UINT, 4, 1, &n, &err));
    assert_int_equal(p.nfields, 1);
    lb_qpacked_free(&p);
}

static void test_registry_and_defaults(void **state)
{
    (void)state;
    lb_qopts o;
    lb_qopts_init(&o);
    assert_true(o.damp == 0.01);
    assert_int_equal(o.block_size, 128);
    assert_int_equal(o.group_size, 0);
    const lb_qmethod *list[64];
    int n = lb_qmethod_list(list, 64);
    assert_int_equal(n, lb_qmethod_list(NULL, 0));
    for (int i = 0; i < n; i++) {
        assert_ptr_equal(lb_qmethod_find(list[i]->name), list[i]);
        assert_non_null(list[i]->quantize);
        assert_non_null(list[i]->dequantize);
    }
    assert_null(lb_qmethod_find("no-such-method"));
    if (n > 1)
        assert_int_equal(lb_qmethod_list(list, 1), 1);
}

/* tr(D H Dᵀ) written as the plain triple sum. */
static void test_quant_error_matches_reference(void **state)
{
    (void)state;
    enum { R = 37, C = 29 };
    uint64_t rng = 7;
    float *W = malloc(R * C * sizeof *W), *Wh = malloc(R * C * sizeof *Wh);
    float *X = malloc(50 * C * sizeof *X), *H = calloc(C * C, sizeof *H);
    for (int i = 0; i < R * C; i++) {
        W[i] = lb_test_rand_normal(&rng);
        Wh[i] = W[i] + 0.1f * lb_test_rand_normal(&rng);
    }
    for (int i = 0; i < 50 * C; i++)
        X[i] = lb_test_rand_normal(&rng);
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++)
            for (int t = 0; t < 50; t++)
                H[a * C + b] += X[t * C + a] * X[t * C + b];
    double e_ref = 0, r_ref = 0;
    for (int i = 0; i < R; i++)
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) {
                double da = (double)W[i * C + a] - (double)Wh[i * C + a];
                double db = (double)W[i * C + b] - (double)Wh[i * C + b];
                e_ref += da * (double)H[a * C + b] * db;
                r_ref += (double)W[i * C + a] * (double)H[a * C + b] * (double)W[i * C + b];
            }
    double e = 0, r = 0;
    lb_err err = {0};
    assert_int_equal(lb_quant_error(W, Wh, R, C, H, &e, &r, &err), 0);
    assert_true(fabs(e - e_ref) <= 1e-10 * fabs(e_ref));
    assert_true(fabs(r - r_ref) <= 1e-10 * fabs(r_ref));
    Wh[5] = NAN;
    assert_int_equal(lb_quant_error(W, Wh, R, C, H, &e, &r, &err), LB_ENUMERIC);
    H[3] = INFINITY;
    assert_int_equal(lb_quant_error(W, W, R, C, H, &e, &r, &err), LB_ENUMERIC);
    free(W);
    free(Wh);
    free(X);
    free(H);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bitstream_all_widths),
        cmocka_unit_test(test_int_and_float_fields),
        cmocka_unit_test(test_add_field_rejects),
        cmocka_unit_test(test_registry_and_defaults),
        cmocka_unit_test(test_quant_error_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
