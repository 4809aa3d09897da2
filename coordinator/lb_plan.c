/* lb_plan: the pipeline state machine (see lb_plan.h). */
#include "lb_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_exec.h"
#include "lb_exec_measure.h"
#include "lb_model.h"
#include "lb_sha256.h"

enum { A_CALIB, A_ACT, A_HESS, A_QLIN, A_HPART, A_MEAS };
static const char *const kind_names[] = {"calib",  "activations", "hessian",
                                         "qlinear", "hpart",       "measure"};

typedef struct {
    char id[LB_ID_HEX];
    int kind;
    bool present;   /* exists now (given or produced) */
    bool deleted;
    int32_t pending; /* needed consumers not yet done */
} artifact;

typedef enum { J_SKIP, J_WAIT, J_RUNNING, J_DONE, J_FAILED } jstate;

typedef struct {
    lb_job job;
    int32_t *in;                     /* artifact indices, owned (merge: see merge_in) */
    int32_t n_in;
    int32_t out[LB_JOB_MAX_OUTPUTS];
    int32_t n_out;
    bool needed;
    jstate state;
} pjob;

struct lb_plan {
    artifact *arts;
    int32_t n_arts, cap_arts;
    pjob *jobs;
    int32_t n_jobs, cap_jobs;
    int32_t *merge_in; /* merge inputs (every qlinear) */
    int32_t n_merge_in;
    int32_t running, done_needed, n_needed;
    bool failed, started;
};

static int32_t add_artifact(lb_plan *p, const char *id, int kind)
{
    if (p->n_arts == p->cap_arts) {
        int32_t cap = p->cap_arts ? 2 * p->cap_arts : 64;
        artifact *a = realloc(p->arts, (size_t)cap * sizeof *a);
        if (!a)
            return -1;
        p->arts = a;
        p->cap_arts = cap;
    }
    artifact *a = &p->arts[p->n_arts];
    memset(a, 0, sizeof *a);
    memcpy(a->id, id, LB_ID_HEX);
    a->kind = kind;
    return p->n_arts++;
}

/* Adds a job whose inputs are artifact indices in[0..nin) (merge: p->merge_in),
 * assigns its id and registers its outputs of kind out_kind. Returns its index or -1. */
static int32_t add_job(lb_plan *p, lb_job *tmpl, const int32_t *in, int32_t nin, int32_t nout,
                       int out_kind, lb_err *err)
{
    if (p->n_jobs == p->cap_jobs) {
        int32_t cap = p->cap_jobs ? 2 * p->cap_jobs : 64;
        pjob *j = realloc(p->jobs, (size_t)cap * sizeof *j);
        if (!j)
            return -1;
        p->jobs = j;
        p->cap_jobs = cap;
    }
    lb_artifact_id *ids = malloc((size_t)(nin > 0 ? nin : 1) * sizeof *ids);
    if (!ids)
        return -1;
    for (int32_t i = 0; i < nin; i++)
        memcpy(ids[i].hex, p->arts[in[i]].id, LB_ID_HEX);
    tmpl->n_outputs = nout;
    int rc = lb_job_set_inputs(tmpl, ids, nin, err);
    free(ids);
    if (rc || lb_job_compute_id(tmpl, err))
        return -1;
    pjob *j = &p->jobs[p->n_jobs];
    memset(j, 0, sizeof *j);
    j->n_in = tmpl->type == LB_JOB_MERGE ? 0 : nin;
    if (j->n_in > 0 && !(j->in = malloc((size_t)j->n_in * sizeof *j->in)))
        return -1;
    j->job = *tmpl; /* takes ownership of tmpl->inputs */
    tmpl->inputs = NULL;
    tmpl->n_inputs = 0;
    for (int32_t i = 0; i < j->n_in; i++)
        j->in[i] = in[i];
    p->n_jobs++; /* before the outputs, so lb_plan_free frees j->in on failure */
    j->n_out = nout;
    for (int32_t o = 0; o < nout; o++) {
        int32_t a = add_artifact(p, j->job.outputs[o].hex, out_kind);
        if (a < 0)
            return -1;
        j->out[o] = a;
    }
    return p->n_jobs - 1;
}

