#include "lb_test_qref.h"

#include <math.h>
#include <stdlib.h>

#include "lb_dtype.h"
#include "lb_test_util.h"

static float ref_f16(float s)
{
    float h = lb_f16_to_f32(lb_f32_to_f16(s));
    return h > 0.0f ? h : 0x1p-24f;
}

int32_t lb_test_ref_code(float x, float scale, int32_t zero, int32_t maxq)
{
    float c = nearbyintf(x / scale) + (float)zero;
    if (c < 0.0f)
        return 0;
    if (c > (float)maxq)
        return maxq;
    return (int32_t)c;
}

float lb_test_ref_value(int32_t code, float scale, int32_t zero)
{
    return scale * (float)(code - zero);
}

static int32_t ref_zero(float xmin, float scale, int32_t maxq)
{
    float z = nearbyintf(-xmin / scale);
    return z < 0.0f ? 0 : z > (float)maxq ? maxq : (int32_t)z;
}

void lb_test_ref_fit(const float *x, int64_t n, int64_t stride, int32_t maxq, bool sym,
                     bool mse, float *scale, int32_t *zero)
{
    float xmin = 0.0f, xmax = 0.0f;
    for (int64_t k = 0; k < n; k++) {
        float v = x[k * stride];
        if (v < xmin)
            xmin = v;
        if (v > xmax)
            xmax = v;
    }
    if (sym) {
        if (fabsf(xmin) > xmax)
            xmax = fabsf(xmin);
        if (xmin < 0.0f)
            xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    *scale = ref_f16((xmax - xmin) / (float)maxq);
    *zero = sym ? (maxq + 1) / 2 : ref_zero(xmin, *scale, maxq);
    if (!mse)
        return;
    double best = INFINITY;
    for (int i = 0; i < 80; i++) {
        float p = 1.0f - (float)i / 100.0f;
        float lo = p * xmin, hi = p * xmax;
        float s = ref_f16((hi - lo) / (float)maxq);
        int32_t z = sym ? (maxq + 1) / 2 : ref_zero(lo, s, maxq);
        double e = 0.0;
        for (int64_t k = 0; k < n; k++) {
            float v = x[k * stride];
            float d = lb_test_ref_value(lb_test_ref_code(v, s, z, maxq), s, z) - v;
            e += (double)powf(fabsf(d), 2.4f);
        }
        if (e < best) {
            best = e;
            *scale = s;
            *zero = z;
        }
    }
}

void lb_test_activations(float *X, int64_t ntok, int64_t cols, int outliers, uint64_t seed)
{
    uint64_t rng = seed * 2654435761u + 1;
    float *z = malloc((size_t)cols * sizeof *z);
    float *gain = malloc((size_t)cols * sizeof *gain);
    for (int64_t c = 0; c < cols; c++)
        gain[c] = 0.5f + lb_test_rand_uniform(&rng);
    for (int i = 0; i < outliers && i < cols; i++)
        gain[(i * 7919) % cols] = 30.0f;
    for (int64_t t = 0; t < ntok; t++) {
        float common = lb_test_rand_normal(&rng);
        for (int64_t c = 0; c < cols; c++)
            z[c] = lb_test_rand_normal(&rng);
        for (int64_t c = 0; c < cols; c++) {
            // neighbour mixing and a shared factor make H strongly non-diagonal
            float v = z[c] + 0.8f * z[(c + 1) % cols] + 0.5f * z[(c + 5) % cols] + 0.7f * common;
            X[t * cols + c] = gain[c] * v;
        }
    }
    free(z);
    free(gain);
}

void lb_test_hessian_ref(const float *X, int64_t ntok, int64_t cols, float *H)
{
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++) {
            double s = 0.0;
            for (int64_t t = 0; t < ntok; t++)
                s += (double)X[t * cols + a] * (double)X[t * cols + b];
            H[a * cols + b] = (float)(2.0 * s / (double)ntok);
        }
}

float *lb_test_correlated_hessian(int64_t cols, uint64_t seed, double common, int period,
                                  bool mean, double eps)
{
    int64_t nx = 2 * cols + 8;
    double *X = malloc((size_t)(nx * cols) * sizeof(double));
    float *H = malloc((size_t)(cols * cols) * sizeof(float));
    assert_non_null(X);
    assert_non_null(H);
    uint64_t s = seed;
    for (int64_t t = 0; t < nx; t++) {
        double c = (double)lb_test_rand_normal(&s);
        for (int64_t j = 0; j < cols; j++)
            X[t * cols + j] =
                common * c + (double)lb_test_rand_normal(&s) * (1.0 + (double)(j % period));
    }
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++) {
            double acc = 0.0;
            for (int64_t t = 0; t < nx; t++)
                acc += X[t * cols + a] * X[t * cols + b];
            H[a * cols + b] = (float)((mean ? acc / (double)nx : acc) + (a == b ? eps : 0.0));
        }
    free(X);
    return H;
}

void lb_test_assert_near(double a, double b, double tol, const char *file, int line)
{
    if (!(fabs(a - b) <= tol))
        fail_msg("%s:%d: %.9g vs %.9g differ by %.3g > %.3g", file, line, a, b, fabs(a - b),
                 tol);
}

void lb_test_check_packed_roundtrip(int (*quantize)(const float *, int64_t, int64_t,
                                                    const float *, const lb_qopts *,
                                                    lb_qresult *, lb_err *),
                                    int (*dequantize)(const lb_qpacked *, float *, lb_err *),
                                    const float *W, int64_t rows, int64_t cols, const float *H,
                                    const lb_qopts *opts)
{
    lb_qresult res;
    lb_err e = {0};
    if (quantize(W, rows, cols, H, opts, &res, &e))
        fail_msg("%lld x %lld: %s", (long long)rows, (long long)cols, e.msg);
    float *D = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(D);
    assert_int_equal(dequantize(&res.packed, D, &e), 0);
    assert_memory_equal(D, res.W_hat, sizeof(float) * (size_t)(rows * cols));
    for (int64_t k = 0; k < rows * cols; k++)
        assert_true(isfinite(res.W_hat[k]));
    LB_ASSERT_NEAR(res.bpw, (double)lb_qpacked_bits(&res.packed) / (double)(rows * cols), 1e-12);
    free(D);
    lb_qresult_free(&res);
}
