/* GGUF export end to end: stories260K quantized with RTN/GPTQ (group 32), exported
 * with `lowbit export --format gguf`, then
 *   - parsed back here: every direct-code tensor (Q4_0/Q4_1/Q8_0), dequantized the
 *     way ggml defines it and un-permuted, equals lowbit's dequantized weight;
 *   - loaded by llama.cpp through node-llama-cpp 3.21.1 (tests/llama-cpp-ref,
 *     installed by deploy/install-deps.sh): its next-token distributions on the
 *     eval windows agree with lowbit's forward on the packed checkpoint
 *     (max |log p| difference, KL, perplexity within 0.5%).
 * Figures print as JSON lines ("gguf_agreement"). Without node_modules the
 * llama.cpp cases skip, and fail under CI=true. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_dtype.h"
#include "lb_eval.h"
#include "lb_export.h"
#include "lb_forward.h"
#include "lb_kquant.h"
#include "lb_model.h"
#include "lb_packed.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

#define CTX 128
#define WINDOWS 8

/* ---- a minimal GGUF reader (tensor infos only) ---- */

typedef struct {
    char name[96];
    uint32_t ndim, type;
    uint64_t ne[4], offset;
} ginfo;

typedef struct {
    unsigned char *buf;
    size_t len, pos;
    int bad;
} rd;

static uint64_t rd_n(rd *r, size_t n)
{
    uint64_t v = 0;
    if (r->pos + n > r->len) {
        r->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)r->buf[r->pos + i] << (8 * i);
    r->pos += n;
    return v;
}

static void rd_skip_value(rd *r, uint32_t t)
{
    static const size_t sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t == 8) {
        uint64_t n = rd_n(r, 8);
        r->pos += n;
    } else if (t == 9) {
        uint32_t et = (uint32_t)rd_n(r, 4);
        uint64_t n = rd_n(r, 8);
        for (uint64_t i = 0; i < n && !r->bad; i++)
            rd_skip_value(r, et);
    } else if (t < 13) {
        rd_n(r, sz[t]);
    } else {
        r->bad = 1;
    }
    if (r->pos > r->len)
        r->bad = 1;
}

/* Parses path; returns tensor infos (count in *n) and the data section start. */
static ginfo *gguf_infos(unsigned char *buf, size_t len, int64_t *n, size_t *data_start,
                         uint32_t *vocab_size)
{
    rd r = {buf, len, 0, 0};
    assert_int_equal(rd_n(&r, 4), 0x46554747u); /* "GGUF" */
    assert_int_equal(rd_n(&r, 4), 3);
    uint64_t nt = rd_n(&r, 8), nkv = rd_n(&r, 8);
    for (uint64_t i = 0; i < nkv && !r.bad; i++) {
        uint64_t kl = rd_n(&r, 8);
        char key[128] = "";
        if (kl < sizeof key && r.pos + kl <= len)
            memcpy(key, buf + r.pos, kl);
        r.pos += kl;
        uint32_t t = (uint32_t)rd_n(&r, 4);
        if (!strcmp(key, "llama.vocab_size") && t == 4) {
            *vocab_size = (uint32_t)rd_n(&r, 4);
            continue;
        }
        rd_skip_value(&r, t);
    }
    ginfo *g = calloc(nt, sizeof *g);
    for (uint64_t i = 0; i < nt && !r.bad; i++) {
        uint64_t nl = rd_n(&r, 8);
        assert_true(nl < sizeof g[i].name);
        memcpy(g[i].name, buf + r.pos, nl);
        r.pos += nl;
        g[i].ndim = (uint32_t)rd_n(&r, 4);
        assert_true(g[i].ndim >= 1 && g[i].ndim <= 4);
        for (uint32_t d = 0; d < g[i].ndim; d++)
            g[i].ne[d] = rd_n(&r, 8);
        g[i].type = (uint32_t)rd_n(&r, 4);
        g[i].offset = rd_n(&r, 8);
        assert_int_equal(g[i].offset % 32, 0);
    }
    assert_false(r.bad);
    *n = (int64_t)nt;
    *data_start = (r.pos + 31) / 32 * 32;
    return g;
}

/* ---- fixture: packed checkpoints quantized once ---- */

