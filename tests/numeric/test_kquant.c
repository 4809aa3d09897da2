/* K-quant grids (lb_kquant): block layout and dequantization bit for bit against an
 * independent reference written here in ggml's loop order (and against the libggml-base
 * of the pinned node-llama-cpp when installed), GPTQ onto the grids against a slow
 * float64 column-by-column reference, the packed round trip and honest bpw, and the
 * refusals. */
#include "lb_test_util.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_kquant.h"
#include "lb_quant.h"
#include "lb_rotate.h"
#include "lb_test_qref.h"

static const int types[3] = {LB_GGML_TYPE_Q2_K, LB_GGML_TYPE_Q3_K, LB_GGML_TYPE_Q4_K};

/* ---- independent dequantizers, in ggml's dequantize_row_q*_K loop order ---- */

static float h2f(const uint8_t *p)
{
    return lb_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static void ref_q2k(const uint8_t *x, float *y)
{
    const float d = h2f(x + 80), mn = h2f(x + 82);
    const uint8_t *q = x + 16;
    int is = 0;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                uint8_t sc = x[is++];
                float dl = d * (float)(sc & 0xF), ml = mn * (float)(sc >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}

static void ref_q3k(const uint8_t *x, float *y)
{
    const float d = h2f(x + 108);
    const uint8_t *hm = x, *q = x + 32, *s = x + 96;
    uint32_t aux[4];
    memcpy(aux, s, 12);
    uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & 0x0f0f0f0f) | (((tmp >> 4) & 0x03030303) << 4);
    aux[3] = ((aux[1] >> 4) & 0x0f0f0f0f) | (((tmp >> 6) & 0x03030303) << 4);
    aux[0] = (aux[0] & 0x0f0f0f0f) | (((tmp >> 0) & 0x03030303) << 4);
    aux[1] = (aux[1] & 0x0f0f0f0f) | (((tmp >> 2) & 0x03030303) << 4);
    const int8_t *sc = (const int8_t *)aux;
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
            for (int half = 0; half < 2; half++) {
                float dl = d * (float)(sc[is++] - 32);
                for (int l = 0; l < 16; l++) {
                    int lo = (q[l + 16 * half] >> shift) & 3;
                    *y++ = dl * (float)(lo - ((hm[l + 16 * half] & m) ? 0 : 4));
                }
            }
        }
        q += 32;
    }
}

static void ref_q4k(const uint8_t *x, float *y)
{
    const float d = h2f(x), mn = h2f(x + 2);
    const uint8_t *s = x + 4, *q = x + 16;
    for (int j = 0; j < 8; j += 2, q += 32)
        for (int h = 0; h < 2; h++) {
            int k = j + h, sc, m;
            if (k < 4) {
                sc = s[k] & 63;
                m = s[k + 4] & 63;
            } else {
                sc = (s[k + 4] & 0xF) | ((s[k - 4] >> 6) << 4);
                m = (s[k + 4] >> 4) | ((s[k] >> 6) << 4);
            }
            float d1 = d * (float)sc, m1 = mn * (float)m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(h ? q[l] >> 4 : q[l] & 0xF) - m1;
        }
}

static void ref_dequant(int type, const uint8_t *blk, float *y)
{
    if (type == LB_GGML_TYPE_Q2_K)
        ref_q2k(blk, y);
    else if (type == LB_GGML_TYPE_Q3_K)
        ref_q3k(blk, y);
    else
        ref_q4k(blk, y);
}

/* random bytes with finite f16 d/dmin of moderate size */
static void random_block(int type, uint64_t *rng, uint8_t *blk)
{
    size_t bb = lb_kquant_block_bytes(type);
    for (size_t i = 0; i < bb; i++)
        blk[i] = (uint8_t)(lb_test_rand_u64(rng) >> 24);
    size_t dpos[2] = {type == LB_GGML_TYPE_Q4_K ? 0 : type == LB_GGML_TYPE_Q3_K ? 108 : 80,
                      type == LB_GGML_TYPE_Q4_K ? 2 : 82};
    for (int k = 0; k < (type == LB_GGML_TYPE_Q3_K ? 1 : 2); k++) {
        uint16_t h = lb_f32_to_f16(0.01f * lb_test_rand_normal(rng));
        blk[dpos[k]] = (uint8_t)(h & 0xff);
        blk[dpos[k] + 1] = (uint8_t)(h >> 8);
    }
}

