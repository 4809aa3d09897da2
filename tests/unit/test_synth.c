/* lb_synth and `lowbit synth`: determinism (seed, threads, chunking), file
 * contents vs the generator, tensor layout, and argument errors. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_config.h"
#include "lb_dtype.h"
#include "lb_model.h"
#include "lb_safetensors.h"
#include "lb_synth.h"
#include "lb_test_util.h"

/* Whole file into a malloc'd buffer; OUT *size. NULL when unreadable. */
static unsigned char *slurp(const char *dir, const char *name, size_t *size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static int same_file(const char *a, const char *b, const char *name)
{
    size_t na = 0, nb = 0;
    unsigned char *x = slurp(a, name, &na), *y = slurp(b, name, &nb);
    assert_non_null(x);
    assert_non_null(y);
    int same = na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static int run_synth(char **out, const char *env, const char *args)
{
    return lb_test_run(out, "%s %s synth %s 2>&1", env, lb_test_lowbit_bin(), args);
}

static void test_cli_seed_and_thread_determinism(void **state)
{
    (void)state;
    char *base = lb_test_mkdtemp();
    assert_non_null(base);
    char a[4200], b[4200], c[4200], d[4200], args[8600];
    snprintf(a, sizeof a, "%s/a", base);
    snprintf(b, sizeof b, "%s/b", base);
    snprintf(c, sizeof c, "%s/c", base);
    snprintf(d, sizeof d, "%s/d", base);
    char *out = NULL;
    snprintf(args, sizeof args, "--out %s --preset small --layers 1 --seed 42", a);
    assert_int_equal(run_synth(&out, "OMP_NUM_THREADS=1", args), 0);
    free(out);
    snprintf(args, sizeof args, "--out %s --preset small --layers 1 --seed 42", b);
    assert_int_equal(run_synth(&out, "OMP_NUM_THREADS=2", args), 0);
    free(out);
    snprintf(args, sizeof args, "--out %s --preset small --layers 1 --seed 43 --json", c);
    assert_int_equal(run_synth(&out, "OMP_NUM_THREADS=2", args), 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "\"preset\":\"small\""));
    assert_non_null(strstr(out, "\"seed\":\"43\""));
    free(out);
    snprintf(args, sizeof args, "--out %s --preset small --layers 1 --seed 42 --dtype f32", d);
    assert_int_equal(run_synth(&out, "OMP_NUM_THREADS=3", args), 0);
    free(out);

    assert_true(same_file(a, b, "model.safetensors")); /* 1 vs 2 threads */
    assert_true(same_file(a, b, "config.json"));
    assert_false(same_file(a, c, "model.safetensors")); /* another seed */
    assert_true(same_file(a, c, "config.json"));
    size_t na = 0, nd = 0;
    free(slurp(a, "model.safetensors", &na));
    free(slurp(d, "model.safetensors", &nd));
    assert_true(nd > na + na / 2); /* f32 data is twice bf16's */

    /* the bf16 file holds the f32 file's values rounded to nearest even */
    lb_st *sa = NULL, *sd = NULL;
    lb_err err = {0};
    char pa[4300], pd[4300];
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pd, sizeof pd, "%s/model.safetensors", d);
    assert_int_equal(lb_st_open(&sa, pa, &err), 0);
    assert_int_equal(lb_st_open(&sd, pd, &err), 0);
    assert_int_equal(lb_st_count(sa), lb_st_count(sd));
    for (int64_t i = 0; i < lb_st_count(sa); i++) {
        const lb_st_tensor *ta = lb_st_at(sa, i);
        const lb_st_tensor *td = lb_st_find(sd, ta->name);
        assert_non_null(td);
        assert_int_equal(ta->dtype, LB_DTYPE_BF16);
        assert_int_equal(td->dtype, LB_DTYPE_F32);
        const uint16_t *hb = ta->data;
        const unsigned char *fb = td->data;
        for (int64_t k = 0; k < ta->numel; k++) {
            float f;
            memcpy(&f, fb + 4 * k, 4);
            assert_int_equal(hb[k], lb_f32_to_bf16(f));
        }
    }
    assert_string_equal(lb_st_metadata_get(sa, "preset"), "small");
    assert_string_equal(lb_st_metadata_get(sa, "seed"), "42");
    assert_non_null(strstr(lb_st_metadata_get(sa, "generator"), "lowbit synth"));
    lb_st_free(&sa);
    lb_st_free(&sd);
    lb_test_rmdir(&base);
}

/* Library: values do not depend on the OpenMP thread count or on which rows a
 * chunk starts at; file bytes do not depend on chunk_rows; the file holds
 * exactly lb_synth_fill's values. */
