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

/* ---- what a test needs from the machine ----
 * One policy for every missing need: under CI=true it fails the test (deploy/
 * install-deps.sh provides everything); otherwise the test prints why and skips, and
 * the suite exits LB_TEST_SKIP_CODE, which CMake's SKIP_RETURN_CODE makes ctest show
 * as skipped, never as passed (a failure elsewhere in the suite still wins). */
#define LB_TEST_SKIP_CODE 77
enum {
    LB_NEED_REDIS = 1u << 0,  /* redis-server on PATH */
    LB_NEED_MPIRUN = 1u << 1, /* mpirun on PATH */
    LB_NEED_SHARED = 1u << 2, /* the shared fixture directory (lb_test_shared_dir) */
    LB_NEED_NODE = 1u << 3,   /* node on PATH */
};
/* 1 when every need in `needs` is present; otherwise applies the policy above and
 * returns 0 (the caller then skips: use LB_TEST_NEED). */
int lb_test_need(unsigned needs);
/* The same policy for a need outside the list: present != 0 returns 1; otherwise the
 * message (printf format: what is missing and how to get it) fails or skips. */
int lb_test_need_that(int present, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LB_TEST_NEED(needs)                                                                  \
    do {                                                                                     \
        if (!lb_test_need(needs))                                                            \
            skip();                                                                          \
    } while (0)
/* 1 when an executable `prog` is on PATH. */
int lb_test_on_path(const char *prog);
/* The suite's exit code: `failed` (cmocka's count) when non-zero, else
 * LB_TEST_SKIP_CODE when a need was missing, else 0. cmocka_run_group_tests is
 * wrapped below so that every suite including this header exits through it. */
int lb_test_exit_code(int failed);
#undef cmocka_run_group_tests
#define cmocka_run_group_tests(group_tests, group_setup, group_teardown)                     \
    lb_test_exit_code(_cmocka_run_group_tests(#group_tests, group_tests,                     \
                                              sizeof(group_tests) / sizeof((group_tests)[0]), \
                                              group_setup, group_teardown))

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
