/* lb_rotate: the fast Walsh-Hadamard kernel and the rotations against plain explicit
 * matrices in float64; every method quantized rotated dequantizes bit for bit to its
 * W_hat, which is the float64 fold-back of the rotated-space reconstruction; the
 * rotation's stored bytes count in bpw; malformed rotation fields are refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_quant.h"
#include "lb_rotate.h"
#include "lb_test_util.h"

/* Sylvester-Hadamard entry (i, j) of order 2^k: (-1)^popcount(i & j). */
static double had(int64_t i, int64_t j)
{
    return (__builtin_popcountll((unsigned long long)(i & j)) & 1) ? -1.0 : 1.0;
}

/* The slow reference: R (n, n) built entry by entry from the definition
 * R = Hb S / sqrt(b), Hb block diagonal of order b = n & -n. */
static double *explicit_rotation(int64_t n, uint64_t seed, lb_rot_side side)
{
    double *R = calloc((size_t)(n * n), sizeof *R);
    int64_t b = 1;
    while (n % (2 * b) == 0)
        b *= 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            if (i / b == j / b)
                R[i * n + j] = had(i % b, j % b) / sqrt((double)b) *
                               lb_rotate_sign(seed, side, j);
    return R;
}

static void test_fwht_matches_matrix(void **state)
{
    (void)state;
    uint64_t rng = 7;
    for (int64_t n = 1; n <= 256; n *= 2) {
        double *x = malloc((size_t)n * sizeof *x), *y = calloc((size_t)n, sizeof *y);
        for (int64_t i = 0; i < n; i++)
            x[i] = lb_test_rand_normal(&rng);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                y[i] += had(i, j) * x[j];
        lb_fwht(x, n);
        for (int64_t i = 0; i < n; i++)
            assert_true(fabs(x[i] - y[i]) <= 1e-12 * (1.0 + fabs(y[i])));
        free(x);
        free(y);
    }
}

static void test_block_sizes(void **state)
{
    (void)state;
    assert_int_equal(lb_rotate_block(64), 64);
    assert_int_equal(lb_rotate_block(172), 4);
    assert_int_equal(lb_rotate_block(5504), 128);
    assert_int_equal(lb_rotate_block(11008), 256);
    assert_int_equal(lb_rotate_block(4096), 4096);
    assert_int_equal(lb_rotate_block(43), 1);
    /* --rotate auto: the per-method defaults chosen from docs/results-rotate.md and the
     * kl_bpw sweep (docs/results.md "KL against bits"); claq: hadamard since then */
    assert_int_equal(lb_rotate_resolve("gptq", LB_ROTATE_AUTO), LB_ROTATE_HADAMARD);
    assert_int_equal(lb_rotate_resolve("rtn", LB_ROTATE_AUTO), LB_ROTATE_HADAMARD);
    assert_int_equal(lb_rotate_resolve("billm", LB_ROTATE_AUTO), LB_ROTATE_HADAMARD);
    assert_int_equal(lb_rotate_resolve("qbb", LB_ROTATE_AUTO), LB_ROTATE_HADAMARD);
    assert_int_equal(lb_rotate_resolve("pbllm", LB_ROTATE_AUTO), LB_ROTATE_NONE);
    assert_int_equal(lb_rotate_resolve("claq", LB_ROTATE_AUTO), LB_ROTATE_HADAMARD);
    assert_int_equal(lb_rotate_resolve("nosuch", LB_ROTATE_AUTO), LB_ROTATE_NONE);
    assert_int_equal(lb_rotate_resolve("pbllm", LB_ROTATE_HADAMARD), LB_ROTATE_HADAMARD);
    assert_int_equal(lb_rotate_resolve("gptq", LB_ROTATE_NONE), LB_ROTATE_NONE);
}

/* R applied by the fast kernel == the explicit matrix; R Rᵀ = I; the two sides and
 * two seeds give different signs. */
