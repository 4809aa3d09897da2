/* lb_exec_collect: the collect-hessian jobs (whole, chunk, lm_head) and the
 * reduce-hessian job that adds chunk partials in the unchunked order. */
#include "lb_exec_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_forward.h"
#include "lb_hessian.h"

/* COLLECT stage LM_HEAD: X_L (the last block's output) -> rms(X_L, final
 * norm) -> the lm_head input Hessian S = Σ x xᵀ (dim, dim), chunk by chunk. */
static int exec_collect_lm_head(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    const int64_t dim = cfg->hidden_size, ntok = job->n_seq * job->seq_len;
    /* X_L whole, or as the K chunks of a chunked plan (in chunk order) */
    const int nx = job->n_chunks > 0 ? job->n_chunks : 1;
    if (job->n_inputs != nx || job->n_outputs != 1 || job->block != cfg->num_hidden_layers ||
        job->chunk >= 0)
        return lb_err_set(err, LB_EINVAL, "lm_head collect job %s: %d inputs / %d outputs at "
                          "block %d, expected %d / 1 at block %d", job->id, (int)job->n_inputs,
                          (int)job->n_outputs, (int)job->block, nx,
                          (int)cfg->num_hidden_layers);
    lb_exec_xsrc xs;
    memset(&xs, 0, sizeof xs);
    lb_hessian *h = NULL;
    float *norm = NULL, *x = NULL;
    int64_t chunk = ntok < LB_EXEC_CHUNK_TOKENS ? ntok : LB_EXEC_CHUNK_TOKENS;
    int64_t *r0 = calloc((size_t)nx, sizeof *r0), *rn = calloc((size_t)nx, sizeof *rn);
    int rc = 0;
    if (!r0 || !rn) {
        rc = lb_err_set(err, LB_ENOMEM, "lm_head collect: out of memory");
        goto done;
    }
    rn[0] = ntok;
    for (int c = 0; c < nx && job->n_chunks > 0; c++) {
        int64_t e0, ne;
        if (lb_exec_chunk_span(job->n_seq, job->seq_len, job->n_chunks, c, &e0, &ne, &r0[c],
                               &rn[c])) {
            rc = lb_err_set(err, LB_EINVAL, "lm_head collect job %s: %d chunks of %lld "
                            "windows", job->id, (int)job->n_chunks, (long long)job->n_seq);
            goto done;
        }
    }
    if ((rc = lb_exec_xsrc_open(&xs, ctx, job->inputs, nx, r0, rn, dim, err)))
        goto done;
    norm = malloc((size_t)dim * sizeof *norm);
    x = malloc((size_t)chunk * (size_t)dim * sizeof *x);
    if (!norm || !x) {
        rc = lb_err_set(err, LB_ENOMEM, "lm_head collect: out of memory for %lld-token chunks",
                        (long long)chunk);
        goto done;
    }
    if ((rc = lb_st_read_f32(lb_model_tensors(ctx->model), "model.norm.weight", norm, dim, err)) ||
        (rc = lb_hessian_new(dim, &h, err)))
        goto done;
    for (int64_t t0 = 0; t0 < ntok; t0 += chunk) {
        int64_t nt = ntok - t0 < chunk ? ntok - t0 : chunk;
        if ((rc = lb_exec_xsrc_copy(&xs, t0, nt, x, err)))
            goto done;
        lb_fwd_final_norm(cfg, norm, x, nt, dim);
        if ((rc = lb_hessian_add_chunk(h, x, nt, dim, err)))
            goto done;
    }
    rc = lb_exec_put_hessian(ctx, job->outputs[0].hex, h, err);
done:
    lb_hessian_free(&h);
    lb_exec_xsrc_free(&xs);
    free(r0);
    free(rn);
    free(norm);
    free(x);
    return rc;
}

/* Capture width of Hessian slot k (attn_in, attn_out, mlp_in, mlp_act). */
static int64_t slot_width(const lb_config *cfg, int k)
{
    return k == 1 ? lb_config_q_dim(cfg) : k == 3 ? cfg->intermediate_size : cfg->hidden_size;
}

/* collect-hessian chunk job c of K: runs its window range and stores, per output
 * Hessian, a "hpart" artifact the reduce adds in chunk order. Chunk 0 stores its
 * float64 sums S = ((0 + S_0) + S_1) + ... (upper triangle, tensor "S"); a later
 * chunk cannot pre-add (float64 addition is not associative) and stores the float32
 * product of each of its block chunks (tensor "C", (chunks, triangle)). */
