/* `lowbit quantize` end to end on stories260K: every registered method gives a
 * verified packed checkpoint whose dequantized weights are close to (and not
 * equal to) the source, 1 vs 2 threads give byte-identical files, overrides
 * pick per-tensor methods, true-sequential runs, and bad inputs fail with one
 * clear line and no checkpoint presented as complete. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_model.h"
#include "lb_packed.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

static char model_dir[4096], calib[4096];

static int setup(void **state)
{
    (void)state;
    return 0;
}

static int quantize(char **out, const char *dir, const char *args)
{
    return lb_test_run(out, "'%s' quantize --model '%s' --calib '%s' --out '%s' --ctx 128 "
                       "--nsamples 8 %s 2>&1", lb_test_lowbit_bin(), model_dir, calib, dir, args);
}

static bool file_exists(const char *dir, const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Relative Frobenius error of every linear of block b, packed vs source. */
static void check_block_close(const char *packed_dir, int32_t b, double max_rel)
{
    lb_model *src = NULL, *q = NULL;
    lb_err err;
    assert_int_equal(lb_packed_model_open(&src, model_dir, &err), 0);
    if (lb_packed_model_open(&q, packed_dir, &err) != 0)
        fail_msg("%s", err.msg);
    lb_block_weights ws, wq;
    assert_int_equal(lb_model_load_block(src, b, &ws, &err), 0);
    assert_int_equal(lb_model_load_block(q, b, &wq, &err), 0);
    const lb_config *cfg = lb_model_config(src);
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t rows, cols;
        lb_linear_shape(cfg, (lb_linear)l, &rows, &cols);
        const float *a = lb_block_linear(&ws, (lb_linear)l), *c = lb_block_linear(&wq, (lb_linear)l);
        double num = 0, den = 0;
        for (int64_t i = 0; i < rows * cols; i++) {
            double d = (double)a[i] - (double)c[i];
            num += d * d;
            den += (double)a[i] * (double)a[i];
        }
        double rel = sqrt(num / den);
        if (!(rel > 0 && rel < max_rel))
            fail_msg("block %d linear %d: relative error %g not in (0, %g)", (int)b, l, rel,
                     max_rel);
    }
    /* norms are copied, not quantized */
    assert_memory_equal(ws.attn_norm, wq.attn_norm, (size_t)cfg->hidden_size * sizeof(float));
    lb_block_weights_free(&ws);
    lb_block_weights_free(&wq);
    lb_model_free(&src);
    lb_model_free(&q);
}

static void test_every_method(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    static const struct {
        const char *name, *args;
        double max_rel;
    } cases[] = {
        {"rtn", "--bits 4", 0.3},
        {"gptq", "--bits 3 --group-size 32", 0.5},
        {"claq", "--bits 2.1", 0.8},
        {"pbllm", "--bits 1 --salient 0.1", 1.0},
        {"billm", "--bits 1", 1.0},
        {"qbb", "--bits 1 --bases 2", 1.0},
    };
    const lb_qmethod *all[64];
    int nm = lb_qmethod_list(all, 64);
    for (int m = 0; m < nm; m++) {
        int k = -1;
        for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++)
            if (!strcmp(cases[c].name, all[m]->name))
                k = c;
        if (k < 0)
            fail_msg("method %s has no end-to-end case here: add one", all[m]->name);
        char *dir = lb_test_mkdtemp();
        char out_dir[4200], args[256];
        snprintf(out_dir, sizeof out_dir, "%s/q", dir);
        snprintf(args, sizeof args, "--method %s %s --json --threads 2", cases[k].name,
                 cases[k].args);
        char *out = NULL;
        int rc = quantize(&out, out_dir, args);
        if (rc != 0)
            fail_msg("%s: exit %d: %s", cases[k].name, rc, out ? out : "");
        /* the last line is the summary */
        char *last = out + strlen(out) - 1;
        while (last > out && last[-1] != '\n')
            last--;
        json_t *o = json_loads(last, 0, NULL);
        if (!o)
            fail_msg("%s: summary is not JSON: %s", cases[k].name, last);
        assert_string_equal(json_string_value(json_object_get(o, "event")), "done");
        assert_int_equal(json_integer_value(json_object_get(o, "quantized_linears")), 35);
        double bpw = json_real_value(json_object_get(o, "bpw"));
        assert_true(json_real_value(json_object_get(o, "peak_rss_mib")) > 0);
        lb_packed_summary sum;
        lb_err err;
        if (lb_packed_verify(out_dir, &sum, &err) != 0)
            fail_msg("%s: %s", cases[k].name, err.msg);
        assert_true(fabs(sum.bpw - bpw) < 1e-9 * bpw);
        assert_true(bpw > 0.5 && bpw < 8);
        check_block_close(out_dir, 0, cases[k].max_rel);
        check_block_close(out_dir, 4, cases[k].max_rel);
        json_decref(o);
        free(out);
        lb_test_rmdir(&dir);
    }
}