static void test_rotation_orthogonal(void **state)
{
    (void)state;
    const int64_t dims[] = {1, 8, 64, 96, 172};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int64_t n = dims[d];
        for (int side = 0; side < 2; side++) {
            double *R = explicit_rotation(n, 42, (lb_rot_side)side);
            double *e = malloc((size_t)n * sizeof *e);
            for (int64_t j = 0; j < n; j++) { /* column j of R = R e_j */
                memset(e, 0, (size_t)n * sizeof *e);
                e[j] = 1.0;
                lb_rotate_vec(e, n, 42, (lb_rot_side)side);
                for (int64_t i = 0; i < n; i++)
                    assert_true(fabs(e[i] - R[i * n + j]) <= 1e-15);
                /* row j of R = Rᵀ e_j */
                memset(e, 0, (size_t)n * sizeof *e);
                e[j] = 1.0;
                lb_rotate_vec_t(e, n, 42, (lb_rot_side)side);
                for (int64_t i = 0; i < n; i++)
                    assert_true(fabs(e[i] - R[j * n + i]) <= 1e-15);
            }
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < n; j++) {
                    double s = 0;
                    for (int64_t k = 0; k < n; k++)
                        s += R[i * n + k] * R[j * n + k];
                    assert_true(fabs(s - (i == j ? 1.0 : 0.0)) <= 1e-12);
                }
            free(e);
            free(R);
        }
    }
    int differ = 0;
    for (int64_t i = 0; i < 64; i++) {
        differ += lb_rotate_sign(1, LB_ROT_IN, i) != lb_rotate_sign(2, LB_ROT_IN, i);
        differ += lb_rotate_sign(1, LB_ROT_IN, i) != lb_rotate_sign(1, LB_ROT_OUT, i);
    }
    assert_true(differ > 32);
}

/* C = A (n, k) B (k, m), float64 */
static double *matmul(const double *A, const double *B, int64_t n, int64_t k, int64_t m,
                      int transpose_b)
{
    double *C = calloc((size_t)(n * m), sizeof *C);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
            double s = 0;
            for (int64_t t = 0; t < k; t++)
                s += A[i * k + t] * (transpose_b ? B[j * k + t] : B[t * m + j]);
            C[i * m + j] = s;
        }
    return C;
}

static double *to_f64(const float *x, int64_t n)
{
    double *y = malloc((size_t)n * sizeof *y);
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i];
    return y;
}

/* forward rotation == R_out W R_inᵀ in float64 (then rounded); inverse == R_outᵀ W R_in;
 * forward then inverse gives W back to float rounding */
static void test_weight_rotation_reference(void **state)
{
    (void)state;
    const int64_t rows = 172, cols = 64;
    const uint64_t seed = 5;
    uint64_t rng = 11;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = lb_test_rand_normal(&rng);
    float *Wr = malloc((size_t)(rows * cols) * sizeof *Wr);
    memcpy(Wr, W, (size_t)(rows * cols) * sizeof *Wr);
    lb_err err = {0};
    assert_int_equal(lb_rotate_weight(Wr, rows, cols, seed, 0, &err), 0);
    double *Ro = explicit_rotation(rows, seed, LB_ROT_OUT);
    double *Ri = explicit_rotation(cols, seed, LB_ROT_IN);
    double *Wd = to_f64(W, rows * cols);
    double *T = matmul(Wd, Ri, rows, cols, cols, 1); /* W R_inᵀ */
    double *ref = matmul(Ro, T, rows, rows, cols, 0);
    for (int64_t i = 0; i < rows * cols; i++)
        assert_true(fabs((double)Wr[i] - ref[i]) <= 1e-6 * (1 + fabs(ref[i])));
    assert_int_equal(lb_rotate_weight(Wr, rows, cols, seed, 1, &err), 0);
    for (int64_t i = 0; i < rows * cols; i++)
        assert_true(fabsf(Wr[i] - W[i]) <= 2e-6f * (1 + fabsf(W[i])));
    free(W);
    free(Wr);
    free(Ro);
    free(Ri);
    free(Wd);
    free(T);
    free(ref);
}

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