static void test_dequant_matches_reference(void **state)
{
    (void)state;
    uint64_t rng = 7;
    uint8_t blk[144], blk2[144], codes[256];
    float y[256], yr[256];
    for (int t = 0; t < 3; t++)
        for (int it = 0; it < 200; it++) {
            const int type = types[t];
            random_block(type, &rng, blk);
            ref_dequant(type, blk, yr);
            assert_int_equal(lb_kquant_dequant_row(type, blk, y, 256, NULL), 0);
            if (memcmp(y, yr, sizeof y))
                fail_msg("%s: library dequant differs from the reference",
                         lb_kquant_type_name(type));
            /* encode(fields) is the inverse of the layout: re-encode a decoded block */
            lb_kq_super sb;
            memset(&sb, 0, sizeof sb);
            /* fields from a fit of the dequantized values, codes chosen nearest */
            assert_int_equal(lb_kquant_fit(type, yr, NULL, &sb, NULL), 0);
            for (int k = 0; k < 256; k++)
                codes[k] = lb_kquant_code(type, &sb, lb_kquant_sub(type, k), yr[k]);
            lb_kquant_encode(type, &sb, codes, blk2);
            ref_dequant(type, blk2, yr);
            for (int k = 0; k < 256; k++)
                if (yr[k] != lb_kquant_value(type, &sb, lb_kquant_sub(type, k), codes[k]))
                    fail_msg("%s: encoded block decodes to %g at %d, grid value %g",
                             lb_kquant_type_name(type), (double)yr[k], k,
                             (double)lb_kquant_value(type, &sb, lb_kquant_sub(type, k),
                                                     codes[k]));
        }
}

/* Against ggml itself: the prebuilt libggml-base.so of node-llama-cpp 3.21.1. */
static void test_dequant_matches_libggml(void **state)
{
    (void)state;
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/llama-cpp-ref/node_modules/@node-llama-cpp/"
             "linux-x64/bins/linux-x64/libggml-base.so", src ? src : ".");
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *ci = getenv("CI");
        if (ci && !strcmp(ci, "true"))
            fail_msg("%s missing under CI=true; run deploy/install-deps.sh", path);
        skip();
    }
    static const char *const fn[3] = {"dequantize_row_q2_K", "dequantize_row_q3_K",
                                      "dequantize_row_q4_K"};
    uint64_t rng = 11;
    uint8_t blk[4 * 144];
    float y[1024], yg[1024];
    for (int t = 0; t < 3; t++) {
        void (*deq)(const void *, float *, int64_t);
        *(void **)&deq = dlsym(lib, fn[t]);
        assert_non_null(deq);
        size_t bb = lb_kquant_block_bytes(types[t]);
        for (int it = 0; it < 100; it++) {
            for (int b = 0; b < 4; b++)
                random_block(types[t], &rng, blk + b * bb);
            deq(blk, yg, 1024);
            assert_int_equal(lb_kquant_dequant_row(types[t], blk, y, 1024, NULL), 0);
            if (memcmp(y, yg, sizeof y))
                fail_msg("%s differs from ggml's %s", lb_kquant_type_name(types[t]), fn[t]);
        }
    }
    dlclose(lib);
}

/* ---- slow reference GPTQ on a K grid: float64, column by column, explicit OBS update
 * of H^-1 (GPTQ Eq. 2/3); each super-block fitted (lb_kquant_fit) on its compensated
 * columns, weighted by the damped diag(H), when its first column comes up. */
static void ref_gptq_k(int type, const float *W0, int R, int C, const float *H0, double damp,
                       float *W_hat)
{
    double *Hi = calloc((size_t)C * C, sizeof *Hi), *Aug = calloc((size_t)C * 2 * C, sizeof *Aug);
    double *Wd = malloc((size_t)R * C * sizeof *Wd);
    float *diag = malloc((size_t)C * sizeof *diag), *hd = malloc((size_t)C * sizeof *hd);
    lb_kq_super *sb = malloc((size_t)R * sizeof *sb);
    double mean = 0;
    for (int j = 0; j < C; j++) {
        diag[j] = H0[j * C + j] == 0.0f ? 1.0f : H0[j * C + j];
        mean += (double)diag[j];
    }
    mean /= C;
    const float fd = (float)(damp * mean);
    for (int j = 0; j < C; j++)
        hd[j] = diag[j] + fd;
    for (int a = 0; a < C; a++) {
        for (int b = 0; b < C; b++)
            Aug[a * 2 * C + b] = a == b ? (double)hd[a] : (double)H0[a * C + b];
        Aug[a * 2 * C + C + a] = 1.0;
    }
    for (int p = 0; p < C; p++) {
        double piv = Aug[p * 2 * C + p];
        for (int b = 0; b < 2 * C; b++)
            Aug[p * 2 * C + b] /= piv;
        for (int a = 0; a < C; a++)
            if (a != p) {
                double f = Aug[a * 2 * C + p];
                for (int b = 0; b < 2 * C; b++)
                    Aug[a * 2 * C + b] -= f * Aug[p * 2 * C + b];
            }
    }
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++)
            Hi[a * C + b] = Aug[a * 2 * C + C + b];
    for (int i = 0; i < R * C; i++)
        Wd[i] = H0[(i % C) * C + i % C] == 0.0f ? 0.0 : (double)W0[i];
    for (int c = 0; c < C; c++) {
        if (c % 256 == 0)
            for (int r = 0; r < R; r++) {
                float x[256];
                for (int k = 0; k < 256; k++)
                    x[k] = (float)Wd[r * C + c + k];
                assert_int_equal(lb_kquant_fit(type, x, hd + c, &sb[r], NULL), 0);
            }
        double d = Hi[c * C + c];
        int j = lb_kquant_sub(type, c % 256);
        for (int r = 0; r < R; r++) {
            float w = (float)Wd[r * C + c];
            float q = lb_kquant_value(type, &sb[r], j, lb_kquant_code(type, &sb[r], j, w));
            W_hat[r * C + c] = q;
            double e = (Wd[r * C + c] - (double)q) / d;
            for (int k = c + 1; k < C; k++)
                Wd[r * C + k] -= e * Hi[c * C + k];
        }
        for (int a = c + 1; a < C; a++)
            for (int b = c + 1; b < C; b++)
                Hi[a * C + b] -= Hi[a * C + c] * Hi[c * C + b] / d;
    }
    free(Hi);
    free(Aug);
    free(Wd);
    free(diag);
    free(hd);
    free(sb);
}

