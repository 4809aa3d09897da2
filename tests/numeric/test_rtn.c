#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_quant.h"
#include "lb_test_qref.h"

enum { R = 24, C = 70 };

static void fill_weights(float *W, int64_t n, uint64_t seed)
{
    uint64_t rng = seed;
    for (int64_t i = 0; i < n; i++)
        W[i] = 0.02f * lb_test_rand_normal(&rng);
    W[3] = 0.4f; /* an outlier stretches one row's range */
}

/* Expected bytes of the uniform layout, computed from the format description. */
static uint64_t expected_bytes(int64_t rows, int64_t cols, int bits, int g, bool sym)
{
    int64_t ng = g > 0 && g < cols ? (cols + g - 1) / g : 1;
    uint64_t b = 4 + ((uint64_t)(rows * cols) * (uint64_t)bits + 7) / 8 + 2 * (uint64_t)(rows * ng);
    if (!sym)
        b += ((uint64_t)(rows * ng) * (uint64_t)bits + 7) / 8;
    return b;
}

static void test_rtn_matches_reference(void **state)
{
    (void)state;
    const lb_qmethod *m = lb_qmethod_find("rtn");
    assert_non_null(m);
    float *W = malloc(R * C * sizeof *W), *back = malloc(R * C * sizeof *back);
    fill_weights(W, R * C, 11);
    for (int i = 0; i < C; i++)
        W[5 * C + i] = 0.0f; /* an all-zero row */
    const int bits_set[] = {1, 2, 3, 4, 8};
    const int groups[] = {0, 16, 20, 70, 200};
    for (int bi = 0; bi < 5; bi++)
        for (int gi = 0; gi < 5; gi++)
            for (int sym = 0; sym < 2; sym++)
                for (int mse = 0; mse < 2; mse++) {
                    lb_qopts o;
                    lb_qopts_init(&o);
                    o.bits = bits_set[bi];
                    o.group_size = groups[gi];
                    o.sym = sym;
                    o.grid = mse ? LB_GRID_MSE : LB_GRID_MINMAX;
                    lb_qresult res = {0};
                    lb_err err = {0};
                    assert_int_equal(m->quantize(W, R, C, NULL, &o, &res, &err), 0);
                    int32_t maxq = (1 << bits_set[bi]) - 1;
                    int g = groups[gi] > 0 && groups[gi] < C ? groups[gi] : C;
                    const lb_qfield *codes = lb_qpacked_field(&res.packed, "codes");
                    assert_non_null(codes);
                    for (int r = 0; r < R; r++)
                        for (int c0 = 0; c0 < C; c0 += g) {
                            int n = C - c0 < g ? C - c0 : g;
                            float s;
                            int32_t z;
                            lb_test_ref_fit(W + r * C + c0, n, 1, maxq, sym, mse, &s, &z);
                            for (int c = c0; c < c0 + n; c++) {
                                int32_t code = lb_test_ref_code(W[r * C + c], s, z, maxq);
                                assert_int_equal(lb_qfield_get(codes, r * C + c), code);
                                assert_true(res.W_hat[r * C + c] ==
                                            lb_test_ref_value(code, s, z));
                            }
                        }
                    /* dequantize(packed) reproduces W_hat bit for bit */
                    assert_int_equal(m->dequantize(&res.packed, back, &err), 0);
                    assert_memory_equal(back, res.W_hat, R * C * sizeof *back);
                    /* bpw counts every stored byte */
                    uint64_t bytes = expected_bytes(R, C, bits_set[bi], groups[gi], sym);
                    assert_int_equal(lb_qpacked_bits(&res.packed), 8 * bytes);
                    assert_true(res.bpw == 8.0 * (double)bytes / (R * C));
                    assert_true(res.bpw == lb_qpacked_bpw(&res.packed));
                    lb_qresult_free(&res);
                }
    free(W);
    free(back);
}

static void test_rtn_rejects_bad_options(void **state)
{
    (void)state;
    const lb_qmethod *m = lb_qmethod_find("rtn");
    float W[4] = {1, 2, 3, 4};
    lb_qopts o;
    lb_qopts_init(&o);
    lb_qresult res = {0};
    lb_err err = {0};
    const double bad_bits[] = {0.0, 2.5, 17.0, NAN};
    for (int i = 0; i < 4; i++) {
        o.bits = bad_bits[i];
        assert_int_equal(m->quantize(W, 2, 2, NULL, &o, &res, &err), LB_EINVAL);
        assert_non_null(strstr(err.msg, "bits"));
    }
    o.bits = 4;
    W[2] = NAN;
    assert_int_equal(m->quantize(W, 2, 2, NULL, &o, &res, &err), LB_ENUMERIC);
    assert_null(res.W_hat);
}

static void test_rtn_dequantize_rejects_corrupt(void **state)
{
    (void)state;
    const lb_qmethod *m = lb_qmethod_find("rtn");
    float *W = malloc(R * C * sizeof *W), *back = malloc(R * C * sizeof *back);
    fill_weights(W, R * C, 5);
    lb_qopts o;
    lb_qopts_init(&o);
    o.group_size = 16;
    lb_qresult res = {0};
    lb_err err = {0};
    assert_int_equal(m->quantize(W, R, C, NULL, &o, &res, &err), 0);
    /* a group size that does not match the scales' shape */
    lb_qfield_put(&res.packed.fields[0], 0, 8);
    assert_int_equal(m->dequantize(&res.packed, back, &err), LB_EFORMAT);
    lb_qfield_put(&res.packed.fields[0], 0, 16);
    assert_int_equal(m->dequantize(&res.packed, back, &err), 0);
    res.packed.rows = R + 1;
    assert_int_equal(m->dequantize(&res.packed, back, &err), LB_EFORMAT);
    res.packed.rows = R;
    lb_qresult_free(&res);
    free(W);
    free(back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rtn_matches_reference),
        cmocka_unit_test(test_rtn_rejects_bad_options),
        cmocka_unit_test(test_rtn_dequantize_rejects_corrupt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
