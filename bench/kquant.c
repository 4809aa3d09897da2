/* bench/kquant.c: lowbit's GPTQ onto llama.cpp's K-quant grids (gptq --grid q2_k|q3_k|
 * q4_k) vs llama.cpp's own K-quant quantizer, given the same importance matrix
 * (imatrix = diag(H), H = XᵀX, what llama-imatrix collects).
 *
 *   bench_kquant LIBGGML_BASE_SO layer W.safetensors H.safetensors
 *   bench_kquant LIBGGML_BASE_SO synth ROWS COLS SEED
 *   bench_kquant LIBGGML_BASE_SO model MODEL_DIR CALIB.u32 EVAL.u32 [NCAL NEVAL CTX]
 *   bench_kquant LIBGGML_BASE_SO gguf MODEL_DIR CALIB.u32 TEMPLATE.gguf OUT_PREFIX [NCAL CTX]
 *   bench_kquant - kl FP.logp Q.logp EVAL.u32 CTX WINDOWS
 *
 * LIBGGML_BASE_SO: libggml-base.so of the pinned node-llama-cpp (tests/llama-cpp-ref/
 * node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so); dlopen'ed
 * at run time, nothing of it is compiled in. Exit 77 with a message when absent.
 * Per type (q2_k, q3_k, q4_k), variants:
 *   ggml            ggml_quantize_chunk without imatrix (llama-quantize, no imatrix)
 *   ggml_imatrix    ggml_quantize_chunk with imatrix = diag(H)
 *   lowbit_nearest  lowbit's super-block fit (diag(H)-weighted), nearest rounding
 *   lowbit_gptq     lowbit gptq --grid q*_k (the same fit on compensated columns + GPTQ)
 * ggml's blocks are dequantized with ggml's dequantize_row_q*_K; lowbit's blocks
 * decode bit-exactly with it too (test_kquant), so every W_hat is what llama.cpp loads.
 * layer/synth: one JSON line per variant with rel_err = tr(dW H dWᵀ) / tr(W H Wᵀ).
 * model: H per linear from the fp model's activations on NCAL calibration windows
 * (every variant uses the same H / imatrix), then the whole model's next-token KL
 * (fp || quantized) and ppl on NEVAL eval windows, computed with lowbit's forward on
 * the dequantized weights (llama.cpp's own forward would add its Q8_K activation
 * rounding to both sides alike; test_export_gguf measures that part).
 * gguf: the same H, then TEMPLATE.gguf (lowbit's `export --direct` of a K-quant
 * checkpoint of MODEL_DIR: the tensor layout) is copied twice with every K-quant
 * linear's blocks replaced: OUT_PREFIX-ggml.gguf (ggml_quantize_chunk + imatrix) and
 * OUT_PREFIX-lowbit.gguf (gptq --grid), q/k rows in llama.cpp's order, so llama.cpp
 * itself (tests/llama-cpp-ref/eval.mjs) can run both; kl then compares its log-probs
 * (eval.mjs output) with those of the F32 GGUF: one JSON line with KL and ppl. */
#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_forward.h"
#include "lb_kquant.h"
#include "lb_model.h"
#include "lb_quant.h"
#include "lb_rotate.h"
#include "lb_safetensors.h"

typedef size_t (*quantize_chunk_fn)(int type, const float *src, void *dst, int64_t start,
                                    int64_t nrows, int64_t n_per_row, const float *imatrix);
typedef void (*dequant_fn)(const void *x, float *y, int64_t k);

static quantize_chunk_fn g_quant;
static dequant_fn g_deq[3];
static const int types[3] = {LB_GGML_TYPE_Q2_K, LB_GGML_TYPE_Q3_K, LB_GGML_TYPE_Q4_K};
static const lb_qgrid grids[3] = {LB_GRID_Q2_K, LB_GRID_Q3_K, LB_GRID_Q4_K};
static const double bpw[3] = {2.625, 3.4375, 4.5};
enum { NVAR = 4 };
static const char *const vname[NVAR] = {"ggml", "ggml_imatrix", "lowbit_nearest",
                                        "lowbit_gptq"};