static void test_fill_threads_chunks_and_file(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_synth *s = NULL;
    assert_int_equal(lb_synth_new(lb_synth_preset_find("tiny"), 0, 9, &s, &err), 0);
    const int saved = omp_get_max_threads();
    for (int64_t i = 0; i < lb_synth_n_tensors(s); i++) {
        const lb_synth_tensor *t = lb_synth_tensor_at(s, i);
        size_t n = (size_t)(t->rows * t->cols);
        float *x1 = malloc(n * sizeof *x1), *x2 = malloc(n * sizeof *x2);
        assert_true(x1 && x2);
        omp_set_num_threads(1);
        assert_int_equal(lb_synth_fill(s, i, 0, t->rows, x1, &err), 0);
        omp_set_num_threads(2);
        /* in three pieces of uneven size */
        int64_t r1 = t->rows / 3, r2 = t->rows - t->rows / 5;
        assert_int_equal(lb_synth_fill(s, i, 0, r1, x2, &err), 0);
        assert_int_equal(lb_synth_fill(s, i, r1, r2 - r1, x2 + r1 * t->cols, &err), 0);
        assert_int_equal(lb_synth_fill(s, i, r2, t->rows - r2, x2 + r2 * t->cols, &err), 0);
        assert_memory_equal(x1, x2, n * sizeof *x1);
        for (size_t k = 0; k < n; k++)
            assert_true(isfinite(x1[k]));
        free(x1);
        free(x2);
    }
    omp_set_num_threads(saved);

    char *d1 = lb_test_mkdtemp(), *d2 = lb_test_mkdtemp();
    lb_synth_write_opts o1 = {.dtype = LB_DTYPE_F32};
    lb_synth_write_opts o2 = {.dtype = LB_DTYPE_F32, .chunk_rows = 7};
    lb_synth_write_stats st = {0};
    assert_int_equal(lb_synth_write(s, d1, &o1, &st, &err), 0);
    assert_int_equal(lb_synth_write(s, d2, &o2, NULL, &err), 0);
    assert_true(same_file(d1, d2, "model.safetensors"));
    assert_int_equal(st.params, lb_synth_n_params(s));
    assert_true(st.file_bytes > 4 * st.params);

    /* every tensor of the file equals the generator's output (f32: exact) */
    lb_model *m = NULL;
    if (lb_model_open(&m, d1, &err))
        fail_msg("lb_model_open on a synth model: %s", err.msg);
    const lb_st *st_file = lb_model_tensors(m);
    assert_int_equal(lb_st_count(st_file), lb_synth_n_tensors(s));
    for (int64_t i = 0; i < lb_synth_n_tensors(s); i++) {
        const lb_synth_tensor *t = lb_synth_tensor_at(s, i);
        const lb_st_tensor *ft = lb_st_at(st_file, i); /* file order = generator order */
        assert_string_equal(ft->name, t->name);
        assert_int_equal(ft->numel, t->rows * t->cols);
        float *x = malloc((size_t)ft->numel * sizeof *x);
        assert_int_equal(lb_synth_fill(s, i, 0, t->rows, x, &err), 0);
        assert_memory_equal(ft->data, x, ft->nbytes);
        free(x);
    }
    lb_model_free(&m);
    lb_test_rmdir(&d1);
    lb_test_rmdir(&d2);
    lb_synth_free(&s);
}

/* Tensor names, shapes and counts follow the HF LLaMA layout; a model with
 * fewer layers is a prefix of the full one (same seed, same layer-0 values). */
static void test_layout_and_prefix(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_synth *s2 = NULL, *s5 = NULL;
    const lb_synth_preset *p = lb_synth_preset_find("llama-7b-gqa");
    assert_non_null(p);
    assert_int_equal(lb_synth_new(p, 0, 1, &s5, &err), 0);
    assert_int_equal(lb_synth_n_layers(s5), 32);
    assert_int_equal(lb_synth_n_tensors(s5), 9 * 32 + 3);
    lb_synth_free(&s5);

    p = lb_synth_preset_find("tiny");
    assert_int_equal(lb_synth_new(p, 2, 77, &s2, &err), 0);
    assert_int_equal(lb_synth_new(p, 5, 77, &s5, &err), 0);
    assert_int_equal(lb_synth_n_tensors(s2), 9 * 2 + 3);
    const lb_synth_tensor *t = lb_synth_tensor_at(s2, 3);
    assert_string_equal(t->name, "model.layers.0.self_attn.k_proj.weight");
    assert_int_equal(t->rows, 32); /* 4 kv heads * head_dim 8 */
    assert_int_equal(t->cols, 64);
    assert_string_equal(lb_synth_tensor_at(s2, 0)->name, "model.embed_tokens.weight");
    assert_string_equal(lb_synth_tensor_at(s2, 19)->name, "model.norm.weight");
    assert_string_equal(lb_synth_tensor_at(s2, 20)->name, "lm_head.weight");
    assert_null(lb_synth_tensor_at(s2, 21));
    int64_t n2 = 0, n5 = 0;
    const int64_t *o2 = lb_synth_outlier_channels(s2, &n2);
    const int64_t *o5 = lb_synth_outlier_channels(s5, &n5);
    assert_int_equal(n2, n5);
    assert_memory_equal(o2, o5, (size_t)n2 * sizeof *o2);
    for (int64_t i = 0; i < 10; i++) {
        const lb_synth_tensor *a = lb_synth_tensor_at(s2, i);
        size_t n = (size_t)(a->rows * a->cols);
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
        assert_int_equal(lb_synth_fill(s2, i, 0, a->rows, x, &err), 0);
        assert_int_equal(lb_synth_fill(s5, i, 0, a->rows, y, &err), 0);
        assert_memory_equal(x, y, n * sizeof *x);
        free(x);
        free(y);
    }
    /* the outlier channels move with the seed (small: 2 of 256 channels) */
    int distinct = 0;
    int64_t first[2] = {-1, -1};
    for (uint64_t seed = 0; seed < 4; seed++) {
        lb_synth *q = NULL;
        int64_t n = 0;
        assert_int_equal(lb_synth_new(lb_synth_preset_find("small"), 1, seed, &q, &err), 0);
        const int64_t *o = lb_synth_outlier_channels(q, &n);
        assert_int_equal(n, 2);
        assert_true(o[0] < o[1] && o[1] < 256);
        if (seed == 0)
            memcpy(first, o, sizeof first);
        else
            distinct += memcmp(first, o, sizeof first) != 0;
        lb_synth_free(&q);
    }
    assert_true(distinct >= 2);
    /* bad ranges and sizes */
    float v[64];
    assert_int_equal(lb_synth_fill(s2, 0, 511, 2, v, &err), LB_EINVAL);
    assert_int_equal(lb_synth_fill(s2, 21, 0, 1, v, &err), LB_EINVAL);
    assert_int_equal(lb_synth_fill(s2, -1, 0, 1, v, &err), LB_EINVAL);
    lb_synth *bad = NULL;
    assert_int_equal(lb_synth_new(p, -1, 0, &bad, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "--layers"));
    assert_null(bad);
    assert_int_equal(lb_synth_new(NULL, 1, 0, &bad, &err), LB_EINVAL);
    assert_null(lb_synth_preset_find("nope"));
    lb_synth_free(&s2);
    lb_synth_free(&s5);
    lb_synth_free(&s5); /* NULL-safe */
}

