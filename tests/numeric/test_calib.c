/* Hessians of stories260K on its calibration tokens, and GPTQ vs RTN on them. */
#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_calib.h"
#include "lb_quant.h"
#include "lb_tokens.h"

enum { NSEQ = 16, SEQ = 256 };

typedef struct {
    lb_model *m;
    uint32_t *tok;
} fixture;

static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof f);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    lb_model_free(&f->m);
    free(f->tok);
    return 0;
}

static void load(fixture *f)
{
    char mp[4096], tp[4096];
    LB_TEST_REQUIRE_SHARED(mp, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(tp, "data/stories260K-calib.u32");
    lb_err err = {0};
    int64_t n = 0;
    if (!f->m) {
        assert_int_equal(lb_model_open(&f->m, mp, &err), 0);
        assert_int_equal(lb_tokens_load(tp, &f->tok, &n, &err), 0);
        assert_true(n >= NSEQ * SEQ);
    }
}

static void test_partial_hessians_add(void **state)
{
    fixture *f = *state;
    load(f);
    const lb_config *cfg = lb_model_config(f->m);
    int64_t rows, cols;
    lb_linear_shape(cfg, LB_LINEAR_DOWN, &rows, &cols);
    lb_hessian *all = NULL, *a = NULL, *b = NULL;
    lb_err err = {0};
    assert_int_equal(lb_hessian_new(cols, &all, &err), 0);
    assert_int_equal(lb_hessian_new(cols, &a, &err), 0);
    assert_int_equal(lb_hessian_new(cols, &b, &err), 0);
    assert_int_equal(lb_calib_hessian(f->m, f->tok, NSEQ, SEQ, 1, LB_LINEAR_DOWN, 4, all, &err), 0);
    assert_int_equal(lb_calib_hessian(f->m, f->tok, 6, SEQ, 1, LB_LINEAR_DOWN, 4, a, &err), 0);
    assert_int_equal(
        lb_calib_hessian(f->m, f->tok + 6 * SEQ, NSEQ - 6, SEQ, 1, LB_LINEAR_DOWN, 4, b, &err), 0);
    assert_int_equal(lb_hessian_add(a, b, &err), 0);
    assert_int_equal(lb_hessian_tokens(a), NSEQ * SEQ);
    float *Ha = malloc((size_t)(cols * cols) * sizeof *Ha), *H = malloc((size_t)(cols * cols) * sizeof *H);
    assert_int_equal(lb_hessian_get(a, Ha, &err), 0);
    assert_int_equal(lb_hessian_get(all, H, &err), 0);
    double dmax = 0, hmax = 0;
    for (int64_t i = 0; i < cols * cols; i++) {
        dmax = fmax(dmax, fabs((double)Ha[i] - (double)H[i]));
        hmax = fmax(hmax, fabs((double)H[i]));
    }
    /* same tokens split differently: equal up to float32 chunk sums */
    assert_true(dmax <= 1e-5 * hmax);
    for (int64_t j = 0; j < cols; j++)
        assert_true(H[j * cols + j] >= 0.0f);
    /* wrong width is refused */
    assert_int_equal(lb_calib_hessian(f->m, f->tok, 1, SEQ, 1, LB_LINEAR_Q, 4, a, &err), LB_EINVAL);
    lb_hessian_free(&all);
    lb_hessian_free(&a);
    lb_hessian_free(&b);
    free(Ha);
    free(H);
}

/* On real layer Hessians GPTQ must beat RTN at 3 bits (per row and g32). */
static void test_gptq_beats_rtn_on_model(void **state)
{
    fixture *f = *state;
    load(f);
    const lb_config *cfg = lb_model_config(f->m);
    const lb_linear which[] = {LB_LINEAR_Q, LB_LINEAR_O, LB_LINEAR_UP, LB_LINEAR_DOWN};
    lb_block_weights bw = {0};
    lb_err err = {0};
    assert_int_equal(lb_model_load_block(f->m, 2, &bw, &err), 0);
    for (int i = 0; i < 4; i++) {
        int64_t rows, cols;
        lb_linear_shape(cfg, which[i], &rows, &cols);
        lb_hessian *h = NULL;
        assert_int_equal(lb_hessian_new(cols, &h, &err), 0);
        assert_int_equal(lb_calib_hessian(f->m, f->tok, NSEQ, SEQ, 2, which[i], 8, h, &err), 0);
        float *H = malloc((size_t)(cols * cols) * sizeof *H);
        assert_int_equal(lb_hessian_get(h, H, &err), 0);
        const float *W = lb_block_linear(&bw, which[i]);
        for (int g = 0; g <= 32; g += 32) {
            lb_qopts o;
            lb_qopts_init(&o);
            o.bits = 3;
            o.group_size = g;
            lb_qresult r = {0}, q = {0};
            double er, eg, ref;
            assert_int_equal(lb_qmethod_find("rtn")->quantize(W, rows, cols, H, &o, &r, &err), 0);
            assert_int_equal(lb_qmethod_find("gptq")->quantize(W, rows, cols, H, &o, &q, &err), 0);
            assert_int_equal(lb_quant_error(W, r.W_hat, rows, cols, H, &er, &ref, &err), 0);
            assert_int_equal(lb_quant_error(W, q.W_hat, rows, cols, H, &eg, &ref, &err), 0);
            if (!(eg < 0.9 * er))
                fail_msg("%s g%d: gptq err %g vs rtn %g", lb_linear_name(which[i]), g, eg, er);
            lb_qresult_free(&r);
            lb_qresult_free(&q);
        }
        lb_hessian_free(&h);
        free(H);
    }
    lb_block_weights_free(&bw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partial_hessians_add),
        cmocka_unit_test(test_gptq_beats_rtn_on_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
