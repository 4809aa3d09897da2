#include "lb_eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_forward.h"
#include "lb_tokens.h"
#include "lb_time.h"

/* log-sum-exp of a row in double, max subtracted first. Returns NAN when a
 * value is not finite. Also reports the argmax (lowest index on ties). */
static double row_lse(const float *l, int64_t vocab, int64_t *argmax)
{
    double m = (double)l[0];
    int64_t am = 0;
    for (int64_t v = 0; v < vocab; v++) {
        if (!isfinite(l[v]))
            return (double)NAN;
        if ((double)l[v] > m) {
            m = (double)l[v];
            am = v;
        }
    }
    double s = 0.0;
    for (int64_t v = 0; v < vocab; v++)
        s += exp((double)l[v] - m);
    *argmax = am;
    return m + log(s);
}

int lb_eval_acc_window(lb_eval_acc *acc, const float *logits, const float *ref_logits,
                       const uint32_t *tokens, int64_t ctx, int64_t vocab, lb_err *err)
{
    if (ctx < 2 || vocab < 1)
        return lb_err_set(err, LB_EINVAL, "eval: window of %lld tokens (need >= 2), vocab %lld",
                          (long long)ctx, (long long)vocab);
    bool has_ref = ref_logits != NULL;
    if (acc->windows > 0 && acc->has_ref != has_ref)
        return lb_err_set(err, LB_EINVAL,
                          "eval: reference logits given for some windows but not others");
    for (int64_t p = 0; p < ctx; p++)
        if ((int64_t)tokens[p] >= vocab)
            return lb_err_set(err, LB_EINVAL,
                              "eval: token id %u at window position %lld is >= vocab size %lld",
                              tokens[p], (long long)p, (long long)vocab);
    const int64_t npos = ctx - 1;
    double *nll = malloc((size_t)npos * sizeof(double));
    double *kl = malloc((size_t)npos * sizeof(double));
    char *hit = malloc((size_t)npos);
    if (!nll || !kl || !hit) {
        free(nll);
        free(kl);
        free(hit);
        return lb_err_set(err, LB_ENOMEM, "eval: out of memory");
    }
    int64_t bad = -1;
    /* Per-position terms in parallel; the sums below run in position order so
     * the result does not depend on the thread count. */
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < npos; p++) {
        const float *l = logits + p * vocab;
        int64_t am = 0, am_ref = 0;
        double lse = row_lse(l, vocab, &am);
        // NLL = -log softmax(l)[target] = lse - l[target]
        nll[p] = lse - (double)l[tokens[p + 1]];
        kl[p] = 0.0;
        hit[p] = 0;
        if (has_ref && isfinite(lse)) {
            const float *r = ref_logits + p * vocab;
            double lse_r = row_lse(r, vocab, &am_ref);
            // KL(ref || model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v))
            double s = 0.0;
            for (int64_t v = 0; v < vocab; v++) {
                double lr = (double)r[v] - lse_r;
                s += exp(lr) * (lr - ((double)l[v] - lse));
            }
            kl[p] = s;
            hit[p] = am == am_ref;
        }
        if (!isfinite(nll[p]) || !isfinite(kl[p])) {
#pragma omp critical(lb_eval_bad)
            if (bad < 0 || p < bad)
                bad = p;
        }
    }
    int rc = LB_OK;
    if (bad >= 0) {
        rc = lb_err_set(err, LB_ENUMERIC,
                        "eval: non-finite logits at window position %lld; the model output "
                        "NaN/Inf",
                        (long long)bad);
    } else {
        for (int64_t p = 0; p < npos; p++) {
            acc->nll_sum += nll[p];
            acc->kl_sum += kl[p];
            acc->top1_hits += hit[p];
        }
        acc->positions += npos;
        acc->windows++;
        acc->has_ref = has_ref;
    }
    free(nll);
    free(kl);
    free(hit);
    return rc;
}

void lb_eval_acc_result(const lb_eval_acc *acc, lb_eval_result *out)
{
    memset(out, 0, sizeof *out);
    out->windows = acc->windows;
    out->tokens_scored = acc->positions;
    out->nll_sum = acc->nll_sum;
    out->has_ref = acc->has_ref;
    if (acc->positions > 0) {
        double n = (double)acc->positions;
        out->nll = acc->nll_sum / n;
        out->ppl = exp(out->nll);
        if (acc->has_ref) {
            out->kl = acc->kl_sum / n;
            out->top1 = (double)acc->top1_hits / n;
        }
    }
}

static float *alloc_floats(int64_t a, int64_t b)
{
    if (a <= 0 || b <= 0 || a > INT64_MAX / b || (uint64_t)(a * b) > SIZE_MAX / sizeof(float))
        return NULL;
    return malloc((size_t)(a * b) * sizeof(float));
}

