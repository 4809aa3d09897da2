/* lb_exec_block: one block's forward over a job's windows, chunk by chunk (the
 * activations source, the block run, the lb_exec_part API) and the propagate job. */
#include "lb_exec_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_forward.h"
#include "lb_hessian.h"

/* Replaces linears which[0..n) of w with the dequantized artifacts ids[0..n). */
static int load_quantized(const lb_exec_ctx *ctx, const lb_config *cfg, lb_block_weights *w,
                          const lb_linear *which, const lb_artifact_id *ids, int n, lb_err *err)
{
    for (int i = 0; i < n; i++) {
        int64_t rows, cols;
        lb_linear_shape(cfg, which[i], &rows, &cols);
        int rc = lb_exec_load_qlinear(ctx->store, ids[i].hex, rows, cols,
                                      lb_block_linear(w, which[i]), err);
        if (rc)
            return rc;
    }
    return 0;
}

/* Linears already quantized when stage s collects (true-sequential). */
static int stage_prereq(int32_t stage, lb_linear *which)
{
    static const lb_linear all[] = {LB_LINEAR_Q, LB_LINEAR_K, LB_LINEAR_V,
                                    LB_LINEAR_O, LB_LINEAR_GATE, LB_LINEAR_UP};
    int n = stage == LB_STAGE_ATTN_OUT ? 3 : stage == LB_STAGE_MLP_IN ? 4
            : stage == LB_STAGE_MLP_ACT ? 6 : 0;
    for (int i = 0; i < n; i++)
        which[i] = all[i];
    return n;
}

void lb_exec_xsrc_free(lb_exec_xsrc *xs)
{
    for (int i = 0; i < xs->n && xs->st; i++)
        lb_st_free(&xs->st[i]);
    free(xs->st);
    free(xs->data);
    free(xs->row0);
    free(xs->rows);
    memset(xs, 0, sizeof *xs);
}

int lb_exec_xsrc_open(lb_exec_xsrc *xs, const lb_exec_ctx *ctx, const lb_artifact_id *ids, int n,
                      const int64_t *row0, const int64_t *rows, int64_t dim, lb_err *err)
{
    memset(xs, 0, sizeof *xs);
    xs->dim = dim;
    xs->st = calloc((size_t)n, sizeof *xs->st);
    xs->data = calloc((size_t)n, sizeof *xs->data);
    xs->row0 = calloc((size_t)n, sizeof *xs->row0);
    xs->rows = calloc((size_t)n, sizeof *xs->rows);
    if (!xs->st || !xs->data || !xs->row0 || !xs->rows) {
        lb_exec_xsrc_free(xs);
        return lb_err_set(err, LB_ENOMEM, "activations: out of memory");
    }
    xs->n = n;
    for (int i = 0; i < n; i++) {
        xs->row0[i] = row0[i];
        xs->rows[i] = rows[i];
        int rc = lb_exec_open_x(ctx, ids[i].hex, rows[i], dim, &xs->st[i], &xs->data[i], err);
        if (rc) {
            lb_exec_xsrc_free(xs);
            return rc;
        }
    }
    return 0;
}

/* dst (nt, dim) = token rows [t0, t0 + nt), which the pieces must cover. */
int lb_exec_xsrc_copy(const lb_exec_xsrc *xs, int64_t t0, int64_t nt, float *dst, lb_err *err)
{
    const size_t row = (size_t)xs->dim * sizeof(float);
    int64_t t = t0;
    for (int i = 0; i < xs->n && t < t0 + nt; i++) {
        const int64_t a = xs->row0[i], b = xs->row0[i] + xs->rows[i];
        if (t < a || t >= b)
            continue;
        const int64_t e = t0 + nt < b ? t0 + nt : b;
        memcpy(dst + (size_t)(t - t0) * (size_t)xs->dim, xs->data[i] + (size_t)(t - a) * row,
               (size_t)(e - t) * row);
        t = e;
    }
    if (t != t0 + nt)
        return lb_err_set(err, LB_EINVAL, "activations: token rows [%lld, %lld) are not in "
                          "the job's inputs", (long long)t, (long long)(t0 + nt));
    return 0;
}

