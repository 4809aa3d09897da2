/* lb_mpi_group: the ranks of one `mpirun -np N lowbit worker` acting as ONE
 * worker (docs/distributed.md). Rank 0 talks to Redis (leases, heartbeats,
 * acks) and drives; ranks > 0 never touch Redis and serve rank 0's commands
 * (lb_mpi_group_serve) until it closes the group.
 *
 *   data-parallel jobs (collect-hessian, propagate with block >= 0;
 *   lb_exec_is_data_parallel): rank 0 sends the job to every rank; chunk c of
 *   the job's fixed chunks (lb_exec_chunk_seqs) is run by rank c % N; rank 0
 *   takes the results strictly in chunk order: Hessian partials are added
 *   S = ((0 + S_0) + S_1) + ... (the embedded executor's additions, so the
 *   bytes equal a single-process run), activations land at their token rows.
 *   Rank 0 stores the outputs.
 *   independent jobs (quantize-linear, distill, merge, embed): a batch of up
 *   to N jobs runs one per rank (lb_mpi_group_run_batch); each job is the same
 *   lb_exec_run wherever it runs.
 *
 * A rank's error (bad inputs, NaN, out of memory) travels to rank 0 as text
 * and becomes the job's failure; the group stays usable. An MPI transport
 * error cannot be resynchronized: the call returns LB_ENET and the worker
 * exits (mpirun then stops the other ranks).
 *
 * worker/lb_mpi_group.c is built only when MPI is found (with lb_mpi.c);
 * without MPI, lb_mpi_group_none.c gives lb_mpi_group_available() == false and
 * lb_mpi_group_open() fails with a message. */
#ifndef LB_MPI_GROUP_H
#define LB_MPI_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_exec.h"
#include "lb_job.h"

typedef struct lb_mpi_group lb_mpi_group;

/* true when this lowbit was built with MPI. */
bool lb_mpi_group_available(void);

/* true when an MPI launcher started this process with more than one rank
 * (OMPI_COMM_WORLD_SIZE or PMI_SIZE > 1, or PMIX_RANK set: mpirun, srun). */
bool lb_mpi_group_launched(void);

/* Initializes MPI (MPI_THREAD_FUNNELED: only the calling thread uses MPI) over
 * MPI_COMM_WORLD. OUT: *out (close with lb_mpi_group_close). Returns 0,
 * LB_EINVAL (built without MPI) or LB_ENET. */
int lb_mpi_group_open(int *argc, char ***argv, lb_mpi_group **out, lb_err *err);

int lb_mpi_group_rank(const lb_mpi_group *g);
int lb_mpi_group_size(const lb_mpi_group *g);

/* Gives ranks > 0 the execution context of a job: the job's model and the
 * artifact store of out_dir (rank 0's resolution of the job's output
 * directory). Returns 0 or LB_E* with err set. */
typedef int (*lb_mpi_ctx_fn)(void *user, const lb_job *job, const char *out_dir,
                             lb_exec_ctx *ctx, lb_err *err);

/* Ranks > 0: serves rank 0's commands until it closes the group. Each job
 * served prints one line on stderr ("lowbit worker rank R/N: ..."). Returns 0
 * when rank 0 closed the group, or LB_ENET when MPI failed. */
int lb_mpi_group_serve(lb_mpi_group *g, lb_mpi_ctx_fn get_ctx, void *user, lb_err *err);

/* What a group run moved and who worked. */
typedef struct {
    int64_t mpi_bytes;      /* bytes rank 0 sent or received over MPI for the job(s) */
    int32_t chunks;         /* data-parallel: chunks of the job (0 otherwise) */
    int32_t chunks_remote;  /* data-parallel: chunks computed by ranks > 0 */
    int32_t ranks_used;     /* ranks that computed something */
} lb_mpi_stats;

/* Rank 0: runs job on the group. Data-parallel jobs use every rank (above);
 * any other job runs on rank 0 alone. payload/len: the job's wire encoding
 * (lb_job_encode), forwarded as is. out_dir: the output directory the job's
 * store lives in. ctx: rank 0's context. OUT: *res (as lb_exec_run), *stats.
 * Returns 0 or the job's LB_E* code (also in res); LB_ENET in res->err_code
 * means the group is broken (close it and exit). */
int lb_mpi_group_run(lb_mpi_group *g, const lb_job *job, const uint8_t *payload, size_t len,
                     const char *out_dir, const lb_exec_ctx *ctx, lb_job_result *res,
                     lb_mpi_stats *stats);

/* Rank 0: independent jobs side by side: jobs[i] (payloads[i], lens[i]) runs
 * on rank i for i in [0, n), n <= size; rank 0 runs jobs[0] itself. OUT:
 * res[0..n) (each as lb_exec_run), *stats. Returns 0 when the batch ran (jobs
 * may have failed: see res[i].status), LB_EINVAL for n out of range, or LB_ENET
 * (the group is broken). */
int lb_mpi_group_run_batch(lb_mpi_group *g, int n, const lb_job *const *jobs,
                           const uint8_t *const *payloads, const size_t *lens, const char *out_dir,
                           const lb_exec_ctx *ctx, lb_job_result *res, lb_mpi_stats *stats,
                           lb_err *err);

/* Test hook: this rank reports "test hook: chunk C fails" instead of computing
 * chunk c of any data-parallel job; with c == LB_MPI_FAIL_OPEN it fails every
 * data-parallel job while opening it (before any data moves); -1: off. The CLI
 * sets it on ranks > 0 from LOWBIT_TEST_MPI_FAIL_CHUNK (a number or "open") so
 * tests can make one rank fail. */
#define LB_MPI_FAIL_OPEN (-2)
void lb_mpi_group_set_fail_chunk(lb_mpi_group *g, int64_t c);

/* Rank 0 tells the serving ranks to return; every rank then finalizes MPI and
 * frees the group; *g = NULL. Accepts NULL. Returns 0 or LB_ENET. */
int lb_mpi_group_close(lb_mpi_group **g, lb_err *err);

#endif
