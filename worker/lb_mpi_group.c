/* lb_mpi_group: one worker made of MPI ranks (see lb_mpi_group.h). */
#include "lb_mpi_group.h"

#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_hessian.h"
#include "lb_mpi.h"
#include "lb_time.h"

enum { CMD_STOP = 1, CMD_PART = 2, CMD_RUN = 3 };
enum { TAG_CMD = 7201, TAG_PAYLOAD = 7202, TAG_CHUNK = 7203, TAG_DATA = 7204, TAG_RESULT = 7205 };

/* rank 0 -> rank r: what to do next; `len` payload bytes follow (TAG_PAYLOAD). */
typedef struct {
    int32_t type;
    int32_t reserved;
    int64_t len;
    char out_dir[LB_JOB_PATH_MAX];
} cmd_hdr;

/* Every rank's verdict after opening a data-parallel job (MPI_Allgather). */
typedef struct {
    int32_t rc;
    int32_t reserved;
    int64_t chunks;
    char msg[256];
} open_status;

/* rank r -> rank 0, one per owned chunk, in chunk order; the chunk's data
 * follow (TAG_DATA) only when rc == 0. */
typedef struct {
    int64_t chunk;
    int64_t ntok;
    int32_t rc;
    int32_t reserved;
    char msg[256];
} chunk_hdr;

struct lb_mpi_group {
    int rank, size;
    int64_t fail_chunk; /* test hook, -1 off */
};

/* Largest piece per MPI message (counts are int). */
#define PIECE_BYTES ((size_t)1 << 30)

static int mpi_fail(int code, const char *what, int peer, lb_err *err)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "MPI error %d", code);
    if (peer < 0)
        return lb_err_set(err, LB_ENET, "MPI worker group: %s failed (%s); the group cannot "
                          "continue, restart the mpirun", what, text);
    return lb_err_set(err, LB_ENET, "MPI worker group: %s with rank %d failed (%s); the group "
                      "cannot continue, restart the mpirun", what, peer, text);
}

/* Waits for r without spinning a core: idle ranks share CPUs with working ones. */
static int wait_req(MPI_Request *r, const char *what, int peer, lb_err *err)
{
    long ns = 20000;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_fail(rc, what, peer, err);
        if (done)
            return 0;
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 2000000)
            ns *= 2;
    }
}

static int xsend(const void *buf, size_t n, int dest, int tag, lb_err *err)
{
    const unsigned char *p = buf;
    for (size_t off = 0; off < n || (n == 0 && off == 0); off += PIECE_BYTES) {
        size_t len = n - off < PIECE_BYTES ? n - off : PIECE_BYTES;
        MPI_Request r;
        int rc = MPI_Isend(p + off, (int)len, MPI_BYTE, dest, tag, MPI_COMM_WORLD, &r);
        if (rc != MPI_SUCCESS)
            return mpi_fail(rc, "send", dest, err);
        if ((rc = wait_req(&r, "send", dest, err)))
            return rc;
        if (n == 0)
            break;
    }
    return 0;
}

static int xrecv(void *buf, size_t n, int src, int tag, lb_err *err)
{
    unsigned char *p = buf;
    for (size_t off = 0; off < n || (n == 0 && off == 0); off += PIECE_BYTES) {
        size_t len = n - off < PIECE_BYTES ? n - off : PIECE_BYTES;
        MPI_Request r;
        int rc = MPI_Irecv(p + off, (int)len, MPI_BYTE, src, tag, MPI_COMM_WORLD, &r);
        if (rc != MPI_SUCCESS)
            return mpi_fail(rc, "receive", src, err);
        if ((rc = wait_req(&r, "receive", src, err)))
            return rc;
        if (n == 0)
            break;
    }
    return 0;
}

bool lb_mpi_group_available(void)
{
    return true;
}

static long env_long(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : 0;
}