static char *tmpdir;
static char model_dir[4096], calib[4096], evalf[4096];

static void quantize_from(const char *model, const char *name, const char *args)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "%s quantize --model %s --calib %s --out %s/%s --ctx 128 "
                         "--nsamples 16 --threads 2 %s", lb_test_lowbit_bin(), model, calib,
                         tmpdir, name, args);
    if (rc)
        fail_msg("quantize %s: exit %d: %s", name, rc, out ? out : "");
    free(out);
}

static void quantize(const char *name, const char *args)
{
    quantize_from(model_dir, name, args);
}

static void export_gguf(const char *name, const char *gguf, const char *args)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "%s export --format gguf --model %s/%s --out %s/%s %s",
                         lb_test_lowbit_bin(), tmpdir, name, tmpdir, gguf, args);
    if (rc)
        fail_msg("export %s: exit %d: %s", gguf, rc, out ? out : "");
    free(out);
}

static int setup(void **state)
{
    (void)state;
    if (!lb_test_shared_path(model_dir, sizeof model_dir, "models/stories260K") ||
        !lb_test_shared_path(calib, sizeof calib, "data/stories260K-calib.u32") ||
        !lb_test_shared_path(evalf, sizeof evalf, "data/stories260K-eval.u32"))
        return 0; /* the tests skip (fail under CI=true) */
    tmpdir = lb_test_mkdtemp();
    quantize("rtn4s", "--method rtn --bits 4 --group-size 32 --sym");
    quantize("gptq4a", "--method gptq --bits 4 --group-size 32");
    quantize("rtn8s", "--method rtn --bits 8 --group-size 32 --sym");
    /* K-quant grids need rows of 256k columns: a synthetic model (stories260K's vocab of
     * 512, so its token files serve as calibration and eval data) */
    char *out = NULL, k256[4300];
    snprintf(k256, sizeof k256, "%s/k256", tmpdir);
    if (lb_test_run(&out, "%s synth --out %s --preset k256 --seed 1 --dtype f32",
                    lb_test_lowbit_bin(), k256))
        fail_msg("synth k256: %s", out ? out : "");
    free(out);
    quantize_from(k256, "gptq-q4k", "--method gptq --grid q4_k");
    quantize_from(k256, "gptq-q3k", "--method gptq --grid q3_k");
    quantize_from(k256, "gptq-q2k", "--method gptq --grid q2_k");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lb_test_rmdir(&tmpdir);
    return 0;
}

#define REQUIRE_FIXTURE()                                                                    \
    do {                                                                                     \
        char p_[4096];                                                                       \
        LB_TEST_REQUIRE_SHARED(p_, "models/stories260K");                                    \
        LB_TEST_REQUIRE_SHARED(p_, "data/stories260K-eval.u32");                             \
    } while (0)

/* ---- direct codes are lowbit's weights ---- */

static int64_t src_row(int64_t out_row, int64_t rows, int64_t heads)
{
    if (heads <= 0)
        return out_row;
    int64_t hd = rows / heads, h = out_row / hd, k = out_row % hd;
    return h * hd + (k % 2) * (hd / 2) + k / 2;
}

