/* ggml block decoding (Q4_0, Q4_1, Q8_0; the K types via lb_kquant) for checking GGUF
 * exports, and which export formats a method supports (see lb_export.h, docs/export.md). */
#include <stdint.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_export.h"
#include "lb_kquant.h"

int lb_ggml_dequant_row(int type, const uint8_t *src, float *dst, int64_t n, lb_err *err)
{
    if (lb_kquant_block_bytes(type))
        return lb_kquant_dequant_row(type, src, dst, n, err);
    if (n % 32)
        return lb_err_set(err, LB_EINVAL, "ggml dequant: row of %lld is not whole blocks",
                          (long long)n);
    for (int64_t b = 0; b < n / 32; b++) {
        float *y = dst + 32 * b;
        if (type == LB_GGML_TYPE_Q8_0) {
            const uint8_t *x = src + 34 * b;
            float d = lb_f16_to_f32((uint16_t)(x[0] | x[1] << 8));
            for (int j = 0; j < 32; j++)
                y[j] = (float)(int8_t)x[2 + j] * d;
        } else if (type == LB_GGML_TYPE_Q4_0) {
            const uint8_t *x = src + 18 * b;
            float d = lb_f16_to_f32((uint16_t)(x[0] | x[1] << 8));
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((x[2 + j] & 0x0f) - 8) * d;
                y[j + 16] = (float)((x[2 + j] >> 4) - 8) * d;
            }
        } else if (type == LB_GGML_TYPE_Q4_1) {
            const uint8_t *x = src + 20 * b;
            float d = lb_f16_to_f32((uint16_t)(x[0] | x[1] << 8));
            float mm = lb_f16_to_f32((uint16_t)(x[2] | x[3] << 8));
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(x[4 + j] & 0x0f) * d + mm;
                y[j + 16] = (float)(x[4 + j] >> 4) * d + mm;
            }
        } else {
            return lb_err_set(err, LB_EINVAL, "ggml dequant: type %d is not Q4_0/Q4_1/Q8_0",
                              type);
        }
    }
    return 0;
}

const char *lb_export_formats_for(const char *method)
{
    if (method && (!strcmp(method, "rtn") || !strcmp(method, "gptq")))
        return "dense, gguf, gptq, compressed-tensors";
    return "dense, gguf";
}