/* tr(D H Dᵀ) is the same in the rotated basis */
static void test_proxy_loss_invariant(void **state)
{
    (void)state;
    const int64_t rows = 40, cols = 96;
    uint64_t rng = 3;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    float *Wh = malloc((size_t)(rows * cols) * sizeof *Wh);
    for (int64_t i = 0; i < rows * cols; i++) {
        W[i] = lb_test_rand_normal(&rng);
        Wh[i] = W[i] + 0.1f * lb_test_rand_normal(&rng);
    }
    float *H = random_hessian(cols, 9);
    lb_err err = {0};
    double e0, r0, e1, r1;
    assert_int_equal(lb_quant_error(W, Wh, rows, cols, H, &e0, &r0, &err), 0);
    assert_int_equal(lb_rotate_weight(W, rows, cols, 77, 0, &err), 0);
    assert_int_equal(lb_rotate_weight(Wh, rows, cols, 77, 0, &err), 0);
    assert_int_equal(lb_rotate_hessian(H, cols, 77, &err), 0);
    assert_int_equal(lb_quant_error(W, Wh, rows, cols, H, &e1, &r1, &err), 0);
    assert_true(fabs(e1 - e0) <= 1e-4 * e0);
    assert_true(fabs(r1 - r0) <= 1e-5 * r0);
    free(W);
    free(Wh);
    free(H);
}

/* Every method: rotated quantize -> packed with rot_kind/rot_seed (9 bytes, counted
 * in bpw); dequantize(packed) == W_hat bit for bit; W_hat == R_outᵀ Ŵ' R_in in float64,
 * Ŵ' the method's own dequantization of the packed matrix in the rotated basis. */
static void test_every_method_export_exact(void **state)
{
    (void)state;
    const int64_t rows = 172, cols = 64;
    const uint64_t seed = 1234567890123ull;
    uint64_t rng = 21;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = 0.02f * lb_test_rand_normal(&rng);
    float *H = random_hessian(cols, 4);
    double *Ro = explicit_rotation(rows, seed, LB_ROT_OUT);
    double *Ri = explicit_rotation(cols, seed, LB_ROT_IN);
    const lb_qmethod *all[16];
    int nm = lb_qmethod_list(all, 16);
    assert_true(nm >= 6);
    for (int k = 0; k < nm; k++) {
        const lb_qmethod *m = all[k];
        lb_qopts o;
        lb_qopts_init(&o);
        o.bits = 2;
        o.seed = seed;
        lb_qresult plain, rot;
        lb_err err = {0};
        /* the same method on the rotated matrix, without recording the rotation */
        float *Wr = malloc((size_t)(rows * cols) * sizeof *Wr);
        float *Hr = malloc((size_t)(cols * cols) * sizeof *Hr);
        memcpy(Wr, W, (size_t)(rows * cols) * sizeof *Wr);
        memcpy(Hr, H, (size_t)(cols * cols) * sizeof *Hr);
        assert_int_equal(lb_rotate_weight(Wr, rows, cols, seed, 0, &err), 0);
        assert_int_equal(lb_rotate_hessian(Hr, cols, seed, &err), 0);
        if (m->quantize(Wr, rows, cols, Hr, &o, &plain, &err))
            fail_msg("%s: %s", m->name, err.msg);
        o.rotate = LB_ROTATE_HADAMARD;
        if (lb_qmethod_quantize(m, W, rows, cols, H, &o, &rot, &err))
            fail_msg("%s rotated: %s", m->name, err.msg);
        /* honest bpw: the 1-byte kind and the 8-byte seed are stored and counted */
        assert_int_equal(rot.packed.nfields, plain.packed.nfields + 2);
        assert_true(lb_qpacked_bits(&rot.packed) == lb_qpacked_bits(&plain.packed) + 8 * 9);
        assert_true(rot.bpw == lb_qpacked_bpw(&rot.packed));
        assert_true(rot.bpw > plain.bpw);
        int32_t kind;
        uint64_t s;
        assert_int_equal(lb_qpacked_rotation(&rot.packed, &kind, &s, &err), 0);
        assert_int_equal(kind, LB_ROTATE_HADAMARD);
        assert_true(s == seed);
        /* dequantize(packed) reproduces W_hat exactly */
        float *back = malloc((size_t)(rows * cols) * sizeof *back);
        assert_int_equal(lb_qmethod_dequantize(m, &rot.packed, back, &err), 0);
        assert_memory_equal(back, rot.W_hat, (size_t)(rows * cols) * sizeof *back);
        /* against float64: R_outᵀ Ŵ' R_in, Ŵ' = the rotated-space reconstruction */
        assert_int_equal(m->dequantize(&rot.packed, back, &err), 0);
        assert_memory_equal(back, plain.W_hat, (size_t)(rows * cols) * sizeof *back);
        double *Wp = to_f64(back, rows * cols);
        double *T = matmul(Wp, Ri, rows, cols, cols, 0); /* Ŵ' R_in */
        double *RoT = malloc((size_t)(rows * rows) * sizeof *RoT);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < rows; j++)
                RoT[i * rows + j] = Ro[j * rows + i];
        double *ref = matmul(RoT, T, rows, rows, cols, 0);
        double scale = 0;
        for (int64_t i = 0; i < rows * cols; i++)
            scale = fmax(scale, fabs(ref[i]));
        for (int64_t i = 0; i < rows * cols; i++)
            if (fabs((double)rot.W_hat[i] - ref[i]) > 1e-6 * scale)
                fail_msg("%s: W_hat[%lld] = %.9g, float64 fold-back %.9g", m->name,
                         (long long)i, (double)rot.W_hat[i], ref[i]);
        free(Wp);
        free(T);
        free(RoT);
        free(ref);
        free(back);
        free(Wr);
        free(Hr);
        lb_qresult_free(&plain);
        lb_qresult_free(&rot);
    }
    free(W);
    free(H);
    free(Ro);
    free(Ri);
}

