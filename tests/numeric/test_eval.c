/* Evaluation: lb_eval's perplexity / KL / top-1 against a naive computation
 * written here; model vs itself; thread-count independence. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_blas.h"
#include "lb_eval.h"
#include "lb_forward.h"
#include "lb_model.h"
#include "lb_test_model.h"
#include "lb_test_util.h"
#include "lb_tokens.h"

/* Naive per-window sums: softmax as exp(l) / sum exp(l) directly in double
 * (logits here are small, so no max subtraction is needed), then
 * nll = -log p[target], KL = sum p_ref log(p_ref / p), top-1 by argmax. */
typedef struct {
    double nll, kl;
    int64_t hits, n;
} naive_sums;

static int64_t argmax_of(const float *l, int64_t vocab)
{
    int64_t a = 0;
    for (int64_t v = 1; v < vocab; v++)
        if (l[v] > l[a])
            a = v;
    return a;
}

static void naive_window(naive_sums *s, const float *logits, const float *ref, const uint32_t *tok,
                         int64_t ctx, int64_t vocab)
{
    double *p = malloc((size_t)vocab * sizeof(double)), *q = malloc((size_t)vocab * sizeof(double));
    for (int64_t t = 0; t + 1 < ctx; t++) {
        const float *l = logits + t * vocab;
        double z = 0, zr = 0;
        for (int64_t v = 0; v < vocab; v++)
            z += exp((double)l[v]);
        for (int64_t v = 0; v < vocab; v++)
            p[v] = exp((double)l[v]) / z;
        s->nll += -log(p[tok[t + 1]]);
        if (ref) {
            const float *r = ref + t * vocab;
            for (int64_t v = 0; v < vocab; v++)
                zr += exp((double)r[v]);
            for (int64_t v = 0; v < vocab; v++) {
                q[v] = exp((double)r[v]) / zr;
                s->kl += q[v] * log(q[v] / p[v]);
            }
            s->hits += argmax_of(l, vocab) == argmax_of(r, vocab);
        }
        s->n++;
    }
    free(p);
    free(q);
}

static void random_logits(float *l, int64_t n, float scale, uint64_t *rng)
{
    for (int64_t i = 0; i < n; i++)
        l[i] = scale * lb_test_rand_normal(rng);
}

static void assert_close(double got, double want, double rel, const char *what)
{
    if (!(fabs(got - want) <= rel * fmax(fabs(want), 1e-300)))
        fail_msg("%s: got %.17g, want %.17g (relative tolerance %g)", what, got, want, rel);
}

/* Accumulator vs naive on random logits; tolerance 1e-12 relative (both in
 * double; only rounding of different but equivalent formulas differs). */
