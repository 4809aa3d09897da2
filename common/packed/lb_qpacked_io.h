/* lb_qpacked_io: an lb_qpacked stored as safetensors tensors, read back exactly.
 *
 * Layout for a packed matrix under name prefix P (e.g. "model.layers.0.mlp.up_proj.q"):
 *   - one U8 tensor "P.<field>" of shape [nbytes] per field: the field's bit
 *     stream bytes as they are in memory (little-endian bit order, lb_quant.h);
 *   - one "__metadata__" string "P.__qpacked__", compact JSON:
 *       {"version":1,"method":"gptq","rows":R,"cols":C,
 *        "fields":[{"name":"codes","kind":"uint","bits":3,"shape":[R,C],
 *                   "count":N,"nbytes":B}, ...]}   (fields in lb_qpacked order)
 *     kind is one of "uint", "int", "f16", "bf16", "f32".
 * Reading validates everything against the file (sizes, dtypes, overflow,
 * NaN/Inf in float fields) and never reads outside the mapping. */
#ifndef LB_QPACKED_IO_H
#define LB_QPACKED_IO_H

#include <stdbool.h>

#include "lb_quant.h"
#include "lb_safetensors.h"

#define LB_QPACKED_IO_VERSION 1
#define LB_QPACKED_IO_MAX_FIELDS 64
/* Suffix of the metadata key: "<prefix>" LB_QPACKED_IO_META_SUFFIX */
#define LB_QPACKED_IO_META_SUFFIX ".__qpacked__"

/* Checks p is well formed (method name, rows, cols > 0, 1..64 fields with
 * distinct valid names, kinds/bits, count = prod(shape), nbytes = ceil(count*bits/8),
 * data present). Returns 0 or LB_EINVAL naming the field. */
int lb_qpacked_io_check(const lb_qpacked *p, lb_err *err);

/* Declare phase: adds one U8 tensor per field ("<prefix>.<field>") to w, in
 * field order, and the metadata entry "<prefix>.__qpacked__". Must come before
 * any data is written to w. Returns 0, LB_EINVAL (bad p or prefix), LB_ESTATE
 * or LB_ENOMEM. w keeps no pointer to p. */
int lb_qpacked_io_declare(lb_st_writer *w, const char *prefix, const lb_qpacked *p,
                          lb_err *err);

/* Write phase: writes the fields' bytes in field order. The tensors declared
 * between this packed matrix's declare and the next one's must be written in
 * the same order (the writer enforces declaration order). Returns 0 or the
 * writer's error. */
int lb_qpacked_io_write(lb_st_writer *w, const char *prefix, const lb_qpacked *p,
                        lb_err *err);

/* True when st holds the metadata entry of a packed matrix under prefix. */
bool lb_qpacked_io_has(const lb_st *st, const char *prefix);

/* If tensor `name` is a field "X.q.FIELD" of a packed matrix in st, writes its
 * prefix "X.q" and base "X" (each buffer `cap` bytes) and returns true. */
bool lb_qpacked_io_field_of(const lb_st *st, const char *name, char *prefix, char *base,
                            size_t cap);

/* Reads the packed matrix under prefix. OUT: *out (must be zeroed or freed
 * before; caller frees with lb_qpacked_free), equal to what was written field
 * by field and byte by byte. On failure *out is left zeroed. Errors:
 * LB_ENOTFOUND (no entry / missing field tensor), LB_EFORMAT (malformed
 * metadata, size or dtype mismatch), LB_ENUMERIC (NaN/Inf in a float field),
 * LB_ENOMEM; the message names the file and the prefix. */
int lb_qpacked_io_read(const lb_st *st, const char *prefix, lb_qpacked *out, lb_err *err);

/* Whole-file convenience (artifacts): a safetensors file at path holding one
 * packed matrix under prefix "q", written atomically (path.tmp + rename).
 * Returns 0 or an error as above. */
int lb_qpacked_io_save(const char *path, const lb_qpacked *p, lb_err *err);
int lb_qpacked_io_load(const char *path, lb_qpacked *out, lb_err *err);

/* Bytes the fields of p take (the numerator of its bpw). */
uint64_t lb_qpacked_io_nbytes(const lb_qpacked *p);

#endif