/* X input of a block job: the whole X_b, or chunk job->chunk of it. */
static int xsrc_open_block_input(lb_exec_xsrc *xs, const lb_exec_ctx *ctx, const lb_job *job,
                                 const char *xid, int64_t dim, lb_err *err)
{
    lb_artifact_id id;
    snprintf(id.hex, sizeof id.hex, "%s", xid);
    int64_t t0 = 0, nt = job->n_seq * job->seq_len, e0, ne;
    if (job->chunk >= 0 &&
        lb_exec_chunk_span(job->n_seq, job->seq_len, job->n_chunks, job->chunk, &e0, &ne, &t0,
                           &nt))
        return lb_err_set(err, LB_EINVAL, "job %s: chunk %d of %d, but %lld windows of %lld "
                          "tokens make %lld chunks", job->id, (int)job->chunk,
                          (int)job->n_chunks, (long long)job->n_seq, (long long)job->seq_len,
                          (long long)lb_exec_chunk_count(job->n_seq, job->seq_len));
    return lb_exec_xsrc_open(xs, ctx, &id, 1, &t0, &nt, dim, err);
}


static void blockrun_free(lb_exec_blockrun *br)
{
    for (int k = 0; k < 4; k++)
        free(br->cap[k]);
    free(br->x);
    lb_fwd_workspace_free(&br->ws);
    lb_exec_xsrc_free(&br->xs);
    memset(br, 0, sizeof *br);
}

/* want[k] (may be NULL: no capture) selects which linear inputs chunks capture. */
static int blockrun_open(lb_exec_blockrun *br, const lb_exec_ctx *ctx, const lb_job *job,
                         const char *xid, const lb_block_weights *w, const bool *want, lb_err *err)
{
    memset(br, 0, sizeof *br);
    const lb_config *cfg = lb_model_config(ctx->model);
    br->cfg = cfg;
    br->job = job;
    br->w = w;
    br->dim = cfg->hidden_size;
    br->capw[0] = cfg->hidden_size;
    br->capw[1] = lb_config_q_dim(cfg);
    br->capw[2] = cfg->hidden_size;
    br->capw[3] = cfg->intermediate_size;
    br->chunk_seqs = lb_exec_chunk_seqs(job->n_seq, job->seq_len);
    br->n_chunks = lb_exec_chunk_count(job->n_seq, job->seq_len);
    const int64_t chunk = br->chunk_seqs * job->seq_len;
    br->e0 = 0;
    br->ne = br->n_chunks;
    br->t_base = 0;
    br->t_count = job->n_seq * job->seq_len;
    if (job->chunk >= 0)
        lb_exec_chunk_span(job->n_seq, job->seq_len, job->n_chunks, job->chunk, &br->e0,
                           &br->ne, &br->t_base, &br->t_count);
    int rc = xsrc_open_block_input(&br->xs, ctx, job, xid, br->dim, err);
    if (rc)
        goto fail;
    if ((rc = lb_fwd_workspace_new(cfg, chunk, job->seq_len, &br->ws, err)))
        goto fail;
    br->x = malloc((size_t)chunk * (size_t)br->dim * sizeof *br->x);
    if (!br->x)
        goto oom;
    for (int k = 0; want && k < 4; k++)
        if (want[k] && !(br->cap[k] = malloc((size_t)chunk * (size_t)br->capw[k] * sizeof(float))))
            goto oom;
    return 0;
oom:
    rc = lb_err_set(err, LB_ENOMEM, "block %d: out of memory for %lld-token chunks",
                    (int)job->block, (long long)chunk);
fail:
    blockrun_free(br);
    return rc;
}

/* Token range of chunk c: OUT *t0 (first token), *nt (tokens), *ns (sequences). */
static void blockrun_range(const lb_exec_blockrun *br, int64_t c, int64_t *t0, int64_t *nt,
                           int64_t *ns)
{
    int64_t s0 = c * br->chunk_seqs;
    int64_t n = br->job->n_seq - s0 < br->chunk_seqs ? br->job->n_seq - s0 : br->chunk_seqs;
    *t0 = s0 * br->job->seq_len;
    *nt = n * br->job->seq_len;
    *ns = n;
}

/* Runs chunk c. hs[k] (k over the 4 captures; NULL entries skipped, hs may be
 * NULL) gets the captured inputs added (S += Xᵀ X); y (nt, dim), when not
 * NULL, gets the block output. */
