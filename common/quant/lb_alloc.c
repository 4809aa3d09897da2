/* lb_alloc: exact multiple-choice knapsack over stored bits (see lb_alloc.h). */
#include "lb_alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t gcd_u64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* (loss, bits) lexicographic: a better than b */
static int better(double la, uint64_t ba, double lb, uint64_t bb)
{
    return la < lb || (la == lb && ba < bb);
}

int lb_alloc_solve(const lb_alloc_menu *menus, int32_t n, uint64_t budget_bits,
                   uint64_t granule_bits, int32_t *choice, lb_alloc_result *res, lb_err *err)
{
    memset(res, 0, sizeof *res);
    if (n < 1)
        return lb_err_set(err, LB_EINVAL, "alloc: no tensors to allocate");
    uint64_t base = 0, g = 0;
    for (int32_t i = 0; i < n; i++) {
        const lb_alloc_menu *m = &menus[i];
        if (m->n < 1 || m->n > 255 || !m->cand)
            return lb_err_set(err, LB_EINVAL, "alloc: tensor %d has %d candidates (1..255)",
                              (int)i, (int)m->n);
        uint64_t lo = UINT64_MAX;
        for (int32_t j = 0; j < m->n; j++) {
            if (!isfinite(m->cand[j].loss))
                return lb_err_set(err, LB_EINVAL, "alloc: tensor %d candidate %d has a "
                                  "non-finite loss; re-run its measurement", (int)i, (int)j);
            if (m->cand[j].bits < lo)
                lo = m->cand[j].bits;
        }
        if (base > UINT64_MAX - lo)
            return lb_err_set(err, LB_EINVAL, "alloc: summed bits overflow");
        base += lo;
        for (int32_t j = 0; j < m->n; j++)
            g = gcd_u64(g, m->cand[j].bits - lo);
    }
    if (base > budget_bits)
        return lb_err_set(err, LB_ENOTFOUND, "alloc: budget %llu bits is below the %llu bits "
                          "of the cheapest candidates; raise the target",
                          (unsigned long long)budget_bits, (unsigned long long)base);
    if (granule_bits)
        g = granule_bits;
    if (!g)
        g = 1; /* every menu is one cost: any granule is exact */
    const uint64_t cap64 = (budget_bits - base) / g;
    /* beyond the most any choice can add, more capacity changes nothing */
    uint64_t most = 0;
    for (int32_t i = 0; i < n; i++) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int32_t j = 0; j < menus[i].n; j++) {
            uint64_t b = menus[i].cand[j].bits;
            lo = b < lo ? b : lo;
            hi = b > hi ? b : hi;
        }
        most += (hi - lo + g - 1) / g;
    }
    const uint64_t cap = cap64 < most ? cap64 : most;
    if (cap + 1 > (uint64_t)(LB_ALLOC_MAX_TABLE / n))
        return lb_err_set(err, LB_EINVAL, "alloc: %d tensors x %llu states at a %llu-bit granule "
                          "exceed the %lld-byte table; pass a coarser granule", (int)n,
                          (unsigned long long)(cap + 1), (unsigned long long)g,
                          (long long)LB_ALLOC_MAX_TABLE);
    const size_t S = (size_t)cap + 1;
    double *loss = malloc(S * sizeof *loss), *nloss = malloc(S * sizeof *nloss);
    uint64_t *bits = malloc(S * sizeof *bits), *nbits = malloc(S * sizeof *nbits);
    uint8_t *pick = malloc((size_t)n * S);
    int rc = LB_OK;
    if (!loss || !nloss || !bits || !nbits || !pick) {
        rc = lb_err_set(err, LB_ENOMEM, "alloc: out of memory for %d x %zu states", (int)n, S);
        goto fail;
    }
    /* dp[c]: best (loss, bits) of the tensors so far with extra units <= c */
    for (size_t c = 0; c < S; c++) {
        loss[c] = 0.0;
        bits[c] = 0;
    }
    for (int32_t i = 0; i < n; i++) {
        const lb_alloc_menu *m = &menus[i];
        uint64_t lo = UINT64_MAX;
        for (int32_t j = 0; j < m->n; j++)
            lo = m->cand[j].bits < lo ? m->cand[j].bits : lo;
        uint8_t *pk = pick + (size_t)i * S;
        for (size_t c = 0; c < S; c++) {
            int best = -1;
            double bl = 0.0;
            uint64_t bb = 0;
            for (int32_t j = 0; j < m->n; j++) {
                uint64_t w = (m->cand[j].bits - lo + g - 1) / g;
                if (w > c)
                    continue;
                double l = loss[c - w] + m->cand[j].loss;
                uint64_t b = bits[c - w] + m->cand[j].bits;
                if (best < 0 || better(l, b, bl, bb)) {
                    best = j;
                    bl = l;
                    bb = b;
                }
            }
            /* candidate `lo` has w == 0, so best >= 0 */
            pk[c] = (uint8_t)best;
            nloss[c] = bl;
            nbits[c] = bb;
        }
        double *tl = loss;
        loss = nloss;
        nloss = tl;
        uint64_t *tb = bits;
        bits = nbits;
        nbits = tb;
    }
    res->loss = loss[S - 1];
    res->bits = bits[S - 1];
    res->granule = g;
    res->states = (int64_t)S;
    /* walk back from the full capacity */
    size_t c = S - 1;
    for (int32_t i = n - 1; i >= 0; i--) {
        const lb_alloc_menu *m = &menus[i];
        uint64_t lo = UINT64_MAX;
        for (int32_t j = 0; j < m->n; j++)
            lo = m->cand[j].bits < lo ? m->cand[j].bits : lo;
        int32_t j = pick[(size_t)i * S + c];
        choice[i] = j;
        c -= (size_t)((m->cand[j].bits - lo + g - 1) / g);
    }
fail:
    free(loss);
    free(nloss);
    free(bits);
    free(nbits);
    free(pick);
    return rc;
}
