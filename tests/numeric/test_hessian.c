#include "lb_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "lb_hessian.h"
#include "lb_test_qref.h"

enum { T = 300, C = 45 };

/* |a - b| <= tol * max|ref| over the matrix */
static double max_rel_diff(const float *a, const float *b, int64_t n)
{
    double m = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        m = fmax(m, fabs((double)b[i]));
        d = fmax(d, fabs((double)a[i] - (double)b[i]));
    }
    return d / m;
}

static void test_chunks_match_reference(void **state)
{
    (void)state;
    float *X = malloc(T * C * sizeof *X), *H = malloc(C * C * sizeof *H);
    float *Href = malloc(C * C * sizeof *Href);
    lb_test_activations(X, T, C, 2, 1);
    lb_test_hessian_ref(X, T, C, Href);
    lb_hessian *h = NULL;
    lb_err err = {0};
    assert_int_equal(lb_hessian_new(C, &h, &err), 0);
    assert_int_equal(lb_hessian_get(h, H, &err), LB_ESTATE);
    /* uneven chunks, including an empty one */
    const int sizes[] = {1, 0, 17, 100, 82, 100};
    int t0 = 0;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(lb_hessian_add_chunk(h, X + t0 * C, sizes[i], C, &err), 0);
        t0 += sizes[i];
    }
    assert_int_equal(t0, T);
    assert_int_equal(lb_hessian_tokens(h), T);
    assert_int_equal(lb_hessian_cols(h), C);
    assert_int_equal(lb_hessian_get(h, H, &err), 0);
    /* float32 SYRK per chunk, float64 across chunks: 1e-5 of the largest entry */
    assert_true(max_rel_diff(H, Href, C * C) < 1e-5);
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++)
            assert_true(H[a * C + b] == H[b * C + a]);
    lb_hessian_free(&h);
    assert_null(h);
    free(X);
    free(H);
    free(Href);
}

/* Wide inputs take the tiled path (tiles of 512 and a ragged edge): it matches the
 * float64 reference and gives bit-identical sums on one thread and on two. */
static void test_wide_tiled_matches_reference_at_any_thread_count(void **state)
{
    (void)state;
    enum { TW = 96, CW = 1100 };
    float *X = malloc((size_t)TW * CW * sizeof *X), *H = malloc((size_t)CW * CW * sizeof *H);
    float *Href = malloc((size_t)CW * CW * sizeof *Href);
    double *S1 = malloc((size_t)CW * CW * sizeof *S1), *S2 = malloc((size_t)CW * CW * sizeof *S2);
    assert_true(X && H && Href && S1 && S2);
    lb_test_activations(X, TW, CW, 3, 5);
    lb_test_hessian_ref(X, TW, CW, Href);
    lb_err err = {0};
    double *out[2] = {S1, S2};
    const int saved = omp_get_max_threads();
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run + 1);
        lb_hessian *h = NULL;
        assert_int_equal(lb_hessian_new(CW, &h, &err), 0);
        assert_int_equal(lb_hessian_add_chunk(h, X, 50, CW, &err), 0);
        assert_int_equal(lb_hessian_add_chunk(h, X + 50 * CW, TW - 50, CW, &err), 0);
        int64_t ntok = 0;
        lb_hessian_get_sums(h, out[run], &ntok);
        assert_int_equal(ntok, TW);
        if (run == 0) {
            assert_int_equal(lb_hessian_get(h, H, &err), 0);
            assert_true(max_rel_diff(H, Href, (int64_t)CW * CW) < 1e-5);
        }
        lb_hessian_free(&h);
    }
    omp_set_num_threads(saved);
    assert_memory_equal(S1, S2, (size_t)CW * CW * sizeof *S1);
    free(X);
    free(H);
    free(Href);
    free(S1);
    free(S2);
}

/* H from stored (unaligned) float64 sums equals set_sums + get bit for bit; bad sums
 * are refused. */
