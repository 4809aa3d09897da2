/* Fixed-order MPI Hessian reduction (worker/lb_mpi): the check program
 * tests/mpi/mpi_hessian_check.c runs under `mpirun -np 1/2/3` with block and
 * cyclic chunk assignments; every rank's result must be byte-identical to the
 * -np 1 run and to a plain single-process sum of the chunk partials in chunk
 * order (the reference below). Skips when mpirun or the MPI build is missing,
 * fails under CI=true. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "lb_blas.h"
#include "lb_hessian.h"
#include "lb_test_util.h"
#include "../mpi/mpi_hessian_data.h"

enum { COLS = 24, N_SEQ = 20, SEQ_LEN = 32, CHUNK_SEQS = 3, SEED = 42 };
#define N_CHUNKS ((N_SEQ + CHUNK_SEQS - 1) / CHUNK_SEQS)
#define RESULT_BYTES (sizeof(int64_t) + sizeof(double) * COLS * COLS)

static const char *check_bin(void)
{
    const char *bin = getenv("LB_MPI_HESSIAN_CHECK");
    if (!lb_test_need_that(bin && *bin && lb_test_on_path("mpirun"),
                           "MPI or mpirun missing (LB_MPI_HESSIAN_CHECK unset or no mpirun); "
                           "run deploy/install-deps.sh"))
        return NULL;
    return bin;
}

/* Runs the check program; returns its exit status, output in *log (free). */
static int run_mpi(const char *bin, int np, const char *mode, const char *out, char **log)
{
    /* Root in containers needs the two ALLOW variables; --oversubscribe lets 3
     * ranks share 2 cores; the timeout turns a hang into a failure. Under
     * sanitizers the ranks run without LeakSanitizer: Open MPI leaks inside
     * plugins it unloads at MPI_Finalize (frames without names, so they cannot
     * be suppressed); ASan/UBSan error checks stay on. */
    return lb_test_run(log,
                       "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                       "OMPI_MCA_btl_vader_single_copy_mechanism=none "
                       "ASAN_OPTIONS=detect_leaks=0 "
                       "timeout 60 mpirun --oversubscribe -np %d %s %s %d %d %d %d %s %d",
                       np, bin, out, COLS, N_SEQ, SEQ_LEN, CHUNK_SEQS, mode, SEED);
}

static unsigned char *read_result(const char *prefix, int rank)
{
    char path[4300];
    snprintf(path, sizeof path, "%.4200s.r%d", prefix, rank);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *buf = malloc(RESULT_BYTES + 1);
    assert_non_null(buf);
    size_t n = fread(buf, 1, RESULT_BYTES + 1, f);
    fclose(f);
    assert_int_equal(n, RESULT_BYTES);
    return buf;
}

/* Plain reference: each chunk's partial from a fresh accumulator, then
 * S = ((0 + S_0) + S_1) + ... in chunk order (or reversed, to show that the
 * order is visible in the bits). OUT: buf in the check program's file layout. */
static void reference(bool reversed, unsigned char *buf)
{
    double *acc = calloc(COLS * COLS, sizeof *acc);
    double *part = malloc(COLS * COLS * sizeof *part);
    float *X = malloc((size_t)CHUNK_SEQS * SEQ_LEN * COLS * sizeof *X);
    assert_true(acc && part && X);
    int64_t ntok = 0;
    lb_blas_set_threads(1);
    for (int k = 0; k < N_CHUNKS; k++) {
        int c = reversed ? N_CHUNKS - 1 - k : k;
        int s0 = c * CHUNK_SEQS, s1 = s0 + CHUNK_SEQS < N_SEQ ? s0 + CHUNK_SEQS : N_SEQ;
        for (int s = s0; s < s1; s++)
            mhd_sequence(SEED, s, SEQ_LEN, COLS, X + (size_t)(s - s0) * SEQ_LEN * COLS);
        lb_hessian *h = NULL;
        lb_err err = {0};
        assert_int_equal(lb_hessian_new(COLS, &h, &err), 0);
        assert_int_equal(lb_hessian_add_chunk(h, X, (int64_t)(s1 - s0) * SEQ_LEN, COLS, &err), 0);
        int64_t nt = 0;
        lb_hessian_get_sums(h, part, &nt);
        lb_hessian_free(&h);
        for (int i = 0; i < COLS * COLS; i++)
            acc[i] += part[i];
        ntok += nt;
    }
    memcpy(buf, &ntok, sizeof ntok);
    memcpy(buf + sizeof ntok, acc, sizeof(double) * COLS * COLS);
    free(acc);
    free(part);
    free(X);
}