enum { R = 24, C = 512 };

static void make_problem(float *W, float *H, uint64_t seed)
{
    float *X = malloc((size_t)4 * C * C * sizeof *X);
    lb_test_activations(X, 4 * C, C, 3, seed);
    lb_test_hessian_ref(X, 4 * C, C, H);
    uint64_t rng = seed + 99;
    for (int i = 0; i < R * C; i++)
        W[i] = 0.05f * lb_test_rand_normal(&rng) * (i % 97 == 0 ? 4.0f : 1.0f);
    free(X);
}

static void run_k(int type, const float *W, const float *H, lb_qresult *res)
{
    lb_qopts o;
    lb_qopts_init(&o);
    o.grid = type == LB_GGML_TYPE_Q2_K   ? LB_GRID_Q2_K
             : type == LB_GGML_TYPE_Q3_K ? LB_GRID_Q3_K
                                         : LB_GRID_Q4_K;
    lb_err err = {0};
    int rc = lb_qmethod_quantize(lb_qmethod_find("gptq"), W, R, C, H, &o, res, &err);
    if (rc)
        fail_msg("gptq %s: %d %s", lb_kquant_type_name(type), rc, err.msg);
}

/* Fast (lazy-batch float32 engine + hook) vs the slow float64 reference: a weight at a
 * rounding midpoint may go either way, and a super-block fit (a discrete search) can
 * then pick another scale, so whole super-blocks may differ downstream: require >= 95%
 * equal values and errors within 2% (measured: q2_k 96.2% equal, error +0.3%). */
static void test_gptq_matches_reference(void **state)
{
    (void)state;
    float *W = malloc(R * C * sizeof *W), *H = malloc((size_t)C * C * sizeof *H);
    float *Wr = malloc(R * C * sizeof *Wr);
    make_problem(W, H, 5);
    for (int t = 0; t < 3; t++) {
        lb_qresult res = {0};
        run_k(types[t], W, H, &res);
        ref_gptq_k(types[t], W, R, C, H, 0.01, Wr);
        int same = 0;
        for (int i = 0; i < R * C; i++)
            same += res.W_hat[i] == Wr[i];
        double e_fast, e_ref, ref;
        lb_err err = {0};
        assert_int_equal(lb_quant_error(W, res.W_hat, R, C, H, &e_fast, &ref, &err), 0);
        assert_int_equal(lb_quant_error(W, Wr, R, C, H, &e_ref, &ref, &err), 0);
        printf("{\"test\":\"kquant_vs_ref\",\"type\":\"%s\",\"same\":%d,\"n\":%d,"
               "\"rel_err\":%.6g,\"rel_err_ref\":%.6g}\n", lb_kquant_type_name(types[t]), same,
               R * C, e_fast / ref, e_ref / ref);
        if (same < R * C * 95 / 100 || fabs(e_fast - e_ref) > 0.02 * e_ref)
            fail_msg("%s: %d/%d values equal, err %.6g vs ref %.6g",
                     lb_kquant_type_name(types[t]), same, R * C, e_fast, e_ref);
        lb_qresult_free(&res);
    }
    free(W);
    free(H);
    free(Wr);
}

/* Packed round trip (dequantize == W_hat bytewise), honest bpw from the stored bytes,
 * and GPTQ's compensation beats rounding the same kind of fit without it. */
