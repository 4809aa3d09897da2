/* Test fixture for the distributed tests: one private redis-server per suite (the
 * cmocka group setup/teardown they all shared as copies), and one call that runs
 * `lowbit coordinator` and N `lowbit worker`s side by side in a directory and waits
 * for all of them. Everything it starts ends with the call or the suite. */
#ifndef LB_TEST_CLUSTER_H
#define LB_TEST_CLUSTER_H

#include "lb_test_redis.h"

/* The suite's server (started by lb_test_cluster_setup when redis-server exists). */
extern lb_test_redis lb_test_srv;

/* cmocka group setup / teardown: CURVE keys when LB_TEST_CURVE=1 (lb_test_curve.h),
 * then start lb_test_srv when redis-server is on PATH
 * (tests then LB_TEST_REQUIRE_REDIS), stop it and remove its directory. */
int lb_test_cluster_setup(void **state);
int lb_test_cluster_teardown(void **state);

typedef struct {
    const char *dir;        /* working directory: logs coord.log, wA.log, wB.log, ... */
    const char *job;        /* coordinator --job */
    const char *model;      /* --model */
    const char *calib;      /* --calib */
    const char *out;        /* --out, relative to dir */
    const char *args;       /* coordinator options after --out (quantizer options) */
    int nworkers;           /* workers A, B, ... (1..8) */
    const char *id_prefix;  /* worker ids are prefix + letter ("" when NULL) */
} lb_test_cluster;

/* Runs the coordinator and the workers (--threads 1 --idle-exit 3) against
 * lb_test_srv, waits for all; *out (malloc'd) holds the coordinator's exit status on
 * its first line, then its log. Returns the shell's status (0 when it ran). */
int lb_test_cluster_run(const lb_test_cluster *c, char **out);

#endif
