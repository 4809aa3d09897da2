/* lb_kmeans1d: the DP against brute force (every assignment, every contiguous
 * partition) and against Lloyd from a seeded k-means++ start. */
#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb_kmeans1d.h"

/* Optimal SSE over all k^n assignments of x to k (possibly empty) clusters, each
 * cluster at its mean. Exponential: tiny n only. */
static double brute_all_assignments(const float *x, int n, int k)
{
    int lab[16] = {0};
    double best = INFINITY;
    for (;;) {
        double sum[16] = {0}, sq[16] = {0};
        int cnt[16] = {0};
        for (int i = 0; i < n; i++) {
            sum[lab[i]] += (double)x[i];
            sq[lab[i]] += (double)x[i] * (double)x[i];
            cnt[lab[i]]++;
        }
        double sse = 0.0;
        for (int c = 0; c < k; c++)
            if (cnt[c])
                sse += sq[c] - sum[c] * sum[c] / cnt[c];
        if (sse < best)
            best = sse;
        int i = 0;
        while (i < n && ++lab[i] == k)
            lab[i++] = 0;
        if (i == n)
            break;
    }
    return best;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Optimal SSE over all partitions of sorted x into k non-empty contiguous runs,
 * by recursion over the first cut. */
static double brute_contiguous(const float *xs, int lo, int n, int k)
{
    if (k == 1) {
        double s = 0, q = 0;
        for (int i = lo; i < n; i++) {
            s += (double)xs[i];
            q += (double)xs[i] * (double)xs[i];
        }
        return q - s * s / (n - lo);
    }
    double best = INFINITY;
    for (int cut = lo + 1; cut <= n - (k - 1); cut++) {
        double s = 0, q = 0;
        for (int i = lo; i < cut; i++) {
            s += (double)xs[i];
            q += (double)xs[i] * (double)xs[i];
        }
        double v = q - s * s / (cut - lo) + brute_contiguous(xs, cut, n, k - 1);
        if (v < best)
            best = v;
    }
    return best;
}

/* Lloyd's algorithm from a k-means++ start (seeded), in double, to convergence. */
static double lloyd_kmeanspp(const float *x, int n, int k, uint64_t seed)
{
    double *c = malloc((size_t)k * sizeof *c), *d2 = malloc((size_t)n * sizeof *d2);
    int *lab = malloc((size_t)n * sizeof *lab);
    assert_non_null(c);
    assert_non_null(d2);
    assert_non_null(lab);
    uint64_t rng = seed;
    c[0] = x[lb_test_rand_u64(&rng) % (uint64_t)n];
    for (int m = 1; m < k; m++) {
        double tot = 0;
        for (int i = 0; i < n; i++) {
            double b = INFINITY;
            for (int j = 0; j < m; j++) {
                double d = (double)x[i] - c[j];
                if (d * d < b)
                    b = d * d;
            }
            d2[i] = b;
            tot += b;
        }
        double r = (double)lb_test_rand_uniform(&rng) * tot;
        int pick = n - 1;
        for (int i = 0; i < n; i++) {
            r -= d2[i];
            if (r < 0) {
                pick = i;
                break;
            }
        }
        c[m] = x[pick];
    }
    double sse = INFINITY;
    for (int it = 0; it < 1000; it++) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            double b = INFINITY;
            for (int j = 0; j < k; j++) {
                double d = (double)x[i] - c[j];
                if (d * d < b) {
                    b = d * d;
                    lab[i] = j;
                }
            }
            s += b;
        }
        for (int j = 0; j < k; j++) {
            double sum = 0;
            int cnt = 0;
            for (int i = 0; i < n; i++)
                if (lab[i] == j) {
                    sum += (double)x[i];
                    cnt++;
                }
            if (cnt)
                c[j] = sum / cnt;
        }
        if (s >= sse)
            break;
        sse = s;
    }
    free(c);
    free(d2);
    free(lab);
    return sse;
}

