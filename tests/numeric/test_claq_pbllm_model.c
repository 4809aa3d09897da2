/* CLAQ and PB-LLM on real layers: stories260K block 2 with Hessians from its calibration
 * tokens. Checks orderings that must hold on real weights (more bits -> lower error;
 * per-column K-means codebooks and partial binarization beat a per-row 2-bit uniform grid)
 * and that every packed result decodes to W_hat exactly. */
#include "lb_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_calib.h"
#include "lb_claq.h"
#include "lb_pbllm.h"
#include "lb_quant.h"
#include "lb_tokens.h"

enum { NSEQ = 16, SEQ = 256 };

static double quant_err(const char *method, const lb_qopts *o, const float *W, int64_t rows,
                        int64_t cols, const float *H, double *bpw)
{
    const lb_qmethod *m = lb_qmethod_find(method);
    assert_non_null(m);
    lb_qresult r = {0};
    lb_err err = {0};
    if (m->quantize(W, rows, cols, H, o, &r, &err))
        fail_msg("%s: %s", method, err.msg);
    float *dq = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(dq);
    assert_int_equal(m->dequantize(&r.packed, dq, &err), 0);
    assert_memory_equal(dq, r.W_hat, sizeof(float) * (size_t)(rows * cols));
    assert_true(r.bpw == lb_qpacked_bpw(&r.packed));
    double e, ref;
    assert_int_equal(lb_quant_error(W, r.W_hat, rows, cols, H, &e, &ref, &err), 0);
    if (bpw)
        *bpw = r.bpw;
    free(dq);
    lb_qresult_free(&r);
    return e / ref;
}

static void test_real_layers(void **state)
{
    (void)state;
    char mp[4096], tp[4096];
    LB_TEST_REQUIRE_SHARED(mp, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(tp, "data/stories260K-calib.u32");
    lb_model *model = NULL;
    uint32_t *tok = NULL;
    int64_t ntok = 0;
    lb_err err = {0};
    assert_int_equal(lb_model_open(&model, mp, &err), 0);
    assert_int_equal(lb_tokens_load(tp, &tok, &ntok, &err), 0);
    assert_true(ntok >= NSEQ * SEQ);
    const lb_config *cfg = lb_model_config(model);
    const lb_linear which[] = {LB_LINEAR_Q, LB_LINEAR_O, LB_LINEAR_UP, LB_LINEAR_DOWN};
    lb_block_weights bw = {0};
    assert_int_equal(lb_model_load_block(model, 2, &bw, &err), 0);
    for (int i = 0; i < 4; i++) {
        int64_t rows, cols;
        lb_linear_shape(cfg, which[i], &rows, &cols);
        lb_hessian *h = NULL;
        assert_int_equal(lb_hessian_new(cols, &h, &err), 0);
        assert_int_equal(lb_calib_hessian(model, tok, NSEQ, SEQ, 2, which[i], 8, h, &err), 0);
        float *H = malloc((size_t)(cols * cols) * sizeof *H);
        assert_non_null(H);
        assert_int_equal(lb_hessian_get(h, H, &err), 0);
        const float *W = lb_block_linear(&bw, which[i]);
        lb_qopts o;
        lb_qopts_init(&o);
        o.bits = 2;
        double b_g2, b_c2, b_c3, b_pb;
        double g2 = quant_err("gptq", &o, W, rows, cols, H, &b_g2);
        double c2 = quant_err("claq", &o, W, rows, cols, H, &b_c2);
        o.act_order = true;
        double c2a = quant_err("claq", &o, W, rows, cols, H, NULL);
        o.act_order = false;
        o.bits = 3;
        double c3 = quant_err("claq", &o, W, rows, cols, H, &b_c3);
        double pb = quant_err("pbllm", &o, W, rows, cols, H, &b_pb);
        print_message("%-5s %3lldx%-3lld gptq2 %.4f (%.2f bpw) claq2 %.4f (%.2f) claq2-act %.4f "
                      "claq3 %.4f (%.2f) pbllm %.4f (%.2f)\n",
                      lb_linear_name(which[i]), (long long)rows, (long long)cols, g2, b_g2, c2,
                      b_c2, c2a, c3, b_c3, pb, b_pb);
        if (!(c3 < c2 && c2 < g2 && c2a < g2 && pb < g2))
            fail_msg("%s: unexpected order", lb_linear_name(which[i]));
        lb_hessian_free(&h);
        free(H);
    }
    lb_block_weights_free(&bw);
    lb_model_free(&model);
    free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_layers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
