/* lb_exec_measure: measure and propagate-fp jobs (see lb_exec_measure.h). */
#include "lb_exec_measure.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_forward.h"
#include "lb_hessian.h"
#include "lb_qpacked_io.h"
#include "lb_rotate.h"

static const char *const value_names[LB_MEAS_COUNT] = {
    "bits", "weights", "rel_err", "out_err", "out_abs", "block_err", "block_abs", "kl"};

const char *lb_measure_value_name(int k)
{
    return k >= 0 && k < LB_MEAS_COUNT ? value_names[k] : "?";
}

int lb_measure_proxy_index(const char *name)
{
    for (int k = LB_MEAS_REL_ERR; name && k < LB_MEAS_COUNT; k++)
        if (!strcmp(name, value_names[k]))
            return k;
    return -1;
}

/* x (n_seq * seq_len, dim) through block w in place, in the chunks of whole
 * sequences every other job uses (lb_exec_chunk_seqs), so the bits match. */
static int fp_block_n(const lb_config *cfg, int64_t n_seq, int64_t seq_len,
                      const lb_block_weights *w, float *x, lb_err *err)
{
    const int64_t cs = lb_exec_chunk_seqs(n_seq, seq_len), dim = cfg->hidden_size;
    lb_fwd_workspace *ws = NULL;
    int rc = lb_fwd_workspace_new(cfg, cs * seq_len, seq_len, &ws, err);
    for (int64_t s0 = 0; !rc && s0 < n_seq; s0 += cs) {
        int64_t ns = n_seq - s0 < cs ? n_seq - s0 : cs;
        rc = lb_fwd_block(cfg, w, x + (size_t)(s0 * seq_len) * (size_t)dim, ns, seq_len, ws,
                          NULL, err);
    }
    lb_fwd_workspace_free(&ws);
    return rc;
}

static int fp_block(const lb_config *cfg, const lb_job *job, const lb_block_weights *w, float *x,
                    lb_err *err)
{
    return fp_block_n(cfg, job->n_seq, job->seq_len, w, x, err);
}

int64_t lb_measure_kl_windows(int64_t n_seq, int64_t seq_len)
{
    int64_t n = n_seq < LB_MEASURE_KL_WINDOWS ? n_seq : LB_MEASURE_KL_WINDOWS;
    if (seq_len > 0 && n * seq_len > LB_MEASURE_KL_TOKENS)
        n = LB_MEASURE_KL_TOKENS / seq_len;
    return n < 1 && n_seq > 0 ? 1 : n;
}

/* log-softmax of one row of logits, in float64 */
static void log_softmax(const float *z, int64_t n, double *out)
{
    double mx = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; i++)
        mx = (double)z[i] > mx ? (double)z[i] : mx;
    for (int64_t i = 0; i < n; i++)
        s += exp((double)z[i] - mx);
    const double lse = mx + log(s);
    for (int64_t i = 0; i < n; i++)
        out[i] = (double)z[i] - lse;
}

