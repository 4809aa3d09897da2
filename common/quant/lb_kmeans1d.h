/* lb_kmeans1d: exact optimal 1-D k-means (least squares) by dynamic programming.
 *
 * The data are sorted (radix sort on the float bit pattern), so an optimal clustering
 * is a partition of the sorted values into k contiguous runs. With prefix sums S1, S2
 * the cost of a run [a, b) is SSE(a, b) = (S2[b] - S2[a]) - (S1[b] - S1[a])^2 / (b - a),
 * and D[m][b] = min_a D[m-1][a] + SSE(a, b). The leftmost optimal split a*(m, b) is
 * non-decreasing in b (SSE satisfies the quadrangle inequality), so each DP level is
 * solved by divide and conquer in O(n log n): O(k n log n) in all (Wang & Song 2011,
 * Ckmeans.1d.dp; Grønlund et al. 2017).
 *
 * Deterministic: ties are broken towards the smaller split, so equal inputs give equal
 * centroids. Used by CLAQ for one column of W at a time. */
#ifndef LB_KMEANS1D_H
#define LB_KMEANS1D_H

#include <stdint.h>

#include "lb_err.h"

#define LB_KMEANS1D_MAX_K 256

/* Workspace sized for up to max_n points and max_k clusters; reused across calls. */
typedef struct lb_kmeans1d_ws lb_kmeans1d_ws;

/* Allocates a workspace. Returns 0 and *out (free with lb_kmeans1d_ws_free), or
 * LB_EINVAL (max_n < 1, max_k outside 1..LB_KMEANS1D_MAX_K) / LB_ENOMEM. */
int lb_kmeans1d_ws_new(int64_t max_n, int32_t max_k, lb_kmeans1d_ws **out, lb_err *err);
void lb_kmeans1d_ws_free(lb_kmeans1d_ws **ws);

/* Optimal k-means of x (n,) into k clusters.
 * OUT: centroids (k,) ascending, each the mean of its run; when the data have fewer
 *      than k points the missing centroids repeat the largest one.
 * OUT: loss (may be NULL): the optimal sum of squared distances (double).
 * Returns 0, LB_EINVAL (n or k outside the workspace, n < 1) or LB_ENUMERIC (NaN/Inf in x). */
int lb_kmeans1d_fit(lb_kmeans1d_ws *ws, const float *x, int64_t n, int32_t k,
                    float *centroids, double *loss, lb_err *err);

/* codes[i] = index of the nearest centroid to x[i] (ties to the lower index).
 * centroids (k,) need not be sorted; k <= LB_KMEANS1D_MAX_K. */
void lb_kmeans1d_assign(const float *x, int64_t n, const float *centroids, int32_t k,
                        uint8_t *codes);

/* The same codes as lb_kmeans1d_assign for centroids sorted ascending (repeats
 * allowed), by binary search: O(n log k). */
void lb_kmeans1d_assign_sorted(const float *x, int64_t n, const float *centroids, int32_t k,
                               uint8_t *codes);

/* Sum over i of (x[i] - nearest centroid)^2 in double. */
double lb_kmeans1d_loss(const float *x, int64_t n, const float *centroids, int32_t k);

#endif