static void test_threads_byte_identical(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    char *out = NULL;
    assert_int_equal(quantize(&out, a, "--method gptq --bits 2 --act-order --threads 1"), 0);
    free(out);
    assert_int_equal(quantize(&out, b, "--method gptq --bits 2 --act-order --threads 2"), 0);
    free(out);
    assert_int_equal(lb_test_run(&out, "cmp '%s/model.safetensors' '%s/model.safetensors' && "
                                 "cmp '%s/manifest.json' '%s/manifest.json' && cmp "
                                 "'%s/config.json' '%s/config.json'", a, b, a, b, a, b), 0);
    free(out);
    lb_test_rmdir(&dir);
}

static void test_override_and_true_sequential(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char q[4200];
    snprintf(q, sizeof q, "%s/q", dir);
    char *out = NULL;
    int rc = quantize(&out, q, "--method gptq --bits 2 --true-sequential --threads 2 "
                      "--override 'model\\.layers\\.[0-9]+\\.mlp\\..*=rtn:bits=4' "
                      "--override '.*down_proj.*=rtn:bits=3,group-size=32'");
    if (rc != 0)
        fail_msg("exit %d: %s", rc, out ? out : "");
    /* the log names every tensor's final choice */
    assert_non_null(strstr(out, "model.layers.2.mlp.up_proj.weight"));
    free(out);
    char p[4300];
    snprintf(p, sizeof p, "%s/config.json", q);
    json_t *cfg = json_load_file(p, 0, NULL);
    assert_non_null(cfg);
    json_t *per = json_object_get(json_object_get(cfg, "quantization_config"), "per_tensor");
    assert_non_null(per);
    const char *mq = json_string_value(json_object_get(
        json_object_get(per, "model.layers.1.self_attn.q_proj.weight"), "method"));
    const char *mu = json_string_value(
        json_object_get(json_object_get(per, "model.layers.1.mlp.up_proj.weight"), "method"));
    const char *md = json_string_value(json_object_get(
        json_object_get(per, "model.layers.1.mlp.down_proj.weight"), "method"));
    assert_string_equal(mq, "gptq");
    assert_string_equal(mu, "rtn");
    assert_string_equal(md, "rtn");
    const char *od = json_string_value(json_object_get(
        json_object_get(per, "model.layers.1.mlp.down_proj.weight"), "options"));
    assert_non_null(strstr(od, "bits=3,group_size=32"));
    json_decref(cfg);
    check_block_close(q, 1, 0.9);
    lb_test_rmdir(&dir);
}

/* Fails with one "lowbit quantize: " line containing `want`, and out_dir holds
 * no manifest.json. */
