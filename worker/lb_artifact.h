/* lb_artifact: the content-addressed artifact store of a quantize run.
 *
 * Artifacts live in OUT/.lowbit/artifacts/<id>.safetensors, where <id> is the
 * 64-hex id the producing job assigned (lb_job.h: derived from the job's
 * canonical description, so a rerun computes the same ids). Every artifact
 * carries metadata
 *   "lowbit.artifact" = id, "lowbit.kind" = kind,
 *   "lowbit.sha256"   = SHA-256 over all tensor data bytes in file order,
 * and is written atomically (id.safetensors.tmp, fsync, rename). An artifact
 * counts as present only when its file opens, names its own id and its data
 * hash verifies, so a torn or corrupted file is recomputed, never trusted.
 *
 * Kinds used by the pipeline: "calib" (tokens U32 (n_seq, seq_len)),
 * "activations" (x F32 (ntok, dim)), "hessian" (S F64 (cols, cols) raw sums
 * ΣxxT and metadata lowbit.ntok), "hpart" (a chunk job's partial Hessian sums,
 * lb_exec.h), "qlinear" (an lb_qpacked under prefix "q",
 * lb_qpacked_io layout, plus lowbit.tensor and lowbit.bpw). */
#ifndef LB_ARTIFACT_H
#define LB_ARTIFACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_dtype.h"
#include "lb_err.h"
#include "lb_quant.h"
#include "lb_safetensors.h"

typedef struct lb_store lb_store;

/* Opens (creating as needed) OUT/.lowbit/artifacts under out_dir. OUT: *out
 * (lb_store_free). Returns 0 or LB_EIO naming the directory. */
int lb_store_open(const char *out_dir, lb_store **out, lb_err *err);
void lb_store_free(lb_store **s);

/* The artifacts directory (borrowed). */
const char *lb_store_dir(const lb_store *s);

/* Path of artifact id (malloc'd; NULL on OOM). */
char *lb_store_path(const lb_store *s, const char *id);

/* True when artifact id exists and verifies (own id, kind when kind != NULL,
 * data hash). Never fails: any problem reads as "absent". */
bool lb_store_has(const lb_store *s, const char *id, const char *kind);

/* Removes artifact id (absent is fine). Returns 0 or LB_EIO. */
int lb_store_remove(const lb_store *s, const char *id, lb_err *err);

/* One tensor of an artifact being written (data borrowed). */
typedef struct {
    const char *name;
    lb_dtype dtype;
    int32_t ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} lb_artifact_tensor;

/* Writes artifact id of `kind` holding tensors t[0..nt) and extra metadata
 * (meta[2k] = key, meta[2k+1] = value, k < nmeta). Atomic. Returns 0 or the
 * writer's LB_E* code. */
int lb_store_put(const lb_store *s, const char *id, const char *kind,
                 const lb_artifact_tensor *t, int nt, const char *const *meta, int nmeta,
                 lb_err *err);

/* Writes a "qlinear" artifact: packed under prefix "q" (lb_qpacked_io), with
 * metadata lowbit.tensor = tensor, lowbit.options = options (may be NULL) and
 * lowbit.bpw. Returns 0 or LB_E*. */
int lb_store_put_qlinear(const lb_store *s, const char *id, const char *tensor,
                         const char *options, const lb_qpacked *p, lb_err *err);

/* Opens artifact id after verifying it (as lb_store_has, kind checked when
 * non-NULL). OUT: *out (lb_st_free). Returns 0, LB_ENOTFOUND (absent: run the
 * producing job), LB_EFORMAT (corrupt: names the file; it will be recomputed). */
int lb_store_open_artifact(const lb_store *s, const char *id, const char *kind, lb_st **out,
                           lb_err *err);

/* Reads a "qlinear" artifact. OUT: *p (zeroed first; lb_qpacked_free). */
int lb_store_get_qlinear(const lb_store *s, const char *id, lb_qpacked *p, lb_err *err);

#endif