static int blockrun_chunk(lb_exec_blockrun *br, int64_t c, lb_hessian *const *hs, float *y,
                          lb_err *err)
{
    if (c < br->e0 || c >= br->e0 + br->ne)
        return lb_err_set(err, LB_EINVAL, "block %d: chunk %lld outside [%lld, %lld)",
                          (int)br->job->block, (long long)c, (long long)br->e0,
                          (long long)(br->e0 + br->ne));
    int64_t t0, nt, ns;
    blockrun_range(br, c, &t0, &nt, &ns);
    const int64_t dim = br->dim;
    int rc = lb_exec_xsrc_copy(&br->xs, t0, nt, br->x, err);
    if (rc)
        return rc;
    lb_fwd_capture capture = {br->cap[0], br->cap[1], br->cap[2], br->cap[3]};
    bool any = br->cap[0] || br->cap[1] || br->cap[2] || br->cap[3];
    rc = lb_fwd_block(br->cfg, br->w, br->x, ns, br->job->seq_len, br->ws,
                          any ? &capture : NULL, err);
    if (rc)
        return rc;
    for (int k = 0; hs && k < 4; k++)
        if (hs[k] && br->cap[k] &&
            (rc = lb_hessian_add_chunk(hs[k], br->cap[k], nt, br->capw[k], err)))
            return rc;
    if (y)
        memcpy(y, br->x, (size_t)nt * (size_t)dim * sizeof(float));
    return 0;
}

/* Runs X (artifact xid) through block b, all chunks in order: out (ntok, dim)
 * gets the block outputs when not NULL. */
int lb_exec_run_block(const lb_exec_ctx *ctx, const lb_job *job, const char *xid,
                      const lb_block_weights *w, float *out, lb_err *err)
{
    lb_exec_blockrun br;
    int rc = blockrun_open(&br, ctx, job, xid, w, NULL, err);
    for (int64_t c = 0; !rc && c < br.n_chunks; c++) {
        int64_t t0, nt, ns;
        blockrun_range(&br, c, &t0, &nt, &ns);
        rc = blockrun_chunk(&br, c, NULL, out ? out + (size_t)t0 * (size_t)br.dim : NULL, err);
    }
    if (br.job)
        blockrun_free(&br);
    return rc;
}

void lb_exec_part_free(lb_exec_part **pp)
{
    if (!pp || !*pp)
        return;
    lb_exec_part *p = *pp;
    if (p->br.job)
        blockrun_free(&p->br);
    lb_block_weights_free(&p->w);
    free(p);
    *pp = NULL;
}

bool lb_exec_is_data_parallel(const lb_job *job)
{
    /* the lm_head collect (final norm + one dim x dim sum) runs in one process; a
     * chunk job is already a share of the windows and runs whole */
    if (job->n_chunks > 0)
        return false;
    return (job->type == LB_JOB_COLLECT_HESSIAN && job->stage != LB_STAGE_LM_HEAD) ||
           (job->type == LB_JOB_PROPAGATE && job->block >= 0);
}


/* Block chunks of job (collect except lm_head, propagate block >= 0; chunk jobs
 * included): lb_exec_part_open without the data-parallel restriction. */