static void expect_error(const char *out_dir, const char *args, const char *want)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize %s 2>&1", lb_test_lowbit_bin(), args);
    if (rc == 0 || !out || !strstr(out, want))
        fail_msg("expected failure mentioning \"%s\", got exit %d: %s", want, rc,
                 out ? out : "");
    const char *line = strstr(out, "lowbit quantize: ");
    assert_non_null(line);
    assert_false(file_exists(out_dir, "manifest.json"));
    free(out);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char q[4200], odd[4200], big[4200], args[16384];
    snprintf(q, sizeof q, "%s/q", dir);
    uint32_t ids[1024];
    for (int i = 0; i < 1024; i++)
        ids[i] = (uint32_t)(i % 500);
    snprintf(odd, sizeof odd, "%s/odd.u32", dir);
    assert_int_equal(lb_tokens_write_u32(odd, ids, 1000, NULL), 0);
    ids[300] = 512;
    snprintf(big, sizeof big, "%s/big.u32", dir);
    assert_int_equal(lb_tokens_write_u32(big, ids, 1024, NULL), 0);

    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq --ctx 128",
             model_dir, odd, q);
    expect_error(q, args, "1000 tokens is not a multiple of --ctx 128");
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq --ctx 128",
             model_dir, big, q);
    expect_error(q, args, "token id 512 at index 300");
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method nope", model_dir,
             calib, q);
    expect_error(q, args, "unknown method \"nope\"");
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq --bogus 3",
             model_dir, calib, q);
    expect_error(q, args, "unknown or incomplete option \"--bogus\"");
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq "
             "--override 'x=gptq:bits=9,frobnicate=1'", model_dir, calib, q);
    expect_error(q, args, "--override");
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq", dir,
             calib, q);
    expect_error(q, args, dir);
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq "
             "--ctx 128 --nsamples 1000", model_dir, calib, q);
    expect_error(q, args, "--nsamples 1000");
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method gptq "
             "--ctx 128 --override 'lm_head\\.weight=rtn:bits=8'", model_dir, calib, q);
    expect_error(q, args, "matches only lm_head.weight");

    /* an output dir holding a different job */
    char *out = NULL;
    assert_int_equal(quantize(&out, q, "--method rtn --bits 4"), 0);
    free(out);
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method rtn --bits 3 "
             "--ctx 128 --nsamples 8", model_dir, calib, q);
    int rc = lb_test_run(&out, "'%s' quantize %s 2>&1", lb_test_lowbit_bin(), args);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "holds a different quantize job"));
    assert_non_null(strstr(out, "--force"));
    free(out);
    /* --force takes the directory over; the old checkpoint is gone first */
    rc = lb_test_run(&out, "'%s' quantize %s --force 2>&1", lb_test_lowbit_bin(), args);
    if (rc != 0)
        fail_msg("--force: exit %d: %s", rc, out ? out : "");
    free(out);
    char p[4300];
    snprintf(p, sizeof p, "%s/config.json", q);
    json_t *cfg = json_load_file(p, 0, NULL);
    assert_non_null(cfg);
    assert_true(json_real_value(json_object_get(json_object_get(cfg, "quantization_config"),
                                                "bits")) == 3.0);
    json_decref(cfg);
    lb_err verr;
    assert_int_equal(lb_packed_verify(q, NULL, &verr), 0);
    /* a non-empty directory that is not a lowbit job */
    snprintf(args, sizeof args, "--model '%s' --calib '%s' --out '%s' --method rtn --ctx 128",
             model_dir, calib, model_dir);
    rc = lb_test_run(&out, "'%s' quantize %s 2>&1", lb_test_lowbit_bin(), args);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "holds no lowbit quantize job"));
    free(out);
    lb_test_rmdir(&dir);
}

/* `lowbit eval` on the packed checkpoint and on its f32 export give the same
 * numbers exactly (eval dequantizes block by block through the registry),
 * with and without a quantized lm_head; the export of a --quantize-lm-head
 * checkpoint of the tied stories260K has its own (untied) lm_head.weight. */
