/* lb_alloc: the allocation is the optimum on small random menus, checked against
 * brute force over every combination; ties, coarse granules, infeasible budgets and
 * bad losses. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_alloc.h"
#include "lb_test_util.h"

#define NT 6
#define NC 5

typedef struct {
    int found;
    double loss;
    uint64_t bits;
} brute;

/* every combination; loss summed in tensor order as lb_alloc does; (loss, bits)
 * lexicographic; costs rounded up to the granule g above each cheapest candidate */
static brute brute_force(const lb_alloc_menu *m, int n, uint64_t budget, uint64_t g)
{
    brute best = {0, 0.0, 0};
    int idx[NT] = {0};
    uint64_t base = 0;
    for (int i = 0; i < n; i++) {
        uint64_t lo = UINT64_MAX;
        for (int j = 0; j < m[i].n; j++)
            lo = m[i].cand[j].bits < lo ? m[i].cand[j].bits : lo;
        base += lo;
    }
    for (;;) {
        double l = 0;
        uint64_t b = 0, units = 0;
        for (int i = 0; i < n; i++) {
            uint64_t lo = UINT64_MAX;
            for (int j = 0; j < m[i].n; j++)
                lo = m[i].cand[j].bits < lo ? m[i].cand[j].bits : lo;
            l += m[i].cand[idx[i]].loss;
            b += m[i].cand[idx[i]].bits;
            units += (m[i].cand[idx[i]].bits - lo + g - 1) / g;
        }
        if (base + units * g <= budget || (g == 1 && b <= budget))
            if (!best.found || l < best.loss || (l == best.loss && b < best.bits)) {
                best.found = 1;
                best.loss = l;
                best.bits = b;
            }
        int k = 0;
        while (k < n && ++idx[k] == m[k].n)
            idx[k++] = 0;
        if (k == n)
            break;
    }
    return best;
}

static void check_choice(const lb_alloc_menu *m, int n, const int32_t *choice,
                         const lb_alloc_result *r, uint64_t budget)
{
    double l = 0;
    uint64_t b = 0;
    for (int i = 0; i < n; i++) {
        assert_true(choice[i] >= 0 && choice[i] < m[i].n);
        l += m[i].cand[choice[i]].loss;
        b += m[i].cand[choice[i]].bits;
    }
    assert_true(l == r->loss);
    assert_true(b == r->bits);
    assert_true(b <= budget);
}

static void test_optimal_against_brute_force(void **state)
{
    (void)state;
    uint64_t rng = 99;
    lb_alloc_cand cand[NT][NC];
    lb_alloc_menu menus[NT];
    int checked = 0, infeasible = 0;
    for (int trial = 0; trial < 400; trial++) {
        int n = 1 + (int)(lb_test_rand_u64(&rng) % NT);
        for (int i = 0; i < n; i++) {
            menus[i].n = 1 + (int)(lb_test_rand_u64(&rng) % NC);
            menus[i].cand = cand[i];
            for (int j = 0; j < menus[i].n; j++) {
                /* widths 1..4 bits on a 64..320-weight tensor, plus metadata bytes */
                uint64_t w = 64 * (1 + lb_test_rand_u64(&rng) % 5);
                cand[i][j].bits = w * (1 + lb_test_rand_u64(&rng) % 4) +
                                  8 * (lb_test_rand_u64(&rng) % 20);
                /* trial % 3 == 0: coarse losses, so ties happen */
                cand[i][j].loss = trial % 3 == 0 ? (double)(lb_test_rand_u64(&rng) % 4)
                                                 : (double)lb_test_rand_uniform(&rng);
            }
        }
        uint64_t total = 0;
        for (int i = 0; i < n; i++)
            total += cand[i][lb_test_rand_u64(&rng) % (uint64_t)menus[i].n].bits;
        uint64_t budget = total + 64 - lb_test_rand_u64(&rng) % 256;
        int32_t choice[NT];
        lb_alloc_result r;
        lb_err err = {0};
        brute bf = brute_force(menus, n, budget, 1);
        int rc = lb_alloc_solve(menus, n, budget, 0, choice, &r, &err);
        if (!bf.found) {
            assert_int_equal(rc, LB_ENOTFOUND);
            assert_non_null(strstr(err.msg, "cheapest"));
            infeasible++;
            continue;
        }
        if (rc)
            fail_msg("trial %d: %s", trial, err.msg);
        check_choice(menus, n, choice, &r, budget);
        if (r.loss != bf.loss || r.bits != bf.bits)
            fail_msg("trial %d: alloc (%.17g, %llu), brute force (%.17g, %llu)", trial, r.loss,
                     (unsigned long long)r.bits, bf.loss, (unsigned long long)bf.bits);
        /* deterministic: the same input gives the same choice */
        int32_t again[NT];
        lb_alloc_result r2;
        assert_int_equal(lb_alloc_solve(menus, n, budget, 0, again, &r2, &err), 0);
        assert_memory_equal(choice, again, (size_t)n * sizeof *choice);
        /* a coarse granule: still within the true budget, optimal on the rounded menu */
        uint64_t g = 64;
        bf = brute_force(menus, n, budget, g);
        rc = lb_alloc_solve(menus, n, budget, g, choice, &r, &err);
        if (bf.found) {
            assert_int_equal(rc, 0);
            assert_true(r.granule == g);
            check_choice(menus, n, choice, &r, budget);
            assert_true(r.loss == bf.loss);
        }
        checked++;
    }
    assert_true(checked > 200 && infeasible > 0);
}

/* equal losses: the cheaper candidate wins; a loss that is not finite is refused */
static void test_ties_and_bad_input(void **state)
{
    (void)state;
    lb_alloc_cand a[3] = {{300, 1.0}, {200, 1.0}, {100, 2.0}};
    lb_alloc_menu m = {3, a};
    int32_t choice[1];
    lb_alloc_result r;
    lb_err err = {0};
    assert_int_equal(lb_alloc_solve(&m, 1, 1000, 0, choice, &r, &err), 0);
    assert_int_equal(choice[0], 1);
    assert_true(r.granule == 100);
    assert_int_equal(lb_alloc_solve(&m, 1, 199, 0, choice, &r, &err), 0);
    assert_int_equal(choice[0], 2);
    assert_int_equal(lb_alloc_solve(&m, 1, 99, 0, choice, &r, &err), LB_ENOTFOUND);
    a[0].loss = NAN;
    assert_int_equal(lb_alloc_solve(&m, 1, 1000, 0, choice, &r, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "non-finite"));
    lb_alloc_menu empty = {0, a};
    assert_int_equal(lb_alloc_solve(&empty, 1, 1000, 0, choice, &r, &err), LB_EINVAL);
    /* a table too big for exact bits asks for a coarser granule */
    lb_alloc_cand big[3] = {{1, 1.0}, {2, 1.0}, {(uint64_t)1 << 40, 0.0}};
    lb_alloc_menu mb = {3, big};
    assert_int_equal(lb_alloc_solve(&mb, 1, (uint64_t)1 << 41, 0, choice, &r, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "coarser granule"));
    assert_int_equal(lb_alloc_solve(&mb, 1, (uint64_t)1 << 41, (uint64_t)1 << 30, choice, &r,
                                    &err), 0);
    assert_int_equal(choice[0], 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_optimal_against_brute_force),
        cmocka_unit_test(test_ties_and_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