/* Variant v of type index t: W (rows, cols) -> Wq. Returns 0 or -1. */
static int quantize_variant(int t, int v, const float *W, int64_t rows, int64_t cols,
                            const float *H, float *Wq)
{
    const int type = types[t];
    float *imat = malloc((size_t)cols * sizeof *imat);
    for (int64_t j = 0; j < cols; j++)
        imat[j] = H[j * cols + j];
    int rc = 0;
    if (v <= 1) {
        const size_t rb = (size_t)(cols / LB_KQ_QK) * lb_kquant_block_bytes(type);
        uint8_t *blk = malloc(rb * (size_t)rows);
        g_quant(type, W, blk, 0, rows, cols, v ? imat : NULL);
        for (int64_t r = 0; r < rows; r++)
            g_deq[t](blk + rb * (size_t)r, Wq + r * cols, cols);
        free(blk);
    } else if (v == 2) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t s = 0; s < cols / LB_KQ_QK; s++) {
                lb_kq_super sb;
                const float *x = W + r * cols + s * LB_KQ_QK;
                if (lb_kquant_fit(type, x, imat + s * LB_KQ_QK, &sb, NULL))
                    rc = -1;
                for (int k = 0; k < LB_KQ_QK; k++) {
                    int j = lb_kquant_sub(type, k);
                    Wq[r * cols + s * LB_KQ_QK + k] =
                        lb_kquant_value(type, &sb, j, lb_kquant_code(type, &sb, j, x[k]));
                }
            }
    } else {
        lb_qopts o;
        lb_qopts_init(&o);
        o.grid = grids[t];
        lb_qresult res = {0};
        lb_err err = {0};
        if (lb_qmethod_quantize(lb_qmethod_find("gptq"), W, rows, cols, H, &o, &res, &err)) {
            fprintf(stderr, "bench_kquant: %s\n", err.msg);
            rc = -1;
        } else {
            memcpy(Wq, res.W_hat, (size_t)(rows * cols) * sizeof *Wq);
        }
        lb_qresult_free(&res);
    }
    free(imat);
    return rc;
}

static double rel_err(const float *W, const float *Wh, int64_t rows, int64_t cols,
                      const float *H)
{
    double e = 0, ref = 1;
    lb_err err = {0};
    if (lb_quant_error(W, Wh, rows, cols, H, &e, &ref, &err))
        fprintf(stderr, "%s\n", err.msg);
    return e / ref;
}

static int layer_bench(const char *what, const float *W, int64_t rows, int64_t cols,
                       const float *H)
{
    float *Wq = malloc((size_t)(rows * cols) * sizeof *Wq);
    for (int t = 0; t < 3; t++)
        for (int v = 0; v < NVAR; v++) {
            if (quantize_variant(t, v, W, rows, cols, H, Wq))
                return 1;
            printf("{\"bench\":\"kquant_layer\",\"matrix\":\"%s\",\"rows\":%lld,\"cols\":%lld,"
                   "\"type\":\"%s\",\"bpw\":%g,\"variant\":\"%s\",\"rel_err\":%.6g}\n",
                   what, (long long)rows, (long long)cols, lb_kquant_type_name(types[t]), bpw[t],
                   vname[v], rel_err(W, Wq, rows, cols, H));
            fflush(stdout);
        }
    free(Wq);
    return 0;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}
static double nrand(void)
{
    return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand());
}

/* the prototype's synthetic layer: heavy-tailed W, correlated X with uneven scales */
static int synth_bench(int64_t rows, int64_t cols, uint64_t seed)
{
    rng ^= seed * 0x2545F4914F6CDD1Dull;
    const int64_t ns = 2 * cols;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    float *X = malloc((size_t)(ns * cols) * sizeof *X);
    float *H = malloc((size_t)(cols * cols) * sizeof *H);
    double *scale = malloc((size_t)cols * sizeof *scale);
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = (float)(0.02 * nrand() * (urand() < 0.01 ? 4.0 : 1.0));
    for (int64_t j = 0; j < cols; j++)
        scale[j] = exp(nrand());
    for (int64_t s = 0; s < ns; s++) {
        double prev = nrand();
        for (int64_t j = 0; j < cols; j++) {
            double z = nrand();
            X[s * cols + j] = (float)(scale[j] * (z + 0.6 * prev));
            prev = z;
        }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cols, (int)cols, (int)ns, 1.0f,
                X, (int)cols, X, (int)cols, 0.0f, H, (int)cols);
    char what[64];
    snprintf(what, sizeof what, "synth_seed%llu", (unsigned long long)seed);
    int rc = layer_bench(what, W, rows, cols, H);
    free(W);
    free(X);
    free(H);
    free(scale);
    return rc;
}

