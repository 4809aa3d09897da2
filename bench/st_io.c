/* bench_st_io: safetensors write/open/read throughput. Prints JSON lines.
 * Usage: bench_st_io [total_mib (default 64)] [dir (default $TMPDIR or /tmp)] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lb_safetensors.h"
#include "lb_time.h"

static int run(lb_dtype dt, int64_t rows, int64_t cols, int ntensors, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/bench_st_io_%d.safetensors", dir, (int)getpid());
    size_t n = (size_t)(rows * cols);
    float *buf = malloc(n * sizeof *buf);
    if (!buf)
        return 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)((int)(i % 1999) - 999) * 1e-3f;
    lb_err err = {0};
    lb_st_writer *w = NULL;
    lb_st *st = NULL;
    int64_t shape[2] = {rows, cols};
    double t0 = lb_now_s();
    if (lb_st_writer_new(&w, path, &err))
        goto fail;
    for (int k = 0; k < ntensors; k++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", k);
        if (lb_st_writer_add_tensor(w, name, dt, 2, shape, &err))
            goto fail;
    }
    for (int k = 0; k < ntensors; k++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", k);
        if (lb_st_writer_write_f32(w, name, buf, n, &err))
            goto fail;
    }
    if (lb_st_writer_finish(w, &err))
        goto fail;
    lb_st_writer_free(&w);
    double t1 = lb_now_s();
    if (lb_st_open(&st, path, &err))
        goto fail;
    double t2 = lb_now_s();
    for (int k = 0; k < ntensors; k++) {
        if (lb_st_read_f32(st, lb_st_at(st, k)->name, buf, (int64_t)n, &err))
            goto fail;
    }
    double t3 = lb_now_s();
    /* row slices: 8 equal parts per tensor, as 8 workers would take them */
    for (int k = 0; k < ntensors; k++)
        for (int part = 0; part < 8; part++) {
            int64_t r0 = rows * part / 8, r1 = rows * (part + 1) / 8;
            if (lb_st_read_f32_rows(st, lb_st_at(st, k)->name, r0, r1 - r0, buf, &err))
                goto fail;
        }
    double t4 = lb_now_s();
    double mib_f32 = (double)n * 4.0 * ntensors / (1024.0 * 1024.0);
    double mib_file = (double)n * (double)lb_dtype_size(dt) * ntensors / (1024.0 * 1024.0);
    printf("{\"bench\":\"st_io\",\"dtype\":\"%s\",\"tensors\":%d,\"rows\":%lld,\"cols\":%lld,"
           "\"file_mib\":%.1f,\"write_s\":%.4f,\"write_mib_s\":%.1f,\"open_s\":%.6f,"
           "\"read_f32_s\":%.4f,\"read_f32_out_mib_s\":%.1f,\"read_rows_s\":%.4f}\n",
           lb_dtype_name(dt), ntensors, (long long)rows, (long long)cols, mib_file, t1 - t0,
           mib_file / (t1 - t0), t2 - t1, t3 - t2, mib_f32 / (t3 - t2), t4 - t3);
    lb_st_free(&st);
    unlink(path);
    free(buf);
    return 0;
fail:
    fprintf(stderr, "bench_st_io: %s\n", err.msg);
    lb_st_writer_free(&w);
    lb_st_free(&st);
    unlink(path);
    free(buf);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: bench_st_io [total_mib (default 64)] [dir (default $TMPDIR or /tmp)]\n");
        return 0;
    }
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 64;
    const char *dir = argc > 2 ? argv[2] : getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    if (mib < 1)
        mib = 1;
    int64_t cols = 1024, rows = 1024; /* 1 Mi elements per tensor */
    int nt = (int)(mib / 4 > 0 ? mib / 4 : 1); /* tensors sized as f32 */
    const lb_dtype dts[] = {LB_DTYPE_F32, LB_DTYPE_BF16, LB_DTYPE_F16};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++)
        if (run(dts[i], rows, cols, nt, dir))
            return 1;
    return 0;
}
