/* lb_mpi_group without MPI (built when CMake finds no MPI): no group can be
 * opened, so `lowbit worker` runs as a plain single-process worker. */
#include "lb_mpi_group.h"

#include <stdlib.h>
#include <string.h>

bool lb_mpi_group_available(void)
{
    return false;
}

static long env_long(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : 0;
}

bool lb_mpi_group_launched(void)
{
    return env_long("OMPI_COMM_WORLD_SIZE") > 1 || env_long("PMI_SIZE") > 1 ||
           env_long("PMIX_SIZE") > 1;
}

int lb_mpi_group_open(int *argc, char ***argv, lb_mpi_group **out, lb_err *err)
{
    (void)argc;
    (void)argv;
    *out = NULL;
    return lb_err_set(err, LB_EINVAL, "this lowbit was built without MPI; install Open MPI "
                      "(deploy/install-deps.sh) and rebuild, or run plain workers");
}

int lb_mpi_group_rank(const lb_mpi_group *g)
{
    (void)g;
    return 0;
}

int lb_mpi_group_size(const lb_mpi_group *g)
{
    (void)g;
    return 1;
}

void lb_mpi_group_set_fail_chunk(lb_mpi_group *g, int64_t c)
{
    (void)g;
    (void)c;
}

int lb_mpi_group_serve(lb_mpi_group *g, lb_mpi_ctx_fn get_ctx, void *user, lb_err *err)
{
    (void)g;
    (void)get_ctx;
    (void)user;
    return lb_err_set(err, LB_EINVAL, "this lowbit was built without MPI");
}

int lb_mpi_group_run(lb_mpi_group *g, const lb_job *job, const uint8_t *payload, size_t len,
                     const char *out_dir, const lb_exec_ctx *ctx, lb_job_result *res,
                     lb_mpi_stats *stats)
{
    (void)g;
    (void)payload;
    (void)len;
    (void)out_dir;
    memset(stats, 0, sizeof *stats);
    stats->ranks_used = 1;
    return lb_exec_run(job, ctx, res);
}

int lb_mpi_group_run_batch(lb_mpi_group *g, int n, const lb_job *const *jobs,
                           const uint8_t *const *payloads, const size_t *lens, const char *out_dir,
                           const lb_exec_ctx *ctx, lb_job_result *res, lb_mpi_stats *stats,
                           lb_err *err)
{
    (void)g;
    (void)payloads;
    (void)lens;
    (void)out_dir;
    memset(stats, 0, sizeof *stats);
    if (n != 1)
        return lb_err_set(err, LB_EINVAL, "batch of %d jobs without MPI (one rank)", n);
    lb_exec_run(jobs[0], ctx, &res[0]);
    stats->ranks_used = 1;
    return 0;
}

int lb_mpi_group_close(lb_mpi_group **g, lb_err *err)
{
    (void)err;
    if (g)
        *g = NULL;
    return 0;
}