static float *read_st(const char *path, const char *name, int64_t *rows, int64_t *cols)
{
    lb_st *st = NULL;
    lb_err err = {0};
    if (lb_st_open(&st, path, &err)) {
        fprintf(stderr, "bench_kquant: %s\n", err.msg);
        return NULL;
    }
    const lb_st_tensor *t = lb_st_find(st, name);
    float *buf = NULL;
    if (t && t->ndim == 2) {
        *rows = t->shape[0];
        *cols = t->shape[1];
        buf = malloc((size_t)(*rows * *cols) * sizeof *buf);
        if (lb_st_read_f32(st, name, buf, *rows * *cols, &err)) {
            fprintf(stderr, "bench_kquant: %s\n", err.msg);
            free(buf);
            buf = NULL;
        }
    }
    lb_st_free(&st);
    return buf;
}

/* ---- whole model ---- */

static float **linear_ptr(lb_block_weights *bw, int w)
{
    float **p[LB_LINEAR_COUNT] = {&bw->wq, &bw->wk, &bw->wv, &bw->wo,
                                  &bw->w_gate, &bw->w_up, &bw->w_down};
    return p[w];
}

static uint32_t *read_tokens(const char *path, int64_t need)
{
    FILE *f = fopen(path, "rb");
    uint32_t *t = malloc((size_t)need * sizeof *t);
    if (!f || fread(t, sizeof *t, (size_t)need, f) != (size_t)need) {
        fprintf(stderr, "bench_kquant: %s: need %lld token ids\n", path, (long long)need);
        free(t);
        t = NULL;
    }
    if (f)
        fclose(f);
    return t;
}

/* log-softmax of each row of logits (ntok, vocab) in place */
static void log_softmax(float *z, int64_t ntok, int64_t vocab)
{
    for (int64_t i = 0; i < ntok; i++) {
        float *r = z + i * vocab;
        double mx = -INFINITY, s = 0;
        for (int64_t v = 0; v < vocab; v++)
            mx = (double)r[v] > mx ? (double)r[v] : mx;
        for (int64_t v = 0; v < vocab; v++)
            s += exp((double)r[v] - mx);
        for (int64_t v = 0; v < vocab; v++)
            r[v] = (float)((double)r[v] - mx - log(s));
    }
}