/* Returns the number of direct tensors checked; *max_diff the largest |ggml - lowbit|. */
static int check_direct(const char *name, const char *gguf, uint32_t want_type,
                        double *max_diff)
{
    char path[4300], packed[4300];
    snprintf(path, sizeof path, "%s/%s", tmpdir, gguf);
    snprintf(packed, sizeof packed, "%s/%s", tmpdir, name);
    size_t len;
    unsigned char *buf = lb_test_slurp(path, &len);
    assert_non_null(buf);
    int64_t n;
    size_t data;
    uint32_t vocab = 0;
    ginfo *g = gguf_infos(buf, len, &n, &data, &vocab);
    lb_model *m = NULL;
    lb_err err = {0};
    if (lb_packed_model_open(&m, packed, &err))
        fail_msg("%s", err.msg);
    const lb_config *cfg = lb_model_config(m);
    assert_int_equal(vocab, (uint32_t)cfg->vocab_size);
    int checked = 0;
    *max_diff = 0;
    for (int64_t i = 0; i < n; i++) {
        if (g[i].type != LB_GGML_TYPE_Q4_0 && g[i].type != LB_GGML_TYPE_Q4_1 &&
            g[i].type != LB_GGML_TYPE_Q8_0 && !lb_kquant_block_bytes((int)g[i].type))
            continue;
        assert_int_equal(g[i].type, want_type);
        int layer;
        char which[32];
        assert_int_equal(sscanf(g[i].name, "blk.%d.%31[a-z_].weight", &layer, which), 2);
        static const char *const gname[LB_LINEAR_COUNT] = {
            "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        int w = -1;
        for (int k = 0; k < LB_LINEAR_COUNT; k++)
            if (!strcmp(which, gname[k]))
                w = k;
        assert_true(w >= 0);
        char hf[256];
        assert_int_equal(lb_model_linear_tensor_name(hf, sizeof hf, layer, (lb_linear)w, &err),
                         0);
        int64_t rows = (int64_t)g[i].ne[1], cols = (int64_t)g[i].ne[0];
        float *ref = malloc((size_t)(rows * cols) * sizeof *ref);
        float *row = malloc((size_t)cols * sizeof *row);
        if (lb_packed_load_weight(lb_model_tensors(m), hf, ref, rows * cols, &err))
            fail_msg("%s", err.msg);
        int64_t heads = w == LB_LINEAR_Q ? cfg->num_attention_heads
                        : w == LB_LINEAR_K ? cfg->num_key_value_heads : 0;
        size_t rb = lb_kquant_block_bytes((int)want_type)
                        ? (size_t)(cols / 256) * lb_kquant_block_bytes((int)want_type)
                        : (size_t)(cols / 32) * (want_type == LB_GGML_TYPE_Q4_0   ? 18
                                                 : want_type == LB_GGML_TYPE_Q4_1 ? 20 : 34);
        assert_true(data + g[i].offset + rb * (size_t)rows <= len);
        for (int64_t r = 0; r < rows; r++) {
            assert_int_equal(lb_ggml_dequant_row((int)g[i].type,
                                                 buf + data + g[i].offset + rb * (size_t)r,
                                                 row, cols, &err), 0);
            const float *want = ref + src_row(r, rows, heads) * cols;
            for (int64_t c = 0; c < cols; c++) {
                double d = fabs((double)row[c] - (double)want[c]);
                *max_diff = d > *max_diff ? d : *max_diff;
            }
        }
        free(ref);
        free(row);
        checked++;
    }
    lb_model_free(&m);
    free(g);
    free(buf);
    return checked;
}

static void test_direct_q4_0_exact(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    export_gguf("rtn4s", "rtn4s-q.gguf", "--direct");
    double d;
    /* down_proj (172 columns: not whole 32-blocks) stays dense: 30 of 35 */
    assert_int_equal(check_direct("rtn4s", "rtn4s-q.gguf", LB_GGML_TYPE_Q4_0, &d), 30);
    assert_true(d == 0.0); /* same f16 scale, same integer code: bit for bit */
}

static void test_direct_q8_0_exact(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    export_gguf("rtn8s", "rtn8s-q.gguf", "--direct");
    double d;
    assert_int_equal(check_direct("rtn8s", "rtn8s-q.gguf", LB_GGML_TYPE_Q8_0, &d), 30);
    assert_true(d == 0.0);
}

/* Rotated codes live in the Hadamard basis: --direct must write them dense. */
static void test_direct_skips_rotated(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    quantize("rtn4r", "--method rtn --bits 4 --group-size 32 --sym --rotate hadamard");
    export_gguf("rtn4r", "rtn4r-q.gguf", "--direct");
    double d;
    assert_int_equal(check_direct("rtn4r", "rtn4r-q.gguf", LB_GGML_TYPE_Q4_0, &d), 0);
}

static void test_direct_q4_1(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    char *out = NULL;
    int rc = lb_test_run(&out, "%s export --format gguf --direct --model %s/gptq4a --out "
                         "%s/gptq4a-q.gguf", lb_test_lowbit_bin(), tmpdir, tmpdir);
    if (rc)
        fail_msg("export: exit %d: %s", rc, out ? out : "");
    long long inexact = 0;
    const char *p = strstr(out, "; ");
    if (p)
        sscanf(p, "; %lld Q4_1 blocks", &inexact);
    double d;
    assert_int_equal(check_direct("gptq4a", "gptq4a-q.gguf", LB_GGML_TYPE_Q4_1, &d), 30);
    /* the min m = -scale*zero is stored in f16: exact when f16 holds it, else off by
     * at most half an f16 ulp of |m| <= 15 * scale */
    printf("{\"bench\":\"gguf_q4_1_exactness\",\"inexact_blocks\":%lld,\"max_abs_diff\":%.3g}\n",
           inexact, d);
    if (inexact == 0)
        assert_true(d == 0.0);
    else
        assert_true(d > 0.0 && d < 1e-3);
    free(out);
}

/* ---- llama.cpp agreement ---- */

static const char *ref_dir(void)
{
    static char dir[4200];
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/tests/llama-cpp-ref", src ? src : ".");
    char nm[4300];
    snprintf(nm, sizeof nm, "%s/node_modules/node-llama-cpp/package.json", dir);
    if (lb_test_need_that(access(nm, R_OK) == 0, "node-llama-cpp not installed (%s); run "
                          "deploy/install-deps.sh", nm))
        return dir;
    return NULL;
}

/* lowbit's logits (WINDOWS, CTX, vocab) for the packed checkpoint, through the
 * same forward `lowbit eval` uses. */
static float *lowbit_logits(const char *dir, const uint32_t *tok, int64_t *vocab_out)
{
    lb_model *m = NULL;
    lb_err err = {0};
    lb_head_weights head = {0};
    lb_block_weights bw = {0};
    lb_fwd_workspace *ws = NULL;
    if (lb_packed_model_open(&m, dir, &err) || lb_model_load_head(m, &head, &err))
        fail_msg("%s", err.msg);
    const lb_config *cfg = lb_model_config(m);
    const int64_t ntok = (int64_t)WINDOWS * CTX, vocab = cfg->vocab_size;
    float *x = malloc((size_t)(ntok * cfg->hidden_size) * sizeof *x);
    float *logits = malloc((size_t)(ntok * vocab) * sizeof *logits);
    if (lb_fwd_workspace_new(cfg, ntok, CTX, &ws, &err) ||
        lb_fwd_embed(&head, tok, ntok, x, &err))
        fail_msg("%s", err.msg);
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++) {
        if (lb_model_load_block(m, l, &bw, &err) ||
            lb_fwd_block(cfg, &bw, x, WINDOWS, CTX, ws, NULL, &err))
            fail_msg("%s", err.msg);
        lb_block_weights_free(&bw);
    }
    lb_fwd_logits(cfg, &head, x, ntok, logits);
    lb_fwd_workspace_free(&ws);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    free(x);
    *vocab_out = vocab;
    return logits;
}