static void test_dp_equals_brute_force_tiny(void **state)
{
    (void)state;
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    assert_int_equal(lb_kmeans1d_ws_new(16, 8, &ws, &err), 0);
    uint64_t rng = 11;
    float x[16], c[8];
    for (int trial = 0; trial < 60; trial++) {
        int n = 1 + trial % 9;
        int k = 1 + trial % 4;
        for (int i = 0; i < n; i++)
            x[i] = lb_test_rand_normal(&rng) * (trial % 3 == 0 ? 1.0f : 0.02f);
        if (trial % 5 == 0 && n > 2)
            x[1] = x[0]; /* duplicates */
        double loss;
        assert_int_equal(lb_kmeans1d_fit(ws, x, n, k, c, &loss, &err), 0);
        double want = brute_all_assignments(x, n, k);
        double tol = 1e-9 + 1e-9 * want;
        assert_true(fabs(loss - want) <= tol);
        /* The reported loss is what the centroids achieve (up to f32 centroid rounding). */
        assert_true(fabs(lb_kmeans1d_loss(x, n, c, k) - want) <= 1e-6 * (1.0 + want));
        for (int m = 1; m < k; m++)
            assert_true(c[m - 1] <= c[m]);
    }
    lb_kmeans1d_ws_free(&ws);
    assert_null(ws);
}

static void test_dp_equals_contiguous_partitions(void **state)
{
    (void)state;
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    assert_int_equal(lb_kmeans1d_ws_new(40, 16, &ws, &err), 0);
    uint64_t rng = 5;
    float x[40], xs[40], c[16];
    for (int trial = 0; trial < 12; trial++) {
        int n = 14 + trial;
        int k = 2 + trial % 4;
        for (int i = 0; i < n; i++) {
            /* heavy tail: a few outliers like LLM weight columns */
            float v = lb_test_rand_normal(&rng);
            x[i] = (i % 7 == 0) ? v * 8.0f : v;
        }
        memcpy(xs, x, sizeof(float) * (size_t)n);
        qsort(xs, (size_t)n, sizeof(float), cmp_float);
        double loss;
        assert_int_equal(lb_kmeans1d_fit(ws, x, n, k, c, &loss, &err), 0);
        double want = brute_contiguous(xs, 0, n, k);
        assert_true(fabs(loss - want) <= 1e-9 * (1.0 + want));
    }
    lb_kmeans1d_ws_free(&ws);
}

static void test_dp_not_worse_than_lloyd(void **state)
{
    (void)state;
    enum { N = 600 };
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    assert_int_equal(lb_kmeans1d_ws_new(N, 16, &ws, &err), 0);
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    uint64_t rng = 99;
    int strictly_better = 0;
    for (int trial = 0; trial < 12; trial++) {
        int k = (int[]){2, 4, 8, 16}[trial % 4];
        for (int i = 0; i < N; i++) {
            float v = lb_test_rand_normal(&rng);
            x[i] = (trial % 2) ? v * v * v : v; /* normal and heavy-tailed */
        }
        float c[16];
        double loss;
        assert_int_equal(lb_kmeans1d_fit(ws, x, N, k, c, &loss, &err), 0);
        for (uint64_t seed = 1; seed <= 3; seed++) {
            double ll = lloyd_kmeanspp(x, N, k, seed * 1000 + (uint64_t)trial);
            assert_true(loss <= ll * (1.0 + 1e-12) + 1e-12);
            if (loss < ll * (1.0 - 1e-6))
                strictly_better++;
        }
    }
    /* Lloyd gets stuck in local minima for k >= 8 on most seeds. */
    assert_true(strictly_better > 0);
    free(x);
    lb_kmeans1d_ws_free(&ws);
}

/* The plain O(k n^2) DP on sorted x with every split tried (no divide and conquer,
 * no monotonicity bounds): the optimal loss. */
