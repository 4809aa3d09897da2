/* MPI program driven by tests/integration/test_mpi_hessian.c (run under mpirun):
 *   mpi_hessian_check OUT COLS N_SEQ SEQ_LEN CHUNK_SEQS block|cyclic|drop SEED
 * ("drop": block assignment, but the last rank loses its first partial, to check
 * that every rank then fails cleanly instead of hanging.)
 * Cuts N_SEQ synthetic sequences into chunks of CHUNK_SEQS (the last may be
 * shorter), assigns chunks to ranks (block or cyclic), computes each owned
 * chunk's partial Hessian from a fresh accumulator, reduces with
 * lb_mpi_hessian_reduce, and every rank r writes OUT.r<r>:
 *   int64 ntok (LE), then cols*cols float64 raw sums S (row-major).
 * Exit status 0 on success; errors go to stderr as one line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"
#include "lb_hessian.h"
#include "lb_mpi.h"
#include "mpi_hessian_data.h"

int main(int argc, char **argv)
{
    lb_err err = {0};
    int rank = 0, size = 1, rc = 0;
    if (lb_mpi_init(&argc, &argv, &rank, &size, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    if (argc != 8) {
        fprintf(stderr, "usage: %s OUT COLS N_SEQ SEQ_LEN CHUNK_SEQS block|cyclic|drop SEED\n",
                argv[0]);
        lb_mpi_finalize(&err);
        return 2;
    }
    lb_blas_set_threads(1); /* one BLAS thread per rank: no oversubscription */
    const char *out = argv[1];
    int64_t cols = atoll(argv[2]), n_seq = atoll(argv[3]), seq_len = atoll(argv[4]);
    int64_t chunk_seqs = atoll(argv[5]);
    uint64_t seed = strtoull(argv[7], NULL, 10);
    int64_t n_chunks = (n_seq + chunk_seqs - 1) / chunk_seqs;
    int32_t *owner = calloc((size_t)n_chunks, sizeof *owner);
    lb_hessian **parts = calloc((size_t)n_chunks, sizeof *parts);
    float *X = malloc((size_t)(chunk_seqs * seq_len * cols) * sizeof *X);
    double *S = malloc((size_t)(cols * cols) * sizeof *S);
    lb_hessian *sum = NULL;
    if (!owner || !parts || !X || !S) {
        fprintf(stderr, "error: out of memory\n");
        rc = 1;
        goto done;
    }
    if (strcmp(argv[6], "cyclic") == 0)
        lb_mpi_owner_cyclic(n_chunks, size, owner);
    else
        lb_mpi_owner_block(n_chunks, size, owner);
    for (int64_t c = 0; c < n_chunks; c++) {
        if (owner[c] != rank)
            continue;
        int64_t s0 = c * chunk_seqs, s1 = s0 + chunk_seqs < n_seq ? s0 + chunk_seqs : n_seq;
        for (int64_t s = s0; s < s1; s++)
            mhd_sequence(seed, s, seq_len, cols, X + (s - s0) * seq_len * cols);
        if (lb_hessian_new(cols, &parts[c], &err) ||
            lb_hessian_add_chunk(parts[c], X, (s1 - s0) * seq_len, cols, &err)) {
            fprintf(stderr, "error: rank %d: %s\n", rank, err.msg);
            rc = 1;
            break;
        }
    }
    if (strcmp(argv[6], "drop") == 0 && rank == size - 1)
        for (int64_t c = 0; c < n_chunks; c++)
            if (owner[c] == rank) {
                lb_hessian_free(&parts[c]);
                break;
            }
    /* A failed rank still enters the collective (with a NULL partial) so that
     * every rank gets an error instead of hanging. */
    if (lb_hessian_new(cols, &sum, &err) ||
        lb_mpi_hessian_reduce(n_chunks, owner, parts, sum, &err)) {
        fprintf(stderr, "error: rank %d: %s\n", rank, err.msg);
        rc = 1;
        goto done;
    }
    int64_t ntok = 0;
    lb_hessian_get_sums(sum, S, &ntok);
    char path[4096];
    snprintf(path, sizeof path, "%s.r%d", out, rank);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(&ntok, sizeof ntok, 1, f) != 1 ||
        fwrite(S, sizeof *S, (size_t)(cols * cols), f) != (size_t)(cols * cols)) {
        fprintf(stderr, "error: %s: cannot write\n", path);
        rc = 1;
    }
    if (f && fclose(f) != 0)
        rc = 1;
done:
    for (int64_t c = 0; parts && c < n_chunks; c++)
        lb_hessian_free(&parts[c]);
    lb_hessian_free(&sum);
    free(parts);
    free(owner);
    free(X);
    free(S);
    if (lb_mpi_finalize(&err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        rc = 1;
    }
    return rc;
}
