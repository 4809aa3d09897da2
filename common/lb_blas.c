#include "lb_blas.h"

#include <cblas.h>
#include <lapacke.h>

void lb_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha,
                A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

void lb_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
              const double *A, int64_t lda, const double *B, int64_t ldb, double beta,
              double *C, int64_t ldc)
{
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha,
                A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

void lb_ssyrk_upper_at_a(int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
                         float beta, float *C, int64_t ldc)
{
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)n, (blasint)k, alpha, A,
                (blasint)lda, beta, C, (blasint)ldc);
}

void lb_dsyrk_upper_at_a(int64_t n, int64_t k, double alpha, const double *A, int64_t lda,
                         double beta, double *C, int64_t ldc)
{
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)n, (blasint)k, alpha, A,
                (blasint)lda, beta, C, (blasint)ldc);
}

/* Cholesky and triangular routines: a row-major triangle is the transposed triangle of
 * the same buffer read column-major, and for these operations (symmetric input, or the
 * inverse of a triangle) the transposed problem has the transposed answer. So row-major
 * `upper` is computed as column-major `!upper` in place, skipping LAPACKE's row-major
 * transposition copies (about 1.5x faster at n = 4096). */
static int lapack_status(lapack_int info, const char *what, lb_err *err)
{
    if (info == 0)
        return LB_OK;
    if (info > 0)
        return lb_err_set(err, LB_ENUMERIC,
                          "%s: matrix is not positive definite (pivot %d); raise damping",
                          what, (int)info);
    return lb_err_set(err, LB_EINVAL, "%s: invalid argument %d", what, (int)-info);
}

int lb_spotrf(bool upper, int64_t n, float *A, int64_t lda, lb_err *err)
{
    return lapack_status(LAPACKE_spotrf(LAPACK_COL_MAJOR, upper ? 'L' : 'U', (lapack_int)n, A,
                                        (lapack_int)lda),
                         "cholesky", err);
}

int lb_dpotrf(bool upper, int64_t n, double *A, int64_t lda, lb_err *err)
{
    return lapack_status(LAPACKE_dpotrf(LAPACK_COL_MAJOR, upper ? 'L' : 'U', (lapack_int)n, A,
                                        (lapack_int)lda),
                         "cholesky", err);
}

int lb_spotri(bool upper, int64_t n, float *A, int64_t lda, lb_err *err)
{
    return lapack_status(LAPACKE_spotri(LAPACK_COL_MAJOR, upper ? 'L' : 'U', (lapack_int)n, A,
                                        (lapack_int)lda),
                         "cholesky inverse", err);
}

int lb_dpotri(bool upper, int64_t n, double *A, int64_t lda, lb_err *err)
{
    return lapack_status(LAPACKE_dpotri(LAPACK_COL_MAJOR, upper ? 'L' : 'U', (lapack_int)n, A,
                                        (lapack_int)lda),
                         "cholesky inverse", err);
}

static int trtri_status(lapack_int info, lb_err *err)
{
    if (info > 0)
        return lb_err_set(err, LB_ENUMERIC,
                          "triangular inverse: zero diagonal at %d (singular); raise damping",
                          (int)info);
    if (info < 0)
        return lb_err_set(err, LB_EINVAL, "triangular inverse: invalid argument %d", (int)-info);
    return LB_OK;
}

int lb_strtri(bool upper, int64_t n, float *A, int64_t lda, lb_err *err)
{
    return trtri_status(LAPACKE_strtri(LAPACK_COL_MAJOR, upper ? 'L' : 'U', 'N', (lapack_int)n,
                                       A, (lapack_int)lda),
                        err);
}

int lb_dtrtri(bool upper, int64_t n, double *A, int64_t lda, lb_err *err)
{
    return trtri_status(LAPACKE_dtrtri(LAPACK_COL_MAJOR, upper ? 'L' : 'U', 'N', (lapack_int)n,
                                       A, (lapack_int)lda),
                        err);
}

void lb_strsm(bool left, bool upper, bool trans_a, int64_t m, int64_t n, float alpha,
              const float *A, int64_t lda, float *B, int64_t ldb)
{
    cblas_strsm(CblasRowMajor, left ? CblasLeft : CblasRight, upper ? CblasUpper : CblasLower,
                trans_a ? CblasTrans : CblasNoTrans, CblasNonUnit, (blasint)m, (blasint)n,
                alpha, A, (blasint)lda, B, (blasint)ldb);
}

void lb_blas_set_threads(int n)
{
    openblas_set_num_threads(n);
}

int lb_blas_get_threads(void)
{
    return openblas_get_num_threads();
}
