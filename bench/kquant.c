/* bench/kquant.c: GPTQ onto llama.cpp's Q4_K grid vs llama.cpp's own Q4_K quantizer,
 * with the same importance matrix (diag of H = XᵀX, what llama-imatrix collects).
 *
 *   bench_kquant LIBGGML_BASE_SO [rows cols nsamples seed]
 *
 * LIBGGML_BASE_SO: libggml-base.so of the pinned node-llama-cpp (e.g.
 * tests/llama-cpp-ref/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/
 * libggml-base.so); it is dlopen'ed, nothing of it is compiled in. Variants, on one
 * synthetic layer (heavy-tailed W, correlated activations with uneven scales):
 *   ggml            quantize_q4_K without importance (llama-quantize, no imatrix)
 *   ggml_imatrix    quantize_q4_K with importance diag(H)
 *   gptq_on_ggml[_imatrix]: that file's grid (f16 d/dmin and 6-bit sub-block
 *                   scales/mins kept), codes re-chosen by lowbit's GPTQ engine with
 *                   error compensation; the blocks are re-encoded and dequantized by
 *                   ggml's dequantize_row_q4_K, which must give GPTQ's W_hat exactly
 *   lowbit_gptq_g32 lowbit's own 4-bit asym GPTQ, group 32 (4.625 bpw) for context
 * Prints one JSON line per variant: rel_err = tr(dW H dWᵀ) / tr(W H Wᵀ) (the GPTQ
 * objective; lower is better). Synthetic data: a proxy, not a model's KL. */
#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_gptq.h"
#include "lb_quant.h"

#define QK_K 256
#define BLOCK_BYTES 144 /* f16 d, f16 dmin, 12 bytes scales, 128 bytes qs */

typedef size_t (*quantize_fn)(const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                              const float *imatrix);
typedef void (*dequant_fn)(const void *x, float *y, int64_t k);

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

