/* Statistics of synthetic checkpoints: heavy-tailed weights, outlier channels
 * after the RMSNorms (measured by running the real forward pass and capturing
 * the normed block inputs), and a model that runs sanely end to end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_config.h"
#include "lb_forward.h"
#include "lb_model.h"
#include "lb_synth.h"
#include "lb_test_util.h"

/* Sample kurtosis E[(x-m)^4] / E[(x-m)^2]^2 in double (3 for a Gaussian). */
static double kurtosis(const float *x, int64_t n)
{
    double m = 0, m2 = 0, m4 = 0;
    for (int64_t i = 0; i < n; i++)
        m += (double)x[i];
    m /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - m;
        m2 += d * d;
        m4 += d * d * d * d;
    }
    m2 /= (double)n;
    m4 /= (double)n;
    return m4 / (m2 * m2);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int64_t find_tensor(const lb_synth *s, const char *name)
{
    for (int64_t i = 0; i < lb_synth_n_tensors(s); i++)
        if (!strcmp(lb_synth_tensor_at(s, i)->name, name))
            return i;
    fail_msg("tensor %s not generated", name);
    return -1;
}

/* Every projection of the "small" preset is heavy-tailed: kurtosis well above
 * the Gaussian 3 (Student-t(5) gives 9, the log-normal row scales raise it;
 * bound above to catch a broken sampler that emits huge values). Its std
 * follows 1/sqrt(fan_in) up to the documented input-rms factor (0.05..5). */
static void test_weights_heavy_tailed(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_synth *s = NULL;
    assert_int_equal(lb_synth_new(lb_synth_preset_find("small"), 0, 11, &s, &err), 0);
    const char *names[] = {"model.layers.0.self_attn.q_proj.weight",
                           "model.layers.1.self_attn.o_proj.weight",
                           "model.layers.2.mlp.gate_proj.weight",
                           "model.layers.3.mlp.down_proj.weight", "lm_head.weight"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const lb_synth_tensor *t = lb_synth_tensor_at(s, find_tensor(s, names[k]));
        int64_t n = t->rows * t->cols;
        float *w = malloc((size_t)n * sizeof *w);
        assert_non_null(w);
        assert_int_equal(lb_synth_fill(s, find_tensor(s, names[k]), 0, t->rows, w, &err), 0);
        double kurt = kurtosis(w, n), ss = 0;
        for (int64_t i = 0; i < n; i++) {
            assert_true(isfinite(w[i]));
            ss += (double)w[i] * (double)w[i];
        }
        double std_fan = sqrt(ss / (double)n) * sqrt((double)t->cols);
        print_message("%-45s kurtosis %.2f std*sqrt(fan_in) %.3f\n", names[k], kurt, std_fan);
        if (!(kurt > 5.0 && kurt < 40.0))
            fail_msg("%s: kurtosis %.2f outside (5, 40)", names[k], kurt);
        if (!(std_fan > 0.05 && std_fan < 5.0))
            fail_msg("%s: std * sqrt(fan_in) = %.3f outside (0.05, 5)", names[k], std_fan);
        free(w);
    }
    lb_synth_free(&s);
}

/* Writes preset to a temp dir, runs the forward block by block on random token
 * sequences and checks, at every input_layernorm and post_attention_layernorm
 * output: each outlier channel's mean |activation| is 10..100x the median
 * channel's, and the outlier channels are exactly the top ones. Then: logits
 * finite, next-token distributions neither one-hot nor uniform, residual rms
 * bounded. */