static void base_job(lb_job *t, const lb_plan_spec *s, lb_job_type type, int32_t block)
{
    lb_job_init(t);
    t->type = type;
    t->block = block;
    snprintf(t->lowbit_version, sizeof t->lowbit_version, "%s", s->lowbit_version);
    memcpy(t->model_fp, s->model_fp, LB_ID_HEX);
    memcpy(t->calib_fp, s->calib_fp, LB_ID_HEX);
    t->n_seq = s->n_seq;
    t->seq_len = s->seq_len;
    snprintf(t->model_dir, sizeof t->model_dir, "%s", s->model_dir);
}

/* Marks a job as chunk c of K (nothing when the plan is unchunked). */
static void set_chunk(lb_job *t, int32_t K, int32_t c)
{
    if (K > 1) {
        t->n_chunks = K;
        t->chunk = c;
    }
}

int32_t lb_plan_effective_chunks(const lb_plan_spec *s)
{
    if (s->collect_chunks <= 1 || (s->distill && s->distill->steps > 0))
        return 1;
    int64_t n = lb_exec_chunk_count(s->n_seq, s->seq_len);
    int64_t k = s->collect_chunks < n ? s->collect_chunks : n;
    if (k > LB_JOB_MAX_CHUNKS)
        k = LB_JOB_MAX_CHUNKS;
    return k < 1 ? 1 : (int32_t)k;
}

/* Which collect output feeds linear l: 0 attn_in, 1 attn_out, 2 mlp_in, 3 mlp_act. */
static int hess_of(int l)
{
    return l <= LB_LINEAR_V ? 0 : l == LB_LINEAR_O ? 1 : l == LB_LINEAR_DOWN ? 3 : 2;
}

/* Block b's Hessian collection (per stage with true-sequential, in K chunks plus
 * a reduce when K > 1) and its seven quantize-linear jobs. xs: the block input's
 * chunks; parts, in: scratch. OUT: q[l], the quantized linears. Returns 0 or -1
 * (err set, or out of memory). */
static int plan_block_linears(lb_plan *p, const lb_plan_spec *s, int32_t b, int32_t K,
                              const int32_t *xs, int32_t *parts, int32_t *in,
                              int32_t q[LB_LINEAR_COUNT], lb_job *t, lb_err *err)
{
    int32_t h[4], j;
    int32_t order[LB_LINEAR_COUNT] = {0, 1, 2, 3, 4, 5, 6};
    for (int stage = s->true_sequential ? 0 : LB_STAGE_ALL;
         stage < (s->true_sequential ? 4 : 0); stage++) {
        /* inputs: X_b (or its chunk) then the linears quantized before this stage */
        const int nh = stage == LB_STAGE_ALL ? 4 : 1;
        int npre = stage == 1 ? 3 : stage == 2 ? 4 : stage == 3 ? 6 : 0;
        for (int32_t c = 0; c < K; c++) {
            int32_t nin = 0;
            in[nin++] = xs[c];
            for (int k = 0; k < npre; k++)
                in[nin++] = q[k];
            base_job(t, s, LB_JOB_COLLECT_HESSIAN, b);
            t->stage = stage;
            set_chunk(t, K, c);
            if ((j = add_job(p, t, in, nin, nh, K > 1 ? A_HPART : A_HESS, err)) < 0)
                return -1;
            for (int k = 0; k < nh; k++)
                parts[c * nh + k] = p->jobs[j].out[k];
        }
        if (K > 1) { /* the partial sums of the K chunks, added in chunk order */
            base_job(t, s, LB_JOB_REDUCE_HESSIAN, b);
            t->stage = stage;
            t->n_chunks = K;
            if ((j = add_job(p, t, parts, K * nh, nh, A_HESS, err)) < 0)
                return -1;
            for (int k = 0; k < nh; k++)
                parts[k] = p->jobs[j].out[k];
        }
        if (stage == LB_STAGE_ALL)
            for (int k = 0; k < 4; k++)
                h[k] = parts[k];
        else
            h[stage] = parts[0];
        /* quantize the linears this stage's Hessian (or all four) feeds */
        for (int k = 0; k < LB_LINEAR_COUNT; k++) {
            int l = order[k];
            if (stage != LB_STAGE_ALL && hess_of(l) != stage)
                continue;
            const lb_plan_choice *ch = &s->choices[(size_t)b * LB_LINEAR_COUNT + (size_t)l];
            base_job(t, s, LB_JOB_QUANTIZE_LINEAR, b);
            t->linear = l;
            if (lb_model_linear_tensor_name(t->tensor, sizeof t->tensor, b, (lb_linear)l, err))
                return -1;
            snprintf(t->method, sizeof t->method, "%s", ch->method);
            t->opts = ch->opts;
            if ((j = add_job(p, t, &h[hess_of(l)], 1, 1, A_QLIN, err)) < 0)
                return -1;
            q[l] = p->jobs[j].out[0];
        }
    }
    return 0;
}