/* max_ppl: relative ppl difference allowed. Dense GGUF tensors must agree within
 * 0.5%; with block codes llama.cpp also rounds the activations to Q8_0/Q8_1
 * before its integer dot products (the weights themselves are exact, see
 * test_direct_*), which moves ppl by about 0.5-1% on this tiny model. */
static void agreement_env(const char *name, const char *gguf, const char *args, double max_kl,
                          double max_ppl, const char *env)
{
    const char *ref = ref_dir();
    if (!ref)
        skip();
    export_gguf(name, gguf, args);
    char packed[4300], outf[4300];
    snprintf(packed, sizeof packed, "%s/%s", tmpdir, name);
    snprintf(outf, sizeof outf, "%s/%s.logp", tmpdir, gguf);
    char *out = NULL;
    int rc = lb_test_run(&out, "cd %s && %s node eval.mjs %s/%s %s %d %d %s", ref, env, tmpdir,
                         gguf, evalf, CTX, WINDOWS, outf);
    if (rc)
        fail_msg("node-llama-cpp on %s: exit %d: %s", gguf, rc, out ? out : "");
    free(out);
    size_t tlen;
    uint32_t *tok = (uint32_t *)lb_test_slurp(evalf, &tlen);
    assert_non_null(tok);
    assert_true(tlen / 4 >= (size_t)WINDOWS * CTX);
    int64_t vocab;
    float *lg = lowbit_logits(packed, tok, &vocab);
    size_t llen;
    float *lp = (float *)lb_test_slurp(outf, &llen);
    assert_non_null(lp);
    assert_int_equal(llen, (size_t)WINDOWS * (CTX - 1) * (size_t)vocab * sizeof(float));
    double nll_lb = 0, nll_ll = 0, kl = 0, maxd = 0, maxd_likely = 0;
    int64_t top1 = 0, npos = 0;
    double *ls = malloc((size_t)vocab * sizeof *ls);
    for (int w = 0; w < WINDOWS; w++)
        for (int p = 0; p < CTX - 1; p++) {
            const float *z = lg + ((int64_t)w * CTX + p) * vocab;
            const float *q = lp + ((int64_t)w * (CTX - 1) + p) * vocab;
            double mx = -INFINITY, s = 0;
            for (int64_t v = 0; v < vocab; v++)
                mx = (double)z[v] > mx ? (double)z[v] : mx;
            for (int64_t v = 0; v < vocab; v++)
                s += exp((double)z[v] - mx);
            int64_t a_lb = 0, a_ll = 0;
            for (int64_t v = 0; v < vocab; v++) {
                double qv = (double)q[v];
                ls[v] = (double)z[v] - mx - log(s);
                double d = fabs(ls[v] - qv);
                /* f32 probabilities underflow below ~1e-38: compare where both are finite */
                if (isfinite(qv))
                    maxd = d > maxd ? d : maxd;
                if (ls[v] > log(1e-3)) /* tokens lowbit gives p > 0.001 */
                    maxd_likely = d > maxd_likely ? d : maxd_likely;
                kl += exp(ls[v]) * (ls[v] - (isfinite(qv) ? qv : -104.0));
                a_lb = ls[v] > ls[a_lb] ? v : a_lb;
                a_ll = q[v] > q[a_ll] ? v : a_ll;
            }
            uint32_t t = tok[w * CTX + p + 1];
            nll_lb -= ls[t];
            nll_ll -= (double)q[t];
            top1 += a_lb == a_ll;
            npos++;
        }
    double ppl_lb = exp(nll_lb / (double)npos), ppl_ll = exp(nll_ll / (double)npos);
    kl /= (double)npos;
    /* the same windows through lb_eval (what `lowbit eval` prints) */
    lb_model *m = NULL;
    lb_err err = {0};
    lb_eval_result er;
    lb_eval_opts eo = {.ctx = CTX, .batch = WINDOWS};
    if (lb_packed_model_open(&m, packed, &err) ||
        lb_eval_run(m, NULL, tok, (int64_t)WINDOWS * CTX, &eo, &er, &err))
        fail_msg("%s", err.msg);
    lb_model_free(&m);
    char gpath[4300];
    snprintf(gpath, sizeof gpath, "%s/%s", tmpdir, gguf);
    size_t gsize;
    free(lb_test_slurp(gpath, &gsize));
    printf("{\"bench\":\"gguf_agreement\",\"model\":\"%s\",\"gguf\":\"%s\",\"args\":\"%s\","
           "\"llama_env\":\"%s\","
           "\"gguf_bytes\":%zu,\"windows\":%d,\"ctx\":%d,\"positions\":%lld,"
           "\"max_abs_logp_diff\":%.3g,\"max_abs_logp_diff_p_gt_1e-3\":%.3g,\"kl_lowbit_llama\":%.3g,\"top1_agree\":%.4f,"
           "\"ppl_lowbit\":%.6f,\"ppl_lowbit_eval\":%.6f,\"ppl_llama\":%.6f,\"ppl_rel_diff\":%.3g}\n",
           name, gguf, args, env, gsize, WINDOWS, CTX, (long long)npos, maxd, maxd_likely, kl,
           (double)top1 / (double)npos, ppl_lb, er.ppl, ppl_ll, fabs(ppl_ll / ppl_lb - 1));
    assert_true(fabs(er.ppl / ppl_lb - 1) < 1e-4); /* our logits are lowbit eval's */
    assert_true(fabs(ppl_ll / ppl_lb - 1) < max_ppl);
    assert_true(kl < max_kl);
    if (*env) /* exact llama.cpp math: the same function up to f32 rounding */
        assert_true(maxd < 1e-3 && top1 == npos);
    free(ls);
    free(lg);
    free(lp);
    free(tok);
}