bool lb_mpi_group_launched(void)
{
    return env_long("OMPI_COMM_WORLD_SIZE") > 1 || env_long("PMI_SIZE") > 1 ||
           env_long("PMIX_SIZE") > 1 || (getenv("PMIX_RANK") && !getenv("OMPI_COMM_WORLD_SIZE"));
}

int lb_mpi_group_open(int *argc, char ***argv, lb_mpi_group **out, lb_err *err)
{
    *out = NULL;
    lb_mpi_group *g = calloc(1, sizeof *g);
    if (!g)
        return lb_err_set(err, LB_ENOMEM, "MPI worker group: out of memory");
    int rc = lb_mpi_init(argc, argv, &g->rank, &g->size, err);
    if (rc) {
        free(g);
        return rc;
    }
    g->fail_chunk = -1;
    *out = g;
    return 0;
}

void lb_mpi_group_set_fail_chunk(lb_mpi_group *g, int64_t c)
{
    if (g)
        g->fail_chunk = c;
}

/* Chunk c on this rank, or the test hook's failure. */
static int run_chunk(const lb_mpi_group *g, lb_exec_part *p, int64_t c, lb_hessian *const *hs,
                     float *y, lb_err *err)
{
    if (c == g->fail_chunk)
        return lb_err_set(err, LB_EINVAL, "test hook: chunk %lld fails on rank %d",
                          (long long)c, g->rank);
    return lb_exec_part_run_chunk(p, c, hs, y, err);
}

int lb_mpi_group_rank(const lb_mpi_group *g)
{
    return g ? g->rank : 0;
}

int lb_mpi_group_size(const lb_mpi_group *g)
{
    return g ? g->size : 1;
}

/* rank != 0 in part_run: owned chunks c = rank, rank + size, ...: compute, then
 * send in order. first: the job error so far (then only headers carrying it go).
 * Returns the first job error, or the MPI failure with *broken = true. */
static int send_owned(const lb_mpi_group *g, lb_exec_part *p, int first, double *buf, float *y,
                      lb_mpi_stats *st, bool *broken, lb_err *jerr)
{
    const int rank = g->rank, size = g->size, K = lb_exec_part_n_hessians(p);
    const int64_t n = lb_exec_part_chunks(p), dim = lb_exec_part_dim(p);
    lb_hessian *tmp[4] = {NULL, NULL, NULL, NULL};
    int rc = 0;
    for (int64_t c = rank; c < n; c += size) {
        chunk_hdr h;
        memset(&h, 0, sizeof h);
        int64_t t0, nt;
        lb_exec_part_chunk_range(p, c, &t0, &nt);
        h.chunk = c;
        h.ntok = nt;
        for (int k = 0; !first && k < K; k++)
            first = lb_hessian_new(lb_exec_part_hessian_width(p, k), &tmp[k], jerr);
        if (!first)
            first = run_chunk(g, p, c, tmp, y, jerr);
        if (first) {
            h.rc = first;
            snprintf(h.msg, sizeof h.msg, "%s", jerr->msg);
        }
        if ((rc = xsend(&h, sizeof h, 0, TAG_CHUNK, jerr)))
            goto net_fail;
        for (int k = 0; !h.rc && k < K; k++) {
            int64_t w = lb_exec_part_hessian_width(p, k), nt_k = 0;
            lb_hessian_get_sums(tmp[k], buf, &nt_k);
            if ((rc = xsend(buf, (size_t)(w * w) * sizeof *buf, 0, TAG_DATA, jerr)))
                goto net_fail;
        }
        if (!h.rc && !K && (rc = xsend(y, (size_t)(nt * dim) * sizeof *y, 0, TAG_DATA, jerr)))
            goto net_fail;
        for (int k = 0; k < K; k++)
            lb_hessian_free(&tmp[k]);
        if (!h.rc && st)
            st->chunks_remote++;
    }
    rc = first;
    goto done;
net_fail:
    *broken = true;
done:
    for (int k = 0; k < 4; k++)
        lb_hessian_free(&tmp[k]);
    return rc;
}