static void test_packed_eval_equals_export_eval(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char evalf[4096];
    LB_TEST_REQUIRE_SHARED(evalf, "data/stories260K-eval.u32");
    /* the third: attention rotated (--rotate), the MLP not (an override) */
    static const char *const variants[] = {"--method gptq --bits 3 --threads 2",
                                           "--method gptq --bits 3 --threads 2 "
                                           "--quantize-lm-head",
                                           "--method gptq --bits 2 --threads 2 --rotate hadamard "
                                           "--seed 3 --override '.*mlp.*=gptq:bits=2,rotate=none'"};
    for (int v = 0; v < 3; v++) {
        char *dir = lb_test_mkdtemp();
        char q[4200], x[4200];
        snprintf(q, sizeof q, "%s/q", dir);
        snprintf(x, sizeof x, "%s/x", dir);
        char *out = NULL;
        assert_int_equal(quantize(&out, q, variants[v]), 0);
        free(out);
        int rc = lb_test_run(&out, "'%s' export --model '%s' --out '%s' --dtype f32 2>&1",
                             lb_test_lowbit_bin(), q, x);
        if (rc != 0)
            fail_msg("export: exit %d: %s", rc, out ? out : "");
        free(out);
        lb_st *st = NULL;
        lb_err err;
        assert_int_equal(lb_st_open(&st, x, &err), 0);
        /* untied only with the flag */
        if (v == 1)
            assert_non_null(lb_st_find(st, "lm_head.weight"));
        else
            assert_null(lb_st_find(st, "lm_head.weight"));
        lb_st_free(&st);
        /* the packed checkpoint records the rotation (seed and kind) of exactly the
         * rotated tensors: 4 attention linears in each of 5 blocks */
        char qf[4300];
        snprintf(qf, sizeof qf, "%s/model.safetensors", q);
        assert_int_equal(lb_st_open(&st, qf, &err), 0);
        int nrot = 0, nkind = 0;
        for (int64_t i = 0; i < lb_st_count(st); i++) {
            const char *name = lb_st_at(st, i)->name;
            size_t len = strlen(name);
            if (len > 9 && !strcmp(name + len - 9, ".rot_seed")) {
                assert_non_null(strstr(name, "self_attn"));
                nrot++;
            }
            nkind += len > 9 && !strcmp(name + len - 9, ".rot_kind");
        }
        assert_int_equal(nrot, v == 2 ? 20 : 0);
        assert_int_equal(nkind, nrot);
        lb_st_free(&st);
        char *ea = NULL, *eb = NULL;
        assert_int_equal(lb_test_run(&ea, "'%s' eval --model '%s' --tokens '%s' --ctx 256 "
                                     "--json", lb_test_lowbit_bin(), q, evalf), 0);
        assert_int_equal(lb_test_run(&eb, "'%s' eval --model '%s' --tokens '%s' --ctx 256 "
                                     "--json", lb_test_lowbit_bin(), x, evalf), 0);
        json_t *a = json_loads(ea, 0, NULL), *b = json_loads(eb, 0, NULL);
        if (!a || !b)
            fail_msg("eval output: %s / %s", ea, eb);
        double pa = json_real_value(json_object_get(a, "ppl"));
        double pb = json_real_value(json_object_get(b, "ppl"));
        double na = json_real_value(json_object_get(a, "nll"));
        double nb = json_real_value(json_object_get(b, "nll"));
        if (!(pa == pb && na == nb && pa > 1))
            fail_msg("%s: packed eval %s != export eval %s", variants[v], ea, eb);
        json_decref(a);
        json_decref(b);
        free(ea);
        free(eb);
        lb_test_rmdir(&dir);
    }
}

