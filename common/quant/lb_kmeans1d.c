#include "lb_kmeans1d.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lb_kmeans1d_ws {
    int64_t max_n;
    int32_t max_k;
    uint32_t *keys, *tmp; /* (max_n,) radix sort buffers */
    double *s1, *s2;      /* (max_n + 1,) prefix sums of centred sorted data */
    double *inv;          /* (max_n + 1,) inv[len] = 1 / len */
    double *dprev, *dcur; /* (max_n + 1,) DP rows */
    int32_t *split;       /* (max_k, max_n + 1) leftmost optimal split per level */
};

int lb_kmeans1d_ws_new(int64_t max_n, int32_t max_k, lb_kmeans1d_ws **out, lb_err *err)
{
    *out = NULL;
    if (max_n < 1 || max_n > INT32_MAX - 1 || max_k < 1 || max_k > LB_KMEANS1D_MAX_K)
        return lb_err_set(err, LB_EINVAL,
                          "kmeans1d: workspace for n=%lld, k=%d is out of range "
                          "(need 1 <= n < 2^31, 1 <= k <= %d)",
                          (long long)max_n, max_k, LB_KMEANS1D_MAX_K);
    lb_kmeans1d_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: out of memory for the workspace");
    size_t n1 = (size_t)max_n + 1;
    ws->max_n = max_n;
    ws->max_k = max_k;
    ws->keys = malloc((size_t)max_n * sizeof *ws->keys);
    ws->tmp = malloc((size_t)max_n * sizeof *ws->tmp);
    ws->s1 = malloc(n1 * sizeof(double));
    ws->s2 = malloc(n1 * sizeof(double));
    ws->inv = malloc(n1 * sizeof(double));
    ws->dprev = malloc(n1 * sizeof(double));
    ws->dcur = malloc(n1 * sizeof(double));
    /* (max_k * n1) int32: max_k <= 256 and n1 < 2^31 so the product fits size_t on 64-bit;
     * check anyway for 32-bit size_t. */
    if (n1 > SIZE_MAX / sizeof(int32_t) / (size_t)max_k) {
        lb_kmeans1d_ws_free(&ws);
        return lb_err_set(err, LB_EINVAL, "kmeans1d: n=%lld, k=%d too large for this platform",
                          (long long)max_n, max_k);
    }
    ws->split = malloc((size_t)max_k * n1 * sizeof(int32_t));
    if (!ws->keys || !ws->tmp || !ws->s1 || !ws->s2 || !ws->inv || !ws->dprev || !ws->dcur ||
        !ws->split) {
        lb_kmeans1d_ws_free(&ws);
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: out of memory for n=%lld, k=%d",
                          (long long)max_n, max_k);
    }
    ws->inv[0] = 0.0;
    for (size_t i = 1; i < n1; i++)
        ws->inv[i] = 1.0 / (double)i;
    *out = ws;
    return 0;
}

void lb_kmeans1d_ws_free(lb_kmeans1d_ws **p)
{
    if (!p || !*p)
        return;
    lb_kmeans1d_ws *ws = *p;
    free(ws->keys);
    free(ws->tmp);
    free(ws->s1);
    free(ws->s2);
    free(ws->inv);
    free(ws->dprev);
    free(ws->dcur);
    free(ws->split);
    free(ws);
    *p = NULL;
}

/* Order-preserving map float -> uint32 (for non-NaN inputs). */
static inline uint32_t float_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float key_float(uint32_t k)
{
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* LSD radix sort of n keys, 4 passes of 8 bits; passes where every key has the same
 * byte are skipped. Result in keys. */
static void radix_sort_u32(uint32_t *keys, uint32_t *tmp, int64_t n)
{
    uint32_t *src = keys, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t count[256] = {0};
        for (int64_t i = 0; i < n; i++)
            count[(src[i] >> shift) & 0xffu]++;
        if (count[(src[0] >> shift) & 0xffu] == n)
            continue;
        int64_t pos = 0;
        for (int b = 0; b < 256; b++) {
            int64_t c = count[b];
            count[b] = pos;
            pos += c;
        }
        for (int64_t i = 0; i < n; i++)
            dst[count[(src[i] >> shift) & 0xffu]++] = src[i];
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != keys)
        memcpy(keys, src, (size_t)n * sizeof *keys);
}

/* SSE of sorted run [a, b), b > a. */
static inline double run_sse(const lb_kmeans1d_ws *ws, int64_t a, int64_t b)
{
    double d1 = ws->s1[b] - ws->s1[a];
    double v = (ws->s2[b] - ws->s2[a]) - d1 * d1 * ws->inv[b - a];
    return v > 0.0 ? v : 0.0;
}