int lb_exec_part_open_any(const lb_job *job, const lb_exec_ctx *ctx, lb_exec_part **out,
                          lb_err *err)
{
    *out = NULL;
    int rc = lb_exec_check_job(job, ctx, err);
    if (rc)
        return rc;
    if (!((job->type == LB_JOB_COLLECT_HESSIAN && job->stage != LB_STAGE_LM_HEAD) ||
          (job->type == LB_JOB_PROPAGATE && job->block >= 0)) ||
        (job->n_chunks > 0 && job->chunk < 0))
        return lb_err_set(err, LB_EINVAL, "job %s (%s, block %d, chunk %d of %d) has no "
                          "chunked form", job->id, lb_job_type_name(job->type),
                          (int)job->block, (int)job->chunk, (int)job->n_chunks);
    const lb_config *cfg = lb_model_config(ctx->model);
    lb_linear pre[LB_LINEAR_COUNT];
    int npre, nout;
    bool want[4] = {false, false, false, false};
    lb_exec_part *p = calloc(1, sizeof *p);
    if (!p)
        return lb_err_set(err, LB_ENOMEM, "job %s: out of memory", job->id);
    p->job = job;
    p->ctx = ctx;
    if (job->type == LB_JOB_COLLECT_HESSIAN) {
        npre = stage_prereq(job->stage, pre);
        nout = job->stage == LB_STAGE_ALL ? 4 : 1;
        if (job->stage != LB_STAGE_ALL && (job->stage < 0 || job->stage > 3)) {
            rc = lb_err_set(err, LB_EINVAL, "collect-hessian job %s: stage %d", job->id,
                            (int)job->stage);
            goto fail;
        }
        for (int k = 0; k < 4; k++)
            if (job->stage == LB_STAGE_ALL || job->stage == k) {
                want[k] = true;
                p->slot[p->n_hessians++] = k;
            }
    } else {
        static const lb_linear all[LB_LINEAR_COUNT] = {LB_LINEAR_Q, LB_LINEAR_K, LB_LINEAR_V,
                                                       LB_LINEAR_O, LB_LINEAR_GATE, LB_LINEAR_UP,
                                                       LB_LINEAR_DOWN};
        memcpy(pre, all, sizeof all);
        npre = LB_LINEAR_COUNT;
        nout = 1;
    }
    if (job->n_inputs != 1 + npre || job->n_outputs != nout) {
        rc = lb_err_set(err, LB_EINVAL, "%s job %s: %d inputs / %d outputs, expected %d / %d",
                        lb_job_type_name(job->type), job->id, (int)job->n_inputs,
                        (int)job->n_outputs, 1 + npre, nout);
        goto fail;
    }
    if ((rc = lb_model_load_block(ctx->model, job->block, &p->w, err)) ||
        (rc = load_quantized(ctx, cfg, &p->w, pre, job->inputs + 1, npre, err)) ||
        (rc = blockrun_open(&p->br, ctx, job, job->inputs[0].hex, &p->w,
                            p->n_hessians ? want : NULL, err)))
        goto fail;
    *out = p;
    return 0;
fail:
    lb_exec_part_free(&p);
    return rc;
}

int lb_exec_part_open(const lb_job *job, const lb_exec_ctx *ctx, lb_exec_part **out, lb_err *err)
{
    *out = NULL;
    if (!lb_exec_is_data_parallel(job))
        return lb_err_set(err, LB_EINVAL, "job %s (%s, block %d) has no chunked form", job->id,
                          lb_job_type_name(job->type), (int)job->block);
    return lb_exec_part_open_any(job, ctx, out, err);
}

int64_t lb_exec_part_chunks(const lb_exec_part *p) { return p->br.n_chunks; }
int lb_exec_part_n_hessians(const lb_exec_part *p) { return p->n_hessians; }
int64_t lb_exec_part_dim(const lb_exec_part *p) { return p->br.dim; }

int64_t lb_exec_part_hessian_width(const lb_exec_part *p, int k)
{
    return k >= 0 && k < p->n_hessians ? p->br.capw[p->slot[k]] : 0;
}

void lb_exec_part_chunk_range(const lb_exec_part *p, int64_t c, int64_t *t0, int64_t *nt)
{
    int64_t ns;
    blockrun_range(&p->br, c, t0, nt, &ns);
}

int lb_exec_part_run_chunk(lb_exec_part *p, int64_t c, lb_hessian *const *hs, float *y,
                           lb_err *err)
{
    lb_hessian *slots[4] = {NULL, NULL, NULL, NULL};
    if (p->n_hessians) {
        if (!hs)
            return lb_err_set(err, LB_EINVAL, "collect-hessian %s: no accumulators", p->job->id);
        for (int k = 0; k < p->n_hessians; k++)
            slots[p->slot[k]] = hs[k];
    }
    return blockrun_chunk(&p->br, c, p->n_hessians ? slots : NULL, y, err);
}

