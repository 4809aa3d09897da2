/* bench_qmethods: time and Hessian-weighted error of registered methods on one synthetic
 * layer (heavy-tailed W, H = XᵀX/n from correlated X).
 * Usage: bench_qmethods rows cols spec...   spec = method:bits[:key=value,...]
 *   keys: wo (centroids_with_outliers 0/1), hs (outlier_hessian_score 0/1),
 *         act (act_order 0/1), sf (salient_frac), crit (h|m), sg (salient_group)
 * e.g.  bench_qmethods 1024 1024 gptq:2 claq:2 claq:2.1:wo=1 pbllm:1
 * Prints one JSON line per spec: seconds, rel_err = tr(dW H dWᵀ)/tr(W H Wᵀ), bpw. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_blas.h"
#include "lb_quant.h"
#include "lb_time.h"

static uint64_t rng_state = 12345;
static double rnd_normal(void)
{
    uint64_t a, b;
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    a = rng_state >> 11;
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    b = rng_state >> 11;
    double u1 = ((double)a + 0.5) / 9007199254740992.0, u2 = (double)b / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int parse_spec(const char *spec, char *method, size_t msize, lb_qopts *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL, *tok = strtok_r(buf, ":", &save);
    if (!tok)
        return -1;
    snprintf(method, msize, "%s", tok);
    lb_qopts_init(o);
    if ((tok = strtok_r(NULL, ":", &save)))
        o->bits = atof(tok);
    if ((tok = strtok_r(NULL, ":", &save))) {
        char *s2 = NULL;
        for (char *kv = strtok_r(tok, ",", &s2); kv; kv = strtok_r(NULL, ",", &s2)) {
            char *eq = strchr(kv, '=');
            if (!eq)
                return -1;
            *eq = '\0';
            const char *v = eq + 1;
            if (!strcmp(kv, "wo"))
                o->centroids_with_outliers = atoi(v) != 0;
            else if (!strcmp(kv, "hs"))
                o->outlier_hessian_score = atoi(v) != 0;
            else if (!strcmp(kv, "act"))
                o->act_order = atoi(v) != 0;
            else if (!strcmp(kv, "sf"))
                o->salient_frac = atof(v);
            else if (!strcmp(kv, "crit"))
                o->salient_criterion = v[0] == 'm' ? LB_SALIENT_MAGNITUDE : LB_SALIENT_HESSIAN;
            else if (!strcmp(kv, "sg"))
                o->salient_group = atoi(v);
            else if (!strcmp(kv, "kt"))
                o->outlier_keep_top = atof(v);
            else if (!strcmp(kv, "kr"))
                o->outlier_keep_rest = atof(v);
            else
                return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_qmethods rows cols method:bits[:k=v,...] ...\n");
        return 2;
    }
    const int64_t rows = atoll(argv[1]), cols = atoll(argv[2]);
    if (rows < 1 || cols < 1) {
        fprintf(stderr, "bench_qmethods: rows and cols must be >= 1\n");
        return 2;
    }
    const int64_t nsamp = 2 * cols;
    float *W = malloc(sizeof(float) * (size_t)(rows * cols));
    float *X = malloc(sizeof(float) * (size_t)(nsamp * cols));
    float *H = malloc(sizeof(float) * (size_t)(cols * cols));
    if (!W || !X || !H) {
        fprintf(stderr, "bench_qmethods: out of memory\n");
        return 1;
    }
    /* W: Student-t-like tails (normal / sqrt(chi2_3 / 3)) scaled like LLM weights */
    for (int64_t i = 0; i < rows * cols; i++) {
        double z = rnd_normal(), c = 0;
        for (int k = 0; k < 3; k++) {
            double g = rnd_normal();
            c += g * g;
        }
        W[i] = (float)(0.02 * z / sqrt(c / 3.0 + 1e-12));
    }
    /* X: a shared factor plus per-channel scales, some channels much larger (outlier
     * features, as in LLM activations) */
    for (int64_t s = 0; s < nsamp; s++) {
        double shared = rnd_normal();
        for (int64_t j = 0; j < cols; j++) {
            double scale = (j % 97 == 0) ? 8.0 : 1.0 + 0.5 * (double)(j % 5);
            X[s * cols + j] = (float)(scale * rnd_normal() + 0.5 * shared);
        }
    }
    lb_ssyrk_upper_at_a(cols, nsamp, 1.0f / (float)nsamp, X, cols, 0.0f, H, cols);
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < a; b++)
            H[a * cols + b] = H[b * cols + a];
    free(X);
    for (int s = 3; s < argc; s++) {
        char method[32];
        lb_qopts o;
        if (parse_spec(argv[s], method, sizeof method, &o)) {
            fprintf(stderr, "bench_qmethods: bad spec '%s'\n", argv[s]);
            return 2;
        }
        const lb_qmethod *m = lb_qmethod_find(method);
        if (!m) {
            fprintf(stderr, "bench_qmethods: unknown method '%s'\n", method);
            return 2;
        }
        lb_qresult res;
        lb_err err = {0};
        double t0 = lb_now_s();
        if (m->quantize(W, rows, cols, H, &o, &res, &err)) {
            fprintf(stderr, "bench_qmethods: %s: %s\n", argv[s], err.msg);
            return 1;
        }
        double dt = lb_now_s() - t0, e = 0, r = 0;
        if (lb_quant_error(W, res.W_hat, rows, cols, H, &e, &r, &err)) {
            fprintf(stderr, "bench_qmethods: %s\n", err.msg);
            return 1;
        }
        printf("{\"bench\":\"qmethods\",\"spec\":\"%s\",\"method\":\"%s\",\"rows\":%lld,"
               "\"cols\":%lld,\"bits\":%g,\"blas_threads\":%d,\"seconds\":%.3f,"
               "\"rel_err\":%.6g,\"bpw\":%.4f}\n",
               argv[s], method, (long long)rows, (long long)cols, o.bits, lb_blas_get_threads(),
               dt, r > 0 ? e / r : 0.0, res.bpw);
        fflush(stdout);
        lb_qresult_free(&res);
    }
    free(W);
    free(H);
    return 0;
}
