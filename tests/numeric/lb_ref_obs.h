/* Slow reference for methods that quantize inside the GPTQ loop: column-by-column
 * Optimal Brain Surgeon updates in double with an explicit inverse (no Cholesky, no
 * lazy batches). After quantizing column c to q:
 *   W[:, k] -= (w_c - q) * Hinv[c][k] / Hinv[c][c]           for k > c   (OBS, Eq. 2 of GPTQ)
 *   Hinv    -= Hinv[:, c] Hinv[c, :] / Hinv[c][c]             (removes column c, Eq. 3)
 * which equals GPTQ's Cholesky form in exact arithmetic; Hinv[c][c] at step c is U_cc^2.
 * Header-only, included by the numeric tests. */
#ifndef LB_REF_OBS_H
#define LB_REF_OBS_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int rows, cols;
    const int *perm;      /* perm[c] = original column of processing column c */
    const double *udiag2; /* (cols,) U_cc^2 = Hinv[c][c] at step c */
    const double *hdiag;  /* (cols,) damped diag(H), processing order */
    const double *W0;     /* (rows, cols) original W, processing order */
    double *Wc;           /* (rows, cols) current W, processing order */
} ref_obs_state;

typedef struct {
    void *ctx;
    void (*begin)(void *ctx, const ref_obs_state *st);
    void (*block_begin)(void *ctx, const ref_obs_state *st, int c0, int nb);
    /* w (rows,) current column; q (rows,) OUT */
    void (*column)(void *ctx, const ref_obs_state *st, int c, const double *w, double *q);
} ref_obs_hook;

/* Inverse of the SPD matrix A (n, n) by Gauss-Jordan without pivoting (fine for SPD). */
static void ref_inverse(double *A, int n)
{
    double *I = calloc((size_t)n * (size_t)n, sizeof *I);
    for (int i = 0; i < n; i++)
        I[i * n + i] = 1.0;
    for (int p = 0; p < n; p++) {
        double d = A[p * n + p];
        for (int j = 0; j < n; j++) {
            A[p * n + j] /= d;
            I[p * n + j] /= d;
        }
        for (int i = 0; i < n; i++) {
            if (i == p)
                continue;
            double f = A[i * n + p];
            for (int j = 0; j < n; j++) {
                A[i * n + j] -= f * A[p * n + j];
                I[i * n + j] -= f * I[p * n + j];
            }
        }
    }
    memcpy(A, I, sizeof(double) * (size_t)n * (size_t)n);
    free(I);
}

/* W (rows, cols), H (cols, cols) full symmetric positive definite. W_hat (rows, cols) OUT
 * in the original column order. */
static void ref_obs_run(const float *W, int rows, int cols, const float *H, double damp,
                        bool act_order, int block_size, const ref_obs_hook *hook,
                        float *W_hat)
{
    int *perm = malloc(sizeof(int) * (size_t)cols);
    double *Hd = malloc(sizeof(double) * (size_t)cols * (size_t)cols);
    double *Hinv = malloc(sizeof(double) * (size_t)cols * (size_t)cols);
    double *W0 = malloc(sizeof(double) * (size_t)rows * (size_t)cols);
    double *Wc = malloc(sizeof(double) * (size_t)rows * (size_t)cols);
    double *ud = malloc(sizeof(double) * (size_t)cols), *hd = malloc(sizeof(double) * (size_t)cols);
    double *w = malloc(sizeof(double) * (size_t)rows), *q = malloc(sizeof(double) * (size_t)rows);
    double mean = 0;
    for (int j = 0; j < cols; j++)
        mean += (double)H[j * cols + j];
    mean /= cols;
    for (int c = 0; c < cols; c++)
        perm[c] = c;
    if (act_order) /* stable insertion sort by descending diag */
        for (int a = 1; a < cols; a++) {
            int v = perm[a], b = a - 1;
            while (b >= 0 && H[perm[b] * cols + perm[b]] < H[v * cols + v]) {
                perm[b + 1] = perm[b];
                b--;
            }
            perm[b + 1] = v;
        }
    for (int a = 0; a < cols; a++) {
        for (int b = 0; b < cols; b++)
            Hd[a * cols + b] = (double)H[perm[a] * cols + perm[b]];
        Hd[a * cols + a] += damp * mean;
        hd[a] = Hd[a * cols + a];
    }
    memcpy(Hinv, Hd, sizeof(double) * (size_t)cols * (size_t)cols);
    ref_inverse(Hinv, cols);
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < cols; c++)
            W0[i * cols + c] = Wc[i * cols + c] = (double)W[i * cols + perm[c]];
    /* U_cc^2: the diagonal entry at step c of the downdated inverse (independent of W) */
    {
        double *T = malloc(sizeof(double) * (size_t)cols * (size_t)cols);
        memcpy(T, Hinv, sizeof(double) * (size_t)cols * (size_t)cols);
        for (int c = 0; c < cols; c++) {
            ud[c] = T[c * cols + c];
            for (int a = c + 1; a < cols; a++)
                for (int b = c + 1; b < cols; b++)
                    T[a * cols + b] -= T[a * cols + c] * T[c * cols + b] / T[c * cols + c];
        }
        free(T);
    }
    ref_obs_state st = {rows, cols, perm, ud, hd, W0, Wc};
    if (hook->begin)
        hook->begin(hook->ctx, &st);
    for (int c = 0; c < cols; c++) {
        if (c % block_size == 0 && hook->block_begin)
            hook->block_begin(hook->ctx, &st, c, cols - c < block_size ? cols - c : block_size);
        for (int i = 0; i < rows; i++)
            w[i] = Wc[i * cols + c];
        hook->column(hook->ctx, &st, c, w, q);
        double d = Hinv[c * cols + c];
        for (int i = 0; i < rows; i++) {
            double e = (w[i] - q[i]) / d;
            for (int k = c + 1; k < cols; k++)
                Wc[i * cols + k] -= e * Hinv[c * cols + k];
            W_hat[i * cols + perm[c]] = (float)q[i];
        }
        for (int a = c + 1; a < cols; a++)
            for (int b = c + 1; b < cols; b++)
                Hinv[a * cols + b] -= Hinv[a * cols + c] * Hinv[c * cols + b] / d;
    }
    free(perm);
    free(Hd);
    free(Hinv);
    free(W0);
    free(Wc);
    free(ud);
    free(hd);
    free(w);
    free(q);
}

/* H = Xᵀ X / n for X (n, cols) with correlated columns, plus a small ridge: SPD. */
static void ref_make_hessian(float *H, int cols, int n, uint64_t *rng)
{
    double *X = malloc(sizeof(double) * (size_t)n * (size_t)cols);
    for (int s = 0; s < n; s++) {
        double shared = (double)lb_test_rand_normal(rng);
        for (int j = 0; j < cols; j++)
            X[s * cols + j] = (double)lb_test_rand_normal(rng) * (0.5 + (j % 5) * 0.3) +
                              0.6 * shared;
    }
    for (int a = 0; a < cols; a++)
        for (int b = 0; b < cols; b++) {
            double v = 0;
            for (int s = 0; s < n; s++)
                v += X[s * cols + a] * X[s * cols + b];
            H[a * cols + b] = (float)(v / n);
        }
    free(X);
}

#endif
