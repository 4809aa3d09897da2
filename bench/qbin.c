/* bench_qbin: wall time of BiLLM and QBB against GPTQ on one synthetic matrix.
 * Usage: bench_qbin [rows cols [threads [only]]]  (default 4096 4096, BLAS threads 2;
 *        only = gptq|billm|qbb runs that method alone) 
 * Prints one JSON line per method: config, seconds, bpw, relative H-weighted error.
 * W ~ N(0, 0.02²); H = AᵀA + 0.1·I with A (256, cols) ~ N(0, 1), a low-rank-ish Hessian. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_blas.h"
#include "lb_quant.h"
#include "lb_time.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double rand_normal(void)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        u[i] = ((double)(rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static int run_one(const char *name, const float *W, const float *H, int64_t rows, int64_t cols,
                   const lb_qopts *o, const char *label, int threads)
{
    const lb_qmethod *m = lb_qmethod_find(name);
    if (!m) {
        fprintf(stderr, "bench_qbin: method %s not registered\n", name);
        return 1;
    }
    lb_qresult res;
    lb_err e;
    lb_err_clear(&e);
    double t0 = lb_now_s();
    int rc = m->quantize(W, rows, cols, H, o, &res, &e);
    double dt = lb_now_s() - t0;
    if (rc) {
        fprintf(stderr, "bench_qbin: %s: %s\n", name, e.msg);
        return 1;
    }
    double err = 0.0, ref = 0.0;
    if (lb_quant_error(W, res.W_hat, rows, cols, H, &err, &ref, &e)) {
        fprintf(stderr, "bench_qbin: error metric: %s\n", e.msg);
        lb_qresult_free(&res);
        return 1;
    }
    json_t *j = json_object();
    json_object_set_new(j, "bench", json_string("qbin"));
    json_object_set_new(j, "method", json_string(name));
    json_object_set_new(j, "config", json_string(label));
    json_object_set_new(j, "rows", json_integer(rows));
    json_object_set_new(j, "cols", json_integer(cols));
    json_object_set_new(j, "blas_threads", json_integer(threads));
    json_object_set_new(j, "seconds", json_real(dt));
    json_object_set_new(j, "bpw", json_real(res.bpw));
    json_object_set_new(j, "rel_h_error", json_real(ref > 0.0 ? err / ref : 0.0));
    char *s = json_dumps(j, JSON_COMPACT);
    printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(j);
    lb_qresult_free(&res);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: bench_qbin [rows cols [threads [gptq|billm|qbb]]]\n");
        return 0;
    }
    int64_t rows = argc > 2 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int threads = argc > 3 ? atoi(argv[3]) : 2;
    const char *only = argc > 4 ? argv[4] : NULL;
    if (rows <= 0 || cols <= 0 || threads <= 0) {
        fprintf(stderr, "usage: bench_qbin [rows cols [threads]]\n");
        return 2;
    }
    lb_blas_set_threads(threads);
    const int64_t k = 256;
    float *W = malloc(sizeof(float) * (size_t)(rows * cols));
    float *A = malloc(sizeof(float) * (size_t)(k * cols));
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    if (!W || !A || !H) {
        fprintf(stderr, "bench_qbin: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = (float)(0.02 * rand_normal());
    for (int64_t i = 0; i < k * cols; i++)
        A[i] = (float)rand_normal();
    // H (cols, cols) = Aᵀ A (upper), mirrored, + 0.1 I
    lb_ssyrk_upper_at_a(cols, k, 1.0f, A, cols, 0.0f, H, cols);
    for (int64_t a = 0; a < cols; a++) {
        H[a * cols + a] += 0.1f;
        for (int64_t b = 0; b < a; b++)
            H[a * cols + b] = H[b * cols + a];
    }
    lb_qopts o;
    lb_qopts_init(&o);
    int rc = 0;
    o.bits = 2;
    if (!only || !strcmp(only, "gptq"))
        rc |= run_one("gptq", W, H, rows, cols, &o, "bits=2", threads);
    lb_qopts_init(&o);
    if (!only || !strcmp(only, "billm"))
        rc |= run_one("billm", W, H, rows, cols, &o, "block=128", threads);
    lb_qopts_init(&o);
    o.bases = 3;
    if (!only || !strcmp(only, "qbb")) {
        rc |= run_one("qbb", W, H, rows, cols, &o, "N=3 refine=10 plain", threads);
        o.hessian_weighted = true;
        rc |= run_one("qbb", W, H, rows, cols, &o, "N=3 refine=10 hessian_weighted", threads);
    }
    free(W);
    free(A);
    free(H);
    return rc;
}
