/* bench_kmeans1d: time of the exact 1-D k-means per column.
 * Usage: bench_kmeans1d [n] [columns]. Prints one JSON line per k. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lb_kmeans1d.h"
#include "lb_time.h"

int main(int argc, char **argv)
{
    int64_t n = argc > 1 ? atoll(argv[1]) : 4096;
    int cols = argc > 2 ? atoi(argv[2]) : 256;
    if (n < 1 || cols < 1) {
        fprintf(stderr, "usage: bench_kmeans1d [n >= 1] [columns >= 1]\n");
        return 2;
    }
    float *x = malloc((size_t)n * (size_t)cols * sizeof *x);
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    if (!x || lb_kmeans1d_ws_new(n, 16, &ws, &err)) {
        fprintf(stderr, "bench_kmeans1d: %s\n", err.msg);
        return 1;
    }
    uint64_t s = 1;
    for (int64_t i = 0; i < n * cols; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = ((double)(s >> 11) + 0.5) / 9007199254740992.0;
        x[i] = (float)(0.02 * tan(3.14159265358979 * (u - 0.5) * 0.9)); /* heavy tail */
    }
    for (int k = 2; k <= 16; k *= 2) {
        double t0 = lb_now_s(), total = 0.0;
        for (int c = 0; c < cols; c++) {
            float cent[16];
            double loss;
            if (lb_kmeans1d_fit(ws, x + (size_t)c * (size_t)n, n, k, cent, &loss, &err)) {
                fprintf(stderr, "bench_kmeans1d: %s\n", err.msg);
                return 1;
            }
            total += loss;
        }
        double dt = lb_now_s() - t0;
        printf("{\"bench\":\"kmeans1d\",\"n\":%lld,\"k\":%d,\"columns\":%d,\"ms_per_column\":%.4f,"
               "\"loss_sum\":%.6g}\n",
               (long long)n, k, cols, 1e3 * dt / cols, total);
    }
    lb_kmeans1d_ws_free(&ws);
    free(x);
    return 0;
}
