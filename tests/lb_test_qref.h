/* Plain, slow references for the quantization kernels, and synthetic inputs.
 * Written independently of common/quant so that the kernels are checked against them. */
#ifndef LB_TEST_QREF_H
#define LB_TEST_QREF_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_quant.h"

/* Reference of the GPTQ quant.py grid for ONE row of n values x[k*stride]:
 * min-max (mse=false) or the 80-step shrink search with |.|^2.4 (mse=true).
 * Scales rounded to f16. OUT: *scale, *zero. */
void lb_test_ref_fit(const float *x, int64_t n, int64_t stride, int32_t maxq, bool sym,
                     bool mse, float *scale, int32_t *zero);
int32_t lb_test_ref_code(float x, float scale, int32_t zero, int32_t maxq);
float lb_test_ref_value(int32_t code, float scale, int32_t zero);

/* Synthetic activations X (ntok, cols): correlated (each channel mixes its neighbours)
 * with `outliers` channels scaled by 30. OUT: X malloc'd by caller (ntok*cols). */
void lb_test_activations(float *X, int64_t ntok, int64_t cols, int outliers, uint64_t seed);
/* H (cols, cols) = 2/ntok Xᵀ X, plain triple loop in double, stored as float. */
void lb_test_hessian_ref(const float *X, int64_t ntok, int64_t cols, float *H);

/* A malloc'd SPD-ish H (cols, cols) = Xᵀ X (divided by nx when `mean`) + eps I from
 * X (nx = 2 cols + 8, cols) whose columns share a common factor (weight `common`) and
 * have scales 1 + (j % period). */
float *lb_test_correlated_hessian(int64_t cols, uint64_t seed, double common, int period,
                                  bool mean, double eps);

/* Fails the test (with the caller's line) unless |a - b| <= tol, compared in double
 * (cmocka's assert_float_equal compares in float). */
#define LB_ASSERT_NEAR(a, b, tol)                                                            \
    lb_test_assert_near((double)(a), (double)(b), (double)(tol), __FILE__, __LINE__)
void lb_test_assert_near(double a, double b, double tol, const char *file, int line);

/* Runs quantize on W (rows, cols) with H and opts, then checks what every method owes:
 * dequantize(packed) reproduces W_hat byte for byte, W_hat is finite, and bpw equals
 * the stored bits over rows * cols. */
void lb_test_check_packed_roundtrip(int (*quantize)(const float *, int64_t, int64_t,
                                                    const float *, const lb_qopts *,
                                                    lb_qresult *, lb_err *),
                                    int (*dequantize)(const lb_qpacked *, float *, lb_err *),
                                    const float *W, int64_t rows, int64_t cols, const float *H,
                                    const lb_qopts *opts);

#endif
