/* lb_exec_chunk_seqs / lb_exec_chunk_count: the fixed chunking shared by the
 * embedded executor and MPI worker groups, against the rule written out. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include "lb_exec.h"

/* The rule in plain words: the largest k >= 1 with k * seq_len within
 * LB_EXEC_CHUNK_TOKENS and at least LB_EXEC_MIN_CHUNKS chunks of k (k *
 * LB_EXEC_MIN_CHUNKS <= n_seq); 1 when no k qualifies. */
static int64_t ref_seqs(int64_t n_seq, int64_t seq_len)
{
    int64_t best = 1;
    for (int64_t k = 1; k <= n_seq; k++)
        if (k * seq_len <= LB_EXEC_CHUNK_TOKENS && k * LB_EXEC_MIN_CHUNKS <= n_seq)
            best = k;
    return best;
}

static void test_known_shapes(void **state)
{
    (void)state;
    assert_int_equal(lb_exec_chunk_seqs(8, 128), 1);     /* tests' shape: 8 chunks */
    assert_int_equal(lb_exec_chunk_count(8, 128), 8);
    assert_int_equal(lb_exec_chunk_seqs(128, 256), 16);  /* docs/results.md: unchanged */
    assert_int_equal(lb_exec_chunk_count(128, 256), 8);
    assert_int_equal(lb_exec_chunk_seqs(128, 2048), 2);  /* LLaMA-style: 4096 tokens */
    assert_int_equal(lb_exec_chunk_count(128, 2048), 64);
    assert_int_equal(lb_exec_chunk_seqs(2, 8192), 1);    /* longer than the token cap */
    assert_int_equal(lb_exec_chunk_seqs(20, 32), 2);     /* floor(20 / 8) */
    assert_int_equal(lb_exec_chunk_count(20, 32), 10);
    assert_int_equal(lb_exec_chunk_count(9, 128), 9);    /* never fewer than 8 */
    assert_int_equal(lb_exec_chunk_count(30, 64), 10);   /* 3 per chunk */
    assert_int_equal(lb_exec_chunk_count(5, 64), 5);     /* n_seq < 8: one per chunk */
    assert_int_equal(lb_exec_chunk_count(0, 128), 0);
}

static void test_rule_matches_reference(void **state)
{
    (void)state;
    static const int64_t lens[] = {1, 7, 32, 128, 256, 512, 2048, 4096, 5000};
    for (int64_t n = 1; n <= 200; n++)
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            int64_t k = lb_exec_chunk_seqs(n, lens[i]);
            assert_int_equal(k, ref_seqs(n, lens[i]));
            int64_t c = lb_exec_chunk_count(n, lens[i]);
            assert_true((c - 1) * k < n && c * k >= n); /* the chunks cover n exactly */
            assert_true(c >= (n < LB_EXEC_MIN_CHUNKS ? n : LB_EXEC_MIN_CHUNKS));
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_shapes),
        cmocka_unit_test(test_rule_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