static void agreement(const char *name, const char *gguf, const char *args, double max_kl,
                      double max_ppl)
{
    agreement_env(name, gguf, args, max_kl, max_ppl, "");
}

static void test_llama_cpp_f32(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    agreement_env("rtn4s", "rtn4s-f32-exact.gguf", "--dtype f32", 1e-5, 1e-5,
                  "LB_LLAMA_EXACT=1");
    agreement("rtn4s", "rtn4s-f32.gguf", "--dtype f32", 1e-4, 0.005);
}

static void test_llama_cpp_f16(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    agreement("gptq4a", "gptq4a-f16.gguf", "--dtype f16", 1e-3, 0.005);
}

/* Figure only: llama.cpp on the Q4_0 file vs llama.cpp on the F32 file of the
 * same checkpoint. The weights are identical (test_direct_q4_0_exact), so this
 * is what llama.cpp's own Q8_0 activation rounding costs. */
static void llama_vs_llama(const char *a, const char *b)
{
    char pa[4300], pb[4300];
    snprintf(pa, sizeof pa, "%s/%s.logp", tmpdir, a);
    snprintf(pb, sizeof pb, "%s/%s.logp", tmpdir, b);
    size_t la, lb;
    float *x = (float *)lb_test_slurp(pa, &la), *y = (float *)lb_test_slurp(pb, &lb);
    if (x && y && la == lb) {
        const size_t vocab = 512, npos = la / sizeof(float) / vocab;
        double kl = 0;
        for (size_t i = 0; i < npos * vocab; i++)
            if (isfinite((double)x[i]))
                kl += exp((double)x[i]) *
                      ((double)x[i] - (isfinite((double)y[i]) ? (double)y[i] : -104.0));
        printf("{\"bench\":\"gguf_llama_vs_llama\",\"ref\":\"%s\",\"model\":\"%s\","
               "\"kl\":%.3g}\n", a, b, kl / (double)npos);
    }
    free(x);
    free(y);
}

