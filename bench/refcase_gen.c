/* bench_refcase_gen: writes a synthetic (W, H) pair of the refcases family (issue 11,
 * common/lb_synth_wh.h) as PREFIX.weight.safetensors ("weight") and
 * PREFIX.hessian.safetensors ("hessian"), the layout of ../shared/refcases, for
 * `lowbit qmatrix` and bench/reference/run.sh. Prints one JSON line.
 *
 *   bench_refcase_gen --rows R --cols C --seed S --out PREFIX [--threads N]         */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_blas.h"
#include "lb_safetensors.h"
#include "lb_synth_wh.h"

static int write_one(const char *path, const char *name, const float *a, int64_t d0,
                     int64_t d1, const char *recipe, lb_err *err)
{
    lb_st_writer *w = NULL;
    int64_t shape[2] = {d0, d1};
    int rc;
    if ((rc = lb_st_writer_new(&w, path, err)) ||
        (rc = lb_st_writer_add_tensor(w, name, LB_DTYPE_F32, 2, shape, err)) ||
        (rc = lb_st_writer_set_metadata(w, "generator", recipe, err)) ||
        (rc = lb_st_writer_write_f32(w, name, a, (size_t)(d0 * d1), err)) ||
        (rc = lb_st_writer_finish(w, err))) {
    }
    lb_st_writer_free(&w);
    return rc;
}

int main(int argc, char **argv)
{
    long long rows = 0, cols = 0, seed = -1, threads = 2;
    const char *out = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--rows")) rows = atoll(v);
        else if (!strcmp(a, "--cols")) cols = atoll(v);
        else if (!strcmp(a, "--seed")) seed = atoll(v);
        else if (!strcmp(a, "--threads")) threads = atoll(v);
        else if (!strcmp(a, "--out")) out = v;
        else {
            fprintf(stderr, "bench_refcase_gen: unknown option %s\n", a);
            return 2;
        }
    }
    if (rows < 1 || cols < 2 || rows > (1LL << 20) || cols > (1LL << 20) || seed < 0 || !out ||
        threads < 1) {
        fprintf(stderr, "usage: bench_refcase_gen --rows R --cols C --seed S --out PREFIX "
                        "[--threads N]   (1 <= R <= 2^20, 2 <= C <= 2^20, S >= 0)\n");
        return 2;
    }
    lb_blas_set_threads((int)threads);
    lb_err err = {0};
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    float *H = malloc((size_t)(cols * cols) * sizeof *H);
    char path[4096], recipe[128];
    int rc = 1;
    if (!W || !H) {
        fprintf(stderr, "bench_refcase_gen: out of memory\n");
        goto done;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lb_synth_wh(rows, cols, (uint64_t)seed, W, H, &err))
        goto fail;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    snprintf(recipe, sizeof recipe, "lb_synth_wh rows=%lld cols=%lld seed=%lld", rows, cols,
             seed);
    snprintf(path, sizeof path, "%s.weight.safetensors", out);
    if (write_one(path, "weight", W, rows, cols, recipe, &err))
        goto fail;
    snprintf(path, sizeof path, "%s.hessian.safetensors", out);
    if (write_one(path, "hessian", H, cols, cols, recipe, &err))
        goto fail;
    printf("{\"out\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"seed\":%lld,\"seconds\":%.3f}\n", out,
           rows, cols, seed,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "bench_refcase_gen: %s\n", err.msg);
done:
    free(W);
    free(H);
    return rc;
}
