#include "lb_synth_wh.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"

typedef struct {
    uint64_t s;
} rng;

static uint64_t next_u64(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* (0, 1): never 0, so log() is finite */
static double uniform(rng *r)
{
    return ((double)(next_u64(r) >> 11) + 0.5) * 0x1p-53;
}

static double normal(rng *r)
{
    double u = uniform(r), v = uniform(r);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

static rng stream(uint64_t seed, int64_t rows, int64_t cols, uint64_t purpose)
{
    rng r = {seed * 0xD1B54A32D192ED03ull ^ (uint64_t)rows * 0x8CB92BA72F3D8DD7ull ^
             (uint64_t)cols * 0xABC98388FB8FAC03ull ^ purpose};
    next_u64(&r);
    return r;
}

/* k distinct indices of 0..n-1 (partial Fisher-Yates) into out */
static int pick(rng *r, int64_t n, int64_t k, int64_t *out)
{
    int64_t *p = malloc((size_t)n * sizeof *p);
    if (!p)
        return -1;
    for (int64_t i = 0; i < n; i++)
        p[i] = i;
    for (int64_t i = 0; i < k; i++) {
        int64_t j = i + (int64_t)(next_u64(r) % (uint64_t)(n - i));
        int64_t t = p[i];
        p[i] = p[j];
        p[j] = t;
        out[i] = p[i];
    }
    free(p);
    return 0;
}

int lb_synth_wh(int64_t rows, int64_t cols, uint64_t seed, float *W, float *H, lb_err *err)
{
    if (rows < 1 || cols < 2 || rows > (INT64_C(1) << 40) / cols || cols > (INT64_C(1) << 20))
        return lb_err_set(err, LB_EINVAL, "synth_wh: bad shape %lld x %lld; want rows >= 1, "
                                          "2 <= cols <= 2^20",
                          (long long)rows, (long long)cols);
    const int64_t N = LB_SYNTH_WH_SAMPLES;
    const int64_t n_hot = cols >= 80 ? 10 : (cols / 8 > 0 ? cols / 8 : 1);
    const int64_t n_big = cols >= 80 ? 5 : (cols / 16 > 0 ? cols / 16 : 1);
    int rc = LB_OK;
    double *X = malloc((size_t)(N * cols) * sizeof *X);
    double *Hd = malloc((size_t)(cols * cols) * sizeof *Hd);
    int64_t idx[10];
    if (!X || !Hd) {
        rc = lb_err_set(err, LB_ENOMEM, "synth_wh: out of memory for a %lld-column Hessian",
                        (long long)cols);
        goto fail;
    }
    /* W: t(4) has variance 2 */
    rng rw = stream(seed, rows, cols, 1);
    const double wscale = 0.02 / sqrt(2.0);
    for (int64_t i = 0; i < rows * cols; i++) {
        double z = normal(&rw), chi = 0.0;
        for (int k = 0; k < 4; k++) {
            double g = normal(&rw);
            chi += g * g;
        }
        W[i] = (float)(wscale * z / sqrt(chi / 4.0));
    }
    rng rb = stream(seed, rows, cols, 2);
    if (pick(&rb, cols, n_big, idx)) {
        rc = lb_err_set(err, LB_ENOMEM, "synth_wh: out of memory");
        goto fail;
    }
    for (int64_t k = 0; k < n_big; k++)
        for (int64_t r = 0; r < rows; r++)
            W[r * cols + idx[k]] *= 4.0f;
    /* X with hot channels, then H = (2/N) XᵀX */
    rng rx = stream(seed, rows, cols, 3);
    for (int64_t i = 0; i < N * cols; i++)
        X[i] = normal(&rx);
    rng rh = stream(seed, rows, cols, 4);
    if (pick(&rh, cols, n_hot, idx)) {
        rc = lb_err_set(err, LB_ENOMEM, "synth_wh: out of memory");
        goto fail;
    }
    for (int64_t k = 0; k < n_hot; k++) {
        double s = 20.0 + 40.0 * uniform(&rh);
        for (int64_t t = 0; t < N; t++)
            X[t * cols + idx[k]] *= s;
    }
    lb_dsyrk_upper_at_a(cols, N, 2.0 / (double)N, X, cols, 0.0, Hd, cols);
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = i; j < cols; j++) {
            float v = (float)Hd[i * cols + j];
            H[i * cols + j] = v;
            H[j * cols + i] = v;
        }
fail:
    free(X);
    free(Hd);
    return rc;
}