static void test_llama_cpp_q4_0(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    agreement("rtn4s", "rtn4s-q4_0.gguf", "--direct", 0.05, 0.02);
    llama_vs_llama("rtn4s-f32.gguf", "rtn4s-q4_0.gguf");
}

static void test_llama_cpp_q4_1(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    agreement("gptq4a", "gptq4a-q4_1.gguf", "--direct", 0.05, 0.02);
}

/* GPTQ --grid q2_k|q3_k|q4_k (synthetic k256 model): the GGUF holds the stored blocks,
 * whose dequantization (lb_kquant_dequant_row, bit-exact vs ggml in test_kquant) is
 * lowbit's weight exactly, and llama.cpp runs them. llama.cpp rounds activations to
 * Q8_K for its K-quant dot products; measured KL 6e-4, ppl within 0.3% (k256 is wider
 * than stories260K, which averages that rounding out), so ppl must agree within 0.5%. */
static void kquant_case(const char *name, int type)
{
    char gguf[64];
    snprintf(gguf, sizeof gguf, "%s.gguf", name);
    export_gguf(name, gguf, "--direct");
    double d;
    assert_int_equal(check_direct(name, gguf, (uint32_t)type, &d), 14); /* 2 layers x 7 */
    assert_true(d == 0.0);
    agreement(name, gguf, "--direct", 0.005, 0.005);
    /* the GPTQ layout has no K blocks: a clear refusal, not a wrong file */
    char *out = NULL;
    int rc = lb_test_run(&out, "%s export --format gptq --model %s/%s --out %s/%s-gptq",
                         lb_test_lowbit_bin(), tmpdir, name, tmpdir, name);
    assert_int_not_equal(rc, 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "K-quant blocks"));
    free(out);
}

static void test_kquant_q4_k(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    kquant_case("gptq-q4k", LB_GGML_TYPE_Q4_K);
}

static void test_kquant_q3_k(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    kquant_case("gptq-q3k", LB_GGML_TYPE_Q3_K);
}