/* Widest Hessian (*wmax) and most tokens in one chunk (*tmax) of p. */
static void part_max(const lb_exec_part *p, int64_t *wmax, int64_t *tmax)
{
    *wmax = 0;
    *tmax = 0;
    for (int k = 0; k < lb_exec_part_n_hessians(p); k++)
        if (lb_exec_part_hessian_width(p, k) > *wmax)
            *wmax = lb_exec_part_hessian_width(p, k);
    for (int64_t c = 0; c < lb_exec_part_chunks(p); c++) {
        int64_t t0, nt;
        lb_exec_part_chunk_range(p, c, &t0, &nt);
        if (nt > *tmax)
            *tmax = nt;
    }
}

/* The data-parallel protocol, on every rank. job is NULL on a rank whose setup
 * failed (setup_rc, jerr); that rank still takes part so nobody waits forever.
 * Returns the job's status (0 or LB_E*, message in jerr; on rank 0 the first
 * error of any rank); *broken = true when MPI itself failed (jerr says how). */
static int part_run(lb_mpi_group *g, const lb_job *job, int setup_rc, const lb_exec_ctx *ctx,
                    lb_mpi_stats *st, bool *broken, lb_err *jerr)
{
    const int rank = g->rank, size = g->size;
    lb_exec_part *p = NULL;
    open_status mine, *all = NULL;
    lb_hessian *sums[4] = {NULL, NULL, NULL, NULL}, *tmp[4] = {NULL, NULL, NULL, NULL};
    double *buf = NULL;
    float *y = NULL;
    int rc = setup_rc, net;
    *broken = false;
    if (!rc && g->fail_chunk == LB_MPI_FAIL_OPEN)
        rc = lb_err_set(jerr, LB_EINVAL, "test hook: rank %d fails opening job %.12s", rank,
                        job->id);
    if (!rc) {
        omp_set_num_threads(ctx->omp_threads > 0 ? ctx->omp_threads : 1);
        rc = lb_exec_part_open(job, ctx, &p, jerr);
    }
    memset(&mine, 0, sizeof mine);
    mine.rc = rc;
    mine.chunks = p ? lb_exec_part_chunks(p) : -1;
    snprintf(mine.msg, sizeof mine.msg, "%s", rc ? jerr->msg : "");
    all = calloc((size_t)size, sizeof *all);
    if (!all) {
        *broken = true;
        rc = lb_err_set(jerr, LB_ENOMEM, "MPI worker group: out of memory");
        goto done;
    }
    /* every rank learns every rank's verdict, so all agree on go / no-go */
    net = MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                        MPI_COMM_WORLD);
    if (net != MPI_SUCCESS) {
        *broken = true;
        rc = mpi_fail(net, "allgather", -1, jerr);
        goto done;
    }
    if (st)
        st->mpi_bytes += (int64_t)(size - 1) * (int64_t)sizeof mine;
    for (int r = 0; r < size; r++) {
        if (all[r].rc) {
            rc = lb_err_set(jerr, all[r].rc, "MPI rank %d of %d: %s", r, size, all[r].msg);
            goto done;
        }
        if (all[r].chunks != all[0].chunks) {
            rc = lb_err_set(jerr, LB_ESTATE, "MPI rank %d cuts job %s into %lld chunks, rank 0 "
                            "into %lld; every rank must run the same lowbit", r, job->id,
                            (long long)all[r].chunks, (long long)all[0].chunks);
            goto done;
        }
    }
    const int64_t n = lb_exec_part_chunks(p), dim = lb_exec_part_dim(p);
    const int K = lb_exec_part_n_hessians(p);
    int64_t wmax, tmax;
    part_max(p, &wmax, &tmax);
    const int64_t ntok = job->n_seq * job->seq_len;
    int first = 0; /* first job error seen here */
    if (K)
        buf = malloc((size_t)(wmax * wmax) * sizeof *buf + 1);
    else
        y = malloc((size_t)((rank == 0 ? ntok : tmax) * dim) * sizeof *y + 1);
    if ((K && !buf) || (!K && !y))
        first = lb_err_set(jerr, LB_ENOMEM, "MPI rank %d: out of memory for job %s", rank,
                           job->id);
    for (int k = 0; rank == 0 && !first && k < K; k++)
        if ((first = lb_hessian_new(lb_exec_part_hessian_width(p, k), &sums[k], jerr)) ||
            (first = lb_hessian_new(lb_exec_part_hessian_width(p, k), &tmp[k], jerr)))
            break;

    if (rank != 0) {
        /* owned chunks c = rank, rank + size, ...: compute, then send in order */
        rc = send_owned(g, p, first, buf, y, st, broken, jerr);
        goto done;
    }

    /* rank 0: chunk order. Its own chunks go straight into the sums (S +=
     * double(XᵀX), as the embedded executor does); a received partial S_c is
     * exactly double(XᵀX) of its chunk (0 + x is exact), so S += S_c performs
     * the same addition. */
    for (int64_t c = 0; c < n; c++) {
        int src = (int)(c % size);
        int64_t t0, nt;
        lb_exec_part_chunk_range(p, c, &t0, &nt);
        if (src == 0) {
            if (!first && (first = run_chunk(g, p, c, sums, K ? NULL : y + t0 * dim, jerr)))
                lb_err_prefix(jerr, "MPI rank 0, chunk %lld", (long long)c);
            continue;
        }
        chunk_hdr h;
        if ((rc = xrecv(&h, sizeof h, src, TAG_CHUNK, jerr)))
            goto net_fail;
        if (st)
            st->mpi_bytes += (int64_t)sizeof h;
        if (h.chunk != c || h.ntok != nt) {
            rc = lb_err_set(jerr, LB_ENET, "MPI rank %d sent chunk %lld (%lld tokens), expected "
                            "chunk %lld (%lld tokens); the group is out of step", src,
                            (long long)h.chunk, (long long)h.ntok, (long long)c, (long long)nt);
            goto net_fail;
        }
        if (h.rc) {
            if (!first) {
                h.msg[sizeof h.msg - 1] = 0;
                first = lb_err_set(jerr, h.rc, "MPI rank %d, chunk %lld: %s", src, (long long)c,
                                   h.msg);
            }
            continue;
        }
        if (st)
            st->chunks_remote++;
        for (int k = 0; k < K; k++) {
            int64_t w = lb_exec_part_hessian_width(p, k);
            if ((rc = xrecv(buf, (size_t)(w * w) * sizeof *buf, src, TAG_DATA, jerr)))
                goto net_fail;
            if (st)
                st->mpi_bytes += (int64_t)(w * w) * (int64_t)sizeof *buf;
            if (first)
                continue; /* keep draining so the sender finishes */
            if ((first = lb_hessian_set_sums(tmp[k], buf, nt, jerr)) ||
                (first = lb_hessian_add(sums[k], tmp[k], jerr)))
                lb_err_prefix(jerr, "MPI rank %d, chunk %lld", src, (long long)c);
        }
        if (!K) {
            if ((rc = xrecv(y + t0 * dim, (size_t)(nt * dim) * sizeof *y, src, TAG_DATA, jerr)))
                goto net_fail;
            if (st)
                st->mpi_bytes += nt * dim * (int64_t)sizeof *y;
        }
    }
    if (!first)
        first = K ? lb_exec_part_store_hessians(p, sums, jerr) : lb_exec_part_store_x(p, y, jerr);
    if (st) {
        st->chunks = (int32_t)n;
        st->ranks_used = (int32_t)(n < size ? n : size);
    }
    rc = first;
    goto done;
