#include "lb_test_util.h"

#include <math.h>
#include <string.h>

#include "lb_dtype.h"

/* Reference: nearest representable half by exhaustive search over all 65536 codes. */
static uint16_t f16_nearest_ref(float f)
{
    uint16_t best = 0;
    double best_d = HUGE_VAL;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float v = lb_f16_to_f32((uint16_t)h);
        if (isnan(v) || isinf(v))
            continue;
        double d = fabs((double)v - (double)f);
        /* ties: even mantissa wins */
        if (d < best_d || (d == best_d && !(h & 1u) && signbit(v) == signbit(f))) {
            best_d = d;
            best = (uint16_t)h;
        }
    }
    return best;
}

static void test_f16_decode_known(void **state)
{
    (void)state;
    assert_true(lb_f16_to_f32(0x3c00) == 1.0f);
    assert_true(lb_f16_to_f32(0xc000) == -2.0f);
    assert_true(lb_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(lb_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(isinf(lb_f16_to_f32(0x7c00)));
    assert_true(isnan(lb_f16_to_f32(0x7e00)));
}

static void test_f16_round_trip_all_codes(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float v = lb_f16_to_f32((uint16_t)h);
        if (isnan(v))
            assert_true(isnan(lb_f16_to_f32(lb_f32_to_f16(v))));
        else
            assert_int_equal(lb_f32_to_f16(v), h);
    }
}

static void test_f16_encode_matches_reference(void **state)
{
    (void)state;
    uint64_t rng = 7;
    for (int i = 0; i < 300; i++) {
        float scale = powf(2.0f, (float)(i % 40) - 26.0f);
        float f = (lb_test_rand_uniform(&rng) * 2.0f - 1.0f) * scale;
        uint16_t got = lb_f32_to_f16(f), want = f16_nearest_ref(f);
        assert_float_equal(lb_f16_to_f32(got), lb_f16_to_f32(want), 0.0f);
    }
    assert_true(isinf(lb_f16_to_f32(lb_f32_to_f16(70000.0f))));
}

static void test_bf16(void **state)
{
    (void)state;
    assert_true(lb_bf16_to_f32(lb_f32_to_bf16(1.0f)) == 1.0f);
    /* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1.0) */
    assert_true(lb_bf16_to_f32(lb_f32_to_bf16(1.0f + 0x1p-8f)) == 1.0f);
    assert_true(lb_bf16_to_f32(lb_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-12f)) == 1.0f + 0x1p-7f);
    assert_true(isnan(lb_bf16_to_f32(lb_f32_to_bf16(NAN))));
    for (uint32_t b = 0; b < 0x10000u; b++) {
        float v = lb_bf16_to_f32((uint16_t)b);
        if (!isnan(v))
            assert_int_equal(lb_f32_to_bf16(v), b);
    }
}

static void test_names_and_arrays(void **state)
{
    (void)state;
    lb_dtype dt;
    assert_int_equal(lb_dtype_parse("BF16", &dt), 0);
    assert_int_equal(dt, LB_DTYPE_BF16);
    assert_int_equal(lb_dtype_parse("Q4", &dt), -1);
    assert_int_equal(lb_dtype_size(LB_DTYPE_I64), 8);
    float src[5] = {0.5f, -3.25f, 1e-3f, 100.0f, 0.0f}, back[5];
    uint8_t buf[40];
    for (int t = 0; t < 4; t++) {
        lb_dtype d = (lb_dtype[]){LB_DTYPE_F32, LB_DTYPE_F16, LB_DTYPE_BF16, LB_DTYPE_F64}[t];
        assert_int_equal(lb_dtype_from_f32(d, src, buf, 5), 0);
        assert_int_equal(lb_dtype_to_f32(d, buf, back, 5), 0);
        for (int i = 0; i < 5; i++)
            assert_float_equal(back[i], src[i], fabsf(src[i]) * 0.01f);
    }
    assert_int_equal(lb_dtype_to_f32(LB_DTYPE_I32, buf, back, 1), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_decode_known),
        cmocka_unit_test(test_f16_round_trip_all_codes),
        cmocka_unit_test(test_f16_encode_matches_reference),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_names_and_arrays),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
