/* lb_mpi: fixed-order Hessian reduction over MPI (see lb_mpi.h). The only file
 * of lowbit that includes mpi.h. */
#include "lb_mpi.h"

#include <mpi.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Checks an MPI call; records where it failed and the MPI error text. */
#define MPI_CHECK(call, err, peer) mpi_check((call), #call, __FILE__, __LINE__, (peer), (err))

static int mpi_check(int rc, const char *what, const char *file, int line, int peer, lb_err *err)
{
    if (rc == MPI_SUCCESS)
        return 0;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        strcpy(msg, "unknown MPI error");
    if (peer >= 0)
        return lb_err_set(err, LB_ENET,
                          "MPI rank %d: %s failed (%s) [%s:%d]; check that all "
                          "ranks run the same lowbit",
                          peer, what, msg, file, line);
    return lb_err_set(err, LB_ENET, "MPI: %s failed (%s) [%s:%d]", what, msg, file, line);
}

enum { TAG_HDR = 7101, TAG_DATA = 7102 };

/* Largest piece per MPI message: MPI counts are int, and 1 GiB keeps buffers sane. */
#define PIECE_DOUBLES ((int64_t)1 << 27)

int lb_mpi_init(int *argc, char ***argv, int *rank, int *size, lb_err *err)
{
    int inited = 0, provided = 0, rc;
    if ((rc = MPI_CHECK(MPI_Initialized(&inited), err, -1)))
        return rc;
    if (!inited &&
        (rc = MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), err, -1)))
        return rc;
    if ((rc = MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), err, -1)) ||
        (rc = MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, rank), err, -1)) ||
        (rc = MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, size), err, -1)))
        return rc;
    return 0;
}

int lb_mpi_finalize(lb_err *err)
{
    int inited = 0, done = 0, rc;
    if ((rc = MPI_CHECK(MPI_Initialized(&inited), err, -1)) ||
        (rc = MPI_CHECK(MPI_Finalized(&done), err, -1)))
        return rc;
    if (!inited || done)
        return 0;
    return MPI_CHECK(MPI_Finalize(), err, -1);
}

void lb_mpi_owner_block(int64_t n_chunks, int size, int32_t *owner)
{
    for (int64_t c = 0; c < n_chunks; c++)
        owner[c] = (int32_t)(c * size / n_chunks);
}

void lb_mpi_owner_cyclic(int64_t n_chunks, int size, int32_t *owner)
{
    for (int64_t c = 0; c < n_chunks; c++)
        owner[c] = (int32_t)(c % size);
}

static int empty_like(lb_hessian *out, double **zeros, lb_err *err)
{
    int64_t n = lb_hessian_cols(out);
    *zeros = calloc((size_t)(n * n) + 1, sizeof **zeros);
    if (!*zeros)
        return lb_err_set(err, LB_ENOMEM, "hessian reduction: out of memory (%lld x %lld)",
                          (long long)n, (long long)n);
    return lb_hessian_set_sums(out, *zeros, 0, err);
}

int lb_mpi_hessian_sum_local(int64_t n_chunks, lb_hessian *const *parts, lb_hessian *out,
                             lb_err *err)
{
    double *z = NULL;
    int rc = empty_like(out, &z, err);
    free(z);
    for (int64_t c = 0; c < n_chunks && !rc; c++) {
        if (!parts[c])
            return lb_err_set(err, LB_EINVAL, "hessian sum: chunk %lld has no partial",
                              (long long)c);
        rc = lb_hessian_add(out, parts[c], err);
    }
    return rc;
}