net_fail:
    *broken = true;
done:
    for (int k = 0; k < 4; k++) {
        lb_hessian_free(&sums[k]);
        lb_hessian_free(&tmp[k]);
    }
    free(buf);
    free(y);
    free(all);
    lb_exec_part_free(&p);
    return rc;
}

static int send_cmd(int dest, int type, const uint8_t *payload, size_t len, const char *out_dir,
                    lb_mpi_stats *st, lb_err *err)
{
    cmd_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    h.len = (int64_t)len;
    snprintf(h.out_dir, sizeof h.out_dir, "%s", out_dir ? out_dir : "");
    int rc = xsend(&h, sizeof h, dest, TAG_CMD, err);
    if (!rc && len)
        rc = xsend(payload, len, dest, TAG_PAYLOAD, err);
    if (!rc && st)
        st->mpi_bytes += (int64_t)(sizeof h + len);
    return rc;
}

static void result_fail(lb_job_result *res, const char *job_id, int code, const char *msg)
{
    memset(res, 0, sizeof *res);
    if (job_id)
        snprintf(res->job_id, sizeof res->job_id, "%s", job_id);
    res->status = LB_JOB_FAILED;
    res->err_code = code ? code : LB_EINVAL;
    snprintf(res->error, sizeof res->error, "%s", msg);
}

