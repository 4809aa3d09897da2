/* lowbit qmatrix end to end: W and H written as safetensors, the CLI's JSON checked
 * against the library called directly, and its error paths. */
#include "lb_test_util.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_quant.h"
#include "lb_safetensors.h"
#include "lb_test_qref.h"

enum { R = 24, C = 64 };

static void write_tensors(const char *path, int n, const char **names, const float **data,
                          const int64_t (*shapes)[2])
{
    lb_st_writer *w = NULL;
    lb_err err = {0};
    assert_int_equal(lb_st_writer_new(&w, path, &err), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(lb_st_writer_add_tensor(w, names[i], LB_DTYPE_F32, 2, shapes[i], &err), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(lb_st_writer_write_f32(w, names[i], data[i],
                                                (size_t)(shapes[i][0] * shapes[i][1]), &err),
                         0);
    assert_int_equal(lb_st_writer_finish(w, &err), 0);
    lb_st_writer_free(&w);
}

typedef struct {
    char *dir;
    char wpath[4096], hpath[4096], both[4096];
    float W[R * C], H[C * C];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->dir = lb_test_mkdtemp();
    snprintf(f->wpath, sizeof f->wpath, "%s/w.safetensors", f->dir);
    snprintf(f->hpath, sizeof f->hpath, "%s/h.safetensors", f->dir);
    snprintf(f->both, sizeof f->both, "%s/both.safetensors", f->dir);
    float *X = malloc(4 * C * C * sizeof *X);
    lb_test_activations(X, 4 * C, C, 2, 17);
    lb_test_hessian_ref(X, 4 * C, C, f->H);
    free(X);
    uint64_t rng = 5;
    for (int i = 0; i < R * C; i++)
        f->W[i] = 0.03f * lb_test_rand_normal(&rng);
    const int64_t sw[1][2] = {{R, C}}, sh[1][2] = {{C, C}}, sb[2][2] = {{R, C}, {C, C}};
    const char *nw[] = {"layers.0.mlp.up_proj.weight"}, *nh[] = {"H"};
    const char *nb[] = {"W", "H"};
    const float *dw[] = {f->W}, *dh[] = {f->H}, *db[] = {f->W, f->H};
    write_tensors(f->wpath, 1, nw, dw, sw);
    write_tensors(f->hpath, 1, nh, dh, sh);
    write_tensors(f->both, 2, nb, db, sb);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    lb_test_rmdir(&f->dir);
    free(f);
    return 0;
}

static json_t *parse_json(const char *out)
{
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    if (!j)
        fail_msg("not JSON: %s (%s)", out, je.text);
    return j;
}

static void test_json_matches_library(void **state)
{
    fixture *f = *state;
    const char *methods[] = {"rtn", "gptq"};
    for (int mi = 0; mi < 2; mi++) {
        char *out = NULL;
        char outfile[4200];
        snprintf(outfile, sizeof outfile, "%s/what_%s.safetensors", f->dir, methods[mi]);
        int rc = lb_test_run(&out,
                             "%s qmatrix --weight %s --hessian %s:H --method %s --bits 3 "
                             "--group-size 16 --act-order --threads 1 --json --out %s",
                             lb_test_lowbit_bin(), f->wpath, f->hpath, methods[mi], outfile);
        assert_int_equal(rc, 0);
        json_t *j = parse_json(out);
        /* the library on the same input */
        lb_qopts o;
        lb_qopts_init(&o);
        o.bits = 3;
        o.group_size = 16;
        o.act_order = true;
        lb_qresult res = {0};
        lb_err err = {0};
        assert_int_equal(lb_qmethod_find(methods[mi])->quantize(f->W, R, C, f->H, &o, &res, &err),
                         0);
        double e, ref;
        assert_int_equal(lb_quant_error(f->W, res.W_hat, R, C, f->H, &e, &ref, &err), 0);
        assert_string_equal(json_string_value(json_object_get(j, "method")), methods[mi]);
        assert_int_equal(json_integer_value(json_object_get(j, "rows")), R);
        assert_int_equal(json_integer_value(json_object_get(j, "cols")), C);
        assert_true(json_is_true(json_object_get(j, "exact")));
        assert_true(fabs(json_real_value(json_object_get(j, "bpw")) - res.bpw) < 1e-9);
        assert_int_equal(json_integer_value(json_object_get(j, "bits")),
                         (json_int_t)lb_qpacked_bits(&res.packed));
        assert_true(fabs(json_real_value(json_object_get(j, "err")) - e) <= 1e-8 * e);
        assert_true(fabs(json_real_value(json_object_get(j, "rel_err")) - e / ref) <=
                    1e-8 * e / ref);
        json_t *opts = json_object_get(j, "options");
        assert_int_equal(json_integer_value(json_object_get(opts, "group_size")), 16);
        assert_true(json_is_true(json_object_get(opts, "act_order")));
        assert_true(json_array_size(json_object_get(j, "fields")) >= 3);
        /* --out holds W_hat bit for bit, under the input tensor's name */
        lb_st *st = NULL;
        assert_int_equal(lb_st_open(&st, outfile, &err), 0);
        float *back = malloc(R * C * sizeof *back);
        assert_int_equal(lb_st_read_f32(st, "layers.0.mlp.up_proj.weight", back, R * C, &err), 0);
        assert_memory_equal(back, res.W_hat, R * C * sizeof *back);
        assert_string_equal(lb_st_metadata_get(st, "lowbit.method"), methods[mi]);
        lb_st_free(&st);
        free(back);
        lb_qresult_free(&res);
        json_decref(j);
        free(out);
    }
}

static void test_tensor_selection_and_text_output(void **state)
{
    fixture *f = *state;
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "%s qmatrix --weight %s:W --hessian %s:H --method gptq",
                                 lb_test_lowbit_bin(), f->both, f->both),
                     0);
    assert_non_null(strstr(out, "bpw"));
    free(out);
    /* two tensors and no name: a clear error */
    assert_int_equal(lb_test_run(&out, "%s qmatrix --weight %s --hessian %s:H --method gptq",
                                 lb_test_lowbit_bin(), f->both, f->both),
                     1);
    assert_non_null(strstr(out, "holds 2 tensors"));
    free(out);
    assert_int_equal(lb_test_run(&out, "%s qmatrix --weight %s:nope --hessian %s:H --method rtn",
                                 lb_test_lowbit_bin(), f->both, f->both),
                     1);
    assert_non_null(strstr(out, "nope"));
    free(out);
}

