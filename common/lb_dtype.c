#include "lb_dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[LB_DTYPE_COUNT] = {
    [LB_DTYPE_F32] = {"F32", 4}, [LB_DTYPE_F16] = {"F16", 2},  [LB_DTYPE_BF16] = {"BF16", 2},
    [LB_DTYPE_F64] = {"F64", 8}, [LB_DTYPE_I8] = {"I8", 1},    [LB_DTYPE_U8] = {"U8", 1},
    [LB_DTYPE_I16] = {"I16", 2}, [LB_DTYPE_U16] = {"U16", 2},  [LB_DTYPE_I32] = {"I32", 4},
    [LB_DTYPE_U32] = {"U32", 4}, [LB_DTYPE_I64] = {"I64", 8},  [LB_DTYPE_U64] = {"U64", 8},
    [LB_DTYPE_BOOL] = {"BOOL", 1},
};

size_t lb_dtype_size(lb_dtype dt)
{
    return (unsigned)dt < LB_DTYPE_COUNT ? dtype_info[dt].size : 0;
}

const char *lb_dtype_name(lb_dtype dt)
{
    return (unsigned)dt < LB_DTYPE_COUNT ? dtype_info[dt].name : NULL;
}

int lb_dtype_parse(const char *name, lb_dtype *out)
{
    for (int i = 0; i < LB_DTYPE_COUNT; i++)
        if (!strcmp(name, dtype_info[i].name)) {
            *out = (lb_dtype)i;
            return 0;
        }
    return -1;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float lb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in f32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t lb_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* Inf or NaN (keep NaN quiet) */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) {
        /* result is subnormal or zero: round |f| / 2^-24 to nearest even */
        float a = bits_f32(absx) * 0x1p24f;
        return (uint16_t)(sign | (uint16_t)lrintf(a));
    }
    uint32_t mant = absx & 0x7fffffu;
    uint32_t exp = (absx >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* carries into the exponent correctly */
    return (uint16_t)(sign | h);
}

float lb_bf16_to_f32(uint16_t b)
{
    return bits_f32((uint32_t)b << 16);
}

uint16_t lb_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

int lb_dtype_to_f32(lb_dtype dt, const void *src, float *dst, size_t n)
{
    const uint8_t *s = src;
    switch (dt) {
    case LB_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case LB_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = lb_f16_to_f32(h);
        }
        return 0;
    case LB_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = lb_bf16_to_f32(h);
        }
        return 0;
    case LB_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    default:
        return -1;
    }
}

int lb_dtype_from_f32(lb_dtype dt, const float *src, void *dst, size_t n)
{
    uint8_t *d = dst;
    switch (dt) {
    case LB_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case LB_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = lb_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    case LB_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = lb_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    case LB_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double v = (double)src[i];
            memcpy(d + 8 * i, &v, 8);
        }
        return 0;
    default:
        return -1;
    }
}