/* The embedded executor (worker/lb_exec.c) feeds one accumulator chunk after
 * chunk. With the same chunk boundaries that is the same arithmetic as the
 * chunk-order sum of fresh partials: 0 + double(SYRK(chunk)) is exact. */
static void test_streaming_equals_chunk_sum(void **state)
{
    (void)state;
    unsigned char ref[RESULT_BYTES], got[RESULT_BYTES];
    reference(false, ref);
    float *X = malloc((size_t)CHUNK_SEQS * SEQ_LEN * COLS * sizeof *X);
    double *S = malloc(COLS * COLS * sizeof *S);
    assert_true(X && S);
    lb_hessian *h = NULL;
    lb_err err = {0};
    assert_int_equal(lb_hessian_new(COLS, &h, &err), 0);
    for (int c = 0; c < N_CHUNKS; c++) {
        int s0 = c * CHUNK_SEQS, s1 = s0 + CHUNK_SEQS < N_SEQ ? s0 + CHUNK_SEQS : N_SEQ;
        for (int s = s0; s < s1; s++)
            mhd_sequence(SEED, s, SEQ_LEN, COLS, X + (size_t)(s - s0) * SEQ_LEN * COLS);
        assert_int_equal(lb_hessian_add_chunk(h, X, (int64_t)(s1 - s0) * SEQ_LEN, COLS, &err), 0);
    }
    int64_t ntok = 0;
    lb_hessian_get_sums(h, S, &ntok);
    memcpy(got, &ntok, sizeof ntok);
    memcpy(got + sizeof ntok, S, sizeof(double) * COLS * COLS);
    assert_memory_equal(got, ref, RESULT_BYTES);
    lb_hessian_free(&h);
    free(X);
    free(S);
}

static void test_reduction_independent_of_ranks(void **state)
{
    (void)state;
    const char *bin = check_bin();
    if (!bin)
        skip();
    char *dir = lb_test_mkdtemp();
    unsigned char ref[RESULT_BYTES], rev[RESULT_BYTES];
    reference(false, ref);
    reference(true, rev);
    int64_t ntok;
    memcpy(&ntok, ref, sizeof ntok);
    assert_int_equal(ntok, N_SEQ * SEQ_LEN);
    /* The data make the order visible: a reversed sum has other bits. */
    assert_memory_not_equal(ref + 8, rev + 8, RESULT_BYTES - 8);

    static const struct {
        int np;
        const char *mode;
    } runs[] = {{1, "block"}, {2, "block"}, {2, "cyclic"}, {3, "cyclic"}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        char prefix[4200];
        snprintf(prefix, sizeof prefix, "%.4000s/H-np%d-%s", dir, runs[r].np, runs[r].mode);
        char *log = NULL;
        int st = run_mpi(bin, runs[r].np, runs[r].mode, prefix, &log);
        if (st != 0)
            fail_msg("mpirun -np %d (%s) exited %d:\n%s", runs[r].np, runs[r].mode, st,
                     log ? log : "");
        free(log);
        for (int rank = 0; rank < runs[r].np; rank++) {
            unsigned char *got = read_result(prefix, rank);
            if (memcmp(got, ref, RESULT_BYTES) != 0)
                fail_msg("-np %d %s rank %d: H differs from the chunk-order reference", runs[r].np,
                         runs[r].mode, rank);
            free(got);
        }
    }
    lb_test_rmdir(&dir);
}

static void test_missing_partial_fails_every_rank(void **state)
{
    (void)state;
    const char *bin = check_bin();
    if (!bin)
        skip();
    char *dir = lb_test_mkdtemp();
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "%.4000s/H-drop", dir);
    char *log = NULL;
    int st = run_mpi(bin, 2, "drop", prefix, &log);
    assert_non_null(log);
    assert_int_not_equal(st, 0);
    assert_int_not_equal(st, 124); /* not a hang ended by timeout */
    /* The rank that lost a partial names it; the other rank reports the refusal. */
    assert_non_null(strstr(log, "rank 1 owns chunk"));
    assert_non_null(strstr(log, "error: rank 0: hessian reduction: another rank rejected"));
    free(log);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streaming_equals_chunk_sum),
        cmocka_unit_test(test_reduction_independent_of_ranks),
        cmocka_unit_test(test_missing_partial_fails_every_rank),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