static json_t *load_json_in(const char *dir, const char *name)
{
    char p[4300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    json_t *j = json_load_file(p, 0, NULL);
    if (!j)
        fail_msg("%s: not JSON", p);
    return j;
}

/* The last line of `out`, parsed. */
static json_t *summary_of(const char *out)
{
    const char *last = out + strlen(out) - 1;
    while (last > out && last[-1] != '\n')
        last--;
    json_t *o = json_loads(last, 0, NULL);
    if (!o)
        fail_msg("summary is not JSON: %s", last);
    return o;
}

/* mean KL(fp || model) of `lowbit eval --ref` on the tokens in `tok`. */
static double eval_kl(const char *model, const char *tok)
{
    char *o = NULL;
    int rc = lb_test_run(&o, "'%s' eval --model '%s' --tokens '%s' --ctx 256 --ref '%s' --json "
                         "--threads 2", lb_test_lowbit_bin(), model, tok, model_dir);
    if (rc != 0)
        fail_msg("eval %s: exit %d: %s", model, rc, o ? o : "");
    json_t *j = json_loads(o, 0, NULL);
    if (!j)
        fail_msg("eval output: %s", o);
    double kl = json_real_value(json_object_get(j, "kl"));
    json_decref(j);
    free(o);
    return kl;
}

/* --quantize-lm-head on the tied stories260K (gptq 4-bit): 36 packed tensors,
 * lm_head with its own bpw and the manifest saying it is included, config
 * untied, the embedding and every block tensor stored exactly as without the
 * flag, lm_head dequantizes close to (not equal to) the embedding, KL vs fp
 * finite and larger than without the flag, 1 and 2 threads byte-identical, and
 * an --override for lm_head.weight picks its method. */
static void test_quantize_lm_head(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char evalf[4096];
    LB_TEST_REQUIRE_SHARED(evalf, "data/stories260K-eval.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], b[4200], c[4200], r[4200], tok[4200];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(c, sizeof c, "%s/c", dir);
    snprintf(r, sizeof r, "%s/r", dir);
    snprintf(tok, sizeof tok, "%s/eval16.u32", dir);
    /* 16 of the 64 eval windows keep the KL evals short */
    uint32_t *ids = NULL;
    int64_t n = 0;
    lb_err err;
    assert_int_equal(lb_tokens_load(evalf, &ids, &n, &err), 0);
    assert_true(n >= 16 * 256);
    assert_int_equal(lb_tokens_write_u32(tok, ids, 16 * 256, &err), 0);
    free(ids);

    char *out = NULL;
    assert_int_equal(quantize(&out, a, "--method gptq --bits 4 --threads 2"), 0);
    free(out);
    int rc = quantize(&out, b, "--method gptq --bits 4 --threads 2 --quantize-lm-head --json");
    if (rc != 0)
        fail_msg("exit %d: %s", rc, out ? out : "");
    json_t *sum = summary_of(out);
    free(out);
    assert_int_equal(json_integer_value(json_object_get(sum, "quantized_linears")), 36);
    assert_true(json_is_true(json_object_get(sum, "lm_head_included")));
    double head_bpw = json_real_value(json_object_get(sum, "lm_head_bpw"));
    assert_true(head_bpw > 4.0 && head_bpw < 5.0);
    json_decref(sum);

    lb_packed_summary ps;
    if (lb_packed_verify(b, &ps, &err) != 0)
        fail_msg("verify: %s", err.msg);
    assert_true(ps.lm_head_packed);
    assert_true(ps.lm_head_bpw == head_bpw);
    assert_int_equal(ps.n_quantized, 36);
    assert_int_equal(lb_packed_verify(a, &ps, &err), 0);
    assert_false(ps.lm_head_packed);

    /* config: untied only with the flag; per_tensor lists lm_head */
    json_t *ca = load_json_in(a, "config.json"), *cb = load_json_in(b, "config.json");
    assert_true(json_is_true(json_object_get(ca, "tie_word_embeddings")));
    assert_true(json_is_false(json_object_get(cb, "tie_word_embeddings")));
    json_t *per = json_object_get(json_object_get(cb, "quantization_config"), "per_tensor");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(per, "lm_head.weight"), "method")), "gptq");
    json_decref(ca);
    json_decref(cb);

    /* manifest: lm_head packed with its bpw; everything else byte-identical to
     * the run without the flag (the blocks do not see lm_head) */
    json_t *ma = load_json_in(a, "manifest.json"), *mb = load_json_in(b, "manifest.json");
    json_t *qa = json_object_get(ma, "quantized"), *qb = json_object_get(mb, "quantized");
    assert_null(json_object_get(qa, "lm_head_included"));
    assert_true(json_is_true(json_object_get(qb, "lm_head_included")));
    json_t *ta = json_object_get(ma, "tensors"), *tb = json_object_get(mb, "tensors");
    json_t *hb = json_object_get(tb, "lm_head.weight");
    assert_null(json_object_get(ta, "lm_head.weight"));
    assert_string_equal(json_string_value(json_object_get(hb, "stored")), "packed");
    assert_true(json_real_value(json_object_get(hb, "bpw")) == head_bpw);
    assert_int_equal(json_object_size(tb), json_object_size(ta) + 1);
    const char *key;
    json_t *va;
    json_object_foreach(ta, key, va) {
        json_t *vb = json_object_get(tb, key);
        if (!vb)
            fail_msg("%s missing with --quantize-lm-head", key);
        assert_string_equal(json_string_value(json_object_get(va, "sha256")),
                            json_string_value(json_object_get(vb, "sha256")));
    }
    json_decref(ma);
    json_decref(mb);

    /* the packed model: lm_head is its own matrix near the fp embedding */
    lb_model *src = NULL, *qm = NULL;
    assert_int_equal(lb_packed_model_open(&src, model_dir, &err), 0);
    if (lb_packed_model_open(&qm, b, &err) != 0)
        fail_msg("%s", err.msg);
    lb_head_weights hs, hq;
    assert_int_equal(lb_model_load_head(src, &hs, &err), 0);
    assert_int_equal(lb_model_load_head(qm, &hq, &err), 0);
    assert_true(hq.lm_head != hq.embed);
    const size_t nw = (size_t)hs.vocab * (size_t)hs.dim;
    assert_memory_equal(hs.embed, hq.embed, nw * sizeof(float));
    double num = 0, den = 0;
    for (size_t i = 0; i < nw; i++) {
        double d = (double)hq.lm_head[i] - (double)hs.embed[i];
        num += d * d;
        den += (double)hs.embed[i] * (double)hs.embed[i];
    }
    double rel = sqrt(num / den);
    if (!(rel > 0 && rel < 0.2))
        fail_msg("lm_head relative error %g not in (0, 0.2)", rel);
    lb_head_weights_free(&hs);
    lb_head_weights_free(&hq);
    lb_model_free(&src);
    lb_model_free(&qm);

    /* quality: quantizing lm_head too costs KL */
    double kla = eval_kl(a, tok), klb = eval_kl(b, tok);
    if (!(isfinite(klb) && klb > kla && kla > 0))
        fail_msg("KL without the flag %g, with %g: expected finite, with > without > 0", kla,
                 klb);

    /* 1 thread: the same bytes */
    assert_int_equal(quantize(&out, c, "--method gptq --bits 4 --threads 1 --quantize-lm-head"),
                     0);
    free(out);
    assert_int_equal(lb_test_run(&out, "cmp '%s/model.safetensors' '%s/model.safetensors' && "
                                 "cmp '%s/manifest.json' '%s/manifest.json' && cmp "
                                 "'%s/config.json' '%s/config.json'", b, c, b, c, b, c), 0);
    free(out);

    /* an override for lm_head.weight only */
    rc = quantize(&out, r, "--method gptq --bits 4 --threads 2 --quantize-lm-head "
                  "--override 'lm_head\\.weight=rtn:bits=8'");
    if (rc != 0)
        fail_msg("override: exit %d: %s", rc, out ? out : "");
    free(out);
    json_t *cr = load_json_in(r, "config.json");
    per = json_object_get(json_object_get(cr, "quantization_config"), "per_tensor");
    json_t *h = json_object_get(per, "lm_head.weight");
    assert_string_equal(json_string_value(json_object_get(h, "method")), "rtn");
    assert_true(json_real_value(json_object_get(h, "bpw")) > 8.0);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(per, "model.layers.4.mlp.down_proj.weight"),
                            "method")), "gptq");
    json_decref(cr);
    lb_test_rmdir(&dir);
}

