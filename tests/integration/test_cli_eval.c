/* `lowbit eval` end to end: the built binary on the stories260K fixture. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lb_test_model.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

static double reference_ppl(const char *model_dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/reference.json", model_dir);
    json_error_t jerr;
    json_t *ref = json_load_file(p, 0, &jerr);
    assert_non_null(ref);
    double ppl = json_real_value(json_object_get(ref, "eval_ppl"));
    json_decref(ref);
    assert_true(ppl > 1.0);
    return ppl;
}

/* Exactly one non-empty line starting with "lowbit eval: ". */
static void assert_one_error_line(const char *out)
{
    assert_non_null(out);
    assert_true(strncmp(out, "lowbit eval: ", 13) == 0);
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_true(nl[1] == '\0');
}

static void test_json_ppl(void **state)
{
    (void)state;
    char model[4096], tokens[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(tokens, "data/stories260K-eval.u32");
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' eval --model '%s' --tokens '%s' --ctx 256 --json",
                         lb_test_lowbit_bin(), model, tokens);
    if (rc != 0)
        fail_msg("exit %d: %s", rc, out ? out : "");
    json_error_t jerr;
    json_t *o = json_loads(out, 0, &jerr);
    if (!o)
        fail_msg("output is not one JSON object: %s", out);
    assert_string_equal(json_string_value(json_object_get(o, "model")), model);
    assert_string_equal(json_string_value(json_object_get(o, "tokens")), tokens);
    assert_int_equal(json_integer_value(json_object_get(o, "ctx")), 256);
    assert_int_equal(json_integer_value(json_object_get(o, "windows")), 64);
    assert_int_equal(json_integer_value(json_object_get(o, "tokens_scored")), 16320);
    double ppl = json_real_value(json_object_get(o, "ppl"));
    double nll = json_real_value(json_object_get(o, "nll"));
    double want = reference_ppl(model);
    assert_true(fabs(ppl - want) <= 1e-4 * want);
    assert_true(fabs(exp(nll) - ppl) <= 1e-8 * ppl);
    assert_true(json_real_value(json_object_get(o, "seconds")) > 0.0);
    assert_null(json_object_get(o, "kl"));
    assert_null(json_object_get(o, "top1"));
    json_decref(o);
    free(out);
}