static void test_packed_bpw_and_gain(void **state)
{
    (void)state;
    static const double bpw[3] = {2.625, 3.4375, 4.5};
    float *W = malloc(R * C * sizeof *W), *H = malloc((size_t)C * C * sizeof *H);
    float *Wn = malloc(R * C * sizeof *Wn), *Wd = malloc(R * C * sizeof *Wd);
    float hd[C];
    make_problem(W, H, 9);
    for (int j = 0; j < C; j++)
        hd[j] = H[j * C + j];
    for (int t = 0; t < 3; t++) {
        lb_qresult res = {0};
        run_k(types[t], W, H, &res);
        assert_true(fabs(res.bpw - (bpw[t] + 8.0 / (R * C))) < 1e-12);
        assert_true(fabs(lb_qpacked_bpw(&res.packed) - res.bpw) < 1e-12);
        lb_err err = {0};
        assert_int_equal(lb_qmethod_find("gptq")->dequantize(&res.packed, Wd, &err), 0);
        assert_memory_equal(Wd, res.W_hat, R * C * sizeof *Wd);
        /* no compensation: each super-block fitted on W and rounded to nearest */
        for (int r = 0; r < R; r++)
            for (int s = 0; s < C / 256; s++) {
                lb_kq_super sb;
                const float *x = W + r * C + s * 256;
                assert_int_equal(lb_kquant_fit(types[t], x, hd + s * 256, &sb, NULL), 0);
                for (int k = 0; k < 256; k++) {
                    int j = lb_kquant_sub(types[t], k);
                    Wn[r * C + s * 256 + k] =
                        lb_kquant_value(types[t], &sb, j, lb_kquant_code(types[t], &sb, j, x[k]));
                }
            }
        double e_g, e_n, ref;
        assert_int_equal(lb_quant_error(W, res.W_hat, R, C, H, &e_g, &ref, &err), 0);
        assert_int_equal(lb_quant_error(W, Wn, R, C, H, &e_n, &ref, &err), 0);
        printf("{\"test\":\"kquant_gain\",\"type\":\"%s\",\"bpw\":%.6f,\"rel_err_gptq\":%.6g,"
               "\"rel_err_nearest\":%.6g}\n", lb_kquant_type_name(types[t]), res.bpw,
               e_g / ref, e_n / ref);
        assert_true(e_g < e_n);
        lb_qresult_free(&res);
    }
    free(W);
    free(H);
    free(Wn);
    free(Wd);
}

static void test_refusals(void **state)
{
    (void)state;
    enum { RR = 4, CC = 320 };
    float *W = calloc(RR * CC, sizeof *W), *H = calloc(CC * CC, sizeof *H);
    for (int j = 0; j < CC; j++)
        H[j * CC + j] = 1.0f;
    lb_qopts o;
    lb_qopts_init(&o);
    o.grid = LB_GRID_Q4_K;
    lb_qresult res = {0};
    lb_err err = {0};
    assert_int_equal(lb_qmethod_quantize(lb_qmethod_find("gptq"), W, RR, CC, H, &o, &res, &err),
                     LB_EINVAL);
    assert_non_null(strstr(err.msg, "256"));
    o.act_order = true;
    assert_int_equal(lb_qmethod_quantize(lb_qmethod_find("gptq"), W, RR, 256, H, &o, &res, &err),
                     LB_EINVAL);
    assert_non_null(strstr(err.msg, "act-order"));
    o.act_order = false;
    assert_int_equal(lb_qmethod_quantize(lb_qmethod_find("rtn"), W, RR, 256, H, &o, &res, &err),
                     LB_EINVAL);
    assert_non_null(strstr(err.msg, "only gptq"));
    o.rotate = 1;
    assert_int_equal(lb_qmethod_quantize(lb_qmethod_find("gptq"), W, RR, 256, H, &o, &res, &err),
                     LB_EINVAL);
    /* corrupt packed: wrong block byte count */
    lb_qpacked p = {0};
    snprintf(p.method, sizeof p.method, "gptq");
    p.rows = 1;
    p.cols = 256;
    int64_t one = 1, n = 100;
    lb_qpacked_add_field(&p, "kq_type", LB_QFIELD_UINT, 8, 1, &one, NULL);
    lb_qpacked_add_field(&p, "kq_blocks", LB_QFIELD_UINT, 8, 1, &n, NULL);
    lb_qfield_put(&p.fields[0], 0, 12);
    assert_int_equal(lb_qmethod_find("gptq")->dequantize(&p, W, &err), LB_EFORMAT);
    lb_qfield_put(&p.fields[0], 0, 13);
    assert_int_equal(lb_qmethod_find("gptq")->dequantize(&p, W, &err), LB_EFORMAT);
    lb_qpacked_free(&p);
    free(W);
    free(H);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_matches_reference),
        cmocka_unit_test(test_dequant_matches_libggml),
        cmocka_unit_test(test_gptq_matches_reference),
        cmocka_unit_test(test_packed_bpw_and_gain),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
