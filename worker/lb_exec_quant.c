/* lb_exec_quant: the jobs that make and combine packed linears: quantize-linear,
 * distill and merge. */
#include "lb_exec_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_distill.h"
#include "lb_hessian.h"
#include "lb_qpacked_io.h"
#include "lb_rotate.h"

int lb_exec_quantize(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    const lb_qmethod *m = lb_qmethod_find(job->method);
    if (!m)
        return lb_err_set(err, LB_EINVAL, "quantize-linear %s: unknown method \"%s\"",
                          job->tensor, job->method);
    const bool lm_head = job->linear == LB_JOB_LINEAR_LM_HEAD;
    if (job->n_inputs != 1 || job->n_outputs != 1 || job->linear < 0 ||
        (job->linear >= LB_LINEAR_COUNT && !lm_head) ||
        (lm_head && strcmp(job->tensor, LB_JOB_LM_HEAD_TENSOR) != 0))
        return lb_err_set(err, LB_EINVAL, "quantize-linear job %s: malformed (inputs %d, "
                          "outputs %d, linear %d, tensor %s)", job->id, (int)job->n_inputs,
                          (int)job->n_outputs, (int)job->linear, job->tensor);
    int64_t rows = cfg->vocab_size, cols = cfg->hidden_size;
    if (!lm_head)
        lb_linear_shape(cfg, (lb_linear)job->linear, &rows, &cols);
    /* a tied lm_head is the embedding matrix */
    const char *src_name = lm_head && cfg->tie_word_embeddings ? "model.embed_tokens.weight"
                                                               : job->tensor;
    float *W = NULL, *H = NULL;
    lb_st *hst = NULL;
    lb_qresult res;
    memset(&res, 0, sizeof res);
    int rc = lb_store_open_artifact(ctx->store, job->inputs[0].hex, "hessian", &hst, err);
    if (rc)
        goto done;
    const lb_st_tensor *t = lb_st_find(hst, "S");
    const char *nts = lb_st_metadata_get(hst, "lowbit.ntok");
    char *end = NULL;
    long long ntok = nts ? strtoll(nts, &end, 10) : -1;
    if (!t || t->dtype != LB_DTYPE_F64 || t->ndim != 2 || t->shape[0] != cols ||
        t->shape[1] != cols || !nts || *end != '\0' || ntok <= 0) {
        rc = lb_err_set(err, LB_EFORMAT, "Hessian artifact %s: expected F64 S (%lld, %lld) and "
                        "lowbit.ntok > 0", job->inputs[0].hex, (long long)cols, (long long)cols);
        goto done;
    }
    W = lb_quant_big_alloc((size_t)rows * (size_t)cols * sizeof *W);
    H = lb_quant_big_alloc((size_t)cols * (size_t)cols * sizeof *H);
    if (!W || !H) {
        rc = lb_err_set(err, LB_ENOMEM, "quantize-linear %s: out of memory", job->tensor);
        goto done;
    }
    if ((rc = lb_hessian_from_sums(t->data, cols, (int64_t)ntok, H, err)))
        goto done;
    if ((rc = lb_st_read_f32(lb_model_tensors(ctx->model), src_name, W, rows * cols, err)))
        goto done;
    if ((rc = lb_qmethod_quantize(m, W, rows, cols, H, &job->opts, &res, err))) {
        lb_err_prefix(err, "%s (%s)", job->tensor, job->method);
        goto done;
    }
    *bpw = lb_qpacked_bpw(&res.packed);
    char desc[512];
    lb_exec_describe_opts(&job->opts, desc, sizeof desc);
    rc = lb_store_put_qlinear(ctx->store, job->outputs[0].hex, job->tensor, desc, &res.packed,
                              err);
done:
    lb_qresult_free(&res);
    lb_st_free(&hst);
    free(W);
    free(H);
    return rc;
}

/* DISTILL(b): inputs X_q(b), X_fp(b), the 7 packed linears (lb_linear order);
 * outputs the 7 distilled packed linears and, when there are 8, X_fp(b+1).
 * Teacher target Y_t = fp block b on X_fp(b) (= X_fp(b+1)); student input X_q(b). */
