/* Packed checkpoint end to end on stories260K: every linear quantized directly
 * through the registry (every registered method in turn, 2-4 bits, every other one
 * with --rotate hadamard), merged with lb_packed_write,
 * then read back through lb_model, exported, verified and corrupted. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_dtype.h"
#include "lb_eval.h"
#include "lb_model.h"
#include "lb_packed.h"
#include "lb_qpacked_io.h"
#include "lb_sha256.h"
#include "lb_quant.h"
#include "lb_rotate.h"
#include "lb_test_model.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

#define NLIN_MAX 64

typedef struct {
    char *dir;               /* temp dir */
    char packed[4200];       /* packed checkpoint */
    char src[4096];
    int n;
    char names[NLIN_MAX][128];
    lb_qresult res[NLIN_MAX];
    uint64_t bytes;
    int64_t weights;
    lb_packed_entry entries[NLIN_MAX];
    char paths[NLIN_MAX][4300];
} fixture;

static fixture fx;

/* H = XᵀX of random activations X (2*cols, cols): full rank, not diagonal. */
static float *random_hessian(int64_t cols, uint64_t seed)
{
    int64_t n = 2 * cols;
    float *X = malloc((size_t)(n * cols) * sizeof *X);
    float *H = calloc((size_t)(cols * cols), sizeof *H);
    for (int64_t i = 0; i < n * cols; i++)
        X[i] = lb_test_rand_normal(&seed);
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++) {
            double s = 0;
            for (int64_t r = 0; r < n; r++)
                s += (double)X[r * cols + a] * (double)X[r * cols + b];
            H[a * cols + b] = (float)s;
        }
    free(X);
    return H;
}

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (!lb_test_shared_path(fx.src, sizeof fx.src, "models/stories260K"))
        return 0; /* tests skip themselves */
    fx.dir = lb_test_mkdtemp();
    snprintf(fx.packed, sizeof fx.packed, "%s/packed", fx.dir);
    lb_err err = {0};
    lb_model *m = NULL;
    if (lb_packed_model_open(&m, fx.src, &err))
        return print_error("%s\n", err.msg), -1;
    const lb_config *cfg = lb_model_config(m);
    lb_packed_entry *entries = fx.entries;
    char(*paths)[4300] = fx.paths;
    for (int32_t layer = 0; layer < cfg->num_hidden_layers; layer++) {
        lb_block_weights bw;
        if (lb_model_load_block(m, layer, &bw, &err))
            return print_error("%s\n", err.msg), -1;
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            int k = fx.n++;
            int64_t rows, cols;
            lb_linear_shape(cfg, (lb_linear)l, &rows, &cols);
            lb_model_linear_tensor_name(fx.names[k], sizeof fx.names[k], layer, (lb_linear)l,
                                        &err);
            lb_qopts o;
            lb_qopts_init(&o);
            o.bits = 2 + k % 3;
            /* every registered method, in turn */
            const lb_qmethod *all[16];
            int nm = lb_qmethod_list(all, 16);
            const lb_qmethod *meth = all[k % nm];
            int grouped = k % 4 == 1 && (!strcmp(meth->name, "rtn") || !strcmp(meth->name, "gptq"));
            o.group_size = grouped ? 32 : 0;
            /* every other linear stored rotated (--rotate hadamard): load, export and
             * eval below must fold the rotation back */
            const int rotated = k % 2 == 1;
            o.rotate = rotated ? LB_ROTATE_HADAMARD : LB_ROTATE_NONE;
            o.seed = (uint64_t)k;
            float *H = random_hessian(cols, (uint64_t)k + 1);
            int rc = lb_qmethod_quantize(meth, lb_block_linear(&bw, (lb_linear)l), rows, cols,
                                         H, &o, &fx.res[k], &err);
            free(H);
            if (rc)
                return print_error("%s: %s\n", meth->name, err.msg), -1;
            memset(&entries[k], 0, sizeof entries[k]);
            entries[k].name = fx.names[k];
            entries[k].options = grouped ? (rotated ? "group_size=32,rotate=hadamard" : "group_size=32")
                                         : (rotated ? "rotate=hadamard" : "");
            if (k % 5 == 0) { /* some linears come from artifact files */
                snprintf(paths[k], sizeof paths[k], "%s/art%d.safetensors", fx.dir, k);
                if (lb_qpacked_io_save(paths[k], &fx.res[k].packed, &err))
                    return print_error("%s\n", err.msg), -1;
                entries[k].packed_path = paths[k];
            } else {
                entries[k].packed = &fx.res[k].packed;
            }
            fx.bytes += lb_qpacked_io_nbytes(&fx.res[k].packed);
            fx.weights += rows * cols;
        }
        lb_block_weights_free(&bw);
    }
    lb_packed_info info = {.method = "mixed", .bits = 3.0, .extra_json = "{\"ctx\":256}"};
    lb_packed_summary sum;
    if (lb_packed_write(fx.packed, m, entries, fx.n, &info, &sum, &err))
        return print_error("%s\n", err.msg), -1;
    lb_model_free(&m);
    if (sum.quantized_bytes != fx.bytes || sum.quantized_weights != fx.weights ||
        sum.n_quantized != fx.n)
        return print_error("summary disagrees\n"), -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int k = 0; k < fx.n; k++)
        lb_qresult_free(&fx.res[k]);
    if (fx.dir)
        lb_test_rmdir(&fx.dir);
    return 0;
}

