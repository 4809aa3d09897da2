#include "lb_test_cluster.h"
#include "lb_test_curve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

lb_test_redis lb_test_srv;

int lb_test_cluster_setup(void **state)
{
    (void)state;
    if (lb_test_curve_setup() != 0) /* LB_TEST_CURVE=1: every process talks CURVE */
        return -1;
    if (!lb_test_redis_available())
        return 0;
    return lb_test_redis_start(&lb_test_srv, NULL);
}

int lb_test_cluster_teardown(void **state)
{
    (void)state;
    lb_test_redis_stop(&lb_test_srv);
    lb_test_curve_teardown();
    return 0;
}

int lb_test_cluster_run(const lb_test_cluster *c, char **out)
{
    const char *bin = lb_test_lowbit_bin();
    const char *pre = c->id_prefix ? c->id_prefix : "";
    if (c->nworkers < 1 || c->nworkers > 8)
        return -1;
    char workers[8 * 4400] = "";
    size_t n = 0;
    for (int k = 0; k < c->nworkers; k++)
        n += (size_t)snprintf(workers + n, sizeof workers - n,
                              "'%s' worker --redis %s --threads 1 --idle-exit 3 --id %s%c > "
                              "w%c.log 2>&1 & ", bin, lb_test_srv.url, pre, 'A' + k, 'A' + k);
    return lb_test_run(out,
                       "cd '%s' || exit 1; ( '%s' coordinator --redis %s --job %s --model '%s' "
                       "--calib '%s' --out %s %s > coord.log 2>&1; echo $? > coord.rc ) & "
                       "%swait; cat '%s/coord.rc' '%s/coord.log'",
                       c->dir, bin, lb_test_srv.url, c->job, c->model, c->calib, c->out,
                       c->args, workers, c->dir, c->dir);
}