static void test_ref_self_and_human(void **state)
{
    (void)state;
    char model[4096], full[4096], tokens[4200];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(full, "data/stories260K-eval.u32");
    /* the first 2048 ids (8 sequences) keep this test fast */
    lb_err err = {0};
    uint32_t *ids = NULL;
    int64_t n = 0;
    char *tmp = lb_test_mkdtemp();
    assert_non_null(tmp);
    assert_int_equal(lb_tokens_load(full, &ids, &n, &err), 0);
    assert_true(n >= 2048);
    snprintf(tokens, sizeof tokens, "%s/first2048.u32", tmp);
    assert_int_equal(lb_tokens_write_u32(tokens, ids, 2048, &err), 0);
    free(ids);
    char *out = NULL;
    /* ctx 100: 20 windows, 48-token tail dropped with a note on stderr */
    int rc = lb_test_run(&out,
                         "('%s' eval --model '%s' --tokens '%s' --ctx 100 --ref '%s' --batch 3 "
                         "--threads 2 --json 2>/dev/null)",
                         lb_test_lowbit_bin(), model, tokens, model);
    if (rc != 0)
        fail_msg("exit %d: %s", rc, out ? out : "");
    json_error_t jerr;
    json_t *o = json_loads(out, 0, &jerr);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "windows")), 20);
    assert_int_equal(json_integer_value(json_object_get(o, "tokens_scored")), 20 * 99);
    assert_true(fabs(json_real_value(json_object_get(o, "kl"))) < 1e-9);
    assert_true(json_real_value(json_object_get(o, "top1")) == 1.0);
    json_decref(o);
    free(out);

    rc = lb_test_run(&out, "('%s' eval --model '%s' --tokens '%s' --ctx 100 2>&1 >/dev/null)",
                     lb_test_lowbit_bin(), model, tokens);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "48 tail tokens"));
    free(out);

    /* default ctx: min(2048, max_position_embeddings 512) -> 4 windows */
    rc = lb_test_run(&out, "'%s' eval --model '%s' --tokens '%s'", lb_test_lowbit_bin(), model,
                     tokens);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "perplexity"));
    assert_non_null(strstr(out, "4 of 512 tokens, 2044 targets scored"));
    free(out);
    lb_test_rmdir(&tmp);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    char model[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    char *tmp = lb_test_mkdtemp();
    assert_non_null(tmp);
    char path[4200];
    lb_err err = {0};
    char *out = NULL;

    /* token id 600 >= vocab 512 */
    uint32_t ids[300];
    for (int i = 0; i < 300; i++)
        ids[i] = (uint32_t)(i % 500);
    ids[123] = 600;
    snprintf(path, sizeof path, "%s/bad.u32", tmp);
    assert_int_equal(lb_tokens_write_u32(path, ids, 300, &err), 0);
    int rc = lb_test_run(&out, "'%s' eval --model '%s' --tokens '%s' --ctx 64",
                         lb_test_lowbit_bin(), model, path);
    assert_int_equal(rc, 1);
    assert_one_error_line(out);
    assert_non_null(strstr(out, "index 123"));
    assert_non_null(strstr(out, "bad.u32"));
    free(out);

    /* truncated file (not a multiple of 4 bytes) */
    snprintf(path, sizeof path, "%s/short.u32", tmp);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(ids, 1, 10, f);
    fclose(f);
    rc = lb_test_run(&out, "'%s' eval --model '%s' --tokens '%s' --ctx 2", lb_test_lowbit_bin(),
                     model, path);
    assert_int_equal(rc, 1);
    assert_one_error_line(out);
    free(out);

    /* fewer tokens than a window */
    ids[123] = 5;
    snprintf(path, sizeof path, "%s/few.u32", tmp);
    assert_int_equal(lb_tokens_write_u32(path, ids, 300, &err), 0);
    rc = lb_test_run(&out, "'%s' eval --model '%s' --tokens '%s' --ctx 301", lb_test_lowbit_bin(),
                     model, path);
    assert_int_equal(rc, 1);
    assert_one_error_line(out);
    free(out);

    /* reference with another vocab */
    lb_config cfg = lb_test_model_config(16, 2, 1, 8, 20, 600, 1);
    cfg.max_position_embeddings = 512;
    char refdir[4200];
    snprintf(refdir, sizeof refdir, "%s", tmp);
    assert_int_equal(lb_test_model_write(refdir, &cfg, 4, NULL, NULL, &err), 0);
    rc = lb_test_run(&out, "'%s' eval --model '%s' --tokens '%s' --ctx 64 --ref '%s'",
                     lb_test_lowbit_bin(), model, path, refdir);
    assert_int_equal(rc, 1);
    assert_one_error_line(out);
    assert_non_null(strstr(out, "vocab"));
    free(out);

    /* missing model directory */
    rc = lb_test_run(&out, "'%s' eval --model '%s/nope' --tokens '%s'", lb_test_lowbit_bin(), tmp,
                     path);
    assert_int_equal(rc, 1);
    assert_one_error_line(out);
    free(out);
    lb_test_rmdir(&tmp);
}

static void test_usage(void **state)
{
    (void)state;
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "'%s' eval --tokens x.u32", bin), 2);
    assert_non_null(strstr(out, "--model"));
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' eval --model m", bin), 2);
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' eval --model m --tokens t --ctx abc", bin), 2);
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' eval --model m --tokens t --ctx 1", bin), 2);
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' eval --model m --tokens t --bogus", bin), 2);
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' eval --model", bin), 2);
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' eval --help", bin), 0);
    assert_non_null(strstr(out, "min(2048, max_position_embeddings)"));
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' --help", bin), 0);
    assert_non_null(strstr(out, "eval"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_ppl),
        cmocka_unit_test(test_ref_self_and_human),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