static void test_acc_vs_naive(void **state)
{
    (void)state;
    lb_err err = {0};
    const int64_t ctx = 17, vocab = 23, nw = 3;
    uint64_t rng = 7;
    float *l = malloc((size_t)(nw * ctx * vocab) * sizeof(float));
    float *r = malloc((size_t)(nw * ctx * vocab) * sizeof(float));
    uint32_t tok[3 * 17];
    random_logits(l, nw * ctx * vocab, 2.0f, &rng);
    /* reference = model + noise, so argmax agrees often but not always */
    for (int64_t i = 0; i < nw * ctx * vocab; i++)
        r[i] = l[i] + 0.7f * lb_test_rand_normal(&rng);
    for (int64_t i = 0; i < nw * ctx; i++)
        tok[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)vocab);

    lb_eval_acc acc = {0}, acc_noref = {0};
    naive_sums ns = {0};
    for (int64_t w = 0; w < nw; w++) {
        assert_int_equal(lb_eval_acc_window(&acc, l + w * ctx * vocab, r + w * ctx * vocab,
                                            tok + w * ctx, ctx, vocab, &err),
                         0);
        assert_int_equal(lb_eval_acc_window(&acc_noref, l + w * ctx * vocab, NULL, tok + w * ctx,
                                            ctx, vocab, &err),
                         0);
        naive_window(&ns, l + w * ctx * vocab, r + w * ctx * vocab, tok + w * ctx, ctx, vocab);
    }
    lb_eval_result res, res2;
    lb_eval_acc_result(&acc, &res);
    lb_eval_acc_result(&acc_noref, &res2);
    assert_int_equal(res.windows, nw);
    assert_int_equal(res.tokens_scored, nw * (ctx - 1));
    assert_int_equal(ns.n, nw * (ctx - 1));
    assert_true(res.has_ref);
    assert_false(res2.has_ref);
    assert_close(res.nll_sum, ns.nll, 1e-12, "nll_sum");
    assert_close(res.nll, ns.nll / (double)ns.n, 1e-12, "nll");
    assert_close(res.ppl, exp(ns.nll / (double)ns.n), 1e-12, "ppl");
    assert_close(res.kl, ns.kl / (double)ns.n, 1e-10, "kl");
    assert_true(res.kl > 0.01);
    assert_close(res.top1, (double)ns.hits / (double)ns.n, 0, "top1");
    assert_true(res.top1 > 0.2 && res.top1 < 1.0);
    assert_true(res2.nll_sum == res.nll_sum);
    assert_true(res2.kl == 0.0 && res2.top1 == 0.0);

    /* log-softmax is shift invariant and stable: +1000 on every logit of a
     * row changes nothing beyond rounding (naive exp would overflow) */
    for (int64_t i = 0; i < ctx * vocab; i++) {
        l[i] += 1000.0f * (float)(1 + i / vocab % 3);
        r[i] -= 1000.0f;
    }
    lb_eval_acc big = {0}, small = {0};
    assert_int_equal(lb_eval_acc_window(&big, l, r, tok, ctx, vocab, &err), 0);
    for (int64_t i = 0; i < ctx * vocab; i++) {
        l[i] -= 1000.0f * (float)(1 + i / vocab % 3);
        r[i] += 1000.0f;
    }
    assert_int_equal(lb_eval_acc_window(&small, l, r, tok, ctx, vocab, &err), 0);
    /* float32 spacing at 3000 is 2.4e-4, so the shifted logits are rounded */
    assert_close(big.nll_sum, small.nll_sum, 1e-3, "shifted nll");
    assert_true(isfinite(big.kl_sum));
    free(l);
    free(r);
}

static void test_acc_errors(void **state)
{
    (void)state;
    lb_err err = {0};
    float l[4 * 3] = {0};
    uint32_t tok[4] = {0, 1, 2, 1};
    lb_eval_acc acc = {0};
    tok[2] = 3;
    assert_int_equal(lb_eval_acc_window(&acc, l, NULL, tok, 4, 3, &err), LB_EINVAL);
    tok[2] = 2;
    assert_int_equal(lb_eval_acc_window(&acc, l, NULL, tok, 1, 3, &err), LB_EINVAL);
    l[5] = NAN;
    assert_int_equal(lb_eval_acc_window(&acc, l, NULL, tok, 4, 3, &err), LB_ENUMERIC);
    assert_non_null(strstr(err.msg, "position 1"));
    l[5] = INFINITY;
    assert_int_equal(lb_eval_acc_window(&acc, l, NULL, tok, 4, 3, &err), LB_ENUMERIC);
    l[5] = 0;
    assert_int_equal(acc.windows, 0);
    /* uniform logits: nll = log(3) per position */
    assert_int_equal(lb_eval_acc_window(&acc, l, NULL, tok, 4, 3, &err), 0);
    assert_close(acc.nll_sum, 3 * log(3.0), 1e-15, "uniform nll");
    /* ref for some windows only */
    assert_int_equal(lb_eval_acc_window(&acc, l, l, tok, 4, 3, &err), LB_EINVAL);
}

/* ---- on a model -------------------------------------------------------- */

static char *write_model(int32_t vocab, uint64_t seed)
{
    lb_err err = {0};
    char *dir = lb_test_mkdtemp();
    assert_non_null(dir);
    lb_config cfg = lb_test_model_config(32, 4, 2, 8, 40, vocab, 2);
    if (lb_test_model_write(dir, &cfg, seed, NULL, NULL, &err))
        fail_msg("%s", err.msg);
    return dir;
}

typedef struct {
    int calls;
    int64_t done[8], total;
} progress_log;

