/* lb_exec: the job executor (see lb_exec.h). */
#include "lb_exec.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_distill.h"
#include "lb_forward.h"
#include "lb_hessian.h"
#include "lb_io_util.h"
#include "lb_qopts_parse.h"
#include "lb_qpacked_io.h"
#include "lb_rotate.h"
#include "lb_exec_measure.h"
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
static int open_x(const lb_exec_ctx *ctx, const char *id, int64_t ntok, int64_t dim, lb_st **st,
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

static int put_x(const lb_exec_ctx *ctx, const char *id, const float *x, int64_t ntok,
                 int64_t dim, lb_err *err)
{
    lb_artifact_tensor t = {"x", LB_DTYPE_F32, 2, {ntok, dim, 0, 0}, x,
                            (size_t)ntok * (size_t)dim * sizeof(float)};
    return lb_store_put(ctx->store, id, "activations", &t, 1, NULL, 0, err);
}

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

/* Activations read from one artifact or from the K chunk artifacts of a chunked
 * plan (piece i: token rows [row0[i], row0[i] + rows[i])). */
typedef struct {
    int n;
    lb_st **st;
    const uint8_t **data;
    int64_t *row0, *rows;
    int64_t dim;
} xsrc;

static void xsrc_free(xsrc *xs)
{
    for (int i = 0; i < xs->n && xs->st; i++)
        lb_st_free(&xs->st[i]);
    free(xs->st);
    free(xs->data);
    free(xs->row0);
    free(xs->rows);
    memset(xs, 0, sizeof *xs);
}

static int xsrc_open(xsrc *xs, const lb_exec_ctx *ctx, const lb_artifact_id *ids, int n,
                     const int64_t *row0, const int64_t *rows, int64_t dim, lb_err *err)
{
    memset(xs, 0, sizeof *xs);
    xs->dim = dim;
    xs->st = calloc((size_t)n, sizeof *xs->st);
    xs->data = calloc((size_t)n, sizeof *xs->data);
    xs->row0 = calloc((size_t)n, sizeof *xs->row0);
    xs->rows = calloc((size_t)n, sizeof *xs->rows);
    if (!xs->st || !xs->data || !xs->row0 || !xs->rows) {
        xsrc_free(xs);
        return lb_err_set(err, LB_ENOMEM, "activations: out of memory");
    }
    xs->n = n;
    for (int i = 0; i < n; i++) {
        xs->row0[i] = row0[i];
        xs->rows[i] = rows[i];
        int rc = open_x(ctx, ids[i].hex, rows[i], dim, &xs->st[i], &xs->data[i], err);
        if (rc) {
            xsrc_free(xs);
            return rc;
        }
    }
    return 0;
}

/* dst (nt, dim) = token rows [t0, t0 + nt), which the pieces must cover. */
static int xsrc_copy(const xsrc *xs, int64_t t0, int64_t nt, float *dst, lb_err *err)
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
static int xsrc_open_block_input(xsrc *xs, const lb_exec_ctx *ctx, const lb_job *job,
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
    return xsrc_open(xs, ctx, &id, 1, &t0, &nt, dim, err);
}

/* One block's forward over the fixed chunks of a job's windows: chunk c is
 * sequences [c * chunk_seqs, min(n_seq, (c + 1) * chunk_seqs)), run on its own
 * (a copy of its rows of X, the block, optional captures of the linears' inputs). */
typedef struct {
    const lb_config *cfg;
    const lb_job *job;
    const lb_block_weights *w;
    xsrc xs;               /* X (whole, or the job's chunk) */
    lb_fwd_workspace *ws;
    float *x;              /* (chunk, dim) */
    float *cap[4];         /* captures: attn_in, attn_out, mlp_in, mlp_act */
    int64_t capw[4];
    int64_t chunk_seqs, n_chunks, dim;
    int64_t e0, ne;        /* the chunks this job runs: all, or its range (chunk jobs) */
    int64_t t_base, t_count; /* token rows of those chunks (rows of X held, of outputs) */
} blockrun;

static void blockrun_free(blockrun *br)
{
    for (int k = 0; k < 4; k++)
        free(br->cap[k]);
    free(br->x);
    lb_fwd_workspace_free(&br->ws);
    xsrc_free(&br->xs);
    memset(br, 0, sizeof *br);
}

/* want[k] (may be NULL: no capture) selects which linear inputs chunks capture. */
static int blockrun_open(blockrun *br, const lb_exec_ctx *ctx, const lb_job *job, const char *xid,
                         const lb_block_weights *w, const bool *want, lb_err *err)
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
static void blockrun_range(const blockrun *br, int64_t c, int64_t *t0, int64_t *nt, int64_t *ns)
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
static int blockrun_chunk(blockrun *br, int64_t c, lb_hessian *const *hs, float *y, lb_err *err)
{
    if (c < br->e0 || c >= br->e0 + br->ne)
        return lb_err_set(err, LB_EINVAL, "block %d: chunk %lld outside [%lld, %lld)",
                          (int)br->job->block, (long long)c, (long long)br->e0,
                          (long long)(br->e0 + br->ne));
    int64_t t0, nt, ns;
    blockrun_range(br, c, &t0, &nt, &ns);
    const int64_t dim = br->dim;
    int rc = xsrc_copy(&br->xs, t0, nt, br->x, err);
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
static int run_block(const lb_exec_ctx *ctx, const lb_job *job, const char *xid,
                     const lb_block_weights *w, float *out, lb_err *err)
{
    blockrun br;
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

static int put_hessian(const lb_exec_ctx *ctx, const char *id, const lb_hessian *h, lb_err *err)
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
    xsrc xs;
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
    if ((rc = xsrc_open(&xs, ctx, job->inputs, nx, r0, rn, dim, err)))
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
        if ((rc = xsrc_copy(&xs, t0, nt, x, err)))
            goto done;
        lb_fwd_final_norm(cfg, norm, x, nt, dim);
        if ((rc = lb_hessian_add_chunk(h, x, nt, dim, err)))
            goto done;
    }
    rc = put_hessian(ctx, job->outputs[0].hex, h, err);
done:
    lb_hessian_free(&h);
    xsrc_free(&xs);
    free(r0);
    free(rn);
    free(norm);
    free(x);
    return rc;
}

struct lb_exec_part {
    const lb_job *job;
    const lb_exec_ctx *ctx;
    lb_block_weights w;
    blockrun br;
    int n_hessians;    /* outputs of a collect job (4 or 1); 0 for propagate */
    int slot[4];       /* output o is capture slot[o] (attn_in .. mlp_act) */
};

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

/* The checks lb_exec_run makes before any job. */
static int check_job(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    if (strcmp(job->model_fp, ctx->model_fp) != 0)
        return lb_err_set(err, LB_ESTATE, "job %s is for model %.12s..., this worker holds "
                          "%.12s...; give it the job's model", job->id, job->model_fp,
                          ctx->model_fp);
    if (job->type != LB_JOB_MERGE && (job->n_inputs < 1 || job->n_seq <= 0 || job->seq_len <= 0))
        return lb_err_set(err, LB_EINVAL, "job %s: no inputs or empty calibration", job->id);
    return 0;
}

/* Block chunks of job (collect except lm_head, propagate block >= 0; chunk jobs
 * included): lb_exec_part_open without the data-parallel restriction. */
static int part_open(const lb_job *job, const lb_exec_ctx *ctx, lb_exec_part **out, lb_err *err)
{
    *out = NULL;
    int rc = check_job(job, ctx, err);
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
    return part_open(job, ctx, out, err);
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
        int rc = put_hessian(p->ctx, p->job->outputs[k].hex, hs[k], err);
        if (rc)
            return rc;
    }
    return 0;
}