#define REQUIRE_FIXTURE()                                                                     \
    do {                                                                                      \
        if (!fx.dir)                                                                          \
            skip();                                                                           \
    } while (0)

static void assert_same_floats(const float *a, const float *b, int64_t n)
{
    assert_memory_equal(a, b, (size_t)n * sizeof(float));
}

/* lb_model reads the packed checkpoint: each linear is the method's W_hat bit
 * for bit, everything else the source tensor. */
static void test_packed_load_equals_w_hat(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    lb_err err = {0};
    lb_model *p = NULL, *s = NULL;
    assert_int_equal(lb_packed_model_open(&p, fx.packed, &err), 0);
    assert_int_equal(lb_packed_model_open(&s, fx.src, &err), 0);
    assert_true(lb_model_is_packed(p));
    assert_false(lb_model_is_packed(s));
    const lb_config *cfg = lb_model_config(p);
    int k = 0;
    for (int32_t layer = 0; layer < cfg->num_hidden_layers; layer++) {
        lb_block_weights bp, bs;
        assert_int_equal(lb_model_load_block(p, layer, &bp, &err), 0);
        assert_int_equal(lb_model_load_block(s, layer, &bs, &err), 0);
        for (int l = 0; l < LB_LINEAR_COUNT; l++, k++) {
            int64_t rows, cols;
            lb_linear_shape(cfg, (lb_linear)l, &rows, &cols);
            assert_same_floats(lb_block_linear(&bp, (lb_linear)l), fx.res[k].W_hat, rows * cols);
            assert_true(memcmp(lb_block_linear(&bp, (lb_linear)l),
                               lb_block_linear(&bs, (lb_linear)l),
                               (size_t)(rows * cols) * sizeof(float)) != 0);
        }
        assert_same_floats(bp.attn_norm, bs.attn_norm, cfg->hidden_size);
        assert_same_floats(bp.ffn_norm, bs.ffn_norm, cfg->hidden_size);
        lb_block_weights_free(&bp);
        lb_block_weights_free(&bs);
    }
    lb_head_weights hp, hs;
    assert_int_equal(lb_model_load_head(p, &hp, &err), 0);
    assert_int_equal(lb_model_load_head(s, &hs, &err), 0);
    assert_same_floats(hp.embed, hs.embed, hp.vocab * hp.dim);
    assert_same_floats(hp.final_norm, hs.final_norm, hp.dim);
    lb_head_weights_free(&hp);
    lb_head_weights_free(&hs);
    lb_model_free(&p);
    lb_model_free(&s);
}