/* a damaged rotation record is refused with one clear error, never folded wrongly */
static void test_malformed_rotation_refused(void **state)
{
    (void)state;
    const int64_t rows = 8, cols = 16;
    float W[8 * 16];
    uint64_t rng = 1;
    for (int i = 0; i < rows * cols; i++)
        W[i] = lb_test_rand_normal(&rng);
    const lb_qmethod *m = lb_qmethod_find("rtn");
    lb_qopts o;
    lb_qopts_init(&o);
    o.rotate = LB_ROTATE_HADAMARD;
    lb_qresult res;
    lb_err err = {0};
    assert_int_equal(lb_qmethod_quantize(m, W, rows, cols, NULL, &o, &res, &err), 0);
    float back[8 * 16];
    lb_qfield *kf = NULL;
    for (int f = 0; f < res.packed.nfields; f++)
        if (!strcmp(res.packed.fields[f].name, "rot_kind"))
            kf = &res.packed.fields[f];
    assert_non_null(kf);
    lb_qfield_put(kf, 0, 7);
    assert_int_equal(lb_qmethod_dequantize(m, &res.packed, back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "unknown rotation kind 7"));
    lb_qfield_put(kf, 0, LB_ROTATE_HADAMARD);
    snprintf(res.packed.fields[res.packed.nfields - 1].name, LB_QFIELD_NAME_MAX, "x");
    assert_int_equal(lb_qmethod_dequantize(m, &res.packed, back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "rotation fields"));
    lb_qresult_free(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fwht_matches_matrix),
        cmocka_unit_test(test_block_sizes),
        cmocka_unit_test(test_rotation_orthogonal),
        cmocka_unit_test(test_weight_rotation_reference),
        cmocka_unit_test(test_proxy_loss_invariant),
        cmocka_unit_test(test_every_method_export_exact),
        cmocka_unit_test(test_malformed_rotation_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