int lb_measure_kl(const lb_model *m, int32_t block, const float *yq, const float *yfp,
                  int64_t n_seq, int64_t seq_len, double *kl, lb_err *err)
{
    const lb_config *cfg = lb_model_config(m);
    const int64_t dim = cfg->hidden_size, vocab = cfg->vocab_size, ntok = n_seq * seq_len;
    lb_block_weights w;
    memset(&w, 0, sizeof w);
    lb_head_weights head;
    memset(&head, 0, sizeof head);
    float *a = malloc((size_t)ntok * (size_t)dim * sizeof *a);
    float *c = malloc((size_t)ntok * (size_t)dim * sizeof *c);
    float *lf = malloc((size_t)seq_len * (size_t)vocab * sizeof *lf);
    float *lq = malloc((size_t)seq_len * (size_t)vocab * sizeof *lq);
    double *pf = malloc((size_t)vocab * sizeof *pf), *pq = malloc((size_t)vocab * sizeof *pq);
    int rc = 0;
    if (!a || !c || !lf || !lq || !pf || !pq) {
        rc = lb_err_set(err, LB_ENOMEM, "kl proxy: out of memory for %lld tokens",
                        (long long)ntok);
        goto fail;
    }
    memcpy(a, yfp, (size_t)ntok * (size_t)dim * sizeof *a);
    memcpy(c, yq, (size_t)ntok * (size_t)dim * sizeof *c);
    for (int32_t b = block + 1; b < cfg->num_hidden_layers; b++) {
        if ((rc = lb_model_load_block(m, b, &w, err)) ||
            (rc = fp_block_n(cfg, n_seq, seq_len, &w, a, err)) ||
            (rc = fp_block_n(cfg, n_seq, seq_len, &w, c, err)))
            goto fail;
        lb_block_weights_free(&w);
    }
    if ((rc = lb_model_load_head(m, &head, err)))
        goto fail;
    double sum = 0;
    for (int64_t s = 0; s < n_seq; s++) {
        const size_t off = (size_t)(s * seq_len) * (size_t)dim;
        lb_fwd_logits(cfg, &head, a + off, seq_len, lf);
        lb_fwd_logits(cfg, &head, c + off, seq_len, lq);
        for (int64_t t = 0; t < seq_len; t++) {
            log_softmax(lf + (size_t)t * (size_t)vocab, vocab, pf);
            log_softmax(lq + (size_t)t * (size_t)vocab, vocab, pq);
            double k = 0;
            for (int64_t v = 0; v < vocab; v++)
                k += exp(pf[v]) * (pf[v] - pq[v]);
            sum += k;
        }
    }
    *kl = sum / (double)ntok;
fail:
    lb_block_weights_free(&w);
    lb_head_weights_free(&head);
    free(a);
    free(c);
    free(lf);
    free(lq);
    free(pf);
    free(pq);
    return rc;
}

/* Copies activation artifact id (ntok, dim) into x. */
static int read_x(const lb_exec_ctx *ctx, const char *id, int64_t ntok, int64_t dim, float *x,
                  lb_err *err)
{
    lb_st *st = NULL;
    int rc = lb_store_open_artifact(ctx->store, id, "activations", &st, err);
    if (rc)
        return rc;
    const lb_st_tensor *t = lb_st_find(st, "x");
    if (!t || t->dtype != LB_DTYPE_F32 || t->ndim != 2 || t->shape[0] != ntok ||
        t->shape[1] != dim)
        rc = lb_err_set(err, LB_EFORMAT, "artifact %s: no F32 tensor x of shape (%lld, %lld); "
                        "delete it to recompute", id, (long long)ntok, (long long)dim);
    else
        memcpy(x, t->data, (size_t)ntok * (size_t)dim * sizeof *x);
    lb_st_free(&st);
    return rc;
}

int lb_exec_propagate_fp(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    if (job->n_inputs != 1 || job->n_outputs != 1 || job->block < 0 ||
        job->block >= cfg->num_hidden_layers || job->n_chunks > 0)
        return lb_err_set(err, LB_EINVAL, "propagate-fp job %s: malformed (inputs %d, outputs "
                          "%d, block %d)", job->id, (int)job->n_inputs, (int)job->n_outputs,
                          (int)job->block);
    const int64_t ntok = job->n_seq * job->seq_len, dim = cfg->hidden_size;
    lb_block_weights w;
    memset(&w, 0, sizeof w);
    float *x = malloc((size_t)ntok * (size_t)dim * sizeof *x);
    int rc = 0;
    if (!x) {
        rc = lb_err_set(err, LB_ENOMEM, "propagate-fp: out of memory for (%lld, %lld)",
                        (long long)ntok, (long long)dim);
        goto done;
    }
    if ((rc = read_x(ctx, job->inputs[0].hex, ntok, dim, x, err)) ||
        (rc = lb_model_load_block(ctx->model, job->block, &w, err)) ||
        (rc = fp_block(cfg, job, &w, x, err)))
        goto done;
    lb_artifact_tensor t = {"x", LB_DTYPE_F32, 2, {ntok, dim, 0, 0}, x,
                            (size_t)ntok * (size_t)dim * sizeof(float)};
    rc = lb_store_put(ctx->store, job->outputs[0].hex, "activations", &t, 1, NULL, 0, err);
done:
    lb_block_weights_free(&w);
    free(x);
    return rc;
}

