/* bench_kernels: seconds and GFLOP/s of every registered quantization method on
 * LLaMA-sized matrices, with H from outlier-heavy correlated synthetic activations,
 * next to the machine's sgemm throughput measured in the same run. JSON lines.
 *
 *   bench_kernels [--methods gptq,rtn,...] [--shapes 4096x4096,11008x4096]
 *                 [--bits B] [--tokens N] [--threads N] [--group-size G] [--act-order]
 *                 [--bases N] [--skip-err]   (rel_err is then reported as 0)
 *
 * Nominal GPTQ flops for W (rows, cols): rows * cols^2 (the error propagation
 * W[:, j+1:] -= e_j U[j, j+1:] summed over j: 2 * rows * cols^2 / 2) plus
 * 2/3 cols^3 (Cholesky and triangular inverse of H). Every method's gflops field uses
 * this same count, so it reads as "GPTQ-equivalent" throughput. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_blas.h"
#include "lb_gptq.h"
#include "lb_hessian.h"
#include "lb_quant.h"
#include "lb_time.h"

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void fill_normal(float *x, int64_t n, float sd, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = ((double)(rng_next(&s) >> 11) + 0.5) * 0x1p-53;
        double u2 = (double)(rng_next(&s) >> 11) * 0x1p-53;
        double r = sqrt(-2.0 * log(u1));
        x[i] = sd * (float)(r * cos(6.283185307179586 * u2));
        if (i + 1 < n)
            x[i + 1] = sd * (float)(r * sin(6.283185307179586 * u2));
    }
}

/* X (ntok, cols) = Z + F G: independent noise plus 32 shared factors (correlation),
 * with 8 channels 30x larger (the outlier features of LLM activations). */
static int make_hessian(int64_t cols, int64_t ntok, float *H, lb_err *err)
{
    enum { K = 32 };
    float *X = malloc((size_t)(ntok * cols) * sizeof *X);
    float *F = malloc((size_t)(ntok * K) * sizeof *F);
    float *G = malloc((size_t)(K * cols) * sizeof *G);
    lb_hessian *h = NULL;
    int rc = LB_ENOMEM;
    if (!X || !F || !G) {
        lb_err_set(err, rc, "bench: out of memory");
        goto done;
    }
    fill_normal(X, ntok * cols, 1.0f, 1);
    fill_normal(F, ntok * K, 1.0f, 2);
    fill_normal(G, K * cols, 0.5f, 3);
    lb_sgemm(false, false, ntok, cols, K, 1.0f, F, K, G, cols, 1.0f, X, cols);
    for (int i = 0; i < 8; i++) {
        int64_t c = (int64_t)(i * 7919 + 13) % cols;
        for (int64_t t = 0; t < ntok; t++)
            X[t * cols + c] *= 30.0f;
    }
    if ((rc = lb_hessian_new(cols, &h, err)) || (rc = lb_hessian_add_chunk(h, X, ntok, cols, err)))
        goto done;
    rc = lb_hessian_get(h, H, err);
done:
    lb_hessian_free(&h);
    free(X);
    free(F);
    free(G);
    return rc;
}

/* sgemm GFLOP/s on (m, k) @ (k, n), best of 3. */
static double sgemm_gflops(int64_t m, int64_t n, int64_t k)
{
    float *A = malloc((size_t)(m * k) * sizeof *A), *B = malloc((size_t)(k * n) * sizeof *B);
    float *C = calloc((size_t)(m * n), sizeof *C);
    double best = 0;
    if (A && B && C) {
        fill_normal(A, m * k, 1.0f, 4);
        fill_normal(B, k * n, 1.0f, 5);
        for (int r = 0; r < 3; r++) {
            double t0 = lb_now_s();
            lb_sgemm(true, false, m, n, k, -1.0f, A, m, B, n, 1.0f, C, n);
            double g = 2.0 * (double)m * (double)n * (double)k / (lb_now_s() - t0) / 1e9;
            best = g > best ? g : best;
        }
    }
    free(A);
    free(B);
    free(C);
    return best;
}

