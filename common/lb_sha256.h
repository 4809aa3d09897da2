/* lb_sha256: SHA-256 (FIPS 180-4), streaming, for content addressing and the
 * checksums of packed checkpoints. No I/O except lb_sha256_file. */
#ifndef LB_SHA256_H
#define LB_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"

#define LB_SHA256_DIGEST 32
#define LB_SHA256_HEX 65 /* 64 hex digits + NUL */

typedef struct {
    uint32_t state[8];
    uint64_t total; /* bytes hashed so far */
    uint8_t buf[64];
    size_t buflen;  /* 0..63 bytes waiting in buf */
} lb_sha256;

/* Starts a new hash (FIPS 180-4 §5.3.3 initial value). Never fails. */
void lb_sha256_init(lb_sha256 *s);

/* on != 0: use the portable block function even where the CPU has the x86 SHA
 * extensions (tests compare the two; digests are the same either way). */
void lb_sha256_force_portable(int on);

/* Hashes n more bytes (data may be NULL when n == 0). Any split of the input
 * over calls gives the same digest. */
void lb_sha256_update(lb_sha256 *s, const void *data, size_t n);

/* Pads and finishes (§5.1.1). OUT: digest (32 bytes). s must be re-initialized
 * before reuse. */
void lb_sha256_final(lb_sha256 *s, uint8_t digest[LB_SHA256_DIGEST]);

/* Lower-case hex of a digest. OUT: hex (65 bytes, NUL-terminated). */
void lb_sha256_to_hex(const uint8_t digest[LB_SHA256_DIGEST], char hex[LB_SHA256_HEX]);

/* One-shot: hex digest of data[0..n). OUT: hex. */
void lb_sha256_hex(const void *data, size_t n, char hex[LB_SHA256_HEX]);

/* Hex digest of a whole file, read in chunks. Returns 0, or LB_EIO naming the
 * file. OUT: hex. */
int lb_sha256_file(const char *path, char hex[LB_SHA256_HEX], lb_err *err);

#endif