int lb_eval_run(const lb_model *model, const lb_model *ref, const uint32_t *tokens, int64_t n,
                const lb_eval_opts *opts, lb_eval_result *out, lb_err *err)
{
    const lb_config *cfg = lb_model_config(model);
    const lb_config *rcfg = ref ? lb_model_config(ref) : NULL;
    const int64_t ctx = opts->ctx, vocab = cfg->vocab_size;
    memset(out, 0, sizeof *out);
    if (ctx < 2 || ctx > cfg->max_position_embeddings)
        return lb_err_set(err, LB_EINVAL,
                          "eval: context %lld must be in [2, %d] (max_position_embeddings of %s)",
                          (long long)ctx, (int)cfg->max_position_embeddings, lb_model_dir(model));
    if (rcfg && rcfg->vocab_size != cfg->vocab_size)
        return lb_err_set(err, LB_EINVAL,
                          "eval: reference %s has vocab size %d but %s has %d; compare models "
                          "that share a tokenizer",
                          lb_model_dir(ref), (int)rcfg->vocab_size, lb_model_dir(model),
                          (int)cfg->vocab_size);
    if (rcfg && ctx > rcfg->max_position_embeddings)
        return lb_err_set(err, LB_EINVAL,
                          "eval: context %lld exceeds max_position_embeddings %d of reference %s",
                          (long long)ctx, (int)rcfg->max_position_embeddings, lb_model_dir(ref));
    if (n < ctx)
        return lb_err_set(err, LB_EINVAL,
                          "eval: only %lld tokens, fewer than one window of %lld; lower --ctx",
                          (long long)n, (long long)ctx);
    int rc = lb_tokens_check_vocab(tokens, n, vocab, "eval tokens", err);
    if (rc)
        return rc;

    const int64_t n_windows = n / ctx;
    int64_t batch = opts->batch > 0 ? opts->batch : 8;
    if (batch > n_windows)
        batch = n_windows;
    if (batch > INT64_MAX / ctx)
        return lb_err_set(err, LB_EINVAL, "eval: batch %lld too large", (long long)batch);
    const double t0 = lb_now_s();
    lb_head_weights head = {0}, rhead = {0};
    lb_fwd_workspace *ws = NULL, *rws = NULL;
    float *x = NULL, *rx = NULL, *logits = NULL, *rlogits = NULL;
    lb_eval_acc acc = {0};

    rc = lb_model_load_head(model, &head, err);
    if (!rc)
        rc = lb_fwd_workspace_new(cfg, batch * ctx, ctx, &ws, err);
    if (!rc && ref) {
        rc = lb_model_load_head(ref, &rhead, err);
        if (!rc)
            rc = lb_fwd_workspace_new(rcfg, batch * ctx, ctx, &rws, err);
    }
    if (rc)
        goto cleanup;
    x = alloc_floats(batch * ctx, cfg->hidden_size);
    logits = alloc_floats(ctx, vocab);
    if (ref) {
        rx = alloc_floats(batch * ctx, rcfg->hidden_size);
        rlogits = alloc_floats(ctx, vocab);
    }
    if (!x || !logits || (ref && (!rx || !rlogits))) {
        rc = lb_err_set(err, LB_ENOMEM,
                        "eval: out of memory for %lld windows of %lld; lower --batch",
                        (long long)batch, (long long)ctx);
        goto cleanup;
    }
    for (int64_t w0 = 0; w0 < n_windows; w0 += batch) {
        int64_t nb = n_windows - w0 < batch ? n_windows - w0 : batch;
        const uint32_t *tok = tokens + w0 * ctx;
        rc = lb_model_hidden(model, &head, tok, nb, ctx, ws, x, err);
        if (!rc && ref)
            rc = lb_model_hidden(ref, &rhead, tok, nb, ctx, rws, rx, err);
        if (rc)
            goto cleanup;
        for (int64_t i = 0; i < nb; i++) {
            lb_fwd_logits(cfg, &head, x + i * ctx * cfg->hidden_size, ctx, logits);
            if (ref)
                lb_fwd_logits(rcfg, &rhead, rx + i * ctx * rcfg->hidden_size, ctx, rlogits);
            rc = lb_eval_acc_window(&acc, logits, ref ? rlogits : NULL, tok + i * ctx, ctx, vocab,
                                    err);
            if (rc)
                goto cleanup;
        }
        if (opts->progress)
            opts->progress(opts->progress_user, w0 + nb, n_windows, lb_now_s() - t0);
    }
    lb_eval_acc_result(&acc, out);
    out->ctx = ctx;
    out->tokens_dropped = n - n_windows * ctx;
    out->seconds = lb_now_s() - t0;
cleanup:
    free(x);
    free(rx);
    free(logits);
    free(rlogits);
    lb_fwd_workspace_free(&ws);
    lb_fwd_workspace_free(&rws);
    lb_head_weights_free(&head);
    lb_head_weights_free(&rhead);
    return rc;
}
