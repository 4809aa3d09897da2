/* bench_rotate_kernel: cost of the Hadamard rotation (lb_rotate) at LLaMA-7B shapes,
 * and the fast Walsh-Hadamard transform against a dense matrix-vector product of the
 * same order (the ratio is from the same run).
 * Usage: bench_rotate_kernel [max_dim]. Prints one JSON line per measurement. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lb_rotate.h"
#include "lb_time.h"

int main(int argc, char **argv)
{
    int64_t max_dim = argc > 1 ? atoll(argv[1]) : 11008;
    lb_err err = {0};
    /* one vector of order 4096: FWHT vs explicit dense product */
    {
        const int64_t n = 4096;
        double *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
        double *x0 = malloc((size_t)n * sizeof *x0);
        double *M = malloc((size_t)(n * n) * sizeof *M);
        if (!x || !y || !M || !x0)
            return fprintf(stderr, "bench_rotate_kernel: out of memory\n"), 1;
        for (int64_t i = 0; i < n; i++) {
            x0[i] = sin((double)i);
            for (int64_t j = 0; j < n; j++)
                M[i * n + j] = (__builtin_popcountll((unsigned long long)(i & j)) & 1) ? -1 : 1;
        }
        const int reps = 20;
        double t0 = lb_now_s();
        for (int r = 0; r < reps; r++) {
            for (int64_t i = 0; i < n; i++)
                x[i] = x0[i];
            lb_fwht(x, n);
        }
        double fast = (lb_now_s() - t0) / reps;
        t0 = lb_now_s();
        for (int r = 0; r < reps; r++)
            for (int64_t i = 0; i < n; i++) {
                double s = 0;
                for (int64_t j = 0; j < n; j++)
                    s += M[i * n + j] * x0[j];
                y[i] = s;
            }
        double dense = (lb_now_s() - t0) / reps;
        double diff = 0;
        for (int64_t i = 0; i < n; i++)
            diff = fmax(diff, fabs(x[i] - y[i]));
        printf("{\"bench\":\"rotate_kernel\",\"what\":\"fwht_vs_dense\",\"n\":%lld,"
               "\"fwht_us\":%.2f,\"dense_us\":%.2f,\"ratio\":%.1f,\"max_abs_diff\":%.3g}\n",
               (long long)n, 1e6 * fast, 1e6 * dense, dense / fast, diff);
        free(x);
        free(x0);
        free(y);
        free(M);
    }
    static const int64_t shapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int64_t rows = shapes[k][0], cols = shapes[k][1];
        if (rows > max_dim || cols > max_dim)
            continue;
        float *W = malloc((size_t)(rows * cols) * sizeof *W);
        if (!W)
            return fprintf(stderr, "bench_rotate_kernel: out of memory\n"), 1;
        for (int64_t i = 0; i < rows * cols; i++)
            W[i] = (float)sin(0.001 * (double)i);
        double t0 = lb_now_s();
        if (lb_rotate_weight(W, rows, cols, 1, 0, &err))
            return fprintf(stderr, "bench_rotate_kernel: %s\n", err.msg), 1;
        double fwd = lb_now_s() - t0;
        t0 = lb_now_s();
        if (lb_rotate_weight(W, rows, cols, 1, 1, &err))
            return fprintf(stderr, "bench_rotate_kernel: %s\n", err.msg), 1;
        double inv = lb_now_s() - t0;
        double maxerr = 0;
        for (int64_t i = 0; i < rows * cols; i++)
            maxerr = fmax(maxerr, fabs((double)W[i] - sin(0.001 * (double)i)));
        printf("{\"bench\":\"rotate_kernel\",\"what\":\"weight\",\"rows\":%lld,\"cols\":%lld,"
               "\"forward_s\":%.3f,\"inverse_s\":%.3f,\"roundtrip_max_abs_err\":%.3g}\n",
               (long long)rows, (long long)cols, fwd, inv, maxerr);
        free(W);
    }
    if (max_dim >= 11008) {
        const int64_t n = 11008;
        float *H = malloc((size_t)(n * n) * sizeof *H);
        if (!H)
            return fprintf(stderr, "bench_rotate_kernel: out of memory\n"), 1;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                H[i * n + j] = i == j ? 2.0f : 0.001f;
        double t0 = lb_now_s();
        if (lb_rotate_hessian(H, n, 1, &err))
            return fprintf(stderr, "bench_rotate_kernel: %s\n", err.msg), 1;
        printf("{\"bench\":\"rotate_kernel\",\"what\":\"hessian\",\"n\":%lld,\"seconds\":%.3f}\n",
               (long long)n, lb_now_s() - t0);
        free(H);
    }
    return 0;
}
