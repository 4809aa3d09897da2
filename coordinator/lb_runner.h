/* lb_runner: the embedded runner. Drives an lb_plan with an in-process job
 * queue and a pthread pool that calls lb_exec_run; the executor does not know
 * the queue exists.
 *
 * Threads: `threads` pool workers take jobs (a block's 7 quantize-linear jobs
 * run side by side). Forward jobs (embed, collect-hessian, propagate) and merge
 * run with `threads` OpenMP threads; quantize-linear jobs with one. BLAS is
 * held at one thread for the whole run: OpenBLAS's partition of a product
 * depends on its thread count and changes the rounding, and its thread count is
 * process-global. Every job's output is therefore the same bits at any
 * `threads`, and so is the checkpoint. */
#ifndef LB_RUNNER_H
#define LB_RUNNER_H

#include <stdint.h>

#include "lb_exec.h"
#include "lb_plan.h"

/* Progress callback: job `job` of the plan finished (res filled), `done` of
 * `total` needed jobs are finished. Called from the driving thread. */
typedef void (*lb_runner_progress_fn)(void *user, const lb_plan *plan, int32_t job,
                                      const lb_job_result *res, int32_t done, int32_t total);

typedef struct {
    int threads;                    /* pool workers and forward OpenMP threads (>= 1) */
    int crash_after_jobs;           /* TEST HOOK (0 = off): _exit(86) once this many jobs
                                       finished, as kill -9 would; set only by the CLI
                                       from LOWBIT_TEST_CRASH_AFTER_JOBS */
    lb_runner_progress_fn progress; /* may be NULL */
    void *user;
} lb_runner_opts;

/* Runs every needed job of plan (lb_plan_start must have been called) and
 * deletes the artifacts the plan releases. Returns 0 when all finished, or the
 * first failing job's code with err naming the job and its error (running jobs
 * are waited for; nothing else starts). ctx->omp_threads is ignored (set per
 * job as above). */
int lb_runner_run(lb_plan *plan, const lb_exec_ctx *ctx, const lb_runner_opts *opts,
                  lb_err *err);

#endif