static int model_bench(const char *dir, const char *calib_path, const char *eval_path,
                       int64_t ncal, int64_t neval, int64_t ctx)
{
    lb_model *m = NULL;
    lb_head_weights head = {0};
    lb_block_weights bw = {0};
    lb_fwd_workspace *ws = NULL;
    lb_err err = {0};
    if (lb_model_open(&m, dir, &err) || lb_model_load_head(m, &head, &err)) {
        fprintf(stderr, "bench_kquant: %s\n", err.msg);
        return 1;
    }
    const lb_config *cfg = lb_model_config(m);
    const int32_t L = cfg->num_hidden_layers;
    const int64_t dim = cfg->hidden_size, vocab = cfg->vocab_size;
    const int64_t nc = ncal * ctx, ne = neval * ctx, nmax = nc > ne ? nc : ne;
    uint32_t *ctok = read_tokens(calib_path, nc), *etok = read_tokens(eval_path, ne);
    if (!ctok || !etok)
        return 1;
    int64_t rows[LB_LINEAR_COUNT], cols[LB_LINEAR_COUNT];
    for (int w = 0; w < LB_LINEAR_COUNT; w++) {
        lb_linear_shape(cfg, (lb_linear)w, &rows[w], &cols[w]);
        if (cols[w] % LB_KQ_QK) {
            fprintf(stderr, "bench_kquant: %s has %lld-column linears; K-quants need "
                    "multiples of 256 (lowbit synth --preset k256)\n", dir, (long long)cols[w]);
            return 1;
        }
    }
    /* Wq[t][v][l * 7 + w]: every variant's dequantized linears */
    float **Wq = calloc((size_t)(3 * NVAR * L * LB_LINEAR_COUNT), sizeof *Wq);
    const int64_t qd = cfg->num_attention_heads * cfg->head_dim, inter = cfg->intermediate_size;
    float *xa = malloc((size_t)(nc * dim) * sizeof(float));
    float *cap_ai = malloc((size_t)(nc * dim) * sizeof(float));
    float *cap_ao = malloc((size_t)(nc * qd) * sizeof(float));
    float *cap_mi = malloc((size_t)(nc * dim) * sizeof(float));
    float *cap_ma = malloc((size_t)(nc * inter) * sizeof(float));
    lb_fwd_capture cap = {cap_ai, cap_ao, cap_mi, cap_ma};
    if (lb_fwd_workspace_new(cfg, nmax, ctx, &ws, &err) ||
        lb_fwd_embed(&head, ctok, nc, xa, &err)) {
        fprintf(stderr, "bench_kquant: %s\n", err.msg);
        return 1;
    }
    double err_sum[3][NVAR] = {{0}};
    for (int32_t l = 0; l < L; l++) {
        if (lb_model_load_block(m, l, &bw, &err) ||
            lb_fwd_block(cfg, &bw, xa, ncal, ctx, ws, &cap, &err)) {
            fprintf(stderr, "bench_kquant: %s\n", err.msg);
            return 1;
        }
        for (int w = 0; w < LB_LINEAR_COUNT; w++) {
            const float *X = w <= LB_LINEAR_V ? cap_ai : w == LB_LINEAR_O ? cap_ao
                             : w == LB_LINEAR_DOWN ? cap_ma : cap_mi;
            const int64_t n = cols[w];
            float *H = malloc((size_t)(n * n) * sizeof *H);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)n, (int)nc, 1.0f,
                        X, (int)n, X, (int)n, 0.0f, H, (int)n);
            const float *W = *linear_ptr(&bw, w);
            for (int t = 0; t < 3; t++)
                for (int v = 0; v < NVAR; v++) {
                    float *q = malloc((size_t)(rows[w] * n) * sizeof *q);
                    if (quantize_variant(t, v, W, rows[w], n, H, q))
                        return 1;
                    err_sum[t][v] += rel_err(W, q, rows[w], n, H);
                    Wq[(t * NVAR + v) * L * LB_LINEAR_COUNT + l * LB_LINEAR_COUNT + w] = q;
                }
            free(H);
        }
        lb_block_weights_free(&bw);
    }
    /* eval: fp log-probs, then each variant's */
    float *x = malloc((size_t)(ne * dim) * sizeof *x);
    float *lp_fp = malloc((size_t)(ne * vocab) * sizeof *lp_fp);
    float *lp = malloc((size_t)(ne * vocab) * sizeof *lp);
    for (int pass = -1; pass < 3 * NVAR; pass++) {
        if (lb_fwd_embed(&head, etok, ne, x, &err))
            return 1;
        for (int32_t l = 0; l < L; l++) {
            if (lb_model_load_block(m, l, &bw, &err))
                return 1;
            if (pass >= 0)
                for (int w = 0; w < LB_LINEAR_COUNT; w++)
                    memcpy(*linear_ptr(&bw, w), Wq[pass * L * LB_LINEAR_COUNT +
                                                   l * LB_LINEAR_COUNT + w],
                           (size_t)(rows[w] * cols[w]) * sizeof(float));
            if (lb_fwd_block(cfg, &bw, x, neval, ctx, ws, NULL, &err)) {
                fprintf(stderr, "bench_kquant: %s\n", err.msg);
                return 1;
            }
            lb_block_weights_free(&bw);
        }
        float *out = pass < 0 ? lp_fp : lp;
        lb_fwd_logits(cfg, &head, x, ne, out);
        log_softmax(out, ne, vocab);
        double kl = 0, nll = 0, nll_fp = 0;
        int64_t npos = 0;
        for (int64_t s = 0; s < neval; s++)
            for (int64_t p = 0; p + 1 < ctx; p++) {
                const int64_t i = s * ctx + p;
                const float *a = lp_fp + i * vocab, *b = out + i * vocab;
                for (int64_t v = 0; v < vocab; v++)
                    kl += exp((double)a[v]) * ((double)a[v] - (double)b[v]);
                nll -= (double)b[etok[i + 1]];
                nll_fp -= (double)a[etok[i + 1]];
                npos++;
            }
        if (pass < 0) {
            printf("{\"bench\":\"kquant_model\",\"model\":\"%s\",\"variant\":\"fp\","
                   "\"ppl\":%.6f,\"calib_windows\":%lld,\"eval_windows\":%lld,\"ctx\":%lld}\n",
                   dir, exp(nll_fp / (double)npos), (long long)ncal, (long long)neval,
                   (long long)ctx);
            continue;
        }
        const int t = pass / NVAR, v = pass % NVAR;
        printf("{\"bench\":\"kquant_model\",\"model\":\"%s\",\"type\":\"%s\",\"bpw\":%g,"
               "\"variant\":\"%s\",\"kl\":%.6g,\"ppl\":%.6f,\"ppl_fp\":%.6f,"
               "\"mean_layer_rel_err\":%.6g}\n", dir, lb_kquant_type_name(types[t]), bpw[t],
               vname[v], kl / (double)npos, exp(nll / (double)npos),
               exp(nll_fp / (double)npos), err_sum[t][v] / (double)(L * LB_LINEAR_COUNT));
        fflush(stdout);
    }
    for (int i = 0; i < 3 * NVAR * L * LB_LINEAR_COUNT; i++)
        free(Wq[i]);
    free(Wq);
    free(x);
    free(lp_fp);
    free(lp);
    free(xa);
    free(cap_ai);
    free(cap_ao);
    free(cap_mi);
    free(cap_ma);
    free(ctok);
    free(etok);
    lb_fwd_workspace_free(&ws);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    return 0;
}

