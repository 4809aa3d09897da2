/* Test helper: CURVE keys for the distributed tests. With LB_TEST_CURVE=1 in
 * the environment (the *_curve ctest entries), lb_test_curve_setup makes a key
 * directory (server + one "worker" key, clients/worker.pub) and exports
 * LOWBIT_CURVE_DIR, so every `lowbit coordinator` / `lowbit worker` the test
 * spawns talks CURVE; the same tests then run encrypted. */
#ifndef LB_TEST_CURVE_H
#define LB_TEST_CURVE_H

#include <stdbool.h>

/* True when LB_TEST_CURVE=1. */
bool lb_test_curve_on(void);

/* Makes the keys and sets LOWBIT_CURVE_DIR when lb_test_curve_on(); else
 * nothing. Returns 0 or -1. */
int lb_test_curve_setup(void);

/* Removes the key directory and unsets LOWBIT_CURVE_DIR. Safe to call twice. */
void lb_test_curve_teardown(void);

/* Makes DIR/server.{key,pub}, DIR/NAME.{key,pub} for each of the n names and
 * DIR/clients/NAME.pub for the first n_allowed of them. Returns 0 or -1. */
int lb_test_curve_keys(const char *dir, const char *const *names, int n, int n_allowed);

/* Fails the test when text holds any secret key (*.key) of dir. */
void lb_test_curve_assert_no_secret(const char *dir, const char *text, const char *what);

/* The key directory made by lb_test_curve_setup (NULL when off). */
const char *lb_test_curve_dir(void);

#endif