/* The --target-bpw measurement plan (lb_plan.h): embed, then per block collect,
 * propagate-fp and the measure jobs. The proxy version is part of each measure id. */
static int build_measure(lb_plan *p, const lb_plan_spec *s, int32_t calib, lb_err *err)
{
    lb_job t;
    lb_job_init(&t);
    int32_t j, x, xn, h[4], in[3];
    base_job(&t, s, LB_JOB_PROPAGATE, -1);
    if ((j = add_job(p, &t, &calib, 1, 1, A_ACT, err)) < 0)
        goto fail;
    x = p->jobs[j].out[0];
    for (int32_t b = 0; b < s->cfg->num_hidden_layers; b++) {
        base_job(&t, s, LB_JOB_COLLECT_HESSIAN, b);
        t.stage = LB_STAGE_ALL;
        if ((j = add_job(p, &t, &x, 1, 4, A_HESS, err)) < 0)
            goto fail;
        for (int k = 0; k < 4; k++)
            h[k] = p->jobs[j].out[k];
        base_job(&t, s, LB_JOB_PROPAGATE_FP, b);
        if ((j = add_job(p, &t, &x, 1, 1, A_ACT, err)) < 0)
            goto fail;
        xn = p->jobs[j].out[0];
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            const size_t k = (size_t)b * LB_LINEAR_COUNT + (size_t)l;
            const bool fixed = s->measure_fixed && s->measure_fixed[k];
            for (int32_t c = 0; c < (fixed ? 1 : s->n_measure); c++) {
                const lb_plan_choice *ch = fixed ? &s->choices[k] : &s->measure[c];
                base_job(&t, s, LB_JOB_MEASURE, b);
                t.linear = l;
                if (lb_model_linear_tensor_name(t.tensor, sizeof t.tensor, b, (lb_linear)l, err))
                    goto fail;
                snprintf(t.method, sizeof t.method, "%s", ch->method);
                t.opts = ch->opts;
                snprintf(t.options_json, sizeof t.options_json, "{\"proxy_version\":\"%s\"}",
                         LB_MEASURE_PROXY_VERSION);
                in[0] = x;
                in[1] = xn;
                in[2] = h[hess_of(l)];
                if (add_job(p, &t, in, 3, 1, A_MEAS, err) < 0)
                    goto fail;
            }
        }
        x = xn;
    }
    return 0;
fail:
    lb_job_clear(&t);
    return err->code ? err->code : lb_err_set(err, LB_ENOMEM, "plan: out of memory");
}

