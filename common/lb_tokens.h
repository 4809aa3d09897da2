/* lb_tokens: token id files for calibration and evaluation.
 * Raw little-endian uint32 (.u32 or any extension other than .npy), or NumPy
 * .npy (format versions 1/2/3, dtypes '<u2' '<u4' '<i4' '<i8', 1-D or 2-D,
 * C order). */
#ifndef LB_TOKENS_H
#define LB_TOKENS_H

#include <stdint.h>

#include "lb_err.h"

/* Loads all ids of path into a malloc'd array. OUT: *out (caller frees with
 * free(); may be NULL when *n == 0), *n = number of ids. For a 2-D .npy the
 * ids come flattened in C order; *rows (if rows != NULL) gets the first
 * dimension (1 for 1-D and raw files).
 * Errors (one line naming the file): LB_EIO / LB_ENOTFOUND (cannot read),
 * LB_EFORMAT (raw length not a multiple of 4, bad .npy header, unsupported
 * dtype, fortran_order True, data size mismatch, a negative or > UINT32_MAX
 * value, naming its index), LB_ENOMEM. On failure *out = NULL, *n = 0. */
int lb_tokens_load_rows(const char *path, uint32_t **out, int64_t *n, int64_t *rows, lb_err *err);

/* lb_tokens_load_rows without the row count. */
int lb_tokens_load(const char *path, uint32_t **out, int64_t *n, lb_err *err);

/* Returns 0 when every id < vocab, else LB_EFORMAT:
 * "PATH: token id X at index I is >= vocab size V; the tokens do not belong to this model"
 * (for the first offending id). path only labels the message (may be NULL). */
int lb_tokens_check_vocab(const uint32_t *tokens, int64_t n, int64_t vocab, const char *path,
                          lb_err *err);

/* Writes n ids as raw little-endian uint32 to path (atomically via path.tmp).
 * Returns 0 or LB_EIO. */
int lb_tokens_write_u32(const char *path, const uint32_t *tokens, int64_t n, lb_err *err);

#endif
