/* lb_runner: in-process queue + pthread pool around lb_exec_run. */
#include "lb_runner.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_blas.h"

typedef struct {
    int32_t job;
    lb_job_result res;
    int rc;
} slot;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    int32_t *todo; /* FIFO of job indices */
    int32_t todo_head, todo_tail;
    slot *done;    /* finished, not yet fed */
    int32_t n_done;
    bool quit;
    lb_plan *plan;
    const lb_exec_ctx *ctx;
    int threads;
} pool;

static void *worker_main(void *arg)
{
    pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->quit && p->todo_head == p->todo_tail)
            pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->quit && p->todo_head == p->todo_tail) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        int32_t j = p->todo[p->todo_head++];
        const lb_job *job = lb_plan_job(p->plan, j); /* jobs are immutable after lb_plan_new */
        pthread_mutex_unlock(&p->mu);

        lb_exec_ctx ctx = *p->ctx;
        ctx.omp_threads =
            job->type == LB_JOB_QUANTIZE_LINEAR || job->type == LB_JOB_MEASURE ? 1 : p->threads;
        slot s;
        s.job = j;
        s.rc = lb_exec_run(job, &ctx, &s.res);

        pthread_mutex_lock(&p->mu);
        p->done[p->n_done++] = s;
        pthread_cond_signal(&p->done_cv);
        pthread_mutex_unlock(&p->mu);
    }
}

int lb_runner_run(lb_plan *plan, const lb_exec_ctx *ctx, const lb_runner_opts *opts,
                  lb_err *err)
{
    const int32_t njobs = lb_plan_job_count(plan);
    const int threads = opts->threads > 0 ? opts->threads : 1;
    pool p;
    memset(&p, 0, sizeof p);
    p.plan = plan;
    p.ctx = ctx;
    p.threads = threads;
    p.todo = malloc((size_t)njobs * sizeof *p.todo);
    p.done = malloc((size_t)njobs * sizeof *p.done);
    lb_action *acts = malloc((size_t)(njobs + lb_plan_artifact_count(plan)) * sizeof *acts);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    int started = 0, rc = 0, finished = 0;
    if (!p.todo || !p.done || !acts || !tids) {
        rc = lb_err_set(err, LB_ENOMEM, "runner: out of memory");
        goto done;
    }
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.work_cv, NULL);
    pthread_cond_init(&p.done_cv, NULL);
    int saved_blas = lb_blas_get_threads();
    lb_blas_set_threads(1);
    for (; started < threads; started++)
        if (pthread_create(&tids[started], NULL, worker_main, &p) != 0) {
            rc = lb_err_set(err, LB_ENOMEM, "runner: cannot start worker thread %d", started);
            break;
        }
    const int32_t total = lb_plan_needed_count(plan);
    while (rc == 0 || lb_plan_running(plan) > 0) {
        int n = rc ? 0 : lb_plan_poll(plan, acts, njobs + lb_plan_artifact_count(plan));
        pthread_mutex_lock(&p.mu);
        for (int i = 0; i < n; i++)
            if (acts[i].type == LB_ACT_RUN)
                p.todo[p.todo_tail++] = acts[i].job;
        pthread_cond_broadcast(&p.work_cv);
        pthread_mutex_unlock(&p.mu);
        for (int i = 0; i < n; i++) {
            lb_err derr;
            /* a failed deletion only costs disk; say so and go on */
            if (acts[i].type == LB_ACT_DELETE &&
                lb_store_remove(ctx->store, acts[i].artifact, &derr) != 0)
                fprintf(stderr, "lowbit: warning: %s\n", derr.msg);
        }
        if (lb_plan_done(plan))
            break;
        if (lb_plan_running(plan) == 0) {
            if (n > 0 && rc == 0)
                continue; /* only deletions were issued: poll again */
            if (rc == 0)
                rc = lb_err_set(err, LB_ESTATE, "runner: the plan stalled with no job "
                                "running (internal error; please report)");
            break;
        }
        pthread_mutex_lock(&p.mu);
        while (p.n_done == 0)
            pthread_cond_wait(&p.done_cv, &p.mu);
        slot s = p.done[--p.n_done];
        pthread_mutex_unlock(&p.mu);
        if (s.rc == 0) {
            lb_plan_feed_done(plan, s.job);
            finished++;
            if (opts->progress)
                opts->progress(opts->user, plan, s.job, &s.res, finished, total);
            if (opts->crash_after_jobs > 0 && finished >= opts->crash_after_jobs) {
                fprintf(stderr, "lowbit: LOWBIT_TEST_CRASH_AFTER_JOBS=%d reached: exiting "
                        "abruptly (test hook)\n", opts->crash_after_jobs);
                _exit(86);
            }
        } else {
            lb_plan_feed_failed(plan, s.job);
            if (opts->progress)
                opts->progress(opts->user, plan, s.job, &s.res, finished, total);
            if (rc == 0) {
                const lb_job *job = lb_plan_job(plan, s.job);
                rc = lb_err_set(err, s.rc, "%s job (block %d%s%s) failed: %s",
                                lb_job_type_name(job->type), (int)job->block,
                                job->tensor[0] ? ", " : "", job->tensor, s.res.error);
            }
        }
    }
    pthread_mutex_lock(&p.mu);
    p.quit = true;
    pthread_cond_broadcast(&p.work_cv);
    pthread_mutex_unlock(&p.mu);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    lb_blas_set_threads(saved_blas);
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.work_cv);
    pthread_cond_destroy(&p.done_cv);
done:
    free(p.todo);
    free(p.done);
    free(acts);
    free(tids);
    return rc;
}
