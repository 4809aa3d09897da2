/* lb_kquant: llama.cpp's K-quant grids (Q2_K, Q3_K, Q4_K) as GPTQ grids.
 *
 * A row is cut into super-blocks of QK_K = 256 columns, each stored as one ggml block
 * (layouts as in ggml-common.h / dequantize_row_q*_K of ggml-quants.c):
 *   Q4_K 144 B: f16 d, f16 dmin, 12 B of 6-bit scales+mins (8 sub-blocks of 32),
 *               128 B of 4-bit codes;  value = (d*sc)*q - (dmin*m), q in 0..15  4.5 bpw
 *   Q3_K 110 B: 32 B high-bit mask, 64 B of low 2 bits, 12 B of 6-bit scales (16
 *               sub-blocks of 16, stored +32), f16 d;  value = (d*(sc-32))*q,
 *               q in -4..3                                                3.4375 bpw
 *   Q2_K  84 B: 16 B of 4-bit scale|min<<4 (16 sub-blocks of 16), 64 B of 2-bit codes,
 *               f16 d, f16 dmin;  value = (d*sc)*q - (dmin*m), q in 0..3    2.625 bpw
 * Every value is computed with the same float operations in the same order as ggml's
 * dequantizer, so lb_kquant_dequant_row equals dequantize_row_q*_K bit for bit.
 *
 * GPTQ use (lb_kquant_gptq, called by the "gptq" method for --grid q2_k|q3_k|q4_k):
 * when the column loop reaches a super-block's first column, each row's super-block is
 * fitted on the error-compensated columns, each weight weighted by diag(H) (llama.cpp's
 * imatrix weighting): per sub-block a weighted least-squares (scale, min) search, then
 * the sub-block scales/mins are rounded onto the 6-bit (Q2_K: 4-bit) grid under f16 d /
 * dmin. Each column is then rounded to the nearest value of its sub-block and GPTQ
 * propagates the error. Packed layout (method "gptq"):
 *   "kq_type"   UINT 8 (1,)                 ggml type: 10 Q2_K, 11 Q3_K, 12 Q4_K
 *   "kq_blocks" UINT 8 (rows, cols/256*B)   the ggml blocks themselves, row-major
 * so bpw counted from stored bytes is the ggml figure plus 8 bits per matrix, and the
 * GGUF export copies the blocks unchanged. */
#ifndef LB_KQUANT_H
#define LB_KQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

#define LB_KQ_QK 256
#define LB_GGML_TYPE_Q2_K 10
#define LB_GGML_TYPE_Q3_K 11
#define LB_GGML_TYPE_Q4_K 12

/* ggml type of a K grid (LB_GRID_Q2_K..Q4_K), or -1 for other grids. */
int lb_kquant_type_of_grid(lb_qgrid grid);
/* Bytes of one 256-weight block of ggml type `type`, 0 when not a K type. */
size_t lb_kquant_block_bytes(int type);
/* "q2_k" / "q3_k" / "q4_k" (or NULL) */
const char *lb_kquant_type_name(int type);

/* One fitted super-block: the stored fields, unpacked, and the effective sub-block
 * grid value(q) = a*q - b (Q3_K: a*(q-4), q the stored 0..7 code). */
typedef struct {
    uint16_t d, dmin;  /* f16 bits (dmin unused by Q3_K) */
    uint8_t sc[16];    /* sub-block scales as stored (Q3_K: 0..63, offset 32) */
    uint8_t m[16];     /* sub-block mins (Q2_K 0..15, Q4_K 0..63) */
    float a[16], b[16];
} lb_kq_super;

/* Fits the super-block grid of x (256 values) with importance weights w (256, >= 0;
 * NULL = all 1). Returns 0 or LB_ENUMERIC (non-finite input). */
int lb_kquant_fit(int type, const float *x, const float *w, lb_kq_super *sb, lb_err *err);
/* Nearest code (0..maxq as stored: Q4_K 0..15, Q3_K 0..7 = q+4, Q2_K 0..3) of x in
 * sub-block j, and its value (bit-identical to ggml's dequantization). */
uint8_t lb_kquant_code(int type, const lb_kq_super *sb, int j, float x);
float lb_kquant_value(int type, const lb_kq_super *sb, int j, uint8_t code);
/* Sub-block of column k (0..255) of a super-block. */
static inline int lb_kquant_sub(int type, int k)
{
    return type == LB_GGML_TYPE_Q4_K ? k / 32 : k / 16;
}
/* Writes one ggml block from sb and codes[256] (stored codes as above). */
void lb_kquant_encode(int type, const lb_kq_super *sb, const uint8_t *codes, uint8_t *blk);
/* Dequantizes n values (a multiple of 256) of ggml blocks of `type` into y, exactly
 * as ggml's dequantize_row_q*_K. Returns 0 or LB_EINVAL. */
int lb_kquant_dequant_row(int type, const uint8_t *blocks, float *y, int64_t n, lb_err *err);

/* GPTQ onto a K grid (see above); opts->grid selects the type. Refuses act-order,
 * static groups and rows not a multiple of 256 (LB_EINVAL with the fix). Fills *out
 * (W_hat, packed "gptq" with kq_type/kq_blocks, bpw). */
int lb_kquant_gptq(const float *W, int64_t rows, int64_t cols, const float *H,
                   const lb_qopts *opts, lb_qresult *out, lb_err *err);
/* Dequantizes the packed layout above into W_out (rows, cols). Returns 0, LB_EFORMAT
 * (bad type or field sizes). */
int lb_kquant_dequantize(const lb_qpacked *p, float *W_out, lb_err *err);
/* The ggml type stored in a packed matrix, or -1 when it is not a K-quant one. */
int lb_kquant_packed_type(const lb_qpacked *p);

#endif
