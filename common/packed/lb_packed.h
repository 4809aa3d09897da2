/* lb_packed: the packed lowbit checkpoint (docs/packed-format.md, "lowbit_format": 1).
 *
 * A directory in Hugging Face layout:
 *   config.json        the source config plus "quantization_config"
 *                      {"quant_method":"lowbit","format_version":1,"method","bits",
 *                       "per_tensor":{weight name: {"method","options","bpw"}}, ...}
 *   model.safetensors  each quantized linear "X.weight" as packed fields under
 *                      prefix "X.q" (lb_qpacked_io.h); every other tensor copied
 *                      byte for byte in its source dtype
 *   manifest.json      per tensor: method, bytes, bpw, sha256 of the stored bytes;
 *                      model-wide bpw of the quantized linears; file sizes and sha256s.
 * manifest.json is renamed into place last: a directory without it is not a
 * checkpoint, and lb_model_open refuses it. */
#ifndef LB_PACKED_H
#define LB_PACKED_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_dtype.h"
#include "lb_model.h"
#include "lb_quant.h"

#define LB_PACKED_FORMAT_VERSION 1

/* One quantized linear handed to the merger. */
typedef struct {
    const char *name;          /* source weight, e.g. "model.layers.0.mlp.up_proj.weight" */
    const lb_qpacked *packed;  /* in memory, or NULL to read packed_path */
    const char *packed_path;   /* a file written by lb_qpacked_io_save (read on demand, one
                                  linear at a time) */
    const char *options;       /* method options as given (recorded in per_tensor); may be NULL */
} lb_packed_entry;

typedef struct {
    const char *method;     /* model-wide --method */
    double bits;            /* model-wide --bits */
    const char *extra_json; /* NULL, or a JSON object whose members are added to
                               quantization_config (e.g. ctx, nsamples, overrides) */
} lb_packed_info;

typedef struct {
    int64_t n_quantized;       /* linears stored packed */
    int64_t quantized_weights; /* sum of rows * cols over them */
    uint64_t quantized_bytes;  /* sum of their field bytes (everything stored for them) */
    double bpw;                /* 8 * quantized_bytes / quantized_weights (0 when none) */
    uint64_t file_bytes;       /* size of model.safetensors */
    bool lm_head_packed;       /* lm_head.weight is one of the quantized (counted above) */
    double lm_head_bpw;        /* its bpw when lm_head_packed, else 0 */
} lb_packed_summary;

/* Prefix of the packed fields of weight `name`: "X.weight" -> "X.q" (any other
 * name -> name + ".q"). Returns 0, or LB_EINVAL when buf is too small. */
int lb_packed_prefix(const char *name, char *buf, size_t size, lb_err *err);

/* Merger: writes the packed checkpoint of src (an fp model) to out_dir (created
 * with its parents when missing) with entries[0..n) replacing their source weights. Every entry
 * must name a distinct 2-D weight of src with the packed rows/cols and a method
 * in the registry. Files are staged in out_dir/.tmp-XXXXXX and renamed into
 * place, manifest.json last (an old manifest.json is removed first), so an
 * interrupted run never leaves a directory that opens as complete.
 * An entry "lm_head.weight" for a source with tie_word_embeddings unties it:
 * config.json gets "tie_word_embeddings": false, the embedding is copied as
 * usual and, when the source stores no lm_head.weight, the packed lm_head is
 * added after the source tensors (its shape is (vocab_size, hidden_size)).
 * Holds at most one packed linear and one source tensor's bytes at a time
 * (besides the mapping). OUT: *summary (may be NULL). Returns 0 or LB_E*. */
int lb_packed_write(const char *out_dir, const lb_model *src, const lb_packed_entry *entries,
                    int64_t n, const lb_packed_info *info, lb_packed_summary *summary,
                    lb_err *err);

/* Dequantizes packed weight `name` ("X.weight", stored under "X.q") of st into
 * dst (numel floats) through the method registry; what lb_model_load_block uses
 * for packed checkpoints. Errors: as lb_qpacked_io_read, LB_EFORMAT (unknown
 * method, size mismatch), LB_ENUMERIC (NaN/Inf result), the method's errors. */
int lb_packed_load_weight(const lb_st *st, const char *name, float *dst, int64_t numel,
                          lb_err *err);

/* lb_model_open for a plain or a packed checkpoint: a packed one is checked
 * (manifest, format version) and its load_block/load_head dequantize through the
 * method registry. Nothing needs registering first. Returns 0 or LB_E*. */
int lb_packed_model_open(lb_model **out, const char *dir, lb_err *err);

/* Recomputes every checksum of manifest.json (each tensor's stored bytes, each
 * file) and the bpw figures, and checks that the file holds exactly the tensors
 * the manifest lists. Returns 0, or LB_EFORMAT naming the first mismatch
 * (LB_ENOTFOUND / LB_EIO for missing/unreadable files). OUT: *summary (may be NULL). */
int lb_packed_verify(const char *dir, lb_packed_summary *summary, lb_err *err);

/* Export: writes a plain HF checkpoint of the model at in_dir (packed or not) to
 * out_dir: config.json without quantization_config (torch_dtype set),
 * model.safetensors with every float tensor in dtype (F32, F16 or BF16) and the
 * packed linears dequantized, one tensor at a time. With LB_DTYPE_F32 the
 * weights equal what lb_model_load_block gives for the packed model, bit for bit.
 * Staged and renamed like lb_packed_write. Returns 0 or LB_E*. */
int lb_packed_export(const char *in_dir, const char *out_dir, lb_dtype dtype, lb_err *err);

#endif