/* ---- gguf: patch a K-quant GGUF's linears with each quantizer's blocks ---- */

typedef struct {
    char name[96];
    uint32_t type;
    uint64_t ne0, ne1, offset;
} ginfo;

static uint64_t rdn(const uint8_t *b, size_t len, size_t *pos, size_t n, int *bad)
{
    uint64_t v = 0;
    if (*pos + n > len) {
        *bad = 1;
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)b[*pos + i] << (8 * i);
    *pos += n;
    return v;
}

static void skip_value(const uint8_t *b, size_t len, size_t *pos, uint32_t t, int *bad)
{
    static const size_t sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t == 8) {
        *pos += rdn(b, len, pos, 8, bad);
    } else if (t == 9) {
        uint32_t et = (uint32_t)rdn(b, len, pos, 4, bad);
        uint64_t n = rdn(b, len, pos, 8, bad);
        for (uint64_t i = 0; i < n && !*bad; i++)
            skip_value(b, len, pos, et, bad);
    } else if (t < 13) {
        rdn(b, len, pos, sz[t], bad);
    } else {
        *bad = 1;
    }
}

/* tensor infos of a GGUF v3 in buf; *data = start of the data section (alignment 32) */
static ginfo *gguf_infos(const uint8_t *b, size_t len, int64_t *n, size_t *data)
{
    size_t pos = 0;
    int bad = 0;
    if (rdn(b, len, &pos, 4, &bad) != 0x46554747u || rdn(b, len, &pos, 4, &bad) != 3)
        return NULL;
    uint64_t nt = rdn(b, len, &pos, 8, &bad), nkv = rdn(b, len, &pos, 8, &bad);
    for (uint64_t i = 0; i < nkv && !bad; i++) {
        pos += rdn(b, len, &pos, 8, &bad);
        skip_value(b, len, &pos, (uint32_t)rdn(b, len, &pos, 4, &bad), &bad);
    }
    ginfo *g = bad || nt > 100000 ? NULL : calloc(nt ? nt : 1, sizeof *g);
    for (uint64_t i = 0; g && i < nt && !bad; i++) {
        uint64_t nl = rdn(b, len, &pos, 8, &bad);
        if (nl >= sizeof g[i].name || pos + nl > len) {
            bad = 1;
            break;
        }
        memcpy(g[i].name, b + pos, nl);
        pos += nl;
        uint32_t nd = (uint32_t)rdn(b, len, &pos, 4, &bad);
        g[i].ne0 = rdn(b, len, &pos, 8, &bad);
        g[i].ne1 = 1;
        for (uint32_t d = 1; d < nd; d++) {
            uint64_t e = rdn(b, len, &pos, 8, &bad);
            g[i].ne1 = d == 1 ? e : g[i].ne1 * e;
        }
        g[i].type = (uint32_t)rdn(b, len, &pos, 4, &bad);
        g[i].offset = rdn(b, len, &pos, 8, &bad);
    }
    if (bad) {
        free(g);
        return NULL;
    }
    *n = (int64_t)nt;
    *data = (pos + 31) / 32 * 32;
    return g;
}