int lb_plan_new(const lb_plan_spec *s, lb_plan **out, lb_err *err)
{
    *out = NULL;
    if (!s->cfg || !lb_id_valid(s->model_fp) || !lb_id_valid(s->calib_fp) || s->n_seq <= 0 ||
        s->seq_len <= 0 || (!s->choices && s->n_measure <= 0) ||
        s->cfg->num_hidden_layers <= 0)
        return lb_err_set(err, LB_EINVAL, "plan: invalid specification");
    lb_plan *p = calloc(1, sizeof *p);
    if (!p)
        return lb_err_set(err, LB_ENOMEM, "plan: out of memory");
    lb_err scratch;
    if (!err)
        err = &scratch;
    lb_err_clear(err);
    const int32_t L = s->cfg->num_hidden_layers;
    lb_job t;
    lb_job_init(&t); /* the failure path clears it */
    char calib_id[LB_ID_HEX], buf[LB_ID_HEX + 16];
    int n = snprintf(buf, sizeof buf, "calib:%s", s->calib_fp);
    lb_sha256_hex(buf, (size_t)n, calib_id);
    int32_t calib = add_artifact(p, calib_id, A_CALIB);
    p->merge_in = malloc(((size_t)L * LB_LINEAR_COUNT + 1) * sizeof *p->merge_in);
    if (calib < 0 || !p->merge_in)
        goto oom;
    if (s->n_measure > 0) {
        if (!s->measure || build_measure(p, s, calib, err))
            goto fail;
        *out = p;
        return 0;
    }
    const int32_t K = lb_plan_effective_chunks(s);
    /* xs[c]: chunk c of the current block input (xs[0] = all of it when K = 1) */
    int32_t *xs = malloc((size_t)K * sizeof *xs), *parts = malloc((size_t)K * 4 * sizeof *parts);
    int32_t *in = malloc(((size_t)K * 4 + LB_LINEAR_COUNT + 2) * sizeof *in);
    if (!xs || !parts || !in) {
        free(xs), free(parts), free(in);
        goto oom;
    }
    int32_t j;
    for (int32_t c = 0; c < K; c++) {
        base_job(&t, s, LB_JOB_PROPAGATE, -1);
        set_chunk(&t, K, c);
        if ((j = add_job(p, &t, &calib, 1, 1, A_ACT, err)) < 0)
            goto fail_bufs;
        xs[c] = p->jobs[j].out[0];
    }
    const bool distill = s->distill && s->distill->steps > 0; /* then K = 1 */
    int32_t xfp = xs[0]; /* fp-path block input (distill only): X_fp(0) = X_0 */
    for (int32_t b = 0; b < L; b++) {
        int32_t q[LB_LINEAR_COUNT];
        if (plan_block_linears(p, s, b, K, xs, parts, in, q, &t, err))
            goto fail_bufs;
        if (distill) {
            in[0] = xs[0];
            in[1] = xfp;
            for (int l = 0; l < LB_LINEAR_COUNT; l++)
                in[2 + l] = q[l];
            base_job(&t, s, LB_JOB_DISTILL, b);
            t.distill = *s->distill;
            bool more = b + 1 < L;
            if ((j = add_job(p, &t, in, LB_LINEAR_COUNT + 2, LB_LINEAR_COUNT + (more ? 1 : 0),
                             A_QLIN, err)) < 0)
                goto fail_bufs;
            for (int l = 0; l < LB_LINEAR_COUNT; l++)
                q[l] = p->jobs[j].out[l];
            if (more) {
                xfp = p->jobs[j].out[LB_LINEAR_COUNT];
                p->arts[xfp].kind = A_ACT;
            }
        }
        for (int l = 0; l < LB_LINEAR_COUNT; l++)
            p->merge_in[p->n_merge_in++] = q[l];
        if (b + 1 < L || s->lm_head) { /* X_L only feeds the lm_head collect */
            for (int32_t c = 0; c < K; c++) { /* chunk c of X_{b+1} needs chunk c of X_b */
                in[0] = xs[c];
                for (int l = 0; l < LB_LINEAR_COUNT; l++)
                    in[1 + l] = q[l];
                base_job(&t, s, LB_JOB_PROPAGATE, b);
                set_chunk(&t, K, c);
                if ((j = add_job(p, &t, in, LB_LINEAR_COUNT + 1, 1, A_ACT, err)) < 0)
                    goto fail_bufs;
                xs[c] = p->jobs[j].out[0];
            }
        }
    }
    if (s->lm_head) { /* one job over all of X_L (its K chunks in order) */
        base_job(&t, s, LB_JOB_COLLECT_HESSIAN, L);
        t.stage = LB_STAGE_LM_HEAD;
        if (K > 1)
            t.n_chunks = K;
        if ((j = add_job(p, &t, xs, K, 1, A_HESS, err)) < 0)
            goto fail_bufs;
        int32_t hh = p->jobs[j].out[0];
        base_job(&t, s, LB_JOB_QUANTIZE_LINEAR, L);
        t.linear = LB_JOB_LINEAR_LM_HEAD;
        snprintf(t.tensor, sizeof t.tensor, "%s", LB_JOB_LM_HEAD_TENSOR);
        snprintf(t.method, sizeof t.method, "%s", s->lm_head->method);
        t.opts = s->lm_head->opts;
        if ((j = add_job(p, &t, &hh, 1, 1, A_QLIN, err)) < 0)
            goto fail_bufs;
        p->merge_in[p->n_merge_in++] = p->jobs[j].out[0];
    }
    free(xs);
    free(parts);
    free(in);
    base_job(&t, s, LB_JOB_MERGE, -1);
    snprintf(t.out_dir, sizeof t.out_dir, "%s", s->out_dir);
    snprintf(t.method, sizeof t.method, "%s", s->method);
    t.opts.bits = s->bits;
    snprintf(t.options_json, sizeof t.options_json, "%s", s->options_json ? s->options_json : "");
    if (add_job(p, &t, p->merge_in, p->n_merge_in, 0, A_QLIN, err) < 0)
        goto fail;
    *out = p;
    return 0;
fail_bufs:
    free(xs);
    free(parts);
    free(in);
    goto fail;
oom:
    lb_err_set(err, LB_ENOMEM, "plan: out of memory");
fail:
    lb_job_clear(&t);
    if (!err->code)
        lb_err_set(err, LB_ENOMEM, "plan: out of memory");
    int rc = err->code;
    lb_plan_free(&p);
    return rc;
}