static int exec_collect_chunk(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    lb_exec_part *p = NULL;
    lb_hessian *hs[4] = {NULL, NULL, NULL, NULL};
    float *tri32[4] = {NULL, NULL, NULL, NULL};
    double *tri64 = NULL;
    int rc = lb_exec_part_open_any(job, ctx, &p, err);
    if (rc)
        return rc;
    const int nh = p->n_hessians;
    const int64_t e0 = p->br.e0, ne = p->br.ne;
    for (int k = 0; !rc && k < nh; k++) {
        int64_t cnt = lb_hessian_upper_count(lb_exec_part_hessian_width(p, k));
        if ((rc = lb_hessian_new(lb_exec_part_hessian_width(p, k), &hs[k], err)))
            break;
        if (job->chunk > 0 && !(tri32[k] = malloc((size_t)ne * (size_t)cnt * sizeof(float))))
            rc = lb_err_set(err, LB_ENOMEM, "collect-hessian chunk %d: out of memory for %lld "
                            "partial products", (int)job->chunk, (long long)ne);
    }
    for (int64_t i = 0; !rc && i < ne; i++) {
        rc = lb_exec_part_run_chunk(p, e0 + i, hs, NULL, err);
        for (int k = 0; !rc && job->chunk > 0 && k < nh; k++) {
            int64_t cnt = lb_hessian_upper_count(lb_hessian_cols(hs[k]));
            rc = lb_hessian_last_chunk_upper(hs[k], tri32[k] + (size_t)i * (size_t)cnt, err);
        }
    }
    for (int k = 0; !rc && k < nh; k++) {
        const int64_t cols = lb_hessian_cols(hs[k]), cnt = lb_hessian_upper_count(cols);
        char nt[32], first[32], count[32], width[32];
        snprintf(nt, sizeof nt, "%lld", (long long)lb_hessian_tokens(hs[k]));
        snprintf(first, sizeof first, "%lld", (long long)e0);
        snprintf(count, sizeof count, "%lld", (long long)ne);
        snprintf(width, sizeof width, "%lld", (long long)cols);
        const char *meta[] = {"lowbit.ntok", nt, "lowbit.first_chunk", first,
                              "lowbit.chunks", count, "lowbit.cols", width};
        if (job->chunk == 0) {
            free(tri64);
            if (!(tri64 = malloc((size_t)cnt * sizeof *tri64))) {
                rc = lb_err_set(err, LB_ENOMEM, "collect-hessian: out of memory");
                break;
            }
            lb_hessian_get_upper(hs[k], tri64);
            lb_artifact_tensor t = {"S", LB_DTYPE_F64, 1, {cnt, 0, 0, 0}, tri64,
                                    (size_t)cnt * sizeof(double)};
            rc = lb_store_put(ctx->store, job->outputs[k].hex, "hpart", &t, 1, meta, 4, err);
        } else {
            lb_artifact_tensor t = {"C", LB_DTYPE_F32, 2, {ne, cnt, 0, 0}, tri32[k],
                                    (size_t)ne * (size_t)cnt * sizeof(float)};
            rc = lb_store_put(ctx->store, job->outputs[k].hex, "hpart", &t, 1, meta, 4, err);
        }
    }
    for (int k = 0; k < 4; k++) {
        lb_hessian_free(&hs[k]);
        free(tri32[k]);
    }
    free(tri64);
    lb_exec_part_free(&p);
    return rc;
}

/* Reads integer metadata key of st into *v. */
static bool meta_i64(const lb_st *st, const char *key, int64_t *v)
{
    const char *s = lb_st_metadata_get(st, key);
    char *end = NULL;
    if (!s)
        return false;
    long long x = strtoll(s, &end, 10);
    if (!end || *end || end == s)
        return false;
    *v = x;
    return true;
}

/* reduce-hessian: inputs [chunk 0's partials (one per output Hessian), chunk 1's,
 * ...]; each output Hessian is a fresh accumulator fed chunk 0's float64 sums and
 * then every later block chunk's float32 product in order: the additions of the
 * unchunked collect, so the same bits (docs/determinism.md). */