/* HF row of GGUF row r of a q/k projection (llama.cpp's RoPE pairing; lb_export_gguf) */
static int64_t hf_row(int64_t r, int64_t rows, int64_t heads)
{
    if (heads <= 0)
        return r;
    int64_t hd = rows / heads, h = r / hd, k = r % hd;
    return h * hd + (k % 2) * (hd / 2) + k / 2;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b = NULL;
    if (f && !fseek(f, 0, SEEK_END)) {
        long n = ftell(f);
        rewind(f);
        b = n > 0 ? malloc((size_t)n) : NULL;
        if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
            free(b);
            b = NULL;
        }
        *len = (size_t)(n > 0 ? n : 0);
    }
    if (f)
        fclose(f);
    return b;
}

static int gguf_bench(const char *dir, const char *calib_path, const char *tmpl,
                      const char *prefix, int64_t ncal, int64_t ctx)
{
    size_t len = 0, data = 0;
    uint8_t *buf = slurp(tmpl, &len);
    int64_t nt = 0;
    ginfo *g = buf ? gguf_infos(buf, len, &nt, &data) : NULL;
    if (!g) {
        fprintf(stderr, "bench_kquant: %s is not a readable GGUF v3\n", tmpl);
        return 1;
    }
    uint8_t *out[2] = {malloc(len), malloc(len)};
    memcpy(out[0], buf, len);
    memcpy(out[1], buf, len);
    lb_model *m = NULL;
    lb_head_weights head = {0};
    lb_block_weights bw = {0};
    lb_fwd_workspace *ws = NULL;
    lb_err err = {0};
    if (lb_model_open(&m, dir, &err) || lb_model_load_head(m, &head, &err)) {
        fprintf(stderr, "bench_kquant: %s\n", err.msg);
        return 1;
    }
    const lb_config *cfg = lb_model_config(m);
    const int64_t nc = ncal * ctx, dim = cfg->hidden_size;
    const int64_t qd = cfg->num_attention_heads * cfg->head_dim, inter = cfg->intermediate_size;
    uint32_t *ctok = read_tokens(calib_path, nc);
    float *xa = malloc((size_t)(nc * dim) * sizeof(float));
    float *cap_ai = malloc((size_t)(nc * dim) * sizeof(float));
    float *cap_ao = malloc((size_t)(nc * qd) * sizeof(float));
    float *cap_mi = malloc((size_t)(nc * dim) * sizeof(float));
    float *cap_ma = malloc((size_t)(nc * inter) * sizeof(float));
    lb_fwd_capture cap = {cap_ai, cap_ao, cap_mi, cap_ma};
    if (!ctok || lb_fwd_workspace_new(cfg, nc, ctx, &ws, &err) ||
        lb_fwd_embed(&head, ctok, nc, xa, &err)) {
        fprintf(stderr, "bench_kquant: %s\n", err.msg);
        return 1;
    }
    static const char *const gname[LB_LINEAR_COUNT] = {
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    int patched = 0, type = -1;
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++) {
        if (lb_model_load_block(m, l, &bw, &err) ||
            lb_fwd_block(cfg, &bw, xa, ncal, ctx, ws, &cap, &err)) {
            fprintf(stderr, "bench_kquant: %s\n", err.msg);
            return 1;
        }
        for (int w = 0; w < LB_LINEAR_COUNT; w++) {
            char name[96];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, gname[w]);
            const ginfo *t = NULL;
            for (int64_t i = 0; i < nt; i++)
                if (!strcmp(g[i].name, name))
                    t = &g[i];
            int ti = t ? (int)t->type - LB_GGML_TYPE_Q2_K : -1;
            if (ti < 0 || ti > 2 || (type >= 0 && (int)t->type != type)) {
                fprintf(stderr, "bench_kquant: %s: %s is not %s\n", tmpl, name,
                        type >= 0 ? "the same K type" : "a Q2_K/Q3_K/Q4_K tensor");
                return 1;
            }
            type = (int)t->type;
            int64_t rows, cols;
            lb_linear_shape(cfg, (lb_linear)w, &rows, &cols);
            const size_t rb = (size_t)(cols / LB_KQ_QK) * lb_kquant_block_bytes(type);
            if (t->ne0 != (uint64_t)cols || t->ne1 != (uint64_t)rows ||
                data + t->offset + rb * (size_t)rows > len) {
                fprintf(stderr, "bench_kquant: %s: %s has the wrong shape\n", tmpl, name);
                return 1;
            }
            const float *X = w <= LB_LINEAR_V ? cap_ai : w == LB_LINEAR_O ? cap_ao
                             : w == LB_LINEAR_DOWN ? cap_ma : cap_mi;
            float *H = malloc((size_t)(cols * cols) * sizeof *H);
            float *imat = malloc((size_t)cols * sizeof *imat);
            uint8_t *blk = malloc(rb * (size_t)rows);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cols, (int)cols, (int)nc,
                        1.0f, X, (int)cols, X, (int)cols, 0.0f, H, (int)cols);
            for (int64_t j = 0; j < cols; j++)
                imat[j] = H[j * cols + j];
            const float *W = *linear_ptr(&bw, w);
            const int64_t heads = w == LB_LINEAR_Q   ? cfg->num_attention_heads
                                  : w == LB_LINEAR_K ? cfg->num_key_value_heads : 0;
            for (int v = 0; v < 2; v++) {
                const uint8_t *src = blk;
                lb_qresult res = {0};
                if (v == 0) {
                    g_quant(type, W, blk, 0, rows, cols, imat);
                } else {
                    lb_qopts o;
                    lb_qopts_init(&o);
                    o.grid = grids[ti];
                    if (lb_qmethod_quantize(lb_qmethod_find("gptq"), W, rows, cols, H, &o, &res,
                                            &err)) {
                        fprintf(stderr, "bench_kquant: %s\n", err.msg);
                        return 1;
                    }
                    src = lb_qpacked_field(&res.packed, "kq_blocks")->data;
                }
                for (int64_t r = 0; r < rows; r++)
                    memcpy(out[v] + data + t->offset + rb * (size_t)r,
                           src + rb * (size_t)hf_row(r, rows, heads), rb);
                lb_qresult_free(&res);
            }
            patched++;
            free(H);
            free(imat);
            free(blk);
        }
        lb_block_weights_free(&bw);
    }
    static const char *const suffix[2] = {"ggml", "lowbit"};
    int rc = 0;
    for (int v = 0; v < 2; v++) {
        char path[4096];
        snprintf(path, sizeof path, "%s-%s.gguf", prefix, suffix[v]);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(out[v], 1, len, f) != len) {
            fprintf(stderr, "bench_kquant: cannot write %s\n", path);
            rc = 1;
        }
        if (f)
            fclose(f);
        printf("{\"bench\":\"kquant_gguf\",\"model\":\"%s\",\"type\":\"%s\",\"variant\":\"%s\","
               "\"tensors_patched\":%d,\"calib_windows\":%lld,\"out\":\"%s\"}\n", dir,
               lb_kquant_type_name(type), v ? "lowbit_gptq" : "ggml_imatrix", patched,
               (long long)ncal, path);
    }
    free(out[0]);
    free(out[1]);
    free(buf);
    free(g);
    free(ctok);
    free(xa);
    free(cap_ai);
    free(cap_ao);
    free(cap_mi);
    free(cap_ma);
    lb_fwd_workspace_free(&ws);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    return rc;
}