static json_t *load_json(const char *dir, const char *name)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j)
        fail_msg("%s: %s", path, jerr.text);
    return j;
}

/* config.json and manifest.json contents; bpw = 8 * stored bytes / weights. */
static void test_config_and_manifest(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    json_t *cfg = load_json(fx.packed, "config.json");
    json_t *qc = json_object_get(cfg, "quantization_config");
    assert_string_equal(json_string_value(json_object_get(qc, "quant_method")), "lowbit");
    assert_int_equal(json_integer_value(json_object_get(qc, "format_version")), 1);
    assert_string_equal(json_string_value(json_object_get(qc, "method")), "mixed");
    assert_int_equal(json_integer_value(json_object_get(qc, "ctx")), 256);
    assert_int_equal(json_integer_value(json_object_get(cfg, "hidden_size")), 64);
    json_t *pt = json_object_get(qc, "per_tensor");
    assert_int_equal(json_object_size(pt), fx.n);

    json_t *man = load_json(fx.packed, "manifest.json");
    assert_int_equal(json_integer_value(json_object_get(man, "lowbit_format")), 1);
    json_t *q = json_object_get(man, "quantized");
    assert_int_equal(json_integer_value(json_object_get(q, "bytes")), (json_int_t)fx.bytes);
    assert_int_equal(json_integer_value(json_object_get(q, "weights")), fx.weights);
    double bpw = json_real_value(json_object_get(q, "bpw"));
    assert_true(bpw == 8.0 * (double)fx.bytes / (double)fx.weights);
    json_t *tensors = json_object_get(man, "tensors");
    for (int k = 0; k < fx.n; k++) {
        json_t *t = json_object_get(tensors, fx.names[k]);
        assert_non_null(t);
        const lb_qpacked *p = &fx.res[k].packed;
        uint64_t b = lb_qpacked_io_nbytes(p);
        assert_int_equal(json_integer_value(json_object_get(t, "bytes")), (json_int_t)b);
        double want = 8.0 * (double)b / (double)(p->rows * p->cols);
        assert_true(json_real_value(json_object_get(t, "bpw")) == want);
        assert_true(fabs(want - fx.res[k].bpw) < 1e-12); /* the method's own accounting */
        assert_string_equal(json_string_value(json_object_get(t, "method")), p->method);
        json_t *ptk = json_object_get(pt, fx.names[k]);
        assert_string_equal(json_string_value(json_object_get(ptk, "method")), p->method);
        /* sha256 of the stored bytes = of the fields in order */
        char hex[LB_SHA256_HEX];
        lb_sha256 sh;
        uint8_t d[LB_SHA256_DIGEST];
        lb_sha256_init(&sh);
        for (int32_t f = 0; f < p->nfields; f++)
            lb_sha256_update(&sh, p->fields[f].data, p->fields[f].nbytes);
        lb_sha256_final(&sh, d);
        lb_sha256_to_hex(d, hex);
        assert_string_equal(json_string_value(json_object_get(t, "sha256")), hex);
    }
    json_t *ms = json_object_get(json_object_get(man, "files"), "model.safetensors");
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors", fx.packed);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(json_integer_value(json_object_get(ms, "bytes")), (json_int_t)sb.st_size);
    /* nothing staged is left behind */
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "ls -A '%s'", fx.packed), 0);
    assert_string_equal(out, "config.json\nmanifest.json\nmodel.safetensors\n");
    free(out);
    json_decref(cfg);
    json_decref(man);

    lb_packed_summary s;
    lb_err err = {0};
    assert_int_equal(lb_packed_verify(fx.packed, &s, &err), 0);
    assert_int_equal(s.quantized_bytes, fx.bytes);
    assert_true(s.bpw == bpw);
    assert_int_equal(s.file_bytes, (uint64_t)sb.st_size);
}