int lb_mpi_group_serve(lb_mpi_group *g, lb_mpi_ctx_fn get_ctx, void *user, lb_err *err)
{
    if (g->rank == 0)
        return lb_err_set(err, LB_EINVAL, "MPI worker group: rank 0 drives, it does not serve");
    for (;;) {
        cmd_hdr h;
        int rc = xrecv(&h, sizeof h, 0, TAG_CMD, err);
        if (rc)
            return rc;
        if (h.type == CMD_STOP)
            return 0;
        if ((h.type != CMD_PART && h.type != CMD_RUN) || h.len < 0 || h.len > (1 << 24))
            return lb_err_set(err, LB_ENET, "MPI worker group: rank %d got command %d (%lld "
                              "bytes) from rank 0; the group is out of step", g->rank,
                              (int)h.type, (long long)h.len);
        h.out_dir[sizeof h.out_dir - 1] = 0;
        uint8_t *payload = malloc((size_t)h.len + 1);
        if (!payload)
            return lb_err_set(err, LB_ENOMEM, "MPI worker group: out of memory");
        if ((rc = xrecv(payload, (size_t)h.len, 0, TAG_PAYLOAD, err))) {
            free(payload);
            return rc;
        }
        lb_job job;
        lb_job_init(&job);
        lb_err jerr = {0};
        lb_exec_ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        int jrc = lb_job_decode(payload, (size_t)h.len, &job, &jerr);
        if (!jrc)
            jrc = get_ctx(user, &job, h.out_dir, &ctx, &jerr);
        double t0 = lb_now_s();
        lb_mpi_stats st;
        memset(&st, 0, sizeof st);
        if (h.type == CMD_PART) {
            bool broken = false;
            jrc = part_run(g, jrc ? NULL : &job, jrc, &ctx, &st, &broken, &jerr);
            if (broken) {
                *err = jerr;
                rc = jerr.code ? jerr.code : LB_ENET;
            }
        } else {
            lb_job_result res;
            if (!jrc)
                jrc = lb_exec_run(&job, &ctx, &res);
            else
                result_fail(&res, job.id, jrc, jerr.msg);
            if (jrc)
                snprintf(jerr.msg, sizeof jerr.msg, "%s", res.error);
            rc = xsend(&res, sizeof res, 0, TAG_RESULT, err);
        }
        if (jrc)
            fprintf(stderr, "lowbit worker rank %d/%d: %s %.12s (block %d) failed: %s\n",
                    g->rank, g->size, lb_job_type_name(job.type), job.id, (int)job.block,
                    jerr.msg);
        else if (h.type == CMD_PART)
            fprintf(stderr, "lowbit worker rank %d/%d: %s %.12s (block %d): %d chunks in "
                    "%.2f s\n", g->rank, g->size, lb_job_type_name(job.type), job.id,
                    (int)job.block, (int)st.chunks_remote, lb_now_s() - t0);
        else
            fprintf(stderr, "lowbit worker rank %d/%d: ran %s %.12s (block %d) in %.2f s\n",
                    g->rank, g->size, lb_job_type_name(job.type), job.id, (int)job.block,
                    lb_now_s() - t0);
        lb_job_clear(&job);
        free(payload);
        if (rc)
            return rc;
    }
}