/* KL(fp || q) and ppl from two eval.mjs outputs (log p, (windows * (ctx-1), vocab)) */
static int kl_bench(const char *fp_path, const char *q_path, const char *tok_path, int64_t ctx,
                    int64_t windows)
{
    size_t la = 0, lq = 0;
    float *a = (float *)slurp(fp_path, &la), *q = (float *)slurp(q_path, &lq);
    uint32_t *tok = read_tokens(tok_path, ctx * windows);
    const size_t npos = (size_t)(windows * (ctx - 1));
    if (!a || !q || !tok || la != lq || la % (npos * sizeof(float))) {
        fprintf(stderr, "bench_kquant: kl: unreadable or mismatched inputs\n");
        return 1;
    }
    const size_t vocab = la / sizeof(float) / npos;
    double kl = 0, nll_a = 0, nll_q = 0;
    for (int64_t w = 0; w < windows; w++)
        for (int64_t p = 0; p + 1 < ctx; p++) {
            const size_t i = (size_t)(w * (ctx - 1) + p);
            const float *x = a + i * vocab, *y = q + i * vocab;
            for (size_t v = 0; v < vocab; v++)
                if (isfinite((double)x[v]))
                    kl += exp((double)x[v]) *
                          ((double)x[v] - (isfinite((double)y[v]) ? (double)y[v] : -104.0));
            const uint32_t t = tok[w * ctx + p + 1];
            nll_a -= (double)x[t];
            nll_q -= (double)y[t];
        }
    printf("{\"bench\":\"kquant_llama_kl\",\"ref\":\"%s\",\"model\":\"%s\",\"windows\":%lld,"
           "\"ctx\":%lld,\"kl\":%.6g,\"ppl\":%.6f,\"ppl_ref\":%.6f}\n", fp_path, q_path,
           (long long)windows, (long long)ctx, kl / (double)npos, exp(nll_q / (double)npos),
           exp(nll_a / (double)npos));
    free(a);
    free(q);
    free(tok);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_kquant LIBGGML_BASE_SO layer W.st H.st | synth ROWS COLS "
                "SEED | model DIR CALIB.u32 EVAL.u32 [NCAL NEVAL CTX] | gguf DIR CALIB.u32 "
                "TEMPLATE.gguf OUT_PREFIX [NCAL CTX]\n       bench_kquant - kl FP.logp Q.logp "
                "EVAL.u32 CTX WINDOWS\n");
        return 2;
    }
    if (!strcmp(argv[2], "kl") && argc == 8)
        return kl_bench(argv[3], argv[4], argv[5], atoll(argv[6]), atoll(argv[7]));
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "bench_kquant: skipped: cannot load %s (%s); install node-llama-cpp "
                "with deploy/install-deps.sh\n", argv[1], dlerror());
        return 77;
    }
    static const char *const dq[3] = {"dequantize_row_q2_K", "dequantize_row_q3_K",
                                      "dequantize_row_q4_K"};
    *(void **)&g_quant = dlsym(lib, "ggml_quantize_chunk");
    for (int t = 0; t < 3; t++)
        *(void **)&g_deq[t] = dlsym(lib, dq[t]);
    if (!g_quant || !g_deq[0] || !g_deq[1] || !g_deq[2]) {
        fprintf(stderr, "bench_kquant: %s lacks ggml_quantize_chunk/dequantize_row_q*_K\n",
                argv[1]);
        return 1;
    }
    int rc = 2;
    if (!strcmp(argv[2], "layer") && argc == 5) {
        int64_t r, c, hr, hc;
        float *W = read_st(argv[3], "weight", &r, &c), *H = read_st(argv[4], "hessian", &hr, &hc);
        if (W && H && hr == c && hc == c && c % LB_KQ_QK == 0)
            rc = layer_bench(argv[3], W, r, c, H);
        else
            fprintf(stderr, "bench_kquant: bad weight/hessian pair\n");
        free(W);
        free(H);
    } else if (!strcmp(argv[2], "synth") && argc == 6) {
        rc = synth_bench(atoll(argv[3]), atoll(argv[4]), (uint64_t)atoll(argv[5]));
    } else if (!strcmp(argv[2], "model") && argc >= 6) {
        rc = model_bench(argv[3], argv[4], argv[5], argc > 6 ? atoll(argv[6]) : 16,
                         argc > 7 ? atoll(argv[7]) : 16, argc > 8 ? atoll(argv[8]) : 128);
    } else if (!strcmp(argv[2], "gguf") && argc >= 7) {
        rc = gguf_bench(argv[3], argv[4], argv[5], argv[6], argc > 7 ? atoll(argv[7]) : 32,
                        argc > 8 ? atoll(argv[8]) : 128);
    } else {
        fprintf(stderr, "bench_kquant: unknown mode or arguments\n");
    }
    dlclose(lib);
    return rc;
}