int lb_exec_part_store_x(const lb_exec_part *p, const float *x, lb_err *err)
{
    if (p->n_hessians)
        return lb_err_set(err, LB_EINVAL, "job %s stores Hessians, not activations", p->job->id);
    return put_x(p->ctx, p->job->outputs[0].hex, x, p->br.t_count, p->br.dim, err);
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
    int rc = part_open(job, ctx, &p, err);
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
static int exec_reduce(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
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
            rc = put_hessian(ctx, job->outputs[k].hex, h, err);
    }
    lb_st_free(&st);
    lb_hessian_free(&h);
    return rc;
}

/* collect-hessian, every chunk here: one accumulator per output, chunk after
 * chunk (S = ((0 + S_0) + S_1) + ..., docs/determinism.md). */
static int exec_collect(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    if (job->stage == LB_STAGE_LM_HEAD)
        return exec_collect_lm_head(job, ctx, err);
    if (job->n_chunks > 0)
        return exec_collect_chunk(job, ctx, err);
    lb_exec_part *p = NULL;
    lb_hessian *hs[4] = {NULL, NULL, NULL, NULL};
    int rc = part_open(job, ctx, &p, err);
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

static int exec_quantize(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err)
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
    rc = put_x(ctx, job->outputs[0].hex, x, nt, dim, err);
done:
    lb_head_weights_free(&head);
    lb_st_free(&cst);
    free(tok);
    free(x);
    return rc;
}

static int exec_propagate(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
{
    if (job->block < 0)
        return exec_embed(job, ctx, err);
    lb_exec_part *p = NULL;
    float *out = NULL;
    /* a chunk job runs and stores only its windows' rows */
    int rc = part_open(job, ctx, &p, err);
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

/* DISTILL(b): inputs X_q(b), X_fp(b), the 7 packed linears (lb_linear order);
 * outputs the 7 distilled packed linears and, when there are 8, X_fp(b+1).
 * Teacher target Y_t = fp block b on X_fp(b) (= X_fp(b+1)); student input X_q(b). */
static int exec_distill(const lb_job *job, const lb_exec_ctx *ctx, lb_err *err)
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
    if ((rc = run_block(ctx, job, job->inputs[1].hex, &w, yt, err)))
        goto done;
    if ((rc = open_x(ctx, job->inputs[0].hex, ntok, dim, &xst, &xdata, err)))
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
        rc = put_x(ctx, job->outputs[LB_LINEAR_COUNT].hex, yt, ntok, dim, err);
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

static int exec_merge(const lb_job *job, const lb_exec_ctx *ctx, double *bpw, lb_err *err)
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

int lb_exec_run(const lb_job *job, const lb_exec_ctx *ctx, lb_job_result *res)
{
    memset(res, 0, sizeof *res);
    memcpy(res->job_id, job->id, LB_ID_HEX);
    double t0 = lb_now_s();
    lb_err err;
    lb_err_clear(&err);
    int rc;
    if ((rc = check_job(job, ctx, &err))) {
        /* err names the problem */
    } else {
        omp_set_num_threads(ctx->omp_threads > 0 ? ctx->omp_threads : 1);
        switch (job->type) {
        case LB_JOB_COLLECT_HESSIAN: rc = exec_collect(job, ctx, &err); break;
        case LB_JOB_QUANTIZE_LINEAR: rc = exec_quantize(job, ctx, &res->bpw, &err); break;
        case LB_JOB_PROPAGATE: rc = exec_propagate(job, ctx, &err); break;
        case LB_JOB_MERGE: rc = exec_merge(job, ctx, &res->bpw, &err); break;
        case LB_JOB_DISTILL: rc = exec_distill(job, ctx, &err); break;
        case LB_JOB_REDUCE_HESSIAN: rc = exec_reduce(job, ctx, &err); break;
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