static void expect_fail(const char *args, int want_rc, const char *want_msg)
{
    char *out = NULL;
    int rc = run_synth(&out, "", args);
    if (rc != want_rc || !out || !strstr(out, want_msg))
        fail_msg("lowbit synth %s: rc %d (want %d), output '%s' (want '%s')", args, rc, want_rc,
                 out ? out : "", want_msg);
    free(out);
}

static void test_cli_errors(void **state)
{
    (void)state;
    char *base = lb_test_mkdtemp();
    char args[4400], dir[4200];
    snprintf(dir, sizeof dir, "%s/m", base);
    snprintf(args, sizeof args, "--out %s --preset huge", dir);
    expect_fail(args, 2, "unknown preset 'huge'");
    snprintf(args, sizeof args, "--out %s --preset tiny --layers 0", dir);
    expect_fail(args, 2, "--layers '0' must be a positive integer");
    snprintf(args, sizeof args, "--out %s --preset tiny --layers 2x", dir);
    expect_fail(args, 2, "--layers");
    snprintf(args, sizeof args, "--out %s --preset tiny --dtype f16", dir);
    expect_fail(args, 2, "--dtype 'f16'");
    snprintf(args, sizeof args, "--out %s --preset tiny --seed -3", dir);
    expect_fail(args, 2, "--seed");
    expect_fail("--preset tiny", 2, "--out and --preset are required");
    snprintf(args, sizeof args, "--out %s --preset tiny --bogus", dir);
    expect_fail(args, 2, "unknown option '--bogus'");
    expect_fail("--out", 2, "--out needs a value");

    /* an existing non-empty dir needs --force */
    char *out = NULL;
    snprintf(args, sizeof args, "--out %s --preset tiny", dir);
    assert_int_equal(run_synth(&out, "", args), 0);
    free(out);
    expect_fail(args, 1, "not empty");
    expect_fail(args, 1, "--force");
    char idx[4300];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(idx, "w");
    assert_non_null(f);
    fputs("{\"weight_map\": {}}", f);
    fclose(f);
    snprintf(args, sizeof args, "--out %s --preset tiny --force --seed 5", dir);
    assert_int_equal(run_synth(&out, "", args), 0);
    free(out);
    lb_config cfg;
    lb_err err = {0};
    assert_int_equal(lb_config_load(&cfg, dir, &err), 0);
    assert_int_equal(cfg.num_hidden_layers, 2);
    assert_string_equal(cfg.torch_dtype, "bfloat16");
    assert_int_equal(access(idx, F_OK), -1); /* the stale index is gone */
    lb_model *m = NULL;
    if (lb_model_open(&m, dir, &err))
        fail_msg("model after --force: %s", err.msg);
    lb_model_free(&m);
    /* a file where the dir should be */
    snprintf(args, sizeof args, "--out %s/config.json --preset tiny", dir);
    expect_fail(args, 1, "not a directory");

    assert_int_equal(run_synth(&out, "", "--help"), 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "llama-7b"));
    assert_non_null(strstr(out, "tiny"));
    free(out);
    lb_test_rmdir(&base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_seed_and_thread_determinism),
        cmocka_unit_test(test_fill_threads_chunks_and_file),
        cmocka_unit_test(test_layout_and_prefix),
        cmocka_unit_test(test_cli_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