/* Same inputs -> byte-identical checkpoint files. */
static void test_write_deterministic(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    lb_err err = {0};
    lb_model *m = NULL;
    assert_int_equal(lb_packed_model_open(&m, fx.src, &err), 0);
    char again[4400];
    snprintf(again, sizeof again, "%s/again", fx.dir);
    lb_packed_info info = {.method = "mixed", .bits = 3.0, .extra_json = "{\"ctx\":256}"};
    assert_int_equal(lb_packed_write(again, m, fx.entries, fx.n, &info, NULL, &err), 0);
    /* and once more over the existing checkpoint (replaced in place) */
    assert_int_equal(lb_packed_write(again, m, fx.entries, fx.n, &info, NULL, &err), 0);
    lb_model_free(&m);
    static const char *const files[] = {"config.json", "manifest.json", "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char *out = NULL;
        int rc = lb_test_run(&out, "cmp '%s/%s' '%s/%s'", fx.packed, files[i], again, files[i]);
        if (rc)
            fail_msg("%s differs: %s", files[i], out ? out : "");
        free(out);
    }
    char *ls = NULL;
    assert_int_equal(lb_test_run(&ls, "ls -A '%s'", again), 0);
    assert_string_equal(ls, "config.json\nmanifest.json\nmodel.safetensors\n");
    free(ls);
}

/* export f32 loads as a plain model with the same floats; eval is identical. */
static void test_export_f32_eval_equal(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    char exp_dir[4400], tokens_path[4096];
    LB_TEST_REQUIRE_SHARED(tokens_path, "data/stories260K-eval.u32");
    snprintf(exp_dir, sizeof exp_dir, "%s/export32", fx.dir);
    lb_err err = {0};
    assert_int_equal(lb_packed_export(fx.packed, exp_dir, LB_DTYPE_F32, &err), 0);
    json_t *cfg = load_json(exp_dir, "config.json");
    assert_null(json_object_get(cfg, "quantization_config"));
    assert_string_equal(json_string_value(json_object_get(cfg, "torch_dtype")), "float32");
    json_decref(cfg);

    lb_model *p = NULL, *e = NULL;
    assert_int_equal(lb_packed_model_open(&p, fx.packed, &err), 0);
    assert_int_equal(lb_packed_model_open(&e, exp_dir, &err), 0);
    assert_false(lb_model_is_packed(e));
    const lb_config *c = lb_model_config(p);
    for (int32_t layer = 0; layer < c->num_hidden_layers; layer++) {
        lb_block_weights a, b;
        assert_int_equal(lb_model_load_block(p, layer, &a, &err), 0);
        assert_int_equal(lb_model_load_block(e, layer, &b, &err), 0);
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            int64_t rows, cols;
            lb_linear_shape(c, (lb_linear)l, &rows, &cols);
            assert_same_floats(lb_block_linear(&a, (lb_linear)l), lb_block_linear(&b, (lb_linear)l),
                               rows * cols);
        }
        lb_block_weights_free(&a);
        lb_block_weights_free(&b);
    }
    uint32_t *tok = NULL;
    int64_t n = 0;
    assert_int_equal(lb_tokens_load(tokens_path, &tok, &n, &err), 0);
    int64_t use = n < 8 * 256 ? n : 8 * 256;
    lb_eval_opts o = {.ctx = 256, .batch = 4};
    lb_eval_result rp, re;
    assert_int_equal(lb_eval_run(p, NULL, tok, use, &o, &rp, &err), 0);
    assert_int_equal(lb_eval_run(e, NULL, tok, use, &o, &re, &err), 0);
    assert_true(rp.nll_sum == re.nll_sum); /* exactly, not approximately */
    assert_true(rp.ppl == re.ppl);
    assert_true(isfinite(rp.ppl) && rp.ppl > 1.0);
    free(tok);
    lb_model_free(&p);
    lb_model_free(&e);
}

