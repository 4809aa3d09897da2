/* lb_dtype: element types of tensors on disk and conversions to/from f32. */
#ifndef LB_DTYPE_H
#define LB_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    LB_DTYPE_F32 = 0,
    LB_DTYPE_F16,
    LB_DTYPE_BF16,
    LB_DTYPE_F64,
    LB_DTYPE_I8,
    LB_DTYPE_U8,
    LB_DTYPE_I16,
    LB_DTYPE_U16,
    LB_DTYPE_I32,
    LB_DTYPE_U32,
    LB_DTYPE_I64,
    LB_DTYPE_U64,
    LB_DTYPE_BOOL,
    LB_DTYPE_COUNT
} lb_dtype;

/* Bytes per element (0 for an invalid dtype). */
size_t lb_dtype_size(lb_dtype dt);
/* safetensors name ("F32", "BF16", ...), or NULL. */
const char *lb_dtype_name(lb_dtype dt);
/* Parses a safetensors dtype name; returns 0 and sets *out, or -1 if unknown. */
int lb_dtype_parse(const char *name, lb_dtype *out);

/* Scalar conversions. f32 -> f16/bf16 round to nearest even; NaN stays NaN,
 * overflow goes to Inf. */
float lb_f16_to_f32(uint16_t h);
uint16_t lb_f32_to_f16(float f);
float lb_bf16_to_f32(uint16_t b);
uint16_t lb_f32_to_bf16(float f);

/* Converts n elements of a float dtype (F32, F16, BF16, F64) at src (any
 * alignment, little-endian) to f32. Returns 0, or -1 for a non-float dtype. */
int lb_dtype_to_f32(lb_dtype dt, const void *src, float *dst, size_t n);
/* Converts n f32 values to dt (F32, F16, BF16, F64) at dst. Returns 0 or -1. */
int lb_dtype_from_f32(lb_dtype dt, const float *src, void *dst, size_t n);

#endif
