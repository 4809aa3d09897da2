/* lb_blas: the one place that includes cblas.h and lapacke.h.
 * All matrices are row-major. Thread counts are set explicitly so MPI ranks
 * and OpenMP regions do not oversubscribe. */
#ifndef LB_BLAS_H
#define LB_BLAS_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"

/* C (m, n) = alpha * op(A) @ op(B) + beta * C. op(A) is (m, k), op(B) is (k, n).
 * lda/ldb/ldc are row strides of the stored (untransposed) arrays. */
void lb_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc);
void lb_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
              const double *A, int64_t lda, const double *B, int64_t ldb, double beta,
              double *C, int64_t ldc);

/* Upper triangle of C (n, n) = alpha * Aᵀ A + beta * C, A is (k, n) with row stride lda.
 * The lower triangle is left untouched. */
void lb_ssyrk_upper_at_a(int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
                         float beta, float *C, int64_t ldc);
void lb_dsyrk_upper_at_a(int64_t n, int64_t k, double alpha, const double *A, int64_t lda,
                         double beta, double *C, int64_t ldc);

/* In-place Cholesky of a symmetric positive definite (n, n) matrix.
 * upper=true: A = Uᵀ U, U written to the upper triangle. Returns LB_ENUMERIC
 * (with the failing pivot in err) when A is not positive definite. */
int lb_spotrf(bool upper, int64_t n, float *A, int64_t lda, lb_err *err);
int lb_dpotrf(bool upper, int64_t n, double *A, int64_t lda, lb_err *err);
/* Inverse from a Cholesky factor (after lb_?potrf with the same `upper`). */
int lb_spotri(bool upper, int64_t n, float *A, int64_t lda, lb_err *err);
int lb_dpotri(bool upper, int64_t n, double *A, int64_t lda, lb_err *err);

/* In-place inverse of a triangular (n, n) matrix with non-unit diagonal (upper or
 * lower triangle; the other is not referenced). Returns LB_ENUMERIC when singular. */
int lb_strtri(bool upper, int64_t n, float *A, int64_t lda, lb_err *err);
int lb_dtrtri(bool upper, int64_t n, double *A, int64_t lda, lb_err *err);

/* Triangular solve, B (m, n) := op(A)^-1 B (left) or B op(A)^-1 (right), A (k, k) upper/lower. */
void lb_strsm(bool left, bool upper, bool trans_a, int64_t m, int64_t n, float alpha,
              const float *A, int64_t lda, float *B, int64_t ldb);

void lb_blas_set_threads(int n);
int lb_blas_get_threads(void);

#endif