/* f16 / bf16 exports: each value is the f32 export's value rounded. */
static void test_export_half(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    lb_err err = {0};
    const lb_dtype dts[2] = {LB_DTYPE_F16, LB_DTYPE_BF16};
    lb_model *p = NULL;
    assert_int_equal(lb_packed_model_open(&p, fx.packed, &err), 0);
    lb_block_weights a;
    assert_int_equal(lb_model_load_block(p, 1, &a, &err), 0);
    for (int i = 0; i < 2; i++) {
        char d[4400];
        snprintf(d, sizeof d, "%s/export%d", fx.dir, i);
        assert_int_equal(lb_packed_export(fx.packed, d, dts[i], &err), 0);
        lb_model *e = NULL;
        assert_int_equal(lb_packed_model_open(&e, d, &err), 0);
        char name[128];
        lb_model_linear_tensor_name(name, sizeof name, 1, LB_LINEAR_UP, &err);
        const lb_st_tensor *t = lb_st_find(lb_model_tensors(e), name);
        assert_non_null(t);
        assert_int_equal(t->dtype, dts[i]);
        lb_block_weights b;
        assert_int_equal(lb_model_load_block(e, 1, &b, &err), 0);
        int64_t rows, cols;
        lb_linear_shape(lb_model_config(p), LB_LINEAR_UP, &rows, &cols);
        for (int64_t j = 0; j < rows * cols; j++) {
            float v = a.w_up[j];
            float want = i == 0 ? lb_f16_to_f32(lb_f32_to_f16(v)) : lb_bf16_to_f32(lb_f32_to_bf16(v));
            assert_true(b.w_up[j] == want);
        }
        lb_block_weights_free(&b);
        lb_model_free(&e);
    }
    lb_block_weights_free(&a);
    lb_model_free(&p);
}

static void copy_dir(const char *from, const char *to)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "rm -rf '%s' && cp -r '%s' '%s' && chmod -R u+w '%s'", to, from,
                         to, to);
    free(out);
    assert_int_equal(rc, 0);
}

