/* bench_xfer: loopback throughput of the ZeroMQ artifact transport (lb_xfer).
 *   bench_xfer [MiB=256] [reps=3]
 * Starts a server on tcp://127.0.0.1:* over a temporary directory, then PUTs and
 * GETs one MiB-sized random artifact `reps` times (a fresh id per PUT, so each
 * PUT hashes, writes, fsyncs and renames). Prints one JSON line per phase with
 * the best and median wall time and MiB/s. Both ends verify SHA-256 of the
 * whole payload, so the figures include two hashes per transfer. The same
 * reps run over a second server with CURVE (keys made by lb_xfer_keygen in the
 * temporary directory), alternating with the plain ones so both see the same
 * machine load; the last line is the CURVE / plain ratio of median times. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lb_sha256.h"
#include "lb_time.h"
#include "lb_xfer.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double report(const char *phase, bool curve, size_t bytes, double *t, int reps)
{
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double mib = (double)bytes / 1048576.0;
    printf("{\"bench\":\"xfer\",\"phase\":\"%s\",\"curve\":%s,\"endpoint\":\"loopback\","
           "\"bytes\":%zu,\"frame_bytes\":%zu,\"reps\":%d,\"best_s\":%.4f,\"median_s\":%.4f,"
           "\"best_MiBps\":%.1f,\"median_MiBps\":%.1f}\n",
           phase, curve ? "true" : "false", bytes, LB_XFER_FRAME, reps, t[0], t[reps / 2],
           mib / t[0], mib / t[reps / 2]);
    return t[reps / 2];
}

typedef struct {
    char dir[64];
    lb_xfer_server *srv;
    lb_xfer_client *cli;
    lb_xfer_curve sk, ck;
} side;

static int side_start(side *s, const char *root, bool curve, lb_err *err)
{
    snprintf(s->dir, sizeof s->dir, "%.40s/%s", root, curve ? "curve" : "plain");
    if (mkdir(s->dir, 0700) != 0)
        return lb_err_set(err, LB_EIO, "%s: mkdir failed", s->dir);
    lb_xfer_server_opts o = {.dir = s->dir};
    int rc = 0;
    if (curve) {
        char keys[128], cl[160], src[200], dst[200];
        snprintf(keys, sizeof keys, "%.40s/keys", root);
        snprintf(cl, sizeof cl, "%s/clients", keys);
        snprintf(src, sizeof src, "%s/worker.pub", keys);
        snprintf(dst, sizeof dst, "%s/worker.pub", cl);
        if ((rc = lb_xfer_keygen(keys, "server", err)) ||
            (rc = lb_xfer_keygen(keys, "worker", err)))
            return rc;
        if (mkdir(cl, 0700) != 0 || link(src, dst) != 0)
            return lb_err_set(err, LB_EIO, "%s: cannot make the allowlist", cl);
        if ((rc = lb_xfer_curve_load_server(keys, NULL, NULL, &s->sk, err)) ||
            (rc = lb_xfer_curve_load_client(keys, NULL, NULL, "worker", &s->ck, err)))
            return rc;
        o.curve = &s->sk;
    }
    if ((rc = lb_xfer_server_start(&o, &s->srv, err)) ||
        (rc = lb_xfer_client_new(lb_xfer_server_endpoint(s->srv), 60000, 0, &s->cli, err)))
        return rc;
    return curve ? lb_xfer_client_set_curve(s->cli, &s->ck, err) : 0;
}

/* One PUT + GET of data[0..n) under a fresh id; adds the times. */
static int side_rep(side *s, const char *id, const uint8_t *data, size_t n, double *tp,
                    double *tg, lb_err *err)
{
    double t0 = lb_now_s();
    int rc = lb_xfer_put(s->cli, id, data, n, err);
    if (rc)
        return rc;
    *tp = lb_now_s() - t0;
    void *got = NULL;
    size_t got_n = 0;
    t0 = lb_now_s();
    if ((rc = lb_xfer_get(s->cli, id, &got, &got_n, err)))
        return rc;
    *tg = lb_now_s() - t0;
    int same = got_n == n && memcmp(got, data, n) == 0;
    free(got);
    char path[1300];
    snprintf(path, sizeof path, "%s/%.64s.safetensors", s->dir, id);
    unlink(path);
    return same ? 0 : lb_err_set(err, LB_EFORMAT, "GET returned other bytes");
}

static void side_stop(side *s)
{
    lb_xfer_client_free(&s->cli);
    lb_xfer_server_stop(&s->srv);
    lb_xfer_curve_clear(&s->sk);
    lb_xfer_curve_clear(&s->ck);
    rmdir(s->dir);
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
    double *t = calloc((size_t)reps * 4, sizeof *t);
    side sd[2];
    memset(sd, 0, sizeof sd);
    lb_err err = {0};
    int rc = 1;
    bool curve = lb_xfer_curve_check(&err) == 0;
    if (!curve)
        fprintf(stderr, "bench_xfer: %s; plain TCP only\n", err.msg);
    if (!data || !t) {
        fprintf(stderr, "out of memory\n");
        goto done;
    }
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(data + i, &x, n - i < 8 ? n - i : 8);
    }
    for (int k = 0; k < 1 + curve; k++)
        if (side_start(&sd[k], dir, k == 1, &err))
            goto fail;
    for (int r = 0; r < reps; r++) {
        char label[32], id[LB_SHA256_HEX];
        snprintf(label, sizeof label, "bench-%d", r);
        lb_sha256_hex(label, strlen(label), id);
        for (int k = 0; k < 1 + curve; k++) /* alternate: same load for both */
            if (side_rep(&sd[k], id, data, n, &t[(2 * k) * reps + r], &t[(2 * k + 1) * reps + r],
                         &err))
                goto fail;
    }
    double med[4];
    for (int k = 0; k < 1 + curve; k++) {
        med[2 * k] = report("put", k == 1, n, &t[(2 * k) * reps], reps);
        med[2 * k + 1] = report("get", k == 1, n, &t[(2 * k + 1) * reps], reps);
    }
    if (curve)
        printf("{\"bench\":\"xfer\",\"phase\":\"curve_over_plain\",\"bytes\":%zu,\"reps\":%d,"
               "\"put_time_ratio\":%.3f,\"get_time_ratio\":%.3f}\n",
               n, reps, med[2] / med[0], med[3] / med[1]);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "error: %s\n", err.msg);
done:
    for (int k = 0; k < 2; k++)
        side_stop(&sd[k]);
    char keys[128];
    const char *f[] = {"server.pub", "server.key", "worker.pub", "worker.key",
                       "clients/worker.pub"};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        snprintf(keys, sizeof keys, "%.40s/keys/%s", dir, f[i]);
        unlink(keys);
    }
    snprintf(keys, sizeof keys, "%.40s/keys/clients", dir);
    rmdir(keys);
    snprintf(keys, sizeof keys, "%.40s/keys", dir);
    rmdir(keys);
    rmdir(dir);
    free(data);
    free(t);
    return rc;
}