static void check_outliers(const char *preset, int64_t layers, uint64_t seed)
{
    lb_err err = {0};
    lb_synth *s = NULL;
    lb_model *m = NULL;
    lb_fwd_workspace *ws = NULL;
    lb_head_weights head = {0};
    char *dir = lb_test_mkdtemp();
    assert_non_null(dir);
    assert_int_equal(lb_synth_new(lb_synth_preset_find(preset), layers, seed, &s, &err), 0);
    lb_synth_write_opts opts = {.dtype = LB_DTYPE_BF16};
    if (lb_synth_write(s, dir, &opts, NULL, &err))
        fail_msg("write: %s", err.msg);

    lb_config cfg;
    if (lb_config_load(&cfg, dir, &err))
        fail_msg("config: %s", err.msg);
    const lb_synth_preset *p = lb_synth_get_preset(s);
    assert_int_equal(cfg.hidden_size, p->hidden);
    assert_int_equal(cfg.num_hidden_layers, lb_synth_n_layers(s));
    assert_int_equal(cfg.num_key_value_heads, p->n_kv_heads);
    assert_int_equal(cfg.vocab_size, p->vocab);
    if (lb_model_open(&m, dir, &err))
        fail_msg("open: %s", err.msg);
    assert_int_equal(lb_model_load_head(m, &head, &err), 0);

    const int64_t n_seq = 4, seq_len = 64, ntok = n_seq * seq_len, dim = cfg.hidden_size;
    uint32_t *tok = malloc((size_t)ntok * sizeof *tok);
    float *x = malloc((size_t)(ntok * dim) * sizeof *x);
    float *attn_in = malloc((size_t)(ntok * dim) * sizeof *attn_in);
    float *mlp_in = malloc((size_t)(ntok * dim) * sizeof *mlp_in);
    double *mean_abs = malloc((size_t)dim * sizeof *mean_abs);
    double *sorted = malloc((size_t)dim * sizeof *sorted);
    float *logits = malloc((size_t)(ntok * cfg.vocab_size) * sizeof *logits);
    assert_true(tok && x && attn_in && mlp_in && mean_abs && sorted && logits);
    uint64_t rng = seed * 7919u + 1u;
    for (int64_t i = 0; i < ntok; i++)
        tok[i] = (uint32_t)(lb_test_rand_u64(&rng) % (uint64_t)cfg.vocab_size);
    assert_int_equal(lb_fwd_workspace_new(&cfg, ntok, seq_len, &ws, &err), 0);
    assert_int_equal(lb_fwd_embed(&head, tok, ntok, x, &err), 0);

    int64_t n_out = 0;
    const int64_t *outl = lb_synth_outlier_channels(s, &n_out);
    assert_true(n_out >= 1 && n_out < dim / 50 + 2);
    double rms0 = 0;
    for (int64_t i = 0; i < ntok * dim; i++)
        rms0 += (double)x[i] * (double)x[i];
    rms0 = sqrt(rms0 / (double)(ntok * dim));

    for (int32_t l = 0; l < cfg.num_hidden_layers; l++) {
        lb_block_weights w = {0};
        if (lb_model_load_block(m, l, &w, &err))
            fail_msg("load block %d: %s", l, err.msg);
        lb_fwd_capture cap = {.attn_in = attn_in, .mlp_in = mlp_in};
        if (lb_fwd_block(&cfg, &w, x, n_seq, seq_len, ws, &cap, &err))
            fail_msg("block %d: %s", l, err.msg);
        lb_block_weights_free(&w);
        for (int which = 0; which < 2; which++) {
            const float *a = which ? mlp_in : attn_in;
            for (int64_t c = 0; c < dim; c++) {
                double acc = 0;
                for (int64_t t = 0; t < ntok; t++)
                    acc += fabs((double)a[t * dim + c]);
                mean_abs[c] = sorted[c] = acc / (double)ntok;
            }
            qsort(sorted, (size_t)dim, sizeof *sorted, cmp_double);
            double median = sorted[dim / 2];
            /* smallest outlier must beat the largest non-outlier: exactly the top n_out */
            double min_out = INFINITY, max_ratio = 0;
            for (int64_t k = 0; k < n_out; k++) {
                double r = mean_abs[outl[k]] / median;
                min_out = fmin(min_out, mean_abs[outl[k]]);
                max_ratio = fmax(max_ratio, r);
                if (!(r >= 10.0 && r <= 100.0))
                    fail_msg("%s layer %d %s: outlier channel %lld mean|act| / median = %.1f, "
                             "want 10..100",
                             preset, l, which ? "post_attention_layernorm" : "input_layernorm",
                             (long long)outl[k], r);
            }
            print_message("%s layer %d %s: outlier/median %.1f..%.1f\n", preset, l,
                          which ? "mlp_in " : "attn_in", min_out / median, max_ratio);
            assert_true(min_out >= sorted[dim - n_out]);
        }
    }
    double rms = 0;
    for (int64_t i = 0; i < ntok * dim; i++) {
        assert_true(isfinite(x[i]));
        rms += (double)x[i] * (double)x[i];
    }
    rms = sqrt(rms / (double)(ntok * dim));
    print_message("%s residual rms: embedding %.3f, last block %.3f\n", preset, rms0, rms);
    if (!(rms < 4.0 * rms0))
        fail_msg("%s: residual rms grew from %.3f to %.3f over %d layers", preset, rms0, rms,
                 cfg.num_hidden_layers);

    lb_fwd_logits(&cfg, &head, x, ntok, logits);
    const int64_t V = cfg.vocab_size;
    double sum_maxp = 0, min_maxp = 1, max_maxp = 0;
    for (int64_t t = 0; t < ntok; t++) {
        const float *lg = logits + t * V;
        double mx = -INFINITY, z = 0;
        for (int64_t v = 0; v < V; v++) {
            assert_true(isfinite(lg[v]));
            mx = fmax(mx, (double)lg[v]);
        }
        for (int64_t v = 0; v < V; v++)
            z += exp((double)lg[v] - mx);
        double maxp = 1.0 / z;
        sum_maxp += maxp;
        min_maxp = fmin(min_maxp, maxp);
        max_maxp = fmax(max_maxp, maxp);
    }
    double mean_maxp = sum_maxp / (double)ntok;
    print_message("%s next-token max prob: mean %.3f, range %.3f..%.3f (uniform %.4f)\n", preset,
                  mean_maxp, min_maxp, max_maxp, 1.0 / (double)V);
    if (!(mean_maxp < 0.5))
        fail_msg("%s: next-token distribution is nearly one-hot (mean max prob %.3f)", preset,
                 mean_maxp);
    if (!(mean_maxp > 5.0 / (double)V))
        fail_msg("%s: next-token distribution is nearly uniform (mean max prob %.5f)", preset,
                 mean_maxp);

    free(tok);
    free(x);
    free(attn_in);
    free(mlp_in);
    free(mean_abs);
    free(sorted);
    free(logits);
    lb_fwd_workspace_free(&ws);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    lb_synth_free(&s);
    lb_test_rmdir(&dir);
}

static void test_outliers_tiny(void **state)
{
    (void)state;
    check_outliers("tiny", 0, 1);
    check_outliers("tiny", 6, 2024);
}

static void test_outliers_small(void **state)
{
    (void)state;
    check_outliers("small", 0, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights_heavy_tailed),
        cmocka_unit_test(test_outliers_tiny),
        cmocka_unit_test(test_outliers_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
