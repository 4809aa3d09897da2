/* The kl proxy of the measure job (lb_measure_kl, worker/lb_exec_measure.c) on
 * stories260K: exactly 0 for an identity candidate (the block output unchanged),
 * positive for a quantized linear, the same bits on a second call, and from the
 * last block (only the head after it); the window subset's size. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_exec_measure.h"
#include "lb_forward.h"
#include "lb_model.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

enum { N_SEQ = 4, SEQ = 64 };

/* x = block `block`'s input on the first N_SEQ windows; yfp, yq its output in fp
 * and with q_proj rounded to a grid of 1/4 (a 2-3 bit uniform quantizer). */
static void block_io(const lb_model *m, int32_t block, float *yfp, float *yq)
{
    lb_err err = {0};
    const lb_config *cfg = lb_model_config(m);
    const int64_t ntok = N_SEQ * SEQ, dim = cfg->hidden_size;
    char path[4096];
    if (!lb_test_shared_path(path, sizeof path, "data/stories260K-calib.u32"))
        skip();
    uint32_t *tok = NULL;
    int64_t n = 0;
    assert_int_equal(lb_tokens_load(path, &tok, &n, &err), 0);
    assert_true(n >= ntok);
    lb_head_weights head;
    assert_int_equal(lb_model_load_head(m, &head, &err), 0);
    float *x = malloc((size_t)ntok * (size_t)dim * sizeof *x);
    assert_non_null(x);
    assert_int_equal(lb_fwd_embed(&head, tok, ntok, x, &err), 0);
    lb_fwd_workspace *ws = NULL;
    assert_int_equal(lb_fwd_workspace_new(cfg, ntok, SEQ, &ws, &err), 0);
    lb_block_weights w;
    memset(&w, 0, sizeof w);
    for (int32_t b = 0; b < block; b++) {
        assert_int_equal(lb_model_load_block(m, b, &w, &err), 0);
        assert_int_equal(lb_fwd_block(cfg, &w, x, N_SEQ, SEQ, ws, NULL, &err), 0);
        lb_block_weights_free(&w);
    }
    assert_int_equal(lb_model_load_block(m, block, &w, &err), 0);
    memcpy(yfp, x, (size_t)ntok * (size_t)dim * sizeof *x);
    assert_int_equal(lb_fwd_block(cfg, &w, yfp, N_SEQ, SEQ, ws, NULL, &err), 0);
    int64_t rows, cols;
    lb_linear_shape(cfg, LB_LINEAR_Q, &rows, &cols);
    float *W = lb_block_linear(&w, LB_LINEAR_Q);
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = roundf(W[i] * 4.0f) / 4.0f;
    memcpy(yq, x, (size_t)ntok * (size_t)dim * sizeof *x);
    assert_int_equal(lb_fwd_block(cfg, &w, yq, N_SEQ, SEQ, ws, NULL, &err), 0);
    lb_block_weights_free(&w);
    lb_fwd_workspace_free(&ws);
    lb_head_weights_free(&head);
    free(x);
    free(tok);
}

static void check_block(int32_t block)
{
    char dir[4096];
    LB_TEST_REQUIRE_SHARED(dir, "models/stories260K");
    lb_err err = {0};
    lb_model *m = NULL;
    assert_int_equal(lb_model_open(&m, dir, &err), 0);
    const lb_config *cfg = lb_model_config(m);
    const size_t nx = (size_t)N_SEQ * SEQ * (size_t)cfg->hidden_size;
    if (block < 0)
        block += cfg->num_hidden_layers;
    float *yfp = malloc(nx * sizeof *yfp), *yq = malloc(nx * sizeof *yq);
    assert_non_null(yfp);
    assert_non_null(yq);
    block_io(m, block, yfp, yq);
    double k0 = -1, k1 = -1, k2 = -1;
    /* identity candidate: the fp output itself */
    assert_int_equal(lb_measure_kl(m, block, yfp, yfp, N_SEQ, SEQ, &k0, &err), 0);
    assert_true(k0 == 0.0);
    assert_int_equal(lb_measure_kl(m, block, yq, yfp, N_SEQ, SEQ, &k1, &err), 0);
    assert_int_equal(lb_measure_kl(m, block, yq, yfp, N_SEQ, SEQ, &k2, &err), 0);
    print_message("block %d: kl(identity) %g, kl(q_proj on a 1/4 grid) %g\n", (int)block, k0,
                  k1);
    assert_true(isfinite(k1) && k1 > 1e-6);
    assert_memory_equal(&k1, &k2, sizeof k1);
    free(yfp);
    free(yq);
    lb_model_free(&m);
}

static void test_kl_first_block(void **state)
{
    (void)state;
    check_block(0);
}

static void test_kl_last_block(void **state)
{
    (void)state;
    check_block(-1);
}

/* the window subset: 16 windows, at most 4096 tokens, at least one window */
static void test_kl_windows(void **state)
{
    (void)state;
    assert_int_equal(lb_measure_kl_windows(128, 256), 16);
    assert_int_equal(lb_measure_kl_windows(8, 128), 8);
    assert_int_equal(lb_measure_kl_windows(3, 256), 3);
    assert_int_equal(lb_measure_kl_windows(128, 2048), 2);
    assert_int_equal(lb_measure_kl_windows(128, 8192), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kl_windows),
        cmocka_unit_test(test_kl_first_block),
        cmocka_unit_test(test_kl_last_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
