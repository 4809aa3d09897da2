/* Plain, slow references for the quantization kernels, and synthetic inputs.
 * Written independently of common/quant so that the kernels are checked against them. */
#ifndef LB_TEST_QREF_H
#define LB_TEST_QREF_H

#include <stdbool.h>
#include <stdint.h>

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

#endif