static double plain_dp_loss(const float *x, int n, int k)
{
    float *xs = malloc((size_t)n * sizeof *xs);
    double *s1 = malloc((size_t)(n + 1) * sizeof *s1), *s2 = malloc((size_t)(n + 1) * sizeof *s2);
    double *dp = malloc((size_t)(n + 1) * sizeof *dp), *nx = malloc((size_t)(n + 1) * sizeof *nx);
    assert_true(xs && s1 && s2 && dp && nx);
    memcpy(xs, x, (size_t)n * sizeof *xs);
    qsort(xs, (size_t)n, sizeof *xs, cmp_float);
    s1[0] = s2[0] = 0;
    for (int i = 0; i < n; i++) {
        s1[i + 1] = s1[i] + (double)xs[i];
        s2[i + 1] = s2[i] + (double)xs[i] * (double)xs[i];
    }
    for (int b = 1; b <= n; b++)
        dp[b] = s2[b] - s1[b] * s1[b] / b;
    for (int m = 2; m <= k; m++) {
        for (int b = m; b <= n; b++) {
            double best = INFINITY;
            for (int a = m - 1; a < b; a++) {
                double d = s1[b] - s1[a];
                double v = dp[a] + (s2[b] - s2[a]) - d * d / (b - a);
                if (v < best)
                    best = v;
            }
            nx[b] = best;
        }
        memcpy(dp + m, nx + m, (size_t)(n + 1 - m) * sizeof *dp);
    }
    double r = dp[n];
    free(xs);
    free(s1);
    free(s2);
    free(dp);
    free(nx);
    return r;
}

/* Long columns, heavy tails and many ties: the divide and conquer with its
 * monotonicity bounds reaches the plain DP's optimum. */
static void test_long_columns_equal_plain_dp(void **state)
{
    (void)state;
    enum { N = 1500 };
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    assert_int_equal(lb_kmeans1d_ws_new(N, 16, &ws, &err), 0);
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    uint64_t rng = 7;
    for (int trial = 0; trial < 9; trial++) {
        int k = (int[]){3, 8, 16}[trial % 3];
        int n = N - 37 * trial;
        for (int i = 0; i < n; i++) {
            float v = lb_test_rand_normal(&rng);
            if (trial / 3 == 1)
                v = v * v * v; /* heavy tails */
            else if (trial / 3 == 2)
                v = roundf(v * 4.0f) / 4.0f; /* many equal values: ties */
            x[i] = v;
        }
        float c[16];
        double loss;
        assert_int_equal(lb_kmeans1d_fit(ws, x, n, k, c, &loss, &err), 0);
        double ref = plain_dp_loss(x, n, k);
        assert_true(fabs(loss - ref) <= 1e-9 * ref + 1e-9);
        assert_true(fabs(lb_kmeans1d_loss(x, n, c, k) - ref) <= 1e-6 * ref + 1e-6);
    }
    free(x);
    lb_kmeans1d_ws_free(&ws);
}

static void test_fewer_points_than_clusters_and_constant(void **state)
{
    (void)state;
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    assert_int_equal(lb_kmeans1d_ws_new(64, 16, &ws, &err), 0);
    float x[3] = {0.5f, -1.0f, 2.0f}, c[8];
    double loss;
    assert_int_equal(lb_kmeans1d_fit(ws, x, 3, 8, c, &loss, &err), 0);
    assert_true(loss == 0.0);
    assert_true(c[0] == -1.0f && c[1] == 0.5f && c[2] == 2.0f);
    for (int m = 3; m < 8; m++)
        assert_true(c[m] == 2.0f);
    float y[64];
    for (int i = 0; i < 64; i++)
        y[i] = 0.25f;
    assert_int_equal(lb_kmeans1d_fit(ws, y, 64, 4, c, &loss, &err), 0);
    assert_true(loss == 0.0);
    for (int m = 0; m < 4; m++)
        assert_true(c[m] == 0.25f);
    uint8_t codes[64];
    lb_kmeans1d_assign(y, 64, c, 4, codes);
    for (int i = 0; i < 64; i++)
        assert_int_equal(codes[i], 0); /* ties go to the lower index */
    lb_kmeans1d_ws_free(&ws);
}