int lb_exec_part_store_hessians(const lb_exec_part *p, lb_hessian *const *hs, lb_err *err)
{
    if (!p->n_hessians)
        return lb_err_set(err, LB_EINVAL, "job %s stores no Hessians", p->job->id);
    for (int k = 0; k < p->n_hessians; k++) {
        if (lb_hessian_cols(hs[k]) != lb_exec_part_hessian_width(p, k))
            return lb_err_set(err, LB_EINVAL, "job %s: Hessian %d has width %lld, expected %lld",
                              p->job->id, k, (long long)lb_hessian_cols(hs[k]),
                              (long long)lb_exec_part_hessian_width(p, k));
        int rc = lb_exec_put_hessian(p->ctx, p->job->outputs[k].hex, hs[k], err);
        if (rc)
            return rc;
    }
    return 0;
}

int lb_exec_part_store_x(const lb_exec_part *p, const float *x, lb_err *err)
{
    if (p->n_hessians)
        return lb_err_set(err, LB_EINVAL, "job %s stores Hessians, not activations", p->job->id);
    return lb_exec_put_x(p->ctx, p->job->outputs[0].hex, x, p->br.t_count, p->br.dim, err);
}

static int exec_embed(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    const lb_config *cfg = lb_model_config(ctx->model);
    const int64_t ntok = job->n_seq * job->seq_len, dim = cfg->hidden_size;
    int64_t t0 = 0, nt = ntok, e0, ne; /* an embed chunk job embeds its windows only */
    if (job->n_inputs != 1 || job->n_outputs != 1 ||
        (job->n_chunks > 0 && lb_exec_chunk_span(job->n_seq, job->seq_len, job->n_chunks,
                                                 job->chunk, &e0, &ne, &t0, &nt)))
        return lb_err_set(err, LB_EINVAL, "embed job %s: malformed", job->id);
    lb_st *cst = NULL;
    lb_head_weights head;
    memset(&head, 0, sizeof head);
    uint32_t *tok = NULL;
    float *x = NULL;
    int rc = lb_store_open_artifact(ctx->store, job->inputs[0].hex, "calib", &cst, err);
    if (rc)
        goto done;
    const lb_st_tensor *t = lb_st_find(cst, "tokens");
    if (!t || t->dtype != LB_DTYPE_U32 || t->numel != ntok) {
        rc = lb_err_set(err, LB_EFORMAT, "calib artifact %s: expected U32 tokens of %lld ids",
                        job->inputs[0].hex, (long long)ntok);
        goto done;
    }
    tok = malloc((size_t)nt * sizeof *tok);
    x = malloc((size_t)nt * (size_t)dim * sizeof *x);
    if (!tok || !x) {
        rc = lb_err_set(err, LB_ENOMEM, "embed: out of memory for %lld tokens", (long long)nt);
        goto done;
    }
    memcpy(tok, (const uint8_t *)t->data + (size_t)t0 * sizeof *tok, (size_t)nt * sizeof *tok);
    if ((rc = lb_model_load_head(ctx->model, &head, err)) ||
        (rc = lb_fwd_embed(&head, tok, nt, x, err)))
        goto done;
    rc = lb_exec_put_x(ctx, job->outputs[0].hex, x, nt, dim, err);
done:
    lb_head_weights_free(&head);
    lb_st_free(&cst);
    free(tok);
    free(x);
    return rc;
}

int lb_exec_propagate(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    if (job->block < 0)
        return exec_embed(job, ctx, err);
    lb_exec_part *p = NULL;
    float *out = NULL;
    /* a chunk job runs and stores only its windows' rows */
    int rc = lb_exec_part_open_any(job, ctx, &p, err);
    if (rc)
        return rc;
    const int64_t ntok = p->br.t_count, base = p->br.t_base, dim = lb_exec_part_dim(p);
    out = malloc((size_t)ntok * (size_t)dim * sizeof *out);
    if (!out)
        rc = lb_err_set(err, LB_ENOMEM, "propagate: out of memory for (%lld, %lld) activations",
                        (long long)ntok, (long long)dim);
    for (int64_t c = p->br.e0; !rc && c < p->br.e0 + p->br.ne; c++) {
        int64_t t0, nt;
        lb_exec_part_chunk_range(p, c, &t0, &nt);
        rc = lb_exec_part_run_chunk(p, c, NULL, out + (size_t)(t0 - base) * (size_t)dim, err);
    }
    if (!rc)
        rc = lb_exec_part_store_x(p, out, err);
    free(out);
    lb_exec_part_free(&p);
    return rc;
}