void lb_plan_free(lb_plan **pp)
{
    if (!pp || !*pp)
        return;
    lb_plan *p = *pp;
    for (int32_t i = 0; i < p->n_jobs; i++) {
        lb_job_clear(&p->jobs[i].job);
        free(p->jobs[i].in);
    }
    free(p->jobs);
    free(p->arts);
    free(p->merge_in);
    free(p);
    *pp = NULL;
}

const char *lb_plan_calib_id(const lb_plan *p) { return p->arts[0].id; }
int32_t lb_plan_artifact_count(const lb_plan *p) { return p->n_arts; }
const char *lb_plan_artifact_id(const lb_plan *p, int32_t i) { return p->arts[i].id; }
const char *lb_plan_artifact_kind(const lb_plan *p, int32_t i)
{
    return kind_names[p->arts[i].kind];
}
void lb_plan_mark_present(lb_plan *p, int32_t i)
{
    if (i >= 0 && i < p->n_arts)
        p->arts[i].present = true;
}
int32_t lb_plan_job_count(const lb_plan *p) { return p->n_jobs; }
const lb_job *lb_plan_job(const lb_plan *p, int32_t i) { return &p->jobs[i].job; }
bool lb_plan_job_needed(const lb_plan *p, int32_t i) { return p->jobs[i].needed; }
int32_t lb_plan_needed_count(const lb_plan *p) { return p->n_needed; }
bool lb_plan_done(const lb_plan *p) { return p->started && p->done_needed == p->n_needed; }
bool lb_plan_failed(const lb_plan *p) { return p->failed; }
int32_t lb_plan_running(const lb_plan *p) { return p->running; }

