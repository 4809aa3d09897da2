/* bench_xfer: loopback throughput of the ZeroMQ artifact transport (lb_xfer).
 *   bench_xfer [MiB=256] [reps=3]
 * Starts a server on tcp://127.0.0.1:* over a temporary directory, then PUTs and
 * GETs one MiB-sized random artifact `reps` times (a fresh id per PUT, so each
 * PUT hashes, writes, fsyncs and renames). Prints one JSON line per phase with
 * the best and median wall time and MiB/s. Both ends verify SHA-256 of the
 * whole payload, so the figures include two hashes per transfer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lb_sha256.h"
#include "lb_xfer.h"
#include "lb_time.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *phase, size_t bytes, double *t, int reps)
{
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double mib = (double)bytes / 1048576.0;
    printf("{\"bench\":\"xfer\",\"phase\":\"%s\",\"endpoint\":\"loopback\",\"bytes\":%zu,"
           "\"frame_bytes\":%zu,\"reps\":%d,\"best_s\":%.4f,\"median_s\":%.4f,"
           "\"best_MiBps\":%.1f,\"median_MiBps\":%.1f}\n",
           phase, bytes, LB_XFER_FRAME, reps, t[0], t[reps / 2], mib / t[0], mib / t[reps / 2]);
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 256;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    if (mib < 1 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: bench_xfer [MiB>=1] [reps 1..100]\n");
        return 2;
    }
    size_t n = mib << 20;
    char dir[] = "/tmp/lowbit-bench-xfer-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    uint8_t *data = malloc(n);
    double *tp = calloc((size_t)reps, sizeof *tp), *tg = calloc((size_t)reps, sizeof *tg);
    lb_xfer_server *srv = NULL;
    lb_xfer_client *cli = NULL;
    lb_err err = {0};
    int rc = 1;
    char ids[100][LB_SHA256_HEX] = {{0}};
    if (!data || !tp || !tg) {
        fprintf(stderr, "out of memory\n");
        goto done;
    }
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(data + i, &x, n - i < 8 ? n - i : 8);
    }
    lb_xfer_server_opts o = {.dir = dir};
    if (lb_xfer_server_start(&o, &srv, &err) ||
        lb_xfer_client_new(lb_xfer_server_endpoint(srv), 60000, 0, &cli, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto done;
    }
    for (int r = 0; r < reps; r++) {
        char label[32];
        snprintf(label, sizeof label, "bench-%d", r);
        lb_sha256_hex(label, strlen(label), ids[r]);
        double t0 = lb_now_s();
        if (lb_xfer_put(cli, ids[r], data, n, &err)) {
            fprintf(stderr, "error: %s\n", err.msg);
            goto done;
        }
        tp[r] = lb_now_s() - t0;
        void *got = NULL;
        size_t got_n = 0;
        t0 = lb_now_s();
        if (lb_xfer_get(cli, ids[r], &got, &got_n, &err)) {
            fprintf(stderr, "error: %s\n", err.msg);
            goto done;
        }
        tg[r] = lb_now_s() - t0;
        int same = got_n == n && memcmp(got, data, n) == 0;
        free(got);
        if (!same) {
            fprintf(stderr, "error: GET returned other bytes\n");
            goto done;
        }
    }
    report("put", n, tp, reps);
    report("get", n, tg, reps);
    rc = 0;
done:
    lb_xfer_client_free(&cli);
    lb_xfer_server_stop(&srv);
    for (int r = 0; r < reps && ids[r][0]; r++) {
        char path[256];
        snprintf(path, sizeof path, "%.40s/%.64s.safetensors", dir, ids[r]);
        unlink(path);
    }
    rmdir(dir);
    free(data);
    free(tp);
    free(tg);
    return rc;
}
