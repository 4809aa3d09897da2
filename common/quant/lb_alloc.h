/* lb_alloc: choose one candidate per tensor (a setting measured as stored bits and a
 * loss) minimizing the summed loss subject to the summed stored bits <= budget.
 *
 * Exact on the menu: a multiple-choice knapsack solved by dynamic programming over
 * the extra stored bits above each tensor's cheapest candidate, in units of a granule
 * g. With granule_bits == 0, g is the gcd of every extra cost and the solution is the
 * exact optimum. A larger g (when the exact table would be too big) rounds every
 * extra cost up and the budget down to multiples of g: the result still fits the true
 * budget and is optimal for the rounded menu (the result reports g).
 *
 * Deterministic: losses are summed in tensor order, as (loss, bits) pairs compared
 * lexicographically (equal loss: fewer bits wins; then the lower candidate index).
 * No floating-point step depends on anything but the input order. See
 * docs/rotation.md, "Allocation". Pure: no I/O, no threads. */
#ifndef LB_ALLOC_H
#define LB_ALLOC_H

#include <stdint.h>

#include "lb_err.h"

typedef struct {
    uint64_t bits; /* stored bits of the tensor under this candidate, metadata included */
    double loss;   /* loss proxy (finite); lower is better */
} lb_alloc_cand;

typedef struct {
    int32_t n;                /* candidates, 1..255 */
    const lb_alloc_cand *cand;
} lb_alloc_menu;

typedef struct {
    double loss;        /* summed loss of the choice */
    uint64_t bits;      /* summed stored bits of the choice (<= budget) */
    uint64_t granule;   /* the granule the DP used (bits) */
    int64_t states;     /* DP capacity + 1 */
} lb_alloc_result;

/* Largest DP table (tensors * states bytes) lb_alloc_solve builds; beyond it,
 * LB_EINVAL asks for a coarser granule. */
#define LB_ALLOC_MAX_TABLE ((int64_t)1 << 28)

/* IN: menus[0..n), budget_bits, granule_bits (0 = exact gcd). OUT: choice[0..n)
 * (candidate index per tensor), *res. Returns 0; LB_EINVAL on an empty/oversized
 * menu, a non-finite loss or a table over LB_ALLOC_MAX_TABLE; LB_ENOTFOUND when even
 * the cheapest candidates exceed the budget (the message gives the minimum);
 * LB_ENOMEM. */
int lb_alloc_solve(const lb_alloc_menu *menus, int32_t n, uint64_t budget_bits,
                   uint64_t granule_bits, int32_t *choice, lb_alloc_result *res, lb_err *err);

#endif