/* FNV-1a over the table and width, so ranks can check they agree. */
static uint64_t table_hash(int64_t n_chunks, const int32_t *owner, int64_t cols)
{
    uint64_t h = 1469598103934665603ULL;
    const int64_t head[2] = {n_chunks, cols};
    const unsigned char *p = (const unsigned char *)head;
    for (size_t i = 0; i < sizeof head; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    p = (const unsigned char *)owner;
    for (size_t i = 0; i < (size_t)n_chunks * sizeof *owner; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Sends or receives count doubles in pieces of at most PIECE_DOUBLES. */
static int send_doubles(const double *buf, int64_t count, int dest, lb_err *err)
{
    for (int64_t off = 0; off < count; off += PIECE_DOUBLES) {
        int64_t len = count - off < PIECE_DOUBLES ? count - off : PIECE_DOUBLES;
        int rc = MPI_CHECK(
            MPI_Send(buf + off, (int)len, MPI_DOUBLE, dest, TAG_DATA, MPI_COMM_WORLD), err, dest);
        if (rc)
            return rc;
    }
    return 0;
}

static int recv_doubles(double *buf, int64_t count, int src, lb_err *err)
{
    for (int64_t off = 0; off < count; off += PIECE_DOUBLES) {
        int64_t len = count - off < PIECE_DOUBLES ? count - off : PIECE_DOUBLES;
        int rc = MPI_CHECK(MPI_Recv(buf + off, (int)len, MPI_DOUBLE, src, TAG_DATA, MPI_COMM_WORLD,
                                    MPI_STATUS_IGNORE),
                           err, src);
        if (rc)
            return rc;
    }
    return 0;
}

static int bcast_doubles(double *buf, int64_t count, lb_err *err)
{
    for (int64_t off = 0; off < count; off += PIECE_DOUBLES) {
        int64_t len = count - off < PIECE_DOUBLES ? count - off : PIECE_DOUBLES;
        int rc = MPI_CHECK(MPI_Bcast(buf + off, (int)len, MPI_DOUBLE, 0, MPI_COMM_WORLD), err, 0);
        if (rc)
            return rc;
    }
    return 0;
}

/* Phase 1's local part: this rank's chunk table and partials. Returns 0 or LB_EINVAL. */
static int check_partials(int64_t n_chunks, const int32_t *owner, lb_hessian *const *local,
                          int64_t cols, int rank, int size, lb_err *err)
{
    int bad = 0;
    if (n_chunks < 1 || !owner || cols < 1) {
        bad = lb_err_set(err, LB_EINVAL, "hessian reduction: need >= 1 chunk and a width");
    } else {
        for (int64_t c = 0; c < n_chunks && !bad; c++) {
            if (owner[c] < 0 || owner[c] >= size)
                bad = lb_err_set(err, LB_EINVAL,
                                 "hessian reduction: chunk %lld owned by rank "
                                 "%d of %d",
                                 (long long)c, owner[c], size);
            else if (owner[c] == rank && (!local || !local[c]))
                bad = lb_err_set(err, LB_EINVAL,
                                 "hessian reduction: rank %d owns chunk %lld "
                                 "but has no partial for it",
                                 rank, (long long)c);
            else if (owner[c] == rank && lb_hessian_cols(local[c]) != cols)
                bad =
                    lb_err_set(err, LB_EINVAL,
                               "hessian reduction: chunk %lld has width %lld, "
                               "expected %lld",
                               (long long)c, (long long)lb_hessian_cols(local[c]), (long long)cols);
        }
    }
    return bad;
}

int lb_mpi_hessian_reduce(int64_t n_chunks, const int32_t *owner, lb_hessian *const *local,
                          lb_hessian *out, lb_err *err)
{
    int rank = 0, size = 1, rc;
    if ((rc = MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank), err, -1)) ||
        (rc = MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size), err, -1)))
        return rc;
    const int64_t cols = lb_hessian_cols(out);
    const int64_t nn = cols * cols;
    double *buf = NULL;
    lb_hessian *tmp = NULL;

    /* Phase 1: every rank checks its inputs, then all agree on go/no-go, so a
     * bad rank makes every rank return an error instead of leaving peers hung. */
    int bad = check_partials(n_chunks, owner, local, cols, rank, size, err);
    uint64_t th = bad ? 0 : table_hash(n_chunks, owner, cols);
    uint64_t lo = 0, hi = 0;
    int any_bad = 0;
    if ((rc = MPI_CHECK(MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), err,
                        -1)) ||
        (rc = MPI_CHECK(MPI_Allreduce(&th, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD), err,
                        -1)) ||
        (rc =
             MPI_CHECK(MPI_Allreduce(&th, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), err, -1)))
        return rc;
    if (bad)
        return bad;
    if (any_bad)
        return lb_err_set(err, LB_EINVAL,
                          "hessian reduction: another rank rejected its inputs "
                          "(see that rank's error)");
    if (lo != hi)
        return lb_err_set(err, LB_EINVAL,
                          "hessian reduction: ranks disagree on the chunk table "
                          "or the Hessian width; every rank must plan the same chunks");

    /* Buffers, agreed on too: a rank that cannot allocate must not leave the
     * others waiting in phase 2. */
    buf = malloc((size_t)nn * sizeof *buf);
    int have = buf && (rank != 0 || lb_hessian_new(cols, &tmp, err) == 0);
    int all_have = 0;
    if ((rc = MPI_CHECK(MPI_Allreduce(&have, &all_have, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD),
                        err, -1)))
        goto done;
    if (!all_have) {
        rc = have ? lb_err_set(err, LB_ENOMEM, "hessian reduction: another rank is out of memory")
                  : lb_err_set(err, LB_ENOMEM,
                               "hessian reduction: rank %d out of memory (%lld x %lld float64)",
                               rank, (long long)cols, (long long)cols);
        goto done;
    }

    /* Phase 2: partials to rank 0 in chunk order. Each sender sends its chunks in
     * increasing order and rank 0 receives in increasing order, so the blocking
     * point-to-point pattern cannot deadlock (MPI keeps per-pair message order). */
    int status = 0; /* rank 0: first error seen, broadcast below */
    if (rank == 0) {
        double *z = NULL;
        status = empty_like(out, &z, err);
        free(z);
        for (int64_t c = 0; c < n_chunks; c++) {
            int src = owner[c];
            int64_t ntok = 0;
            int r = 0;
            if (src == 0) {
                if (!status)
                    r = lb_hessian_add(out, local[c], err);
            } else {
                int64_t hdr[3];
                r = MPI_CHECK(
                    MPI_Recv(hdr, 3, MPI_INT64_T, src, TAG_HDR, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                    err, src);
                if (r)
                    goto fail_collective; /* the transport itself broke */
                if ((r = recv_doubles(buf, nn, src, err)))
                    goto fail_collective;
                ntok = hdr[2];
                if (status)
                    continue; /* keep draining so senders finish */
                if (hdr[0] != c || hdr[1] != cols) {
                    r = lb_err_set(err, LB_EFORMAT,
                                   "MPI rank %d: sent chunk %lld width %lld, "
                                   "expected chunk %lld width %lld",
                                   src, (long long)hdr[0], (long long)hdr[1], (long long)c,
                                   (long long)cols);
                } else if (!(r = lb_hessian_set_sums(tmp, buf, ntok, err))) {
                    r = lb_hessian_add(out, tmp, err); /* the fixed-order step */
                } else {
                    lb_err_prefix(err, "MPI rank %d, chunk %lld", src, (long long)c);
                }
            }
            if (r && !status)
                status = r;
        }
    } else {
        for (int64_t c = 0; c < n_chunks; c++) {
            if (owner[c] != rank)
                continue;
            int64_t hdr[3] = {c, cols, 0};
            lb_hessian_get_sums(local[c], buf, &hdr[2]);
            if ((rc = MPI_CHECK(MPI_Send(hdr, 3, MPI_INT64_T, 0, TAG_HDR, MPI_COMM_WORLD), err,
                                0)) ||
                (rc = send_doubles(buf, nn, 0, err)))
                goto fail_collective;
        }
    }

    /* Phase 3: rank 0's verdict, then the sum, to everyone. */
    if ((rc = MPI_CHECK(MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD), err, 0)))
        goto fail_collective;
    if (status) {
        if (rank != 0)
            lb_err_set(err, status, "hessian reduction failed on rank 0 (see its error)");
        rc = status;
        goto done;
    }
    int64_t ntok = 0;
    if (rank == 0)
        lb_hessian_get_sums(out, buf, &ntok);
    if ((rc = MPI_CHECK(MPI_Bcast(&ntok, 1, MPI_INT64_T, 0, MPI_COMM_WORLD), err, 0)) ||
        (rc = bcast_doubles(buf, nn, err)))
        goto fail_collective;
    if (rank != 0)
        rc = lb_hessian_set_sums(out, buf, ntok, err);
    goto done;

fail_collective:
    /* An MPI transport error: peers cannot be resynchronized; report it. */
    if (!rc)
        rc = err && err->code ? err->code : LB_ENET;
done:
    lb_hessian_free(&tmp);
    free(buf);
    return rc;
}
