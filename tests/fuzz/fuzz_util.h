/* Helpers shared by the libFuzzer targets in tests/fuzz/ (and their replay
 * builds): parsers that take a path get the input through a private temp
 * directory, created once per process and removed at exit. */
#ifndef LB_FUZZ_UTIL_H
#define LB_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The process's temp directory (mkdtemp under $LB_FUZZ_TMPDIR, else /dev/shm
 * when writable, else $TMPDIR or /tmp); aborts when
 * it cannot be made (a fuzz target has no other way to report it). */
const char *lb_fuzz_dir(void);

/* lb_fuzz_dir()/name, malloc'd; aborts on out-of-memory. */
char *lb_fuzz_path(const char *name);

/* Writes data[0..size) to lb_fuzz_dir()/name (replacing it); aborts on failure. */
void lb_fuzz_write(const char *name, const void *data, size_t size);

/* Copies data into a NUL-terminated malloc'd string (aborts on OOM). */
char *lb_fuzz_cstr(const uint8_t *data, size_t size);

#endif