static void on_progress(void *user, int64_t done, int64_t total, double seconds)
{
    progress_log *p = user;
    assert_true(seconds >= 0.0);
    if (p->calls < 8)
        p->done[p->calls] = done;
    p->calls++;
    p->total = total;
}

/* lb_eval_run vs the naive sums over lb_model_forward logits of the same
 * windows, with and without a reference; the tail is dropped. */
static void test_run_vs_naive(void **state)
{
    (void)state;
    lb_err err = {0};
    char *dir_a = write_model(50, 1), *dir_b = write_model(50, 2);
    lb_model *a = NULL, *b = NULL;
    assert_int_equal(lb_model_open(&a, dir_a, &err), 0);
    assert_int_equal(lb_model_open(&b, dir_b, &err), 0);
    const int64_t ctx = 24, nw = 5, n = nw * ctx + 7, V = 50;
    uint32_t tok[5 * 24 + 7];
    uint64_t rng = 3;
    for (int64_t i = 0; i < n; i++)
        tok[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)V);
    float *la = malloc((size_t)(nw * ctx * V) * sizeof(float));
    float *lr = malloc((size_t)(nw * ctx * V) * sizeof(float));
    assert_int_equal(lb_model_forward(a, tok, nw, ctx, la, &err), 0);
    assert_int_equal(lb_model_forward(b, tok, nw, ctx, lr, &err), 0);
    naive_sums ns = {0};
    for (int64_t w = 0; w < nw; w++)
        naive_window(&ns, la + w * ctx * V, lr + w * ctx * V, tok + w * ctx, ctx, V);

    /* eval computes logits window by window, so its sgemm row chunks differ
     * from lb_model_forward's: fp32 rounding only (observed ~2e-9 relative),
     * tolerance 1e-6 relative (1e-4 for the small KL) */
    const int64_t batches[2] = {5, 2};
    const double tol[2] = {1e-6, 1e-6};
    for (int i = 0; i < 2; i++) {
        lb_eval_opts opts = {.ctx = ctx, .batch = batches[i]};
        lb_eval_result r;
        if (lb_eval_run(a, b, tok, n, &opts, &r, &err))
            fail_msg("%s", err.msg);
        assert_int_equal(r.windows, nw);
        assert_int_equal(r.tokens_scored, nw * (ctx - 1));
        assert_int_equal(r.tokens_dropped, 7);
        assert_int_equal(r.ctx, ctx);
        assert_true(r.has_ref);
        assert_close(r.ppl, exp(ns.nll / (double)ns.n), tol[i], "ppl");
        assert_close(r.kl, ns.kl / (double)ns.n, tol[i] * 100, "kl");
        assert_true(r.kl > 1e-3);
        /* at most one argmax may flip on a near-tie under fp32 rounding */
        assert_true(fabs(r.top1 * (double)ns.n - (double)ns.hits) <= 1.0 + 1e-9);
        print_message("[   INFO   ] batch %lld: ppl %.6f kl %.6f top1 %.4f\n",
                      (long long)batches[i], r.ppl, r.kl, r.top1);
    }

    /* model vs itself: KL exactly 0 (identical logits), top-1 1.0; progress
     * after each batch of 3 windows: 3, 5 of 5 */
    progress_log plog = {0};
    lb_eval_opts opts = {.ctx = ctx, .batch = 3, .progress = on_progress, .progress_user = &plog};
    lb_eval_result self;
    assert_int_equal(lb_eval_run(a, a, tok, n, &opts, &self, &err), 0);
    assert_true(fabs(self.kl) < 1e-9);
    assert_true(self.top1 == 1.0);
    assert_int_equal(plog.calls, 2);
    assert_int_equal(plog.done[0], 3);
    assert_int_equal(plog.done[1], 5);
    assert_int_equal(plog.total, 5);
    opts.progress = NULL;

    /* errors: ctx too large / too small, too few tokens, token out of vocab */
    opts.ctx = 129;
    assert_int_equal(lb_eval_run(a, NULL, tok, n, &opts, &self, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    opts.ctx = 1;
    assert_int_equal(lb_eval_run(a, NULL, tok, n, &opts, &self, &err), LB_EINVAL);
    opts.ctx = ctx;
    assert_int_equal(lb_eval_run(a, NULL, tok, ctx - 1, &opts, &self, &err), LB_EINVAL);
    tok[30] = 50;
    assert_int_equal(lb_eval_run(a, NULL, tok, n, &opts, &self, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "index 30"));

    free(la);
    free(lr);
    lb_model_free(&a);
    lb_model_free(&b);
    lb_test_rmdir(&dir_a);
    lb_test_rmdir(&dir_b);
}

static void test_ref_vocab_mismatch(void **state)
{
    (void)state;
    lb_err err = {0};
    char *dir_a = write_model(50, 1), *dir_b = write_model(60, 1);
    lb_model *a = NULL, *b = NULL;
    assert_int_equal(lb_model_open(&a, dir_a, &err), 0);
    assert_int_equal(lb_model_open(&b, dir_b, &err), 0);
    uint32_t tok[32] = {0};
    lb_eval_opts opts = {.ctx = 16};
    lb_eval_result r;
    assert_int_equal(lb_eval_run(a, b, tok, 32, &opts, &r, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "vocab"));
    lb_model_free(&a);
    lb_model_free(&b);
    lb_test_rmdir(&dir_a);
    lb_test_rmdir(&dir_b);
}

/* Bit-identical logits and eval sums with 1 and 2 OpenMP (and BLAS) threads,
 * on the fixture when present, else on a written random model. */
static void test_thread_independence(void **state)
{
    (void)state;
    lb_err err = {0};
    char dir[4096];
    char *tmp = NULL;
    const char *shared = lb_test_shared_dir();
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared ? shared : "/nonexistent");
    lb_model *m = NULL;
    if (lb_model_open(&m, dir, &err)) {
        print_message("[   INFO   ] fixture missing, using a random model\n");
        tmp = write_model(50, 5);
        assert_int_equal(lb_model_open(&m, tmp, &err), 0);
    }
    const lb_config *cfg = lb_model_config(m);
    const int64_t n_seq = 4, seq_len = 64, V = cfg->vocab_size, ntok = n_seq * seq_len;
    uint32_t *tok = malloc((size_t)ntok * sizeof(uint32_t));
    uint64_t rng = 9;
    for (int64_t i = 0; i < ntok; i++)
        tok[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)V);
    float *l1 = malloc((size_t)(ntok * V) * sizeof(float));
    float *l2 = malloc((size_t)(ntok * V) * sizeof(float));
    const int saved_omp = omp_get_max_threads(), saved_blas = lb_blas_get_threads();
    lb_eval_result r1, r2;
    lb_eval_opts opts = {.ctx = seq_len, .batch = 4};

    omp_set_num_threads(1);
    lb_blas_set_threads(1);
    assert_int_equal(lb_model_forward(m, tok, n_seq, seq_len, l1, &err), 0);
    assert_int_equal(lb_eval_run(m, m, tok, ntok, &opts, &r1, &err), 0);
    omp_set_num_threads(2);
    lb_blas_set_threads(2);
    assert_int_equal(lb_model_forward(m, tok, n_seq, seq_len, l2, &err), 0);
    assert_int_equal(lb_eval_run(m, m, tok, ntok, &opts, &r2, &err), 0);
    omp_set_num_threads(saved_omp);
    lb_blas_set_threads(saved_blas);

    assert_memory_equal(l1, l2, (size_t)(ntok * V) * sizeof(float));
    assert_true(r1.nll_sum == r2.nll_sum);
    assert_true(r1.kl == r2.kl && r1.top1 == r2.top1);
    /* the BLAS thread count is restored after a forward */
    assert_int_equal(lb_blas_get_threads(), saved_blas);
    free(tok);
    free(l1);
    free(l2);
    lb_model_free(&m);
    if (tmp)
        lb_test_rmdir(&tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acc_vs_naive),        cmocka_unit_test(test_acc_errors),
        cmocka_unit_test(test_run_vs_naive),        cmocka_unit_test(test_ref_vocab_mismatch),
        cmocka_unit_test(test_thread_independence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
