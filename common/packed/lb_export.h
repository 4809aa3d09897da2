/* lb_export: a model lowbit opens (packed or fp) -> files other runtimes load.
 * Formats (docs/export.md):
 *   - GGUF (llama.cpp): dense F32/F16/BF16 from the dequantized weights, or, with
 *     `direct`, the stored codes of RTN/GPTQ linears whose grid is a ggml block
 *     type (group 32: 4-bit sym -> Q4_0, 4-bit asym -> Q4_1, 8-bit sym -> Q8_0), and
 *     the stored blocks of GPTQ --grid q2_k|q3_k|q4_k -> Q2_K/Q3_K/Q4_K unchanged.
 *   - GPTQ safetensors layout (AutoGPTQ / GPTQModel / transformers).
 *   - compressed-tensors pack-quantized (vLLM).
 * The dense safetensors export is lb_packed_export (lb_packed.h). */
#ifndef LB_EXPORT_H
#define LB_EXPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_dtype.h"
#include "lb_err.h"

typedef struct {
    lb_dtype dtype; /* dense tensors: F32, F16 or BF16 */
    bool direct;    /* write RTN/GPTQ codes as Q4_0/Q4_1/Q8_0 where they map exactly */
} lb_gguf_opts;

typedef struct {
    int64_t tensors;     /* tensors written */
    int64_t direct;      /* linears written as ggml block codes */
    int64_t dense;       /* linears written dense (F32/F16/BF16) */
    int64_t q4_1_m_inexact; /* Q4_1 blocks whose min -d*z was rounded to f16 */
    uint64_t file_bytes;
} lb_gguf_summary;

/* Writes in_dir (config.json + model.safetensors, packed or not; llama or mistral)
 * to the GGUF v3 file out_path (staged as out_path.tmp, renamed when complete).
 * Vocabulary: from in_dir/tokenizer.json when present (BPE models), else a small
 * valid llama-style vocabulary (<unk>, <s>, </s>, the 256 byte tokens, fillers).
 * q_proj/k_proj rows are permuted into llama.cpp's interleaved RoPE layout.
 * OUT: *summary (may be NULL). Returns 0 or LB_E*. */
int lb_gguf_export(const char *in_dir, const char *out_path, const lb_gguf_opts *opts,
                   lb_gguf_summary *summary, lb_err *err);

/* ggml block layouts used by the direct export (little-endian, 32 weights each). */
#define LB_GGML_TYPE_F32 0
#define LB_GGML_TYPE_F16 1
#define LB_GGML_TYPE_Q4_0 2
#define LB_GGML_TYPE_Q4_1 3
#define LB_GGML_TYPE_Q8_0 8
#define LB_GGML_TYPE_BF16 30

/* Dequantizes n (multiple of 32; 256 for K types) weights of one ggml block row of
 * `type` (Q4_0, Q4_1, Q8_0, Q2_K, Q3_K or Q4_K) the way ggml's reference dequantizer defines it. Used by
 * tests to check the direct export. Returns 0 or LB_EINVAL for another type. */
int lb_ggml_dequant_row(int type, const uint8_t *src, float *dst, int64_t n, lb_err *err);

/* The formats `lowbit export --format F` can write for a method, for messages:
 * "dense, gguf, gptq, compressed-tensors" (rtn/gptq) or "dense, gguf". */
const char *lb_export_formats_for(const char *method);

/* GPTQ / compressed-tensors safetensors export of a packed checkpoint whose
 * quantized linears are all RTN/GPTQ with 2, 4 or 8 bits and one group size
 * (every other tensor dense in `dtype`: F16 or BF16). compressed = false: GPTQ layout;
 * true: compressed-tensors pack-quantized. Returns 0 or LB_E* (LB_EINVAL naming
 * the method and the formats it supports when a linear cannot be written). */
int lb_gptq_export(const char *in_dir, const char *out_dir, bool compressed, lb_dtype dtype,
                   lb_err *err);

#endif
