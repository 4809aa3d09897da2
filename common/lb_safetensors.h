/* lb_safetensors: read (mmap) and stream-write safetensors files.
 *
 * Format: u64 LE header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [r, c], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {"key": "string", ...}}
 * then the data area; offsets are relative to its start (8 + N).
 *
 * Reader: a single file, or a model directory holding model.safetensors or
 * model.safetensors.index.json (sharded; "weight_map": name -> shard file).
 * Every header is validated before any tensor is exposed: the reader never
 * touches bytes outside a mapping, whatever the file holds. */
#ifndef LB_SAFETENSORS_H
#define LB_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "lb_dtype.h"
#include "lb_err.h"

#define LB_ST_MAX_DIMS 8
/* Headers larger than this are rejected as absurd (HF uses the same bound). */
#define LB_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct lb_st lb_st;

typedef struct {
    const char *name;              /* owned by the lb_st */
    lb_dtype dtype;
    int32_t ndim;                  /* 0..LB_ST_MAX_DIMS (0 = scalar, numel 1) */
    int64_t shape[LB_ST_MAX_DIMS]; /* unused dims are 0 */
    int64_t numel;
    const void *data;              /* inside the read-only mapping; any alignment */
    size_t nbytes;                 /* = numel * lb_dtype_size(dtype) */
    const char *file;              /* path of the file (shard) holding it */
} lb_st_tensor;

/* Opens path: a .safetensors file, a sharded index file (*.index.json, shards
 * beside it), or a directory with model.safetensors or
 * model.safetensors.index.json (the index wins when both exist). Each shard is
 * opened and mapped once. Returns 0 and sets *out (free with lb_st_free), or
 * LB_EIO / LB_EFORMAT / LB_ENOTFOUND / LB_ENOMEM with a one-line message in err
 * naming the file and the problem. On failure *out is NULL. */
int lb_st_open(lb_st **out, const char *path, lb_err *err);

/* Unmaps and frees; NULL-safe; sets *st = NULL. Tensor pointers die with it. */
void lb_st_free(lb_st **st);

/* Path given to lb_st_open (owned by st). */
const char *lb_st_path(const lb_st *st);

/* Number of tensors (all shards). */
int64_t lb_st_count(const lb_st *st);

/* i-th tensor, 0 <= i < count, in file order (shard order, then data offset);
 * NULL when out of range. Owned by st. */
const lb_st_tensor *lb_st_at(const lb_st *st, int64_t i);

/* Tensor by exact name (hash lookup), or NULL if absent. Owned by st. */
const lb_st_tensor *lb_st_find(const lb_st *st, const char *name);

/* Value of a "__metadata__" string entry, or NULL when absent. For a sharded
 * model the first shard's metadata (and the index's "metadata" strings) count;
 * the first shard holding a key wins. Owned by st. */
const char *lb_st_metadata_get(const lb_st *st, const char *key);

/* Number of metadata entries and the i-th key/value (for copying metadata to a
 * new file). lb_st_metadata_at returns 0, or LB_EINVAL when i is out of range. */
int64_t lb_st_metadata_count(const lb_st *st);
int lb_st_metadata_at(const lb_st *st, int64_t i, const char **key, const char **value);

/* Converts tensor `name` (F32, F16, BF16 or F64) to f32 into dst, which holds
 * numel floats. expect_numel >= 0 must equal the tensor's element count
 * (pass -1 to skip the check). Errors: LB_ENOTFOUND (no such tensor),
 * LB_EFORMAT (non-float dtype, wrong element count), LB_EINVAL (NULL args),
 * LB_ENUMERIC (a NaN/Inf value, naming its element index; dst is then filled
 * but must not be used); the message names the file and the tensor.
 * Safe to call from several threads on one lb_st (it is read-only after open). */
int lb_st_read_f32(const lb_st *st, const char *name, float *dst, int64_t expect_numel,
                   lb_err *err);

/* Rows [row0, row0 + nrows) of a 2-D float tensor (rows, cols) -> dst
 * (nrows, cols) f32, converting only those rows. Errors as lb_st_read_f32, plus
 * LB_EFORMAT when the tensor is not 2-D and LB_EINVAL for a range outside
 * [0, rows] (LB_ENUMERIC indexes elements of the whole tensor). nrows == 0 is
 * allowed and writes nothing. */
int lb_st_read_f32_rows(const lb_st *st, const char *name, int64_t row0, int64_t nrows,
                        float *dst, lb_err *err);

/* ---- Streaming writer ----------------------------------------------------
 * Usage: new -> add_tensor (file order) and set_metadata -> write each
 * tensor's bytes in declaration order (a tensor may take several write calls)
 * -> finish. The header is written on the first write (or at finish), so no
 * tensor or metadata may be added after that (LB_ESTATE). Data goes to
 * path + ".tmp", which finish flushes, fsyncs and renames onto path. */
typedef struct lb_st_writer lb_st_writer;

/* Creates path + ".tmp" (truncating it). Returns 0 and sets *out, or LB_EIO. */
int lb_st_writer_new(lb_st_writer **out, const char *path, lb_err *err);

/* Declares the next tensor. shape holds ndim (0..LB_ST_MAX_DIMS) dims >= 0;
 * the name must be unique, non-empty and not "__metadata__".
 * Errors: LB_EINVAL (bad name/dtype/shape/duplicate, size overflow), LB_ESTATE. */
int lb_st_writer_add_tensor(lb_st_writer *w, const char *name, lb_dtype dtype, int32_t ndim,
                            const int64_t *shape, lb_err *err);

/* Sets a "__metadata__" string (a later call with the same key replaces the
 * value). Errors: LB_EINVAL, LB_ESTATE. */
int lb_st_writer_set_metadata(lb_st_writer *w, const char *key, const char *value, lb_err *err);

/* Appends nbytes of tensor `name`'s raw little-endian data. name must be the
 * tensor being written or the next declared one (the previous one then must
 * be complete). nbytes may not exceed what the tensor still lacks.
 * Errors: LB_ESTATE (order, overrun, incomplete previous), LB_ENOTFOUND, LB_EIO. */
int lb_st_writer_write(lb_st_writer *w, const char *name, const void *data, size_t nbytes,
                       lb_err *err);

/* As lb_st_writer_write, for n f32 values converted to the declared dtype
 * (F32, F16, BF16 or F64; else LB_EINVAL). May also be called in chunks. */
int lb_st_writer_write_f32(lb_st_writer *w, const char *name, const float *src, size_t n,
                           lb_err *err);

/* Checks every tensor got exactly its bytes (else LB_ESTATE naming the first
 * short one), flushes, fsyncs, closes and renames path.tmp -> path (then
 * fsyncs the directory). After success or failure only lb_st_writer_free may
 * be called; a failed finish leaves no temp file. */
int lb_st_writer_finish(lb_st_writer *w, lb_err *err);

/* Frees; if not finished, closes and removes the temp file. NULL-safe; *w = NULL. */
void lb_st_writer_free(lb_st_writer **w);

#endif