static void test_from_sums_equals_set_get(void **state)
{
    (void)state;
    float *X = malloc(T * C * sizeof *X), *H1 = malloc(C * C * sizeof *H1),
          *H2 = malloc(C * C * sizeof *H2);
    double *S = malloc(C * C * sizeof *S);
    unsigned char *raw = malloc(C * C * sizeof *S + 3);
    assert_true(X && H1 && H2 && S && raw);
    lb_test_activations(X, T, C, 2, 9);
    lb_hessian *h = NULL, *g = NULL;
    lb_err err = {0};
    int64_t ntok = 0;
    assert_int_equal(lb_hessian_new(C, &h, &err), 0);
    assert_int_equal(lb_hessian_add_chunk(h, X, T, C, &err), 0);
    lb_hessian_get_sums(h, S, &ntok);
    assert_int_equal(lb_hessian_new(C, &g, &err), 0);
    assert_int_equal(lb_hessian_set_sums(g, S, ntok, &err), 0);
    assert_int_equal(lb_hessian_get(g, H1, &err), 0);
    memcpy(raw + 3, S, C * C * sizeof *S); /* misaligned by 3 bytes */
    assert_int_equal(lb_hessian_from_sums(raw + 3, C, ntok, H2, &err), 0);
    assert_memory_equal(H1, H2, C * C * sizeof *H1);
    S[1 * C + 4] += 1.0; /* not symmetric */
    memcpy(raw + 3, S, C * C * sizeof *S);
    assert_int_equal(lb_hessian_from_sums(raw + 3, C, ntok, H2, &err), LB_EINVAL);
    S[1 * C + 4] = NAN;
    S[4 * C + 1] = NAN;
    memcpy(raw + 3, S, C * C * sizeof *S);
    assert_int_equal(lb_hessian_from_sums(raw + 3, C, ntok, H2, &err), LB_ENUMERIC);
    assert_int_equal(lb_hessian_from_sums(raw + 3, C, 0, H2, &err), LB_EINVAL);
    lb_hessian_free(&h);
    lb_hessian_free(&g);
    free(X);
    free(H1);
    free(H2);
    free(S);
    free(raw);
}

static void test_partials_add(void **state)
{
    (void)state;
    float *X = malloc(T * C * sizeof *X), *Ha = malloc(C * C * sizeof *Ha);
    float *Hall = malloc(C * C * sizeof *Hall);
    lb_test_activations(X, T, C, 2, 2);
    lb_hessian *all = NULL, *a = NULL, *b = NULL;
    lb_err err = {0};
    assert_int_equal(lb_hessian_new(C, &all, &err), 0);
    assert_int_equal(lb_hessian_new(C, &a, &err), 0);
    assert_int_equal(lb_hessian_new(C, &b, &err), 0);
    assert_int_equal(lb_hessian_add_chunk(all, X, 120, C, &err), 0);
    assert_int_equal(lb_hessian_add_chunk(all, X + 120 * C, T - 120, C, &err), 0);
    assert_int_equal(lb_hessian_add_chunk(a, X, 120, C, &err), 0);
    assert_int_equal(lb_hessian_add_chunk(b, X + 120 * C, T - 120, C, &err), 0);
    assert_int_equal(lb_hessian_add(a, b, &err), 0);
    assert_int_equal(lb_hessian_tokens(a), T);
    /* same chunks in the same order: the merged sums are bit-identical */
    assert_int_equal(lb_hessian_get(a, Ha, &err), 0);
    assert_int_equal(lb_hessian_get(all, Hall, &err), 0);
    assert_memory_equal(Ha, Hall, C * C * sizeof *Ha);
    /* raw sums round-trip */
    double *S = malloc(C * C * sizeof *S);
    int64_t n = 0;
    lb_hessian_get_sums(a, S, &n);
    assert_int_equal(n, T);
    lb_hessian *c = NULL;
    assert_int_equal(lb_hessian_new(C, &c, &err), 0);
    assert_int_equal(lb_hessian_set_sums(c, S, n, &err), 0);
    assert_int_equal(lb_hessian_get(c, Ha, &err), 0);
    assert_memory_equal(Ha, Hall, C * C * sizeof *Ha);
    S[1] += 1.0;
    assert_int_equal(lb_hessian_set_sums(c, S, n, &err), LB_EINVAL);
    lb_hessian *other = NULL;
    assert_int_equal(lb_hessian_new(C + 1, &other, &err), 0);
    assert_int_equal(lb_hessian_add(a, other, &err), LB_EINVAL);
    lb_hessian_free(&other);
    lb_hessian_free(&c);
    lb_hessian_free(&all);
    lb_hessian_free(&a);
    lb_hessian_free(&b);
    free(S);
    free(X);
    free(Ha);
    free(Hall);
}

static void test_rejects_bad_input(void **state)
{
    (void)state;
    float X[2 * 4] = {1, 2, 3, 4, 5, NAN, 7, 8};
    lb_hessian *h = NULL;
    lb_err err = {0};
    assert_int_equal(lb_hessian_new(0, &h, &err), LB_EINVAL);
    assert_int_equal(lb_hessian_new(4, &h, &err), 0);
    assert_int_equal(lb_hessian_add_chunk(h, X, 2, 4, &err), LB_ENUMERIC);
    assert_int_equal(lb_hessian_tokens(h), 0);
    assert_int_equal(lb_hessian_add_chunk(h, X, 1, 3, &err), LB_EINVAL);
    assert_int_equal(lb_hessian_add_chunk(h, X, 1, 4, &err), 0);
    assert_int_equal(lb_hessian_tokens(h), 1);
    lb_hessian_free(&h);
}