/* An untied source (`lowbit synth --preset tiny`, bf16): --quantize-lm-head
 * replaces its lm_head.weight in place (same tensor order, nothing appended),
 * config stays untied, and packed eval == f32 export eval. */
static void test_quantize_lm_head_untied(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char evalf[4096];
    LB_TEST_REQUIRE_SHARED(evalf, "data/stories260K-eval.u32");
    char *dir = lb_test_mkdtemp();
    char syn[4200], q[4200], x[4200], tok[4200];
    snprintf(syn, sizeof syn, "%s/syn", dir);
    snprintf(q, sizeof q, "%s/q", dir);
    snprintf(x, sizeof x, "%s/x", dir);
    snprintf(tok, sizeof tok, "%s/eval8.u32", dir);
    uint32_t *ids = NULL;
    int64_t n = 0;
    lb_err err;
    assert_int_equal(lb_tokens_load(evalf, &ids, &n, &err), 0);
    assert_int_equal(lb_tokens_write_u32(tok, ids, 8 * 256, &err), 0);
    free(ids);
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' synth --out '%s' --preset tiny 2>&1 && '%s' quantize "
                         "--model '%s' --calib '%s' --out '%s' --ctx 128 --nsamples 8 --method "
                         "gptq --bits 4 --threads 2 --quantize-lm-head 2>&1 && '%s' export "
                         "--model '%s' --out '%s' --dtype f32 2>&1", bin, syn, bin, syn, calib,
                         q, bin, q, x);
    if (rc != 0)
        fail_msg("exit %d: %s", rc, out ? out : "");
    assert_non_null(strstr(out, "lm_head included"));
    free(out);
    lb_packed_summary ps;
    if (lb_packed_verify(q, &ps, &err) != 0)
        fail_msg("%s", err.msg);
    assert_true(ps.lm_head_packed);
    json_t *cq = load_json_in(q, "config.json");
    assert_true(json_is_false(json_object_get(cq, "tie_word_embeddings")));
    json_decref(cq);
    /* manifest tensors: the source's, in order, lm_head.weight packed in its place */
    lb_st *src = NULL;
    assert_int_equal(lb_st_open(&src, syn, &err), 0);
    json_t *man = load_json_in(q, "manifest.json");
    json_t *tens = json_object_get(man, "tensors");
    assert_int_equal(json_object_size(tens), lb_st_count(src));
    assert_non_null(lb_st_find(src, "lm_head.weight"));
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(tens, "lm_head.weight"), "stored")), "packed");
    json_decref(man);
    lb_st_free(&src);
    char *ea = NULL, *eb = NULL;
    assert_int_equal(lb_test_run(&ea, "'%s' eval --model '%s' --tokens '%s' --ctx 256 --json "
                                 "--threads 2", bin, q, tok), 0);
    assert_int_equal(lb_test_run(&eb, "'%s' eval --model '%s' --tokens '%s' --ctx 256 --json "
                                 "--threads 2", bin, x, tok), 0);
    json_t *a = json_loads(ea, 0, NULL), *b = json_loads(eb, 0, NULL);
    if (!a || !b)
        fail_msg("eval output: %s / %s", ea, eb);
    double na = json_real_value(json_object_get(a, "nll"));
    double nb = json_real_value(json_object_get(b, "nll"));
    if (!(na == nb && na > 0))
        fail_msg("packed eval %s != export eval %s", ea, eb);
    json_decref(a);
    json_decref(b);
    free(ea);
    free(eb);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_method),
        cmocka_unit_test(test_threads_byte_identical),
        cmocka_unit_test(test_override_and_true_sequential),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_packed_eval_equals_export_eval),
        cmocka_unit_test(test_quantize_lm_head),
        cmocka_unit_test(test_quantize_lm_head_untied),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