static int in_list(const char *list, const char *name)
{
    if (!list)
        return 1;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *methods = NULL, *shapes = "4096x4096,11008x4096,4096x11008";
    double bits = 3;
    long tokens = 2048, threads = 0, group = 0, bases = 3;
    int act = 0, skip_err = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: bench_kernels [--methods gptq,rtn,...] [--shapes RxC,...] [--bits B]\n"
                   "                     [--tokens N] [--threads N] [--group-size G] "
                   "[--act-order]\n"
                   "                     [--bases N (qbb, default 3)] [--skip-err]\n");
            return 0;
        }
        if (!strcmp(a, "--act-order") || !strcmp(a, "--skip-err")) {
            *(a[2] == 'a' ? &act : &skip_err) = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench_kernels: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--methods"))
            methods = v;
        else if (!strcmp(a, "--shapes"))
            shapes = v;
        else if (!strcmp(a, "--bits"))
            bits = atof(v);
        else if (!strcmp(a, "--tokens"))
            tokens = atol(v);
        else if (!strcmp(a, "--threads"))
            threads = atol(v);
        else if (!strcmp(a, "--group-size"))
            group = atol(v);
        else if (!strcmp(a, "--bases"))
            bases = atol(v);
        else {
            fprintf(stderr, "bench_kernels: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (threads > 0) {
        omp_set_num_threads((int)threads);
        lb_blas_set_threads((int)threads);
    }
    const lb_qmethod *all[64];
    int nm = lb_qmethod_list(all, 64);
    const char *p = shapes;
    while (*p) {
        long long rows = 0, cols = 0;
        int used = 0;
        if (sscanf(p, "%lldx%lld%n", &rows, &cols, &used) != 2 || rows < 1 || cols < 1) {
            fprintf(stderr, "bench_kernels: bad shape list '%s' (want RxC,RxC)\n", shapes);
            return 2;
        }
        p += used;
        if (*p == ',')
            p++;
        lb_err err = {0};
        float *W = malloc((size_t)(rows * cols) * sizeof *W);
        float *H = malloc((size_t)(cols * cols) * sizeof *H);
        if (!W || !H) {
            fprintf(stderr, "bench_kernels: out of memory for %lldx%lld\n", rows, cols);
            return 1;
        }
        fill_normal(W, rows * cols, 0.02f, 6);
        double t0 = lb_now_s();
        if (make_hessian(cols, tokens, H, &err)) {
            fprintf(stderr, "bench_kernels: %s\n", err.msg);
            return 1;
        }
        double th = lb_now_s() - t0;
        double gemm = sgemm_gflops(cols, rows, 128); // the lazy-batch GEMM's shape
        double gemm_sq = sgemm_gflops(2048, 2048, 2048);
        double flops = (double)rows * (double)cols * (double)cols +
                       2.0 / 3.0 * (double)cols * (double)cols * (double)cols;
        printf("{\"bench\":\"sgemm\",\"mnk\":\"%lldx%lldx128\",\"gflops\":%.2f,"
               "\"square2048_gflops\":%.2f,\"hessian_seconds\":%.3f,\"tokens\":%ld,"
               "\"threads\":%d}\n",
               cols, rows, gemm, gemm_sq, th, tokens, lb_blas_get_threads());
        fflush(stdout);
        double t_gptq = 0;
        /* GPTQ first so the others' ratios have their denominator */
        for (int pass = 0; pass < 2; pass++)
            for (int k = 0; k < nm; k++) {
                bool is_gptq = !strcmp(all[k]->name, "gptq");
                if (is_gptq != (pass == 0) || !in_list(methods, all[k]->name))
                    continue;
                lb_qopts o;
                lb_qopts_init(&o);
                o.bits = bits;
                o.group_size = (int32_t)group;
                o.act_order = act;
                o.bases = (int32_t)bases;
                lb_qresult res = {0};
                double t1 = lb_now_s();
                int rc = all[k]->quantize(W, rows, cols, H, &o, &res, &err);
                double dt = lb_now_s() - t1;
                if (rc) {
                    printf("{\"bench\":\"quantize\",\"method\":\"%s\",\"shape\":\"%lldx%lld\","
                           "\"error\":\"%s\"}\n",
                           all[k]->name, rows, cols, err.msg);
                    continue;
                }
                double e = 0, ref = 0;
                if (!skip_err) // float64 dgemm: costs about as much as GPTQ itself
                    lb_quant_error(W, res.W_hat, rows, cols, H, &e, &ref, &err);
                if (is_gptq)
                    t_gptq = dt;
                char ratio[32] = "null";
                if (t_gptq > 0)
                    snprintf(ratio, sizeof ratio, "%.3f", dt / t_gptq);
                printf("{\"bench\":\"quantize\",\"method\":\"%s\",\"shape\":\"%lldx%lld\","
                       "\"bits\":%g,\"bases\":%ld,\"group_size\":%ld,\"act_order\":%s,"
                       "\"seconds\":%.3f,"
                       "\"gflops\":%.2f,\"frac_of_sgemm\":%.3f,\"ratio_to_gptq\":%s,"
                       "\"bpw\":%.4f,\"rel_err\":%.6g}\n",
                       all[k]->name, rows, cols, bits, bases, group, act ? "true" : "false", dt,
                       flops / dt / 1e9, flops / dt / 1e9 / gemm, ratio, res.bpw,
                       ref > 0 ? e / ref : 0.0);
                const lb_gptq_stats st = res.gptq_stats;
                if (res.gptq_runs == 1) // exactly one engine run: its phases
                    printf("{\"bench\":\"gptq_phases\",\"method\":\"%s\",\"shape\":\"%lldx%lld\","
                           "\"prep_s\":%.3f,\"chol_s\":%.3f,\"chol_gflops\":%.2f,"
                           "\"inv_s\":%.3f,\"inv_gflops\":%.2f,\"hook_s\":%.3f,"
                           "\"update_s\":%.3f,\"update_gflops\":%.2f,\"gemm_s\":%.3f,"
                           "\"gemm_gflops\":%.2f,\"gemm_frac_of_sgemm\":%.3f,"
                           "\"end_s\":%.3f,\"finish_s\":%.3f,\"engine_s\":%.3f,\"outside_engine_s\":%.3f}\n",
                           all[k]->name, rows, cols, st.prep_s, st.chol_s,
                           st.chol_flops / st.chol_s / 1e9, st.inv_s,
                           st.inv_flops / st.inv_s / 1e9, st.hook_s, st.update_s,
                           st.update_flops / st.update_s / 1e9, st.gemm_s,
                           st.gemm_flops / st.gemm_s / 1e9, st.gemm_flops / st.gemm_s / 1e9 / gemm,
                           st.end_s, st.finish_s, st.total_s, dt - st.total_s);
                fflush(stdout);
                lb_qresult_free(&res);
            }
        free(W);
        free(H);
    }
    (void)errno;
    return 0;
}