/* Chunked collection's reduce (docs/determinism.md): chunk 0's float64 sums over
 * block chunks [0, a) as a packed triangle, then every later chunk's float32
 * product, added into a fresh accumulator, give the bits of one accumulator fed
 * every chunk (width 600 > LB_HESSIAN_TILE: the tiled path). The data make the
 * order matter: adding the float32 products in reverse gives other bits. */
static void test_packed_partials_reproduce_chunk_order(void **state)
{
    (void)state;
    const int64_t n = 600, nc = 5, nt = 7, cnt = n * (n + 1) / 2;
    uint64_t rng = 11;
    float *X = malloc((size_t)(nc * nt * n) * sizeof *X);
    assert_non_null(X);
    for (int64_t i = 0; i < nc * nt * n; i++) {
        X[i] = lb_test_rand_normal(&rng);
        if ((i / (nt * n)) % 2 == 1)
            X[i] *= 1048576.0f; /* 2^20: the float64 sums span more than 53 bits */
    }
    lb_hessian *ref = NULL, *pre = NULL, *late = NULL, *red = NULL, *rev = NULL;
    assert_int_equal(lb_hessian_new(n, &ref, NULL), 0);
    for (int64_t c = 0; c < nc; c++)
        assert_int_equal(lb_hessian_add_chunk(ref, X + c * nt * n, nt, n, NULL), 0);
    /* chunk job 0: block chunks 0, 1 pre-added; chunk job 1: chunks 2..4 as float32 */
    const int64_t a = 2;
    double *s64 = malloc((size_t)cnt * sizeof *s64);
    float *c32 = malloc((size_t)((nc - a) * cnt) * sizeof *c32);
    assert_non_null(s64);
    assert_non_null(c32);
    assert_int_equal(lb_hessian_new(n, &pre, NULL), 0);
    for (int64_t c = 0; c < a; c++)
        assert_int_equal(lb_hessian_add_chunk(pre, X + c * nt * n, nt, n, NULL), 0);
    lb_hessian_get_upper(pre, s64);
    assert_int_equal(lb_hessian_new(n, &late, NULL), 0);
    lb_err err;
    assert_int_equal(lb_hessian_last_chunk_upper(late, c32, &err), LB_ESTATE);
    for (int64_t c = a; c < nc; c++) {
        assert_int_equal(lb_hessian_add_chunk(late, X + c * nt * n, nt, n, NULL), 0);
        assert_int_equal(lb_hessian_last_chunk_upper(late, c32 + (c - a) * cnt, NULL), 0);
    }
    assert_int_equal(lb_hessian_new(n, &red, NULL), 0);
    assert_int_equal(lb_hessian_add_upper_f64(red, s64, a * nt, NULL), 0);
    for (int64_t c = a; c < nc; c++)
        assert_int_equal(lb_hessian_add_upper_f32(red, c32 + (c - a) * cnt, c == a ? (nc - a) * nt
                                                                                   : 0, NULL), 0);
    assert_int_equal(lb_hessian_tokens(red), nc * nt);
    double *S1 = malloc((size_t)(n * n) * sizeof *S1), *S2 = malloc((size_t)(n * n) * sizeof *S2);
    assert_non_null(S1);
    assert_non_null(S2);
    lb_hessian_get_sums(ref, S1, NULL);
    lb_hessian_get_sums(red, S2, NULL);
    assert_memory_equal(S1, S2, (size_t)(n * n) * sizeof *S1);
    /* the same pieces in another order: other bits */
    assert_int_equal(lb_hessian_new(n, &rev, NULL), 0);
    for (int64_t c = nc - 1; c >= a; c--)
        assert_int_equal(lb_hessian_add_upper_f32(rev, c32 + (c - a) * cnt, 0, NULL), 0);
    assert_int_equal(lb_hessian_add_upper_f64(rev, s64, nc * nt, NULL), 0);
    lb_hessian_get_sums(rev, S2, NULL);
    assert_true(memcmp(S1, S2, (size_t)(n * n) * sizeof *S1) != 0);
    /* a non-finite value is refused and nothing is added */
    c32[5] = NAN;
    assert_int_equal(lb_hessian_add_upper_f32(red, c32, 1, &err), LB_ENUMERIC);
    assert_int_equal(lb_hessian_tokens(red), nc * nt);
    assert_int_equal(lb_hessian_add_upper_f64(red, s64, -1, &err), LB_EINVAL);
    lb_hessian_free(&ref);
    lb_hessian_free(&pre);
    lb_hessian_free(&late);
    lb_hessian_free(&red);
    lb_hessian_free(&rev);
    free(X);
    free(s64);
    free(c32);
    free(S1);
    free(S2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunks_match_reference),
        cmocka_unit_test(test_wide_tiled_matches_reference_at_any_thread_count),
        cmocka_unit_test(test_from_sums_equals_set_get),
        cmocka_unit_test(test_partials_add),
        cmocka_unit_test(test_rejects_bad_input),
        cmocka_unit_test(test_packed_partials_reproduce_chunk_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