int lb_exec_distill(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    if (job->n_inputs != 2 + LB_LINEAR_COUNT || job->n_chunks > 0 ||
        (job->n_outputs != LB_LINEAR_COUNT && job->n_outputs != LB_LINEAR_COUNT + 1) ||
        job->block < 0)
        return lb_err_set(err, LB_EINVAL, "distill job %s: %d inputs / %d outputs, expected "
                          "X_q + X_fp + 7 linears / 7 linears [+ X_fp next]", job->id,
                          (int)job->n_inputs, (int)job->n_outputs);
    const int64_t ntok = job->n_seq * job->seq_len, dim = cfg->hidden_size;
    lb_block_weights w;
    memset(&w, 0, sizeof w);
    lb_qpacked pk[LB_LINEAR_COUNT];
    memset(pk, 0, sizeof pk);
    lb_qpacked *pp[LB_LINEAR_COUNT];
    char *opt_desc[LB_LINEAR_COUNT] = {NULL};
    float *xs = NULL, *yt = NULL;
    lb_st *xst = NULL;
    const uint8_t *xdata = NULL;
    int rc = lb_model_load_block(ctx->model, job->block, &w, err);
    if (rc)
        goto done;
    xs = malloc((size_t)ntok * (size_t)dim * sizeof *xs);
    yt = malloc((size_t)ntok * (size_t)dim * sizeof *yt);
    if (!xs || !yt) {
        rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory for (%lld, %lld) activations",
                        (long long)ntok, (long long)dim);
        goto done;
    }
    /* fp weights on the fp stream: the teacher's output */
    if ((rc = lb_exec_run_block(ctx, job, job->inputs[1].hex, &w, yt, err)))
        goto done;
    if ((rc = lb_exec_open_x(ctx, job->inputs[0].hex, ntok, dim, &xst, &xdata, err)))
        goto done;
    memcpy(xs, xdata, (size_t)ntok * (size_t)dim * sizeof *xs);
    lb_st_free(&xst);
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        const char *id = job->inputs[2 + l].hex;
        if ((rc = lb_store_open_artifact(ctx->store, id, "qlinear", &xst, err)))
            goto done;
        const char *on = lb_st_metadata_get(xst, "lowbit.options");
        opt_desc[l] = strdup(on ? on : "");
        lb_st_free(&xst);
        if (!opt_desc[l]) {
            rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory");
            goto done;
        }
        if ((rc = lb_store_get_qlinear(ctx->store, id, &pk[l], err)))
            goto done;
        int64_t rows, cols;
        lb_linear_shape(cfg, (lb_linear)l, &rows, &cols);
        if (pk[l].rows != rows || pk[l].cols != cols) {
            rc = lb_err_set(err, LB_EFORMAT, "artifact %s: packed shape (%lld, %lld), expected "
                            "(%lld, %lld)", id, (long long)pk[l].rows, (long long)pk[l].cols,
                            (long long)rows, (long long)cols);
            goto done;
        }
        pp[l] = &pk[l];
    }
    lb_distill_stats st;
    if ((rc = lb_distill_block(cfg, &w, pp, xs, yt, job->n_seq, job->seq_len, &job->distill,
                               &st, err))) {
        lb_err_prefix(err, "distill block %d", (int)job->block);
        goto done;
    }
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        char name[LB_JOB_TENSOR_MAX];
        if ((rc = lb_model_linear_tensor_name(name, sizeof name, job->block, (lb_linear)l, err)) ||
            (rc = lb_store_put_qlinear(ctx->store, job->outputs[l].hex, name, opt_desc[l],
                                       &pk[l], err)))
            goto done;
    }
    if (job->n_outputs == LB_LINEAR_COUNT + 1)
        rc = lb_exec_put_x(ctx, job->outputs[LB_LINEAR_COUNT].hex, yt, ntok, dim, err);
done:
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        lb_qpacked_free(&pk[l]);
        free(opt_desc[l]);
    }
    lb_st_free(&xst);
    free(xs);
    free(yt);
    lb_block_weights_free(&w);
    return rc;
}

int lb_exec_merge(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err)
{
    int n = job->n_inputs, rc = 0;
    lb_packed_entry *e = calloc((size_t)(n > 0 ? n : 1), sizeof *e);
    char **names = calloc((size_t)(n > 0 ? n : 1), sizeof *names);
    char **paths = calloc((size_t)(n > 0 ? n : 1), sizeof *paths);
    char **opts = calloc((size_t)(n > 0 ? n : 1), sizeof *opts);
    if (!e || !names || !paths || !opts) {
        rc = lb_err_set(err, LB_ENOMEM, "merge: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        lb_st *st = NULL;
        if ((rc = lb_store_open_artifact(ctx->store, job->inputs[i].hex, "qlinear", &st, err)))
            goto done;
        const char *tn = lb_st_metadata_get(st, "lowbit.tensor");
        const char *on = lb_st_metadata_get(st, "lowbit.options");
        names[i] = tn ? strdup(tn) : NULL;
        opts[i] = strdup(on ? on : "");
        lb_st_free(&st);
        paths[i] = lb_store_path(ctx->store, job->inputs[i].hex);
        if (!names[i] || !opts[i] || !paths[i]) {
            rc = lb_err_set(err, LB_EFORMAT, "merge: artifact %s lacks lowbit.tensor",
                            job->inputs[i].hex);
            goto done;
        }
        e[i].name = names[i];
        e[i].packed = NULL;
        e[i].packed_path = paths[i];
        e[i].options = opts[i];
    }
    lb_packed_info info = {job->method, job->opts.bits,
                           job->options_json[0] ? job->options_json : NULL};
    lb_packed_summary sum;
    memset(&sum, 0, sizeof sum);
    if ((rc = lb_packed_write(job->out_dir, ctx->model, e, n, &info, &sum, err)))
        goto done;
    *bpw = sum.bpw;
done:
    for (int i = 0; i < n && names && paths && opts; i++) {
        free(names[i]);
        free(paths[i]);
        free(opts[i]);
    }
    free(names);
    free(paths);
    free(opts);
    free(e);
    return rc;
}
