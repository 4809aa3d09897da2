/* lb_exec: the job executor (see lb_exec.h): the job checks and dispatch, chunk
 * geometry and the model/artifact helpers the job files share (lb_exec_priv.h). */
#include "lb_exec.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_exec_measure.h"
#include "lb_exec_priv.h"
#include "lb_io_util.h"
#include "lb_qopts_parse.h"
#include "lb_qpacked_io.h"
#include "lb_rotate.h"
#include "lb_sha256.h"
#include "lb_time.h"

int lb_exec_model_fingerprint(const lb_model *m, char hex[LB_ID_HEX], lb_err *err)
{
    char *cfg_path = lb_io_path_join(lb_model_dir(m), "config.json");
    char *text = NULL;
    size_t len = 0;
    if (!cfg_path)
        return lb_err_set(err, LB_ENOMEM, "fingerprint: out of memory");
    int rc = lb_io_read_file(cfg_path, 1u << 24, &text, &len, err);
    free(cfg_path);
    if (rc)
        return rc;
    lb_sha256 h;
    lb_sha256_init(&h);
    lb_sha256_update(&h, "lowbit-model-v1", 15);
    lb_sha256_update(&h, text, len);
    free(text);
    const lb_st *st = lb_model_tensors(m);
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        char head[512];
        int n = snprintf(head, sizeof head, "|%s|%d|%d", t->name, (int)t->dtype, (int)t->ndim);
        lb_sha256_update(&h, head, (size_t)n);
        for (int32_t d = 0; d < t->ndim; d++) {
            n = snprintf(head, sizeof head, ",%lld", (long long)t->shape[d]);
            lb_sha256_update(&h, head, (size_t)n);
        }
        lb_sha256_update(&h, t->data, t->nbytes);
    }
    uint8_t d[LB_SHA256_DIGEST];
    lb_sha256_final(&h, d);
    lb_sha256_to_hex(d, hex);
    return 0;
}

void lb_exec_describe_opts(const lb_qopts *o, char *buf, size_t size)
{
    lb_qopts_describe(o, buf, size); /* generated from lb_qopts_table.h */
}

int lb_exec_load_qlinear(const lb_store *store, const char *id, int64_t rows, int64_t cols,
                         float *W, lb_err *err)
{
    lb_qpacked p;
    int rc = lb_store_get_qlinear(store, id, &p, err);
    if (rc)
        return rc;
    const lb_qmethod *m = lb_qmethod_find(p.method);
    if (!m)
        rc = lb_err_set(err, LB_EFORMAT, "artifact %s: unknown method \"%s\"", id, p.method);
    else if (p.rows != rows || p.cols != cols)
        rc = lb_err_set(err, LB_EFORMAT, "artifact %s: packed shape (%lld, %lld), expected "
                        "(%lld, %lld)", id, (long long)p.rows, (long long)p.cols,
                        (long long)rows, (long long)cols);
    else
        rc = lb_qmethod_dequantize(m, &p, W, err);
    lb_qpacked_free(&p);
    return rc;
}

/* X artifact: "x" F32 (ntok, dim). Borrowed view into the mapping. */
int lb_exec_open_x(const lb_exec_ctx *ctx, const char *id, int64_t ntok, int64_t dim, lb_st **st,
                   const uint8_t **data, lb_err *err)
{
    int rc = lb_store_open_artifact(ctx->store, id, "activations", st, err);
    if (rc)
        return rc;
    const lb_st_tensor *t = lb_st_find(*st, "x");
    if (!t || t->dtype != LB_DTYPE_F32 || t->ndim != 2 || t->shape[0] != ntok ||
        t->shape[1] != dim) {
        lb_st_free(st);
        return lb_err_set(err, LB_EFORMAT, "artifact %s: no F32 tensor x of shape (%lld, %lld)",
                          id, (long long)ntok, (long long)dim);
    }
    *data = t->data;
    return 0;
}

int lb_exec_put_x(const lb_exec_ctx *ctx, const char *id, const float *x, int64_t ntok,
                  int64_t dim, lb_err *err)
{
    lb_artifact_tensor t = {"x", LB_DTYPE_F32, 2, {ntok, dim, 0, 0}, x,
                            (size_t)ntok * (size_t)dim * sizeof(float)};
    return lb_store_put(ctx->store, id, "activations", &t, 1, NULL, 0, err);
}

int64_t lb_exec_chunk_seqs(int64_t n_seq, int64_t seq_len)
{
    if (n_seq < 1 || seq_len < 1)
        return 1;
    int64_t by_tokens = LB_EXEC_CHUNK_TOKENS / seq_len;
    int64_t by_count = n_seq / LB_EXEC_MIN_CHUNKS;
    int64_t cs = by_tokens < by_count ? by_tokens : by_count;
    return cs < 1 ? 1 : cs;
}