int lb_mpi_group_run(lb_mpi_group *g, const lb_job *job, const uint8_t *payload, size_t len,
                     const char *out_dir, const lb_exec_ctx *ctx, lb_job_result *res,
                     lb_mpi_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    if (g->rank != 0 || g->size < 2 || !lb_exec_is_data_parallel(job)) {
        int rc = lb_exec_run(job, ctx, res);
        stats->ranks_used = 1;
        return rc;
    }
    double t0 = lb_now_s();
    lb_err jerr = {0};
    int rc = 0;
    for (int r = 1; r < g->size && !rc; r++)
        rc = send_cmd(r, CMD_PART, payload, len, out_dir, stats, &jerr);
    bool broken = rc != 0;
    if (!rc)
        rc = part_run(g, job, 0, ctx, stats, &broken, &jerr);
    if (broken && !rc)
        rc = LB_ENET;
    memset(res, 0, sizeof *res);
    memcpy(res->job_id, job->id, LB_ID_HEX);
    res->seconds = lb_now_s() - t0;
    if (rc) {
        res->status = LB_JOB_FAILED;
        res->err_code = broken ? LB_ENET : rc;
        snprintf(res->error, sizeof res->error, "%s", jerr.msg);
        return res->err_code;
    }
    res->status = LB_JOB_OK;
    res->n_outputs = job->n_outputs;
    memcpy(res->outputs, job->outputs, sizeof res->outputs);
    return 0;
}

int lb_mpi_group_run_batch(lb_mpi_group *g, int n, const lb_job *const *jobs,
                           const uint8_t *const *payloads, const size_t *lens, const char *out_dir,
                           const lb_exec_ctx *ctx, lb_job_result *res, lb_mpi_stats *stats,
                           lb_err *err)
{
    memset(stats, 0, sizeof *stats);
    if (g->rank != 0 || n < 1 || n > g->size)
        return lb_err_set(err, LB_EINVAL, "MPI worker group: batch of %d jobs on %d ranks "
                          "(rank %d)", n, g->size, g->rank);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        rc = send_cmd(i, CMD_RUN, payloads[i], lens[i], out_dir, stats, err);
    if (rc)
        return rc;
    lb_exec_run(jobs[0], ctx, &res[0]); /* its status is in res[0] */
    for (int i = 1; i < n; i++) {
        if ((rc = xrecv(&res[i], sizeof res[i], i, TAG_RESULT, err)))
            return rc;
        res[i].error[sizeof res[i].error - 1] = 0;
        stats->mpi_bytes += (int64_t)sizeof res[i];
        if (strncmp(res[i].job_id, jobs[i]->id, LB_ID_HEX))
            return lb_err_set(err, LB_ENET, "MPI rank %d answered for job %.12s, expected %.12s; "
                              "the group is out of step", i, res[i].job_id, jobs[i]->id);
    }
    stats->ranks_used = n;
    return 0;
}

int lb_mpi_group_close(lb_mpi_group **gp, lb_err *err)
{
    if (!gp || !*gp)
        return 0;
    lb_mpi_group *g = *gp;
    int rc = 0;
    for (int r = 1; g->rank == 0 && r < g->size; r++) {
        int r2 = send_cmd(r, CMD_STOP, NULL, 0, NULL, NULL, err);
        if (r2 && !rc)
            rc = r2;
    }
    lb_err e2 = {0};
    int rf = lb_mpi_finalize(rc ? &e2 : err);
    free(g);
    *gp = NULL;
    return rc ? rc : rf;
}