/* A flipped byte, a missing manifest or a truncated file are caught. */
static void test_corruption_detected(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    char bad[4400], path[4500];
    lb_err err = {0};
    lb_model *m = NULL;
    snprintf(bad, sizeof bad, "%s/bad", fx.dir);

    /* flip one bit of the last data byte (a packed or plain tensor's byte) */
    copy_dir(fx.packed, bad);
    snprintf(path, sizeof path, "%s/model.safetensors", bad);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, -1, SEEK_END);
    int c = fgetc(f);
    fseek(f, -1, SEEK_END);
    fputc(c ^ 0x10, f);
    fclose(f);
    assert_int_equal(lb_packed_verify(bad, NULL, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "checksum mismatch"));

    /* the same flip with the file checksum edited away is still named per tensor */
    json_t *man = load_json(bad, "manifest.json");
    char hex[LB_SHA256_HEX];
    assert_int_equal(lb_sha256_file(path, hex, &err), 0);
    json_object_set_new(json_object_get(json_object_get(man, "files"), "model.safetensors"),
                        "sha256", json_string(hex));
    snprintf(path, sizeof path, "%s/manifest.json", bad);
    assert_int_equal(json_dump_file(man, path, 0), 0);
    json_decref(man);
    assert_int_equal(lb_packed_verify(bad, NULL, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "checksum mismatch"));
    assert_non_null(strstr(err.msg, "tensor") ? err.msg : strstr(err.msg, "model."));

    /* missing manifest: incomplete, refused by lb_model_open */
    unlink(path);
    assert_int_equal(lb_packed_model_open(&m, bad, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "incomplete"));
    assert_null(m);

    /* truncated model.safetensors: size disagrees with the manifest */
    copy_dir(fx.packed, bad);
    snprintf(path, sizeof path, "%s/model.safetensors", bad);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(truncate(path, sb.st_size - 3), 0);
    assert_int_not_equal(lb_packed_model_open(&m, bad, &err), 0);
    assert_null(m);
    assert_int_not_equal(lb_packed_verify(bad, NULL, &err), 0);

    /* a packed checkpoint of a future format version */
    copy_dir(fx.packed, bad);
    json_t *cfg = load_json(bad, "config.json");
    json_object_set_new(json_object_get(cfg, "quantization_config"), "format_version",
                        json_integer(2));
    snprintf(path, sizeof path, "%s/config.json", bad);
    assert_int_equal(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
    assert_int_equal(lb_packed_model_open(&m, bad, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "format_version 2"));

    /* an unknown quant_method */
    cfg = load_json(bad, "config.json");
    json_object_set_new(json_object_get(cfg, "quantization_config"), "quant_method",
                        json_string("gptq"));
    assert_int_equal(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
    assert_int_equal(lb_packed_model_open(&m, bad, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "gptq"));
}

/* Bad merger inputs fail cleanly and leave no checkpoint behind. */
static void test_write_rejects_bad_entries(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    lb_err err = {0};
    lb_model *m = NULL;
    assert_int_equal(lb_packed_model_open(&m, fx.src, &err), 0);
    char out[4400];
    snprintf(out, sizeof out, "%s/fail", fx.dir);
    lb_packed_info info = {.method = "rtn", .bits = 2};
    lb_packed_entry e[2] = {{.name = fx.names[0], .packed = &fx.res[0].packed},
                            {.name = fx.names[1], .packed = &fx.res[1].packed}};
    /* wrong shape: q_proj's packed matrix for k_proj */
    e[1].packed = &fx.res[0].packed;
    assert_int_equal(lb_packed_write(out, m, e, 2, &info, NULL, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, fx.names[1]));
    /* duplicate */
    e[1].name = fx.names[0];
    assert_int_equal(lb_packed_write(out, m, e, 2, &info, NULL, &err), LB_EINVAL);
    /* not in the model */
    e[1].name = "model.layers.99.mlp.up_proj.weight";
    e[1].packed = &fx.res[1].packed;
    assert_int_equal(lb_packed_write(out, m, e, 2, &info, NULL, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "layers.99"));
    /* into the source directory itself */
    assert_int_equal(lb_packed_write(fx.src, m, e, 1, &info, NULL, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "source"));
    /* source already packed */
    lb_model *p = NULL;
    assert_int_equal(lb_packed_model_open(&p, fx.packed, &err), 0);
    assert_int_equal(lb_packed_write(out, p, e, 1, &info, NULL, &err), LB_EINVAL);
    lb_model_free(&p);
    char *ls = NULL;
    assert_int_equal(lb_test_run(&ls, "ls -A '%s'", out), 0);
    assert_string_equal(ls ? ls : "", ""); /* created, but empty: no manifest, no temp */
    free(ls);
    lb_model_free(&m);
}

/* Quantizes the model's lm_head (the embedding when tied) with rtn 4-bit,
 * writes a checkpoint with it plus block 0's q_proj, and checks: config
 * untied, manifest lm_head_included and lm_head's own bpw, the packed model's
 * lm_head is dequantize(packed) bit for bit and its embedding the source's,
 * verify agrees, and a manifest that misstates lm_head_included is refused. */
static void check_lm_head_write(const char *src_dir, const char *out, const char *q_name,
                                const lb_qpacked *q_packed)
{
    lb_err err = {0};
    lb_model *m = NULL;
    assert_int_equal(lb_packed_model_open(&m, src_dir, &err), 0);
    const lb_config *cfg = lb_model_config(m);
    lb_head_weights hs;
    assert_int_equal(lb_model_load_head(m, &hs, &err), 0);
    const int64_t nw = hs.vocab * hs.dim;
    lb_qopts o;
    lb_qopts_init(&o);
    o.bits = 4;
    lb_qresult r;
    float *H = random_hessian(hs.dim, 99);
    assert_int_equal(lb_qmethod_find("rtn")->quantize(hs.lm_head, hs.vocab, hs.dim, H, &o, &r,
                                                      &err), 0);
    free(H);
    float *w_hat = malloc((size_t)nw * sizeof *w_hat);
    assert_int_equal(lb_qmethod_find("rtn")->dequantize(&r.packed, w_hat, &err), 0);
    lb_packed_entry e[2] = {{.name = q_name, .packed = q_packed},
                            {.name = "lm_head.weight", .packed = &r.packed, .options = "bits=4"}};
    lb_packed_info info = {.method = "rtn", .bits = 4};
    lb_packed_summary sum;
    /* a wrong-shape lm_head is refused */
    e[1].packed = q_packed;
    assert_int_equal(lb_packed_write(out, m, e, 2, &info, &sum, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "lm_head.weight"));
    e[1].packed = &r.packed;
    if (lb_packed_write(out, m, e, 2, &info, &sum, &err))
        fail_msg("%s", err.msg);
    assert_true(sum.lm_head_packed);
    assert_int_equal(sum.n_quantized, 2);
    double bpw = 8.0 * (double)lb_qpacked_io_nbytes(&r.packed) / (double)nw;
    assert_true(sum.lm_head_bpw == bpw);
    json_t *c = load_json(out, "config.json"), *man = load_json(out, "manifest.json");
    assert_true(json_is_false(json_object_get(c, "tie_word_embeddings")));
    assert_true(json_is_true(json_object_get(json_object_get(man, "quantized"),
                                             "lm_head_included")));
    json_t *th = json_object_get(json_object_get(man, "tensors"), "lm_head.weight");
    assert_string_equal(json_string_value(json_object_get(th, "stored")), "packed");
    assert_true(json_real_value(json_object_get(th, "bpw")) == bpw);
    json_decref(c);
    lb_packed_summary vs;
    if (lb_packed_verify(out, &vs, &err))
        fail_msg("%s", err.msg);
    assert_true(vs.lm_head_packed);
    assert_true(vs.lm_head_bpw == bpw);

    lb_model *pm = NULL;
    if (lb_packed_model_open(&pm, out, &err))
        fail_msg("%s", err.msg);
    lb_head_weights hq;
    assert_int_equal(lb_model_load_head(pm, &hq, &err), 0);
    assert_true(hq.lm_head != hq.embed);
    assert_memory_equal(hq.lm_head, w_hat, (size_t)nw * sizeof(float));
    assert_memory_equal(hq.embed, hs.embed, (size_t)nw * sizeof(float));
    lb_head_weights_free(&hq);
    lb_model_free(&pm);

    /* a manifest that says lm_head is not included */
    json_object_del(json_object_get(man, "quantized"), "lm_head_included");
    char mp[4500];
    snprintf(mp, sizeof mp, "%s/manifest.json", out);
    assert_int_equal(json_dump_file(man, mp, JSON_INDENT(2)), 0);
    assert_int_equal(lb_packed_verify(out, NULL, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "lm_head_included"));
    json_decref(man);
    (void)cfg;
    free(w_hat);
    lb_qresult_free(&r);
    lb_head_weights_free(&hs);
    lb_model_free(&m);
}

/* lm_head as a packed entry: appended to a tied source (stories260K, which
 * stores no lm_head.weight), replacing the tensor of an untied one. */
static void test_lm_head_entry(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    char out[4400], usrc[4400];
    snprintf(out, sizeof out, "%s/lmhead-tied", fx.dir);
    check_lm_head_write(fx.src, out, fx.names[0], &fx.res[0].packed);

    /* an untied synthetic model with the same shapes as stories260K */
    snprintf(usrc, sizeof usrc, "%s/untied-src", fx.dir);
    lb_config cfg = lb_test_model_config(64, 8, 4, 8, 172, 512, 1);
    lb_err err = {0};
    assert_int_equal(mkdir(usrc, 0755), 0);
    if (lb_test_model_write(usrc, &cfg, 5, NULL, NULL, &err))
        fail_msg("%s", err.msg);
    snprintf(out, sizeof out, "%s/lmhead-untied", fx.dir);
    check_lm_head_write(usrc, out, fx.names[0], &fx.res[0].packed);
}

/* The CLI: packed eval == exported eval, printed identically; verify says OK. */
static void test_cli_eval_export_verify(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    char eval_path[4096], tokens[4400], exp_dir[4400];
    LB_TEST_REQUIRE_SHARED(eval_path, "data/stories260K-eval.u32");
    snprintf(exp_dir, sizeof exp_dir, "%s/cli_export", fx.dir);
    /* the first 8 eval sequences keep the two CLI evals short */
    snprintf(tokens, sizeof tokens, "%s/eval8.u32", fx.dir);
    uint32_t *tok = NULL;
    int64_t ntok = 0;
    lb_err err = {0};
    assert_int_equal(lb_tokens_load(eval_path, &tok, &ntok, &err), 0);
    assert_true(ntok >= 8 * 256);
    assert_int_equal(lb_tokens_write_u32(tokens, tok, 8 * 256, &err), 0);
    free(tok);
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' export --model '%s' --out '%s' --dtype f32", bin, fx.packed,
                         exp_dir);
    if (rc)
        fail_msg("export: %s", out ? out : "");
    free(out);
    out = NULL;
    rc = lb_test_run(&out, "'%s' verify --model '%s'", bin, fx.packed);
    if (rc || !strstr(out, "OK"))
        fail_msg("verify: %s", out ? out : "");
    free(out);
    char *a = NULL, *b = NULL;
    assert_int_equal(lb_test_run(&a, "'%s' eval --model '%s' --tokens '%s' --ctx 256 --json 2>/dev/null",
                                 bin, fx.packed, tokens), 0);
    assert_int_equal(lb_test_run(&b, "'%s' eval --model '%s' --tokens '%s' --ctx 256 --json 2>/dev/null",
                                 bin, exp_dir, tokens), 0);
    json_error_t jerr;
    json_t *ja = json_loads(a, 0, &jerr), *jb = json_loads(b, 0, &jerr);
    if (!ja || !jb)
        fail_msg("eval output: %s / %s", a, b);
    assert_true(json_real_value(json_object_get(ja, "ppl")) ==
                json_real_value(json_object_get(jb, "ppl")));
    assert_true(json_real_value(json_object_get(ja, "nll")) ==
                json_real_value(json_object_get(jb, "nll")));
    json_decref(ja);
    json_decref(jb);
    free(a);
    free(b);
    out = NULL;
    rc = lb_test_run(&out, "'%s' export --model '%s' --out '%s/x' --dtype f8", bin, fx.packed,
                     fx.dir);
    assert_int_equal(rc, 2);
    free(out);
    /* a damaged copy: verify fails with one line naming the problem */
    char bad[4400];
    snprintf(bad, sizeof bad, "%s/cli_bad", fx.dir);
    copy_dir(fx.packed, bad);
    out = NULL;
    assert_int_equal(lb_test_run(&out, "printf 'X' | dd of='%s/model.safetensors' bs=1 seek=100 "
                                 "conv=notrunc 2>/dev/null", bad), 0);
    free(out);
    out = NULL;
    rc = lb_test_run(&out, "'%s' verify --model '%s'", bin, bad);
    assert_int_equal(rc, 1);
    assert_non_null(out);
    assert_true(strncmp(out, "lowbit verify: ", 15) == 0);
    assert_non_null(strstr(out, "checksum mismatch"));
    assert_true(strchr(out, '\n') == out + strlen(out) - 1);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_load_equals_w_hat),
        cmocka_unit_test(test_config_and_manifest),
        cmocka_unit_test(test_write_deterministic),
        cmocka_unit_test(test_export_f32_eval_equal),
        cmocka_unit_test(test_export_half),
        cmocka_unit_test(test_corruption_detected),
        cmocka_unit_test(test_write_rejects_bad_entries),
        cmocka_unit_test(test_cli_eval_export_verify),
        cmocka_unit_test(test_lm_head_entry),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
