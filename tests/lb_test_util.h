/* Test helpers shared by the cmocka suites. */
#ifndef LB_TEST_UTIL_H
#define LB_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of the shared fixtures ($LOWBIT_SHARED, else ../shared beside the source
 * tree), or NULL when absent. */
const char *lb_test_shared_dir(void);

/* Builds "<shared>/<rel>" into buf. When the fixture is missing: under CI=true the
 * test fails; otherwise it is skipped with a message. Use as
 *   char p[4096]; LB_TEST_REQUIRE_SHARED(p, "models/stories260K"); */
int lb_test_shared_path(char *buf, size_t size, const char *rel);
#define LB_TEST_REQUIRE_SHARED(buf, rel)                                                     \
    do {                                                                                     \
        if (!lb_test_shared_path((buf), sizeof(buf), (rel)))                                 \
            skip();                                                                          \
    } while (0)

/* Reads a whole file into a malloc'd buffer (*len its size); NULL when absent or
 * unreadable. */
unsigned char *lb_test_slurp(const char *path, size_t *len);

/* Fails the test unless files a and b both exist and hold the same bytes. */
void lb_test_assert_same_file(const char *a, const char *b);

/* Creates a fresh temporary directory (removed by lb_test_rmdir). Returns a
 * malloc'd path. */
char *lb_test_mkdtemp(void);
/* Recursively removes a directory created by lb_test_mkdtemp and frees path. */
void lb_test_rmdir(char **path);

/* Path of the built `lowbit` binary (from $LOWBIT_BIN). */
const char *lb_test_lowbit_bin(void);

/* Runs a shell command, captures stdout+stderr into a malloc'd string (may be
 * NULL), returns the exit status (or -1). */
int lb_test_run(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Deterministic uniform/normal random numbers for tests. */
uint64_t lb_test_rand_u64(uint64_t *state);
float lb_test_rand_uniform(uint64_t *state);
float lb_test_rand_normal(uint64_t *state);

#endif