int lb_exec_reduce(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    const int nh = job->stage == LB_STAGE_ALL ? 4 : 1;
    const int K = job->n_chunks;
    if (K < 1 || job->chunk >= 0 || job->stage < LB_STAGE_ALL || job->stage > LB_STAGE_MLP_ACT ||
        job->n_inputs != K * nh || job->n_outputs != nh)
        return lb_err_set(err, LB_EINVAL, "reduce-hessian job %s: %d inputs / %d outputs for "
                          "%d chunks at stage %d, expected %d / %d", job->id,
                          (int)job->n_inputs, (int)job->n_outputs, K, (int)job->stage, K * nh,
                          nh);
    lb_hessian *h = NULL;
    lb_st *st = NULL;
    int rc = 0;
    for (int k = 0; !rc && k < nh; k++) {
        const int64_t cols = slot_width(cfg, nh == 4 ? k : job->stage);
        const int64_t cnt = lb_hessian_upper_count(cols);
        lb_hessian_free(&h);
        if ((rc = lb_hessian_new(cols, &h, err)))
            break;
        for (int c = 0; !rc && c < K; c++) {
            const char *id = job->inputs[c * nh + k].hex;
            int64_t e0, ne, t0, nt, first = -1, count = -1, ntok = -1, w = -1;
            lb_st_free(&st);
            if ((rc = lb_store_open_artifact(ctx->store, id, "hpart", &st, err)))
                break;
            if (lb_exec_chunk_span(job->n_seq, job->seq_len, K, c, &e0, &ne, &t0, &nt) ||
                !meta_i64(st, "lowbit.first_chunk", &first) ||
                !meta_i64(st, "lowbit.chunks", &count) || !meta_i64(st, "lowbit.ntok", &ntok) ||
                !meta_i64(st, "lowbit.cols", &w) || first != e0 || count != ne || w != cols ||
                ntok != nt) {
                rc = lb_err_set(err, LB_EFORMAT, "partial Hessian %s: expected chunk %d of %d "
                                "(block chunks %lld+%lld, %lld tokens, width %lld); it is from "
                                "another plan or corrupted; delete it to recompute", id, c, K,
                                (long long)e0, (long long)ne, (long long)nt, (long long)cols);
                break;
            }
            const lb_st_tensor *s64 = lb_st_find(st, "S"), *c32 = lb_st_find(st, "C");
            if (c == 0 && s64 && s64->dtype == LB_DTYPE_F64 && s64->ndim == 1 &&
                s64->shape[0] == cnt) {
                rc = lb_hessian_add_upper_f64(h, s64->data, ntok, err);
            } else if (c > 0 && c32 && c32->dtype == LB_DTYPE_F32 && c32->ndim == 2 &&
                       c32->shape[0] == ne && c32->shape[1] == cnt) {
                for (int64_t i = 0; !rc && i < ne; i++)
                    rc = lb_hessian_add_upper_f32(h, (const uint8_t *)c32->data +
                                                         (size_t)i * (size_t)cnt * sizeof(float),
                                                  i == 0 ? ntok : 0, err);
            } else {
                rc = lb_err_set(err, LB_EFORMAT, "partial Hessian %s: expected %s of %lld "
                                "values; delete it to recompute", id,
                                c == 0 ? "F64 S" : "F32 C (chunks, triangle)", (long long)cnt);
            }
            if (rc)
                lb_err_prefix(err, "reduce-hessian %s", job->id);
        }
        if (!rc)
            rc = lb_exec_put_hessian(ctx, job->outputs[k].hex, h, err);
    }
    lb_st_free(&st);
    lb_hessian_free(&h);
    return rc;
}

/* collect-hessian, every chunk here: one accumulator per output, chunk after
 * chunk (S = ((0 + S_0) + S_1) + ..., docs/determinism.md). */
int lb_exec_collect(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    if (job->stage == LB_STAGE_LM_HEAD)
        return exec_collect_lm_head(job, ctx, err);
    if (job->n_chunks > 0)
        return exec_collect_chunk(job, ctx, err);
    lb_exec_part *p = NULL;
    lb_hessian *hs[4] = {NULL, NULL, NULL, NULL};
    int rc = lb_exec_part_open_any(job, ctx, &p, err);
    for (int k = 0; !rc && k < lb_exec_part_n_hessians(p); k++)
        rc = lb_hessian_new(lb_exec_part_hessian_width(p, k), &hs[k], err);
    for (int64_t c = 0; !rc && c < lb_exec_part_chunks(p); c++)
        rc = lb_exec_part_run_chunk(p, c, hs, NULL, err);
    if (!rc)
        rc = lb_exec_part_store_hessians(p, hs, err);
    for (int k = 0; k < 4; k++)
        lb_hessian_free(&hs[k]);
    lb_exec_part_free(&p);
    return rc;
}