static const int32_t *job_inputs(const lb_plan *p, const pjob *j, int32_t *n)
{
    if (j->job.type == LB_JOB_MERGE) {
        *n = p->n_merge_in;
        return p->merge_in;
    }
    *n = j->n_in;
    return j->in;
}

void lb_plan_start(lb_plan *p)
{
    /* Backwards over the topological order: a job is needed when one of its
     * outputs is missing and a needed job consumes it (merge always is). */
    bool *wanted = calloc((size_t)p->n_arts, sizeof *wanted);
    for (int32_t i = p->n_jobs - 1; i >= 0; i--) {
        pjob *j = &p->jobs[i];
        bool need = j->job.type == LB_JOB_MERGE ||
                    (j->job.type == LB_JOB_MEASURE && !p->arts[j->out[0]].present);
        for (int32_t o = 0; o < j->n_out && !need; o++)
            need = !p->arts[j->out[o]].present && (wanted ? wanted[j->out[o]] : true);
        j->needed = need;
        j->state = need ? J_WAIT : J_SKIP;
        if (!need)
            continue;
        p->n_needed++;
        int32_t n;
        const int32_t *in = job_inputs(p, j, &n);
        for (int32_t k = 0; k < n; k++) {
            if (wanted)
                wanted[in[k]] = true;
            p->arts[in[k]].pending++;
        }
    }
    free(wanted);
    p->started = true;
}

static bool deletable(const artifact *a)
{
    return (a->kind == A_ACT || a->kind == A_HESS || a->kind == A_HPART) && a->present && !a->deleted &&
           a->pending == 0;
}

int lb_plan_poll(lb_plan *p, lb_action *acts, int max)
{
    int n = 0;
    if (!p->started)
        return 0;
    for (int32_t i = 0; i < p->n_arts && n < max; i++) {
        if (deletable(&p->arts[i])) {
            p->arts[i].deleted = true;
            p->arts[i].present = false;
            acts[n].type = LB_ACT_DELETE;
            acts[n].job = -1;
            memcpy(acts[n].artifact, p->arts[i].id, LB_ID_HEX);
            n++;
        }
    }
    if (p->failed)
        return n;
    for (int32_t i = 0; i < p->n_jobs && n < max; i++) {
        pjob *j = &p->jobs[i];
        if (j->state != J_WAIT)
            continue;
        int32_t nin;
        const int32_t *in = job_inputs(p, j, &nin);
        bool ready = true;
        for (int32_t k = 0; k < nin && ready; k++)
            ready = p->arts[in[k]].present;
        if (!ready)
            continue;
        j->state = J_RUNNING;
        p->running++;
        acts[n].type = LB_ACT_RUN;
        acts[n].job = i;
        acts[n].artifact[0] = '\0';
        n++;
    }
    return n;
}

void lb_plan_feed_done(lb_plan *p, int32_t i)
{
    if (i < 0 || i >= p->n_jobs || p->jobs[i].state != J_RUNNING)
        return;
    pjob *j = &p->jobs[i];
    j->state = J_DONE;
    p->running--;
    p->done_needed++;
    for (int32_t o = 0; o < j->n_out; o++)
        p->arts[j->out[o]].present = true;
    int32_t n;
    const int32_t *in = job_inputs(p, j, &n);
    for (int32_t k = 0; k < n; k++)
        p->arts[in[k]].pending--;
}

void lb_plan_feed_failed(lb_plan *p, int32_t i)
{
    if (i < 0 || i >= p->n_jobs || p->jobs[i].state != J_RUNNING)
        return;
    p->jobs[i].state = J_FAILED;
    p->running--;
    p->failed = true;
}