int lb_exec_measure(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    const lb_qmethod *m = lb_qmethod_find(job->method);
    if (!m)
        return lb_err_set(err, LB_EINVAL, "measure %s: unknown method \"%s\"", job->tensor,
                          job->method);
    if (job->n_inputs != 3 || job->n_outputs != 1 || job->linear < 0 ||
        job->linear >= LB_LINEAR_COUNT || job->block < 0 ||
        job->block >= cfg->num_hidden_layers || job->n_chunks > 0)
        return lb_err_set(err, LB_EINVAL, "measure job %s: malformed (inputs %d, outputs %d, "
                          "block %d, linear %d)", job->id, (int)job->n_inputs,
                          (int)job->n_outputs, (int)job->block, (int)job->linear);
    const lb_linear lin = (lb_linear)job->linear;
    int64_t rows, cols;
    lb_linear_shape(cfg, lin, &rows, &cols);
    const int64_t ntok = job->n_seq * job->seq_len, dim = cfg->hidden_size;
    lb_block_weights w;
    memset(&w, 0, sizeof w);
    lb_qresult res;
    memset(&res, 0, sizeof res);
    lb_st *hst = NULL;
    float *H = NULL, *x0 = NULL, *y = NULL, *yfp = NULL;
    int rc = lb_store_open_artifact(ctx->store, job->inputs[2].hex, "hessian", &hst, err);
    if (rc)
        goto done;
    const lb_st_tensor *t = lb_st_find(hst, "S");
    const char *nts = lb_st_metadata_get(hst, "lowbit.ntok");
    char *end = NULL;
    long long hn = nts ? strtoll(nts, &end, 10) : -1;
    if (!t || t->dtype != LB_DTYPE_F64 || t->ndim != 2 || t->shape[0] != cols ||
        t->shape[1] != cols || !nts || *end != '\0' || hn <= 0) {
        rc = lb_err_set(err, LB_EFORMAT, "Hessian artifact %s: expected F64 S (%lld, %lld) and "
                        "lowbit.ntok > 0", job->inputs[2].hex, (long long)cols, (long long)cols);
        goto done;
    }
    H = lb_quant_big_alloc((size_t)cols * (size_t)cols * sizeof *H);
    x0 = malloc((size_t)ntok * (size_t)dim * sizeof *x0);
    y = malloc((size_t)ntok * (size_t)dim * sizeof *y);
    yfp = malloc((size_t)ntok * (size_t)dim * sizeof *yfp);
    if (!H || !x0 || !y || !yfp) {
        rc = lb_err_set(err, LB_ENOMEM, "measure %s: out of memory", job->tensor);
        goto done;
    }
    if ((rc = lb_hessian_from_sums(t->data, cols, (int64_t)hn, H, err)) ||
        (rc = lb_model_load_block(ctx->model, job->block, &w, err)))
        goto done;
    float *W = lb_block_linear(&w, lin);
    if ((rc = lb_qmethod_quantize(m, W, rows, cols, H, &job->opts, &res, err))) {
        lb_err_prefix(err, "%s (%s)", job->tensor, job->method);
        goto done;
    }
    double v[LB_MEAS_COUNT] = {0};
    v[LB_MEAS_BITS] = 8.0 * (double)lb_qpacked_io_nbytes(&res.packed);
    v[LB_MEAS_WEIGHTS] = (double)(rows * cols);
    double dw2 = 0, w2 = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
        double d = (double)W[i] - (double)res.W_hat[i];
        dw2 += d * d;
        w2 += (double)W[i] * (double)W[i];
    }
    v[LB_MEAS_REL_ERR] = w2 > 0 ? dw2 / w2 : 0;
    double oe = 0, oref = 0;
    if ((rc = lb_quant_error(W, res.W_hat, rows, cols, H, &oe, &oref, err)))
        goto done;
    v[LB_MEAS_OUT_ERR] = oref > 0 ? oe / oref : 0;
    v[LB_MEAS_OUT_ABS] = oe;
    /* block output with only this linear quantized, against the stored fp output */
    memcpy(W, res.W_hat, (size_t)(rows * cols) * sizeof *W);
    if ((rc = read_x(ctx, job->inputs[0].hex, ntok, dim, x0, err)) ||
        (rc = read_x(ctx, job->inputs[1].hex, ntok, dim, yfp, err)))
        goto done;
    memcpy(y, x0, (size_t)ntok * (size_t)dim * sizeof *y);
    if ((rc = fp_block(cfg, job, &w, y, err)))
        goto done;
    double dy2 = 0, c2 = 0;
    for (int64_t i = 0; i < ntok * dim; i++) {
        double d = (double)y[i] - (double)yfp[i], c = (double)yfp[i] - (double)x0[i];
        dy2 += d * d;
        c2 += c * c;
    }
    v[LB_MEAS_BLOCK_ERR] = c2 > 0 ? dy2 / c2 : 0;
    v[LB_MEAS_BLOCK_ABS] = dy2 / (double)ntok;
    /* depth: the model output KL on the first windows (y and yfp rows are whole
     * sequences, so the first n windows are a prefix) */
    const int64_t nkl = lb_measure_kl_windows(job->n_seq, job->seq_len);
    if ((rc = lb_measure_kl(ctx->model, job->block, y, yfp, nkl, job->seq_len,
                            &v[LB_MEAS_KL], err))) {
        lb_err_prefix(err, "measure %s (%s)", job->tensor, job->method);
        goto done;
    }
    for (int k = 0; k < LB_MEAS_COUNT; k++)
        if (!isfinite(v[k])) {
            rc = lb_err_set(err, LB_ENUMERIC, "measure %s (%s): %s is not finite",
                            job->tensor, job->method, value_names[k]);
            goto done;
        }
    *bpw = v[LB_MEAS_BITS] / v[LB_MEAS_WEIGHTS];
    char desc[512];
    lb_exec_describe_opts(&job->opts, desc, sizeof desc);
    const char *meta[] = {"lowbit.tensor", job->tensor, "lowbit.method", job->method,
                          "lowbit.options", desc, "lowbit.proxy_version",
                          LB_MEASURE_PROXY_VERSION};
    lb_artifact_tensor mt = {"m", LB_DTYPE_F64, 1, {LB_MEAS_COUNT, 0, 0, 0}, v, sizeof v};
    rc = lb_store_put(ctx->store, job->outputs[0].hex, "measure", &mt, 1, meta, 4, err);
done:
    lb_qresult_free(&res);
    lb_st_free(&hst);
    lb_block_weights_free(&w);
    free(H);
    free(x0);
    free(y);
    free(yfp);
    return rc;
}

int lb_measure_read(const lb_store *store, const char *id, double *v, lb_err *err)
{
    lb_st *st = NULL;
    int rc = lb_store_open_artifact(store, id, "measure", &st, err);
    if (rc)
        return rc;
    const lb_st_tensor *t = lb_st_find(st, "m");
    if (!t || t->dtype != LB_DTYPE_F64 || t->numel != LB_MEAS_COUNT)
        rc = lb_err_set(err, LB_EFORMAT, "measure artifact %s: no F64 m of %d values; delete "
                        "it to measure again", id, LB_MEAS_COUNT);
    else
        memcpy(v, t->data, LB_MEAS_COUNT * sizeof *v);
    lb_st_free(&st);
    return rc;
}
