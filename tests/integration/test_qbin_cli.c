/* BiLLM and QBB through `lowbit qmatrix` on a real layer of the stories260K fixture
 * (layer 0 down_proj, 64 x 172) with a synthetic correlated Hessian. */
#include "lb_test_util.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_safetensors.h"

#define COLS 172
#define ROWS 64

static char *g_dir;
static char g_weight[4200], g_hess[4200];

static int setup(void **state)
{
    (void)state;
    char model[4096];
    if (!lb_test_shared_path(model, sizeof(model), "models/stories260K/model.safetensors"))
        return 0; /* tests skip */
    snprintf(g_weight, sizeof(g_weight), "%s:model.layers.0.mlp.down_proj.weight", model);
    g_dir = lb_test_mkdtemp();
    assert_non_null(g_dir);
    snprintf(g_hess, sizeof(g_hess), "%s/h.safetensors", g_dir);
    /* H = XᵀX, X (400, 172) with uneven column scales */
    const int nx = 400;
    float *X = malloc(sizeof(float) * (size_t)(nx * COLS));
    float *H = calloc((size_t)(COLS * COLS), sizeof(float));
    assert_non_null(X);
    assert_non_null(H);
    uint64_t s = 17;
    for (int i = 0; i < nx * COLS; i++)
        X[i] = lb_test_rand_normal(&s) * (float)(1 + (i % COLS) % 5);
    for (int a = 0; a < COLS; a++)
        for (int b = 0; b < COLS; b++) {
            double acc = 0.0;
            for (int t = 0; t < nx; t++)
                acc += (double)X[t * COLS + a] * (double)X[t * COLS + b];
            H[a * COLS + b] = (float)acc;
        }
    lb_st_writer *w = NULL;
    lb_err e;
    int64_t shape[2] = {COLS, COLS};
    assert_int_equal(lb_st_writer_new(&w, g_hess, &e), 0);
    assert_int_equal(lb_st_writer_add_tensor(w, "H", LB_DTYPE_F32, 2, shape, &e), 0);
    assert_int_equal(lb_st_writer_write_f32(w, "H", H, (size_t)(COLS * COLS), &e), 0);
    assert_int_equal(lb_st_writer_finish(w, &e), 0);
    lb_st_writer_free(&w);
    free(X);
    free(H);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (g_dir)
        lb_test_rmdir(&g_dir);
    return 0;
}

/* Runs qmatrix with --json; returns the parsed object (caller decrefs). */
static json_t *qmatrix(const char *args)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' qmatrix --weight '%s' --hessian '%s' --threads 1 --json %s",
                         lb_test_lowbit_bin(), g_weight, g_hess, args);
    if (rc != 0)
        fail_msg("qmatrix %s exited %d: %s", args, rc, out ? out : "");
    const char *brace = out ? strchr(out, '{') : NULL;
    assert_non_null(brace);
    json_error_t je;
    json_t *j = json_loads(brace, JSON_DISABLE_EOF_CHECK, &je);
    if (!j)
        fail_msg("bad JSON from qmatrix %s: %s", args, je.text);
    free(out);
    assert_true(json_is_true(json_object_get(j, "exact"))); /* dequantize(packed) == W_hat */
    assert_int_equal(json_integer_value(json_object_get(j, "rows")), ROWS);
    assert_int_equal(json_integer_value(json_object_get(j, "cols")), COLS);
    /* bpw is every stored bit over the weights */
    double bits = (double)json_integer_value(json_object_get(j, "bits"));
    assert_true(fabs(json_real_value(json_object_get(j, "bpw")) - bits / (ROWS * COLS)) < 1e-6);
    return j;
}

static double rel_err(json_t *j)
{
    return json_real_value(json_object_get(j, "rel_err"));
}

static void test_billm_cli(void **state)
{
    (void)state;
    if (!g_dir)
        skip();
    json_t *b = qmatrix("--method billm");
    json_t *r1 = qmatrix("--method rtn --bits 1");
    json_t *g2 = qmatrix("--method gptq --bits 2");
    /* 172 columns = blocks of 128 and 44: 2 sign-type bits per weight, 4 f16 per row per
     * block, the column bitmap and the 32-bit block size, each rounded to bytes */
    double bits = (double)json_integer_value(json_object_get(b, "bits"));
    double want = 32 + 8 * ceil(COLS / 8.0) + 8 * ceil(ROWS * COLS / 8.0) + 64.0 * ROWS * 2;
    assert_true(bits >= want + ROWS * COLS && bits <= want + ROWS * COLS + 16);
    assert_true(rel_err(b) < 0.5 * rel_err(r1));
    assert_true(rel_err(b) < rel_err(g2)); /* at ~2.8 vs ~2.1 bpw */
    json_decref(b);
    json_decref(r1);
    json_decref(g2);
}

static void test_qbb_cli(void **state)
{
    (void)state;
    if (!g_dir)
        skip();
    json_t *q2 = qmatrix("--method qbb --bases 2");
    json_t *q3 = qmatrix("--method qbb --bases 3");
    json_t *q3h = qmatrix("--method qbb --bases 3 --hessian-weighted");
    /* bpw = N + 16 N / cols exactly (every field a whole number of bytes here) */
    assert_true(fabs(json_real_value(json_object_get(q3, "bpw")) - (3.0 + 48.0 / COLS)) < 1e-9);
    assert_true(fabs(json_real_value(json_object_get(q2, "bpw")) - (2.0 + 32.0 / COLS)) < 1e-9);
    assert_true(rel_err(q3) < rel_err(q2));
    assert_true(rel_err(q3h) <= rel_err(q3));
    json_decref(q2);
    json_decref(q3);
    json_decref(q3h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_billm_cli),
        cmocka_unit_test(test_qbb_cli),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