static void test_kquant_q2_k(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    kquant_case("gptq-q2k", LB_GGML_TYPE_Q2_K);
}

/* Methods without a ggml block grid export dense: CLAQ through llama.cpp, the
 * others parsed back (every linear F16 even with --direct). */
static void test_other_methods_dense(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    static const char *const m[][2] = {
        {"claq", "--method claq --bits 2.1 --nsamples 4"},
        {"pbllm", "--method pbllm --bits 1 --salient 0.1 --nsamples 4"},
        {"billm", "--method billm --bits 1 --nsamples 4"},
        {"qbb", "--method qbb --bits 1 --bases 2 --nsamples 4"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        quantize(m[i][0], m[i][1]);
        char g[64], path[4300];
        snprintf(g, sizeof g, "%s.gguf", m[i][0]);
        export_gguf(m[i][0], g, "--direct --dtype f16");
        snprintf(path, sizeof path, "%s/%s", tmpdir, g);
        size_t len, data;
        int64_t n;
        uint32_t vocab = 0;
        unsigned char *buf = lb_test_slurp(path, &len);
        assert_non_null(buf);
        ginfo *gi = gguf_infos(buf, len, &n, &data, &vocab);
        for (int64_t t = 0; t < n; t++)
            assert_true(gi[t].type == (gi[t].ndim == 1 ? LB_GGML_TYPE_F32 : LB_GGML_TYPE_F16));
        free(gi);
        free(buf);
    }
    if (ref_dir())
        agreement("claq", "claq-f16.gguf", "--dtype f16", 1e-3, 0.005);
}

/* ---- vocabularies: tokenizer.json carried over, placeholder otherwise ---- */

/* GPT-2's byte -> printable code point map (bytes_to_unicode), UTF-8 encoded. */
static void byte_char(int b, char out[4])
{
    int cp = b;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
        int n = 0;
        for (int x = 0; x < b; x++)
            n += !((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF));
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* A model directory: stories260K's files plus a small tokenizer.json, either
 * SentencePiece-style BPE with byte fallback or byte-level BPE with merges. */
static void make_tokenizer_model(const char *dir, bool byte_level)
{
    char *out = NULL;
    if (lb_test_run(&out, "mkdir -p %s && cp %s/config.json %s/model.safetensors %s/", dir,
                    model_dir, model_dir, dir))
        fail_msg("copy: %s", out ? out : "");
    free(out);
    json_t *vocab = json_object(), *merges = json_array();
    int id = 0;
    const char *letters = "etaoinshrdlwu";
    char a[8], b[8], piece[32];
    if (!byte_level) {
        json_object_set_new(vocab, "<unk>", json_integer(id++));
        json_object_set_new(vocab, "<s>", json_integer(id++));
        json_object_set_new(vocab, "</s>", json_integer(id++));
        for (int x = 0; x < 256; x++) {
            snprintf(piece, sizeof piece, "<0x%02X>", x);
            json_object_set_new(vocab, piece, json_integer(id++));
        }
        json_object_set_new(vocab, "\xe2\x96\x81", json_integer(id++));
        for (const char *c = "abcdefghijklmnopqrstuvwxyz"; *c; c++) {
            snprintf(piece, sizeof piece, "%c", *c);
            json_object_set_new(vocab, piece, json_integer(id++));
        }
    } else {
        for (int x = 0; x < 256; x++) {
            byte_char(x, a);
            json_object_set_new(vocab, a, json_integer(id++));
        }
    }
    /* pieces and merges: "<space>x", then letter pairs */
    const char *space = byte_level ? "\xc4\xa0" : "\xe2\x96\x81";
    for (const char *c = letters; *c && id < 500; c++) {
        snprintf(b, sizeof b, "%c", *c);
        snprintf(piece, sizeof piece, "%s%s", space, b);
        if (json_object_get(vocab, piece))
            continue;
        json_object_set_new(vocab, piece, json_integer(id++));
        json_array_append_new(merges, json_sprintf("%s %s", space, b));
    }
    for (const char *c = letters; *c; c++)
        for (const char *d = letters; *d && id < 500; d++) {
            snprintf(piece, sizeof piece, "%c%c", *c, *d);
            json_object_set_new(vocab, piece, json_integer(id++));
            json_array_append_new(merges, json_sprintf("%c %c", *c, *d));
        }
    json_t *added = json_array();
    if (byte_level) {
        json_array_append_new(added, json_pack("{s:i, s:s, s:b}", "id", 1, "content", "<|bos|>",
                                               "special", 1));
        json_object_del(vocab, "\x01"); /* id 1 becomes the special token */
    }
    json_t *tok = json_pack("{s:s, s:o, s:{s:s, s:o, s:o, s:b}}", "version", "1.0",
                            "added_tokens", added, "model", "type", "BPE", "vocab", vocab,
                            "merges", merges, "byte_fallback", !byte_level);
    if (!byte_level)
        json_object_set_new(json_object_get(tok, "model"), "unk_token", json_string("<unk>"));
    char path[4400];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(json_dump_file(tok, path, 0), 0);
    json_decref(tok);
}

static void tokenizer_roundtrip(const char *gguf, const char *text, size_t max_ids)
{
    const char *ref = ref_dir();
    if (!ref)
        skip();
    char *out = NULL;
    int rc = lb_test_run(&out, "cd %s && node tokenize.mjs %s '%s'", ref, gguf, text);
    if (rc)
        fail_msg("node-llama-cpp tokenize on %s: exit %d: %s", gguf, rc, out ? out : "");
    const char *line = strrchr(out, '{');
    json_t *o = line ? json_loads(line, 0, NULL) : NULL;
    if (!o)
        fail_msg("tokenize output: %s", out);
    const char *back = json_string_value(json_object_get(o, "text"));
    size_t nids = json_array_size(json_object_get(o, "ids"));
    printf("{\"bench\":\"gguf_tokenize\",\"gguf\":\"%s\",\"ids\":%zu,\"text\":\"%s\"}\n",
           strrchr(gguf, '/') + 1, nids, back ? back : "");
    assert_non_null(back);
    /* llama.cpp may keep SentencePiece's added leading space */
    assert_true(!strcmp(back, text) || (back[0] == ' ' && !strcmp(back + 1, text)));
    assert_true(nids > 0 && nids <= max_ids);
    json_decref(o);
    free(out);
}

static void test_vocab_placeholder(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    export_gguf("rtn4s", "rtn4s-voc.gguf", "--dtype f16");
    char g[4300];
    snprintf(g, sizeof g, "%s/rtn4s-voc.gguf", tmpdir);
    tokenizer_roundtrip(g, "hello world", 64); /* bytes: 11 letters + 2 spaces */
}

static void test_vocab_tokenizer_json(void **state)
{
    (void)state;
    REQUIRE_FIXTURE();
    for (int bl = 0; bl < 2; bl++) {
        char dir[4300], g[4300];
        snprintf(dir, sizeof dir, "%s/tok%d", tmpdir, bl);
        snprintf(g, sizeof g, "%s/tok%d.gguf", tmpdir, bl);
        make_tokenizer_model(dir, bl);
        char *out = NULL;
        int rc = lb_test_run(&out, "%s export --format gguf --dtype f16 --model %s --out %s",
                             lb_test_lowbit_bin(), dir, g);
        if (rc)
            fail_msg("export: exit %d: %s", rc, out ? out : "");
        free(out);
        /* merges/scores must apply: fewer ids than the 23 bytes */
        tokenizer_roundtrip(g, "the rain in the north", 16);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_q4_0_exact), cmocka_unit_test(test_direct_q8_0_exact),
        cmocka_unit_test(test_direct_skips_rotated),
        cmocka_unit_test(test_direct_q4_1),       cmocka_unit_test(test_llama_cpp_f32),
        cmocka_unit_test(test_llama_cpp_f16),     cmocka_unit_test(test_llama_cpp_q4_0),
        cmocka_unit_test(test_llama_cpp_q4_1),    cmocka_unit_test(test_kquant_q4_k),
        cmocka_unit_test(test_kquant_q3_k),       cmocka_unit_test(test_kquant_q2_k),
        cmocka_unit_test(test_vocab_placeholder),
        cmocka_unit_test(test_vocab_tokenizer_json), cmocka_unit_test(test_other_methods_dense),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