int64_t lb_exec_chunk_count(int64_t n_seq, int64_t seq_len)
{
    if (n_seq < 1)
        return 0;
    int64_t cs = lb_exec_chunk_seqs(n_seq, seq_len);
    return (n_seq + cs - 1) / cs;
}

int lb_exec_chunk_span(int64_t n_seq, int64_t seq_len, int32_t n_chunks, int32_t c,
                       int64_t *e0, int64_t *ne, int64_t *t0, int64_t *nt)
{
    const int64_t n_exec = lb_exec_chunk_count(n_seq, seq_len);
    if (n_chunks < 1 || n_chunks > n_exec || c < 0 || c >= n_chunks)
        return LB_EINVAL;
    const int64_t a = (int64_t)c * n_exec / n_chunks, b = ((int64_t)c + 1) * n_exec / n_chunks;
    const int64_t cs = lb_exec_chunk_seqs(n_seq, seq_len);
    const int64_t s1 = b * cs < n_seq ? b * cs : n_seq;
    *e0 = a;
    *ne = b - a;
    *t0 = a * cs * seq_len;
    *nt = (s1 - a * cs) * seq_len;
    return 0;
}

int lb_exec_put_hessian(const lb_exec_ctx *ctx, const char *id, const lb_hessian *h, lb_err *err)
{
    int64_t cols = lb_hessian_cols(h), ntok;
    double *S = malloc((size_t)cols * (size_t)cols * sizeof *S);
    if (!S)
        return lb_err_set(err, LB_ENOMEM, "out of memory for a (%lld, %lld) Hessian",
                          (long long)cols, (long long)cols);
    lb_hessian_get_sums(h, S, &ntok);
    char nt[32];
    snprintf(nt, sizeof nt, "%lld", (long long)ntok);
    const char *meta[] = {"lowbit.ntok", nt};
    lb_artifact_tensor t = {"S", LB_DTYPE_F64, 2, {cols, cols, 0, 0}, S,
                            (size_t)cols * (size_t)cols * sizeof(double)};
    int rc = lb_store_put(ctx->store, id, "hessian", &t, 1, meta, 1, err);
    free(S);
    return rc;
}

/* The checks lb_exec_run makes before any job. */
int lb_exec_check_job(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    if (strcmp(job->model_fp, ctx->model_fp) != 0)
        return lb_err_set(err, LB_ESTATE, "job %s is for model %.12s..., this worker holds "
                          "%.12s...; give it the job's model", job->id, job->model_fp,
                          ctx->model_fp);
    if (job->type != LB_JOB_MERGE && (job->n_inputs < 1 || job->n_seq <= 0 || job->seq_len <= 0))
        return lb_err_set(err, LB_EINVAL, "job %s: no inputs or empty calibration", job->id);
    return 0;
}

int lb_exec_run(const lb_job *job, const lb_exec_ctx *ctx, lb_job_result *res)
{
    memset(res, 0, sizeof *res);
    memcpy(res->job_id, job->id, LB_ID_HEX);
    double t0 = lb_now_s();
    lb_err err;
    lb_err_clear(&err);
    int rc;
    if ((rc = lb_exec_check_job(job, ctx, &err))) {
        /* err names the problem */
    } else {
        omp_set_num_threads(ctx->omp_threads > 0 ? ctx->omp_threads : 1);
        switch (job->type) {
        case LB_JOB_COLLECT_HESSIAN: rc = lb_exec_collect(job, ctx, &err); break;
        case LB_JOB_QUANTIZE_LINEAR: rc = lb_exec_quantize(job, ctx, &res->bpw, &err); break;
        case LB_JOB_PROPAGATE: rc = lb_exec_propagate(job, ctx, &err); break;
        case LB_JOB_MERGE: rc = lb_exec_merge(job, ctx, &res->bpw, &err); break;
        case LB_JOB_DISTILL: rc = lb_exec_distill(job, ctx, &err); break;
        case LB_JOB_REDUCE_HESSIAN: rc = lb_exec_reduce(job, ctx, &err); break;
        case LB_JOB_MEASURE: rc = lb_exec_measure(job, ctx, &res->bpw, &err); break;
        case LB_JOB_PROPAGATE_FP: rc = lb_exec_propagate_fp(job, ctx, &err); break;
        default: rc = lb_err_set(&err, LB_EINVAL, "job %s: unknown type %d", job->id,
                                 (int)job->type);
        }
    }
    res->seconds = lb_now_s() - t0;
    if (rc) {
        res->status = LB_JOB_FAILED;
        res->err_code = rc;
        snprintf(res->error, sizeof res->error, "%s", err.msg);
        return rc;
    }
    res->status = LB_JOB_OK;
    res->n_outputs = job->n_outputs;
    memcpy(res->outputs, job->outputs, sizeof res->outputs);
    return 0;
}