static void test_errors(void **state)
{
    fixture *f = *state;
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    /* usage errors: exit 2 and one line */
    const char *bad[] = {"--bogus", "--bits 0", "--bits 2.5x", "--grid fancy", "--damp -1",
                         "--outlier-keep 0.1", "--method nosuch", "--threads 0",
                         "--group-size -4", "--static-groups"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = lb_test_run(&out, "%s qmatrix --weight %s --hessian %s --method gptq %s", bin,
                             f->wpath, f->hpath, bad[i]);
        if (rc != 2 || !out || strchr(out, '\n') != out + strlen(out) - 1)
            fail_msg("'%s': rc %d, output '%s'", bad[i], rc, out ? out : "");
        free(out);
    }
    /* H that does not match W */
    assert_int_equal(lb_test_run(&out, "%s qmatrix --weight %s --hessian %s:W --method gptq", bin,
                                 f->wpath, f->both),
                     1);
    assert_non_null(strstr(out, "square"));
    free(out);
    /* NaN in H */
    char nanpath[4200];
    snprintf(nanpath, sizeof nanpath, "%s/nan.safetensors", f->dir);
    float *Hn = malloc(C * C * sizeof *Hn);
    memcpy(Hn, f->H, C * C * sizeof *Hn);
    Hn[C + 3] = NAN;
    const int64_t sh[1][2] = {{C, C}};
    const char *nh[] = {"H"};
    const float *dh[] = {Hn};
    write_tensors(nanpath, 1, nh, dh, sh);
    assert_int_equal(lb_test_run(&out, "%s qmatrix --weight %s --hessian %s --method gptq", bin,
                                 f->wpath, nanpath),
                     1);
    assert_non_null(strstr(out, "NaN"));
    free(out);
    free(Hn);
    /* singular H (10 tokens for 64 channels) without damping: a clear numeric error */
    float *X = malloc(10 * C * sizeof *X), *Hs = malloc(C * C * sizeof *Hs);
    lb_test_activations(X, 10, C, 0, 3);
    lb_test_hessian_ref(X, 10, C, Hs);
    dh[0] = Hs;
    write_tensors(nanpath, 1, nh, dh, sh);
    assert_int_equal(lb_test_run(&out, "%s qmatrix --weight %s --hessian %s --method gptq --damp 0",
                                 bin, f->wpath, nanpath),
                     1);
    assert_non_null(strstr(out, "singular"));
    assert_non_null(strstr(out, "damp"));
    free(out);
    free(X);
    free(Hs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_matches_library),
        cmocka_unit_test(test_tensor_selection_and_text_output),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
