/* lb_io_util: small file helpers shared by the I/O modules (safetensors,
 * config, tokens). Internal to liblowbit_common, but usable by others. */
#ifndef LB_IO_UTIL_H
#define LB_IO_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"

/* *out = a * b; returns 0, or 1 on uint64 overflow (*out unchanged). */
int lb_io_mul_u64(uint64_t a, uint64_t b, uint64_t *out);
/* *out = a + b; returns 0, or 1 on uint64 overflow. */
int lb_io_add_u64(uint64_t a, uint64_t b, uint64_t *out);

/* Little-endian loads/stores at any alignment. */
uint64_t lb_io_get_le64(const void *p);
uint32_t lb_io_get_le32(const void *p);
uint16_t lb_io_get_le16(const void *p);
void lb_io_put_le64(void *p, uint64_t v);
void lb_io_put_le32(void *p, uint32_t v);

/* Returns malloc'd "dir/name" (no doubled slash), or NULL on OOM. */
char *lb_io_path_join(const char *dir, const char *name);

/* Reads a whole regular file of at most max_bytes into a malloc'd buffer with
 * a NUL appended. OUT: *text (caller frees), *len (without the NUL).
 * Errors: LB_ENOTFOUND, LB_EIO, LB_EFORMAT (larger than max_bytes), LB_ENOMEM. */
int lb_io_read_file(const char *path, uint64_t max_bytes, char **text, size_t *len,
                    lb_err *err);

/* Maps a whole regular file read-only. OUT: *map (NULL for an empty file),
 * *size. Unmap with lb_io_unmap. Errors: LB_ENOTFOUND, LB_EIO, LB_EFORMAT
 * (not a regular file). */
int lb_io_map(const char *path, const void **map, size_t *size, lb_err *err);
void lb_io_unmap(const void *map, size_t size);

/* Writes len bytes to path + ".tmp", fsyncs, renames onto path and fsyncs the
 * directory. The temp file is removed on failure. Returns 0 or LB_EIO/LB_ENOMEM. */
int lb_io_write_atomic(const char *path, const void *data, size_t len, lb_err *err);

/* fsyncs the directory holding path (best effort for durability of a rename).
 * Returns 0 or LB_EIO. */
int lb_io_fsync_parent(const char *path, lb_err *err);

/* Creates directory path and any missing parents (like `mkdir -p`); an existing
 * directory is fine. Returns 0 or LB_EIO naming the component that failed. */
int lb_io_mkdir_p(const char *path, lb_err *err);

#endif