static void test_bad_input(void **state)
{
    (void)state;
    lb_kmeans1d_ws *ws = NULL;
    lb_err err = {0};
    assert_int_equal(lb_kmeans1d_ws_new(0, 4, &ws, &err), LB_EINVAL);
    assert_null(ws);
    assert_int_equal(lb_kmeans1d_ws_new(8, 4, &ws, &err), 0);
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, c[8];
    assert_int_equal(lb_kmeans1d_fit(ws, x, 9, 4, c, NULL, &err), LB_EINVAL);
    assert_int_equal(lb_kmeans1d_fit(ws, x, 8, 5, c, NULL, &err), LB_EINVAL);
    x[3] = NAN;
    assert_int_equal(lb_kmeans1d_fit(ws, x, 8, 4, c, NULL, &err), LB_ENUMERIC);
    assert_non_null(strstr(err.msg, "not finite"));
    lb_kmeans1d_ws_free(&ws);
}

static void test_assign_nearest(void **state)
{
    (void)state;
    float c[4] = {-1.0f, 0.0f, 0.5f, 3.0f};
    float x[6] = {-5.0f, -0.5f, 0.25f, 0.3f, 1.75f, 10.0f};
    uint8_t codes[6];
    lb_kmeans1d_assign(x, 6, c, 4, codes);
    /* -0.5 and 0.25, 1.75 are exact midpoints: the lower index wins. */
    const uint8_t want[6] = {0, 0, 1, 2, 2, 3};
    assert_memory_equal(codes, want, 6);
    lb_kmeans1d_assign_sorted(x, 6, c, 4, codes);
    assert_memory_equal(codes, want, 6);
}

/* The binary-search assignment equals the linear scan on sorted centroids with repeats,
 * on points at centroids, at midpoints, outside the range and at random. */
static void test_assign_sorted_equals_scan(void **state)
{
    (void)state;
    enum { N = 4000 };
    float *x = malloc(N * sizeof *x);
    uint8_t *a = malloc(N), *b = malloc(N);
    assert_true(x && a && b);
    uint64_t rng = 11;
    for (int trial = 0; trial < 40; trial++) {
        int k = 1 + trial % 16;
        float c[16];
        for (int j = 0; j < k; j++)
            c[j] = roundf(lb_test_rand_normal(&rng) * 4.0f) / 4.0f; /* repeats likely */
        qsort(c, (size_t)k, sizeof *c, cmp_float);
        for (int i = 0; i < N; i++) {
            int j = (int)(lb_test_rand_u64(&rng) % (uint64_t)k);
            int j2 = j + 1 < k ? j + 1 : j;
            switch (i % 4) {
            case 0: x[i] = c[j]; break;
            case 1: x[i] = 0.5f * (c[j] + c[j2]); break;
            case 2: x[i] = lb_test_rand_normal(&rng) * 3.0f; break;
            default: x[i] = roundf(lb_test_rand_normal(&rng) * 16.0f) / 16.0f; break;
            }
        }
        lb_kmeans1d_assign(x, N, c, k, a);
        lb_kmeans1d_assign_sorted(x, N, c, k, b);
        assert_memory_equal(a, b, N);
    }
    free(x);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dp_equals_brute_force_tiny),
        cmocka_unit_test(test_dp_equals_contiguous_partitions),
        cmocka_unit_test(test_dp_not_worse_than_lloyd),
        cmocka_unit_test(test_long_columns_equal_plain_dp),
        cmocka_unit_test(test_fewer_points_than_clusters_and_constant),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_assign_nearest),
        cmocka_unit_test(test_assign_sorted_equals_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