/* Sub-block j (0..7) 6-bit scale and min of a Q4_K block's 12 scale bytes. */
static void scale_min(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Weight i (0..255) of a block: its nibble is in qs[(i/64)*32 + i%32], low half for
 * the first 32 of each 64, high half for the second. */
static uint8_t *nibble_byte(uint8_t *blk, int i, int *high)
{
    *high = (i % 64) >= 32;
    return blk + 16 + (i / 64) * 32 + i % 32;
}

typedef struct {
    int64_t rows, cols, nsb; /* nsb = cols / 32 sub-blocks per row */
    float *a, *b;            /* (rows, nsb): value = a * q - b */
    uint8_t *codes;          /* (rows, cols) */
} grid;

/* Effective (a, b) per sub-block from ggml's blocks, computed as ggml does. */
static void grid_from_blocks(grid *g, const uint8_t *blocks)
{
    const int64_t nb = g->cols / QK_K;
    for (int64_t r = 0; r < g->rows; r++)
        for (int64_t s = 0; s < nb; s++) {
            const uint8_t *blk = blocks + (r * nb + s) * BLOCK_BYTES;
            float d = lb_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
            float dmin = lb_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
            for (int j = 0; j < 8; j++) {
                int sc, m;
                scale_min(j, blk + 4, &sc, &m);
                g->a[r * g->nsb + s * 8 + j] = d * (float)sc;
                g->b[r * g->nsb + s * 8 + j] = dmin * (float)m;
            }
        }
}

static int col_hook(void *ctx, const lb_gptq_state *st, int64_t c, const float *w, float *q,
                    float *err_scale, lb_err *err)
{
    (void)err_scale;
    (void)err;
    grid *g = ctx;
    const int64_t o = st->perm[c];
    for (int64_t r = 0; r < st->rows; r++) {
        float a = g->a[r * g->nsb + o / 32], b = g->b[r * g->nsb + o / 32];
        float v = a > 0.0f ? nearbyintf((w[r] + b) / a) : 0.0f;
        int code = v < 0.0f ? 0 : v > 15.0f ? 15 : (int)v;
        g->codes[r * g->cols + o] = (uint8_t)code;
        q[r] = a * (float)code - b;
    }
    return 0;
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_kquant LIBGGML_BASE_SO [rows cols nsamples seed]\n");
        return 2;
    }
    int64_t rows = argc > 2 ? atoll(argv[2]) : 256, cols = argc > 3 ? atoll(argv[3]) : 1024;
    int64_t ns = argc > 4 ? atoll(argv[4]) : 2048;
    if (argc > 5)
        rng ^= (uint64_t)atoll(argv[5]) * 0x2545F4914F6CDD1Dull;
    if (rows < 1 || cols < QK_K || cols % QK_K || ns < cols) {
        fprintf(stderr, "bench_kquant: cols must be a multiple of 256 and nsamples >= cols\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "bench_kquant: %s\n", dlerror());
        return 1;
    }
    quantize_fn quant = (quantize_fn)dlsym(lib, "quantize_q4_K");
    dequant_fn deq = (dequant_fn)dlsym(lib, "dequantize_row_q4_K");
    if (!quant || !deq) {
        fprintf(stderr, "bench_kquant: %s lacks quantize_q4_K/dequantize_row_q4_K\n", argv[1]);
        return 1;
    }
    const int64_t nb = rows * cols / QK_K;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    float *X = malloc((size_t)(ns * cols) * sizeof *X);
    float *H = malloc((size_t)(cols * cols) * sizeof *H);
    float *imat = malloc((size_t)cols * sizeof *imat);
    float *Wh = malloc((size_t)(rows * cols) * sizeof *Wh);
    float *Wg = malloc((size_t)(rows * cols) * sizeof *Wg);
    uint8_t *blocks = malloc((size_t)nb * BLOCK_BYTES);
    grid g = {rows, cols, cols / 32, malloc((size_t)(rows * cols / 32) * sizeof(float)),
              malloc((size_t)(rows * cols / 32) * sizeof(float)), malloc((size_t)(rows * cols))};
    /* W: normal with 1% outliers x4; X: per-column scale exp(N(0,1)), neighbour mixing */
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = (float)(0.02 * nrand() * (urand() < 0.01 ? 4.0 : 1.0));
    double *scale = malloc((size_t)cols * sizeof *scale);
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
    for (int64_t j = 0; j < cols; j++)
        imat[j] = H[j * cols + j];
    lb_qopts opts;
    lb_qopts_init(&opts);
    opts.group_size = 0;
    lb_err err = {0};
    int rc = 0;
    for (int im = 0; im < 2; im++) {
        const char *name = im ? "ggml_imatrix" : "ggml";
        quant(W, blocks, rows, cols, im ? imat : NULL);
        for (int64_t r = 0; r < rows; r++)
            deq(blocks + r * (cols / QK_K) * BLOCK_BYTES, Wg + r * cols, cols);
        printf("{\"bench\":\"kquant_q4_k\",\"variant\":\"%s\",\"rows\":%lld,\"cols\":%lld,"
               "\"bpw\":4.5,\"rel_err\":%.6g}\n", name, (long long)rows, (long long)cols,
               rel_err(W, Wg, rows, cols, H));
        /* our reading of the block layout must reproduce ggml's dequantization */
        grid_from_blocks(&g, blocks);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                int high;
                uint8_t *p = nibble_byte(blocks + (r * (cols / QK_K) + c / QK_K) * BLOCK_BYTES,
                                         (int)(c % QK_K), &high);
                int q = high ? *p >> 4 : *p & 0xF;
                float v = g.a[r * g.nsb + c / 32] * (float)q - g.b[r * g.nsb + c / 32];
                if (v != Wg[r * cols + c]) {
                    fprintf(stderr, "bench_kquant: layout mismatch at (%lld, %lld)\n",
                            (long long)r, (long long)c);
                    return 1;
                }
            }
        lb_gptq_hook hook = {.ctx = &g, .column = col_hook};
        if ((rc = lb_gptq_run(W, rows, cols, H, &opts, &hook, Wh, NULL, &err))) {
            fprintf(stderr, "bench_kquant: %s\n", err.msg);
            return 1;
        }
        /* re-encode the GPTQ codes into the blocks; ggml must decode W_hat exactly */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                int high;
                uint8_t *p = nibble_byte(blocks + (r * (cols / QK_K) + c / QK_K) * BLOCK_BYTES,
                                         (int)(c % QK_K), &high);
                uint8_t q = g.codes[r * cols + c];
                *p = high ? (uint8_t)((*p & 0x0F) | q << 4) : (uint8_t)((*p & 0xF0) | q);
            }
        double maxd = 0;
        for (int64_t r = 0; r < rows; r++)
            deq(blocks + r * (cols / QK_K) * BLOCK_BYTES, Wg + r * cols, cols);
        for (int64_t i = 0; i < rows * cols; i++)
            maxd = fmax(maxd, fabs((double)Wg[i] - (double)Wh[i]));
        printf("{\"bench\":\"kquant_q4_k\",\"variant\":\"gptq_on_%s\",\"rows\":%lld,"
               "\"cols\":%lld,\"bpw\":4.5,\"rel_err\":%.6g,\"ggml_decode_max_diff\":%g}\n", name,
               (long long)rows, (long long)cols, rel_err(W, Wh, rows, cols, H), maxd);
    }
    const lb_qmethod *gptq = lb_qmethod_find("gptq");
    lb_qopts o4;
    lb_qopts_init(&o4);
    o4.bits = 4;
    o4.group_size = 32;
    lb_qresult res = {0};
    if (gptq && !gptq->quantize(W, rows, cols, H, &o4, &res, &err))
        printf("{\"bench\":\"kquant_q4_k\",\"variant\":\"lowbit_gptq_g32\",\"rows\":%lld,"
               "\"cols\":%lld,\"bpw\":%.4f,\"rel_err\":%.6g}\n", (long long)rows,
               (long long)cols, res.bpw, rel_err(W, res.W_hat, rows, cols, H));
    lb_qresult_free(&res);
    free(W);
    free(X);
    free(H);
    free(imat);
    free(Wh);
    free(Wg);
    free(blocks);
    free(scale);
    free(g.a);
    free(g.b);
    free(g.codes);
    dlclose(lib);
    return 0;
}