/* One DP level by divide and conquer: for b in [blo, bhi], dcur[b] = min over
 * a in [alo, min(ahi, b-1)] of dprev[a] + SSE(a, b); split[b] = leftmost argmin. */
static void dp_level(const lb_kmeans1d_ws *ws, double *dcur, int32_t *split, int64_t blo,
                     int64_t bhi, int64_t alo, int64_t ahi)
{
    while (blo <= bhi) {
        int64_t mid = blo + (bhi - blo) / 2;
        int64_t hi = ahi < mid - 1 ? ahi : mid - 1;
        double best = INFINITY;
        int64_t best_a = alo;
        for (int64_t a = alo; a <= hi; a++) {
            double v = ws->dprev[a] + run_sse(ws, a, mid);
            if (v < best) {
                best = v;
                best_a = a;
            }
        }
        dcur[mid] = best;
        split[mid] = (int32_t)best_a;
        /* Left half recursively (shallow: depth log n), right half by iteration. */
        if (blo <= mid - 1)
            dp_level(ws, dcur, split, blo, mid - 1, alo, best_a);
        blo = mid + 1;
        alo = best_a;
    }
}

int lb_kmeans1d_fit(lb_kmeans1d_ws *ws, const float *x, int64_t n, int32_t k,
                    float *centroids, double *loss, lb_err *err)
{
    if (n < 1 || n > ws->max_n || k < 1 || k > ws->max_k)
        return lb_err_set(err, LB_EINVAL,
                          "kmeans1d: n=%lld, k=%d outside the workspace (n <= %lld, k <= %d)",
                          (long long)n, k, (long long)ws->max_n, ws->max_k);
    double mean = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return lb_err_set(err, LB_ENUMERIC,
                              "kmeans1d: input %lld is not finite; check the weights", (long long)i);
        ws->keys[i] = float_key(x[i]);
        mean += (double)x[i];
    }
    mean /= (double)n;
    radix_sort_u32(ws->keys, ws->tmp, n);
    /* Centring keeps S2 - S1^2/len from cancelling badly. */
    ws->s1[0] = ws->s2[0] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v = (double)key_float(ws->keys[i]) - mean;
        ws->s1[i + 1] = ws->s1[i] + v;
        ws->s2[i + 1] = ws->s2[i] + v * v;
    }
    int32_t ke = (int64_t)k < n ? k : (int32_t)n; /* clusters actually formed */

    /* Level 1: D[1][b] = SSE(0, b). */
    for (int64_t b = 1; b <= n; b++)
        ws->dprev[b] = run_sse(ws, 0, b);
    double total;
    if (ke == 1) {
        total = ws->dprev[n];
    } else {
        /* Levels 2..ke-1 over every b >= m; level ke only at b = n. */
        for (int32_t m = 2; m < ke; m++) {
            int32_t *split = ws->split + (size_t)m * (size_t)(ws->max_n + 1);
            dp_level(ws, ws->dcur, split, m, n, m - 1, n - 1);
            double *t = ws->dprev;
            ws->dprev = ws->dcur;
            ws->dcur = t;
        }
        int32_t *split = ws->split; /* level ke only needs b = n: row 0 (unused otherwise) */
        dp_level(ws, ws->dcur, split, n, n, ke - 1, n - 1);
        total = ws->dcur[n];
    }
    /* Backtrack the runs from the right. */
    int64_t b = n;
    for (int32_t m = ke; m >= 1; m--) {
        int64_t a;
        if (m == 1)
            a = 0;
        else if (m == ke)
            a = ws->split[n];
        else
            a = ws->split[(size_t)m * (size_t)(ws->max_n + 1) + (size_t)b];
        double c = (ws->s1[b] - ws->s1[a]) * ws->inv[b - a] + mean;
        centroids[m - 1] = (float)c;
        b = a;
    }
    for (int32_t m = ke; m < k; m++)
        centroids[m] = centroids[ke - 1];
    if (loss)
        *loss = total;
    return 0;
}

void lb_kmeans1d_assign(const float *x, int64_t n, const float *centroids, int32_t k,
                        uint8_t *codes)
{
    for (int64_t i = 0; i < n; i++) {
        /* Differences of floats are exact in double, so ties are real ties. */
        double best = fabs((double)x[i] - (double)centroids[0]);
        int32_t bi = 0;
        for (int32_t c = 1; c < k; c++) {
            double d = fabs((double)x[i] - (double)centroids[c]);
            if (d < best) {
                best = d;
                bi = c;
            }
        }
        codes[i] = (uint8_t)bi;
    }
}

double lb_kmeans1d_loss(const float *x, int64_t n, const float *centroids, int32_t k)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double best = INFINITY;
        for (int32_t c = 0; c < k; c++) {
            double d = (double)x[i] - (double)centroids[c];
            if (d * d < best)
                best = d * d;
        }
        s += best;
    }
    return s;
}
