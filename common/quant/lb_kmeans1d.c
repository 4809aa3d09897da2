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
    double *rinv;         /* (max_n + 1,) rinv[t] = 1 / (max_n + 1 - t): ascending in a */
    double *base;         /* (max_n + 1,) base[a] = D[m-1][a] - S2[a] for the level */
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
    ws->rinv = malloc(n1 * sizeof(double));
    ws->base = malloc(n1 * sizeof(double));
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
    if (!ws->keys || !ws->tmp || !ws->s1 || !ws->s2 || !ws->inv || !ws->rinv || !ws->base ||
        !ws->dprev || !ws->dcur || !ws->split) {
        lb_kmeans1d_ws_free(&ws);
        return lb_err_set(err, LB_ENOMEM, "kmeans1d: out of memory for n=%lld, k=%d",
                          (long long)max_n, max_k);
    }
    ws->inv[0] = 0.0;
    for (size_t i = 1; i < n1; i++)
        ws->inv[i] = 1.0 / (double)i;
    for (size_t t = 0; t < n1; t++)
        ws->rinv[t] = 1.0 / (double)(n1 - t);
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
    free(ws->rinv);
    free(ws->base);
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

/* One DP level by divide and conquer: for b in [blo, bhi], dcur[b] = min over a in
 * [max(alo, prev[b]), min(ahi, b-1)] of D[m-1][a] + SSE(a, b), split[b] = the leftmost
 * argmin. The scan minimises base[a] - (S1[b] - S1[a])^2 / (b - a), the cost less the
 * constant S2[b]. prev (the level below's splits, or NULL) is a lower bound because
 * adding a cluster never moves the last optimal split left (Knuth's monotonicity for
 * costs with the quadrangle inequality). */
static void dp_level(const lb_kmeans1d_ws *ws, const double *base, double *dcur, int32_t *split,
                     const int32_t *prev, int64_t blo, int64_t bhi, int64_t alo, int64_t ahi)
{
    const double *s1 = ws->s1;
    while (blo <= bhi) {
        int64_t mid = blo + (bhi - blo) / 2;
        int64_t hi = ahi < mid - 1 ? ahi : mid - 1;
        int64_t lo = prev && prev[mid] > alo ? prev[mid] : alo;
        const double *rinv = ws->rinv + (ws->max_n + 1 - mid); /* rinv[a] = 1 / (mid - a) */
        double s1b = s1[mid], best = INFINITY;
        int64_t best_a = lo;
        for (int64_t a = lo; a <= hi; a++) {
            double d = s1b - s1[a];
            double v = base[a] - (d * d) * rinv[a];
            if (v < best) {
                best = v;
                best_a = a;
            }
        }
        best += ws->s2[mid];
        dcur[mid] = best > 0.0 ? best : 0.0;
        split[mid] = (int32_t)best_a;
        /* Left half recursively (depth log n), right half by iteration. */
        if (blo <= mid - 1)
            dp_level(ws, base, dcur, split, prev, blo, mid - 1, alo, best_a);
        blo = mid + 1;
        alo = best_a;
    }
}

/* base[a] = D[m][a] - S2[a] for a in [lo, hi], from the level just solved. */
static void level_base(const lb_kmeans1d_ws *ws, double *base, const double *d, int64_t lo,
                       int64_t hi)
{
    for (int64_t a = lo; a <= hi; a++)
        base[a] = d[a] - ws->s2[a];
}

/* Levels 2..ke-1 over every b >= m; D[ke-1] ends in ws->dprev, its base in ws->base. */
static void dp_levels(lb_kmeans1d_ws *ws, int64_t n, int32_t ke)
{
    const size_t row = (size_t)ws->max_n + 1;
    for (int32_t m = 2; m < ke; m++) {
        int32_t *split = ws->split + (size_t)m * row;
        const int32_t *prev = m > 2 ? split - row : NULL;
        dp_level(ws, ws->base, ws->dcur, split, prev, m, n, m - 1, n - 1);
        level_base(ws, ws->base, ws->dcur, m, n);
        double *t = ws->dprev;
        ws->dprev = ws->dcur;
        ws->dcur = t;
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
    ws->dprev[0] = 0.0;
    for (int64_t b = 1; b <= n; b++)
        ws->dprev[b] = run_sse(ws, 0, b);
    double total;
    if (ke == 1) {
        total = ws->dprev[n];
    } else {
        level_base(ws, ws->base, ws->dprev, 0, n);
        /* Levels 2..ke-1 over every b >= m; level ke only at b = n. */
        dp_levels(ws, n, ke);
        int32_t *split = ws->split; /* level ke only needs b = n: row 0 (unused otherwise) */
        const int32_t *prev = ke > 2 ? ws->split + (size_t)(ke - 1) * (size_t)(ws->max_n + 1) : NULL;
        dp_level(ws, ws->base, ws->dcur, split, prev, n, n, ke - 1, n - 1);
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

void lb_kmeans1d_assign_sorted(const float *x, int64_t n, const float *centroids, int32_t k,
                               uint8_t *codes)
{
    for (int64_t i = 0; i < n; i++) {
        const double xi = (double)x[i];
        int32_t lo = 0, hi = k; /* p = the number of centroids <= x */
        while (lo < hi) {
            int32_t mid = (lo + hi) / 2;
            if ((double)centroids[mid] <= xi)
                lo = mid + 1;
            else
                hi = mid;
        }
        const int32_t p = lo;
        int32_t j;
        if (p == 0) {
            j = 0;
        } else if (p == k) {
            j = k - 1;
        } else {
            double dl = fabs(xi - (double)centroids[p - 1]), dr = fabs(xi - (double)centroids[p]);
            j = dr < dl ? p : p - 1;
        }
        /* Distances fall up to p - 1 and rise from p: the first index with the minimum
         * is found by walking left over equal distances (repeated centroids). */
        while (j > 0 && fabs(xi - (double)centroids[j - 1]) == fabs(xi - (double)centroids[j]))
            j--;
        codes[i] = (uint8_t)j;
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
