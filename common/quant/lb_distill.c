#include "lb_distill.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_backward.h"
#include "lb_blas.h"
#include "lb_forward.h"
#include "lb_qparams.h"
#include "lb_sample.h"
#include "lb_time.h"

void lb_distill_opts_init(lb_distill_opts *o)
{
    o->steps = 0;
    o->lr = 1e-3;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->batch_seqs = 8;
    o->seed = 0;
}

typedef struct {
    lb_qparams qp[LB_LINEAR_COUNT];
    bool on[LB_LINEAR_COUNT];
    lb_block_weights w; /* student: fp norms/biases, Ŵ(θ) for quantized linears */
} student;

/* Ŵ(θ) of every quantized linear into s->w */
static void student_refresh(student *s)
{
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        if (s->on[l])
            lb_qparams_weights(&s->qp[l], lb_block_linear(&s->w, (lb_linear)l));
}

/* s = fp block with Ŵ(θ) of every packed linear; off[l] = first parameter of
 * linear l in the concatenated vector (off[7] = total); dW[l] allocated for
 * each packed linear when dW != NULL. */
static int student_init(const lb_config *cfg, const lb_block_weights *fp,
                        lb_qpacked *const packed[LB_LINEAR_COUNT], student *sp, int64_t *off,
                        float **dW, lb_err *err)
{
    student s;
    memset(&s, 0, sizeof s);
    const int64_t dim = cfg->hidden_size;
    int rc = lb_block_weights_alloc(cfg, &s.w, err);
    if (rc)
        return rc;
    /* student = fp block, then Ŵ(θ) over the quantized linears */
    {
        const size_t nd = (size_t)dim * sizeof(float);
        memcpy(s.w.attn_norm, fp->attn_norm, nd);
        memcpy(s.w.ffn_norm, fp->ffn_norm, nd);
        float *const sb[] = {s.w.bq, s.w.bk, s.w.bv, s.w.bo, s.w.b_gate, s.w.b_up, s.w.b_down};
        const float *const fb[] = {fp->bq, fp->bk, fp->bv, fp->bo, fp->b_gate, fp->b_up,
                                   fp->b_down};
        const int64_t bn[] = {(int64_t)cfg->num_attention_heads * cfg->head_dim,
                              (int64_t)cfg->num_key_value_heads * cfg->head_dim,
                              (int64_t)cfg->num_key_value_heads * cfg->head_dim, dim,
                              cfg->intermediate_size, cfg->intermediate_size, dim};
        for (int i = 0; i < 7; i++)
            if (sb[i] && fb[i])
                memcpy(sb[i], fb[i], (size_t)bn[i] * sizeof(float));
    }
    int64_t nparams = 0;
    off[0] = 0;
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t r, c;
        lb_linear_shape(cfg, (lb_linear)l, &r, &c);
        if (packed[l]) {
            if (packed[l]->rows != r || packed[l]->cols != c) {
                rc = lb_err_set(err, LB_EINVAL,
                                "distill: packed %s is %lld x %lld, the block needs %lld x %lld",
                                lb_linear_name((lb_linear)l), (long long)packed[l]->rows,
                                (long long)packed[l]->cols, (long long)r, (long long)c);
                goto fail;
            }
            if ((rc = lb_qparams_from_packed(packed[l], &s.qp[l], err)))
                goto fail;
            s.on[l] = true;
            nparams += s.qp[l].nparams;
            if (dW && !(dW[l] = malloc((size_t)(r * c) * sizeof(float)))) {
                rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory");
                goto fail;
            }
        } else {
            memcpy(lb_block_linear(&s.w, (lb_linear)l), lb_block_linear(fp, (lb_linear)l),
                   (size_t)(r * c) * sizeof(float));
        }
        off[l + 1] = nparams;
    }
    student_refresh(&s);
    *sp = s;
    return LB_OK;
fail:
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        lb_qparams_free(&s.qp[l]);
        if (dW) {
            free(dW[l]);
            dW[l] = NULL;
        }
    }
    lb_block_weights_free(&s.w);
    return rc;
}

static void student_free(student *s)
{
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        lb_qparams_free(&s->qp[l]);
    lb_block_weights_free(&s->w);
}

/* MSE over sequences [seqs] (all when seqs == NULL) in double; also fills dy
 * = dL/dy when non-NULL. x_b / y_b: gathered batch buffers. */
static int batch_loss(lb_tape *t, const student *s, const float *x_s, const float *y_t,
                      const int64_t *seqs, int64_t nb, int64_t L, int64_t dim, float *xb,
                      float *yb, float *dy, double *loss, lb_err *err)
{
    const int64_t row = L * dim;
    for (int64_t b = 0; b < nb; b++)
        memcpy(xb + b * row, x_s + seqs[b] * row, (size_t)row * sizeof(float));
    int rc = lb_tape_forward(t, &s->w, xb, nb, L, yb, err);
    if (rc)
        return rc;
    const int64_t n = nb * row;
    double sum = 0.0;
    for (int64_t b = 0; b < nb; b++) {
        const float *tr = y_t + seqs[b] * row;
        for (int64_t i = 0; i < row; i++) {
            const double d = (double)yb[b * row + i] - (double)tr[i];
            sum += d * d;
            if (dy)
                dy[b * row + i] = (float)(2.0 * d / (double)n); // d/dy of mean (y - t)²
        }
    }
    *loss = sum / (double)n;
    if (!isfinite(*loss))
        return lb_err_set(err, LB_ENUMERIC, "distill: loss is %g; lower --distill-lr", *loss);
    return LB_OK;
}

/* full-set loss in chunks of cb sequences (the tape holds cb) */
static int full_loss(lb_tape *t, const student *s, const float *x_s, const float *y_t,
                     int64_t n_seq, int64_t cb, int64_t L, int64_t dim, float *xb, float *yb,
                     int64_t *seqs, double *loss, lb_err *err)
{
    double acc = 0.0;
    for (int64_t s0 = 0; s0 < n_seq; s0 += cb) {
        const int64_t nb = n_seq - s0 < cb ? n_seq - s0 : cb;
        for (int64_t b = 0; b < nb; b++)
            seqs[b] = s0 + b;
        double l;
        int rc = batch_loss(t, s, x_s, y_t, seqs, nb, L, dim, xb, yb, NULL, &l, err);
        if (rc)
            return rc;
        acc += l * (double)nb;
    }
    *loss = acc / (double)n_seq;
    return LB_OK;
}

int lb_distill_block(const lb_config *cfg, const lb_block_weights *fp,
                     lb_qpacked *const packed[LB_LINEAR_COUNT], const float *x_s, const float *y_t,
                     int64_t n_seq, int64_t seq_len, const lb_distill_opts *o,
                     lb_distill_stats *stats, lb_err *err)
{
    const double t0 = lb_now_s();
    lb_distill_stats st = {0};
    if (o->steps < 0 || !(o->lr > 0.0) || !isfinite(o->lr) || !(o->beta1 >= 0.0 && o->beta1 < 1.0) ||
        !(o->beta2 >= 0.0 && o->beta2 < 1.0) || !(o->eps > 0.0))
        return lb_err_set(err, LB_EINVAL,
                          "distill: steps %d must be >= 0 and lr %g > 0 (Adam betas in [0, 1))",
                          (int)o->steps, o->lr);
    if (n_seq < 1 || seq_len < 1 || n_seq > INT64_MAX / seq_len / cfg->hidden_size)
        return lb_err_set(err, LB_EINVAL, "distill: bad batch %lld x %lld", (long long)n_seq,
                          (long long)seq_len);
    const int64_t dim = cfg->hidden_size, L = seq_len;
    const int64_t cb = o->batch_seqs > 0 && o->batch_seqs < n_seq ? o->batch_seqs : n_seq;
    student s;
    memset(&s, 0, sizeof s);
    lb_tape *tape = NULL;
    float *xb = NULL, *yb = NULL, *dy = NULL, *dW[LB_LINEAR_COUNT] = {NULL};
    double *g = NULL, *m1 = NULL, *m2 = NULL;
    float *theta0 = NULL, *step_scale = NULL;
    int64_t *seqs = NULL, *order = NULL;
    int64_t nparams = 0, off[LB_LINEAR_COUNT + 1] = {0};
    int rc = student_init(cfg, fp, packed, &s, off, dW, err);
    if (rc)
        goto cleanup;
    nparams = off[LB_LINEAR_COUNT];
    st.nparams = nparams;
    if ((rc = lb_tape_new(cfg, cb * L, L, &tape, err)))
        goto cleanup;
    xb = malloc((size_t)(cb * L * dim) * sizeof(float));
    yb = malloc((size_t)(cb * L * dim) * sizeof(float));
    dy = malloc((size_t)(cb * L * dim) * sizeof(float));
    seqs = malloc((size_t)n_seq * sizeof *seqs);
    order = malloc((size_t)n_seq * sizeof *order);
    const size_t np = (size_t)(nparams > 0 ? nparams : 1);
    g = malloc(np * sizeof *g);
    m1 = calloc(np, sizeof *m1);
    m2 = calloc(np, sizeof *m2);
    theta0 = malloc(np * sizeof *theta0);
    step_scale = malloc(np * sizeof *step_scale);
    if (!xb || !yb || !dy || !seqs || !order || !g || !m1 || !m2 || !theta0 || !step_scale) {
        rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory for %lld parameters",
                        (long long)nparams);
        goto cleanup;
    }
    if ((rc = full_loss(tape, &s, x_s, y_t, n_seq, cb, L, dim, xb, yb, seqs, &st.loss_before,
                        err)))
        goto cleanup;
    st.loss_after = st.loss_before;
    /* per-field step scale: RMS of the field's initial values */
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        if (!s.on[l])
            continue;
        const lb_qparams *q = &s.qp[l];
        for (int32_t f = 0; f < q->nfields; f++) {
            double ss = 0.0;
            for (int64_t p = q->offset[f]; p < q->offset[f + 1]; p++)
                ss += (double)q->theta[p] * (double)q->theta[p];
            const int64_t cnt = q->offset[f + 1] - q->offset[f];
            const float rms = cnt ? (float)sqrt(ss / (double)cnt) : 0.0f;
            for (int64_t p = q->offset[f]; p < q->offset[f + 1]; p++) {
                step_scale[off[l] + p] = rms > 0.0f ? rms : 1e-3f;
                theta0[off[l] + p] = q->theta[p];
            }
        }
    }
    if (nparams == 0 || o->steps == 0)
        goto done;
    lb_rng rng;
    lb_rng_seed(&rng, o->seed, 0x64697374ull);
    for (int64_t i = 0; i < n_seq; i++)
        order[i] = i;
    int64_t cursor = n_seq;
    for (int32_t step = 0; step < o->steps; step++) {
        /* minibatch: the next cb sequences of a shuffled order (Fisher-Yates per epoch) */
        for (int64_t b = 0; b < cb; b++) {
            if (cursor == n_seq) {
                for (int64_t i = n_seq - 1; i > 0; i--) {
                    int64_t j = (int64_t)(lb_rng_next(&rng) % (uint64_t)(i + 1)), tmp = order[i];
                    order[i] = order[j];
                    order[j] = tmp;
                }
                cursor = 0;
            }
            seqs[b] = order[cursor++];
        }
        double loss;
        if ((rc = batch_loss(tape, &s, x_s, y_t, seqs, cb, L, dim, xb, yb, dy, &loss, err)))
            goto cleanup;
        if ((rc = lb_tape_backward(tape, &s.w, dy, NULL, dW, err)))
            goto cleanup;
        const double lr = o->lr * 0.5 * (1.0 + cos(M_PI * (double)step / (double)o->steps));
        const double bc1 = 1.0 - pow(o->beta1, step + 1), bc2 = 1.0 - pow(o->beta2, step + 1);
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            if (!s.on[l])
                continue;
            lb_qparams *q = &s.qp[l];
            lb_qparams_grad(q, dW[l], g + off[l]);
            for (int64_t p = 0; p < q->nparams; p++) {
                const int64_t i = off[l] + p;
                m1[i] = o->beta1 * m1[i] + (1.0 - o->beta1) * g[i];
                m2[i] = o->beta2 * m2[i] + (1.0 - o->beta2) * g[i] * g[i];
                const double upd = (m1[i] / bc1) / (sqrt(m2[i] / bc2) + o->eps);
                q->theta[p] = (float)((double)q->theta[p] - lr * (double)step_scale[i] * upd);
            }
        }
        student_refresh(&s);
        st.steps = step + 1;
    }
done:
    /* round to the stored type, evaluate on everything, keep only if better */
    {
        lb_qpacked *work[LB_LINEAR_COUNT] = {NULL};
        for (int l = 0; l < LB_LINEAR_COUNT && rc == LB_OK; l++) {
            if (!s.on[l])
                continue;
            /* check first so that a failure leaves every packed unchanged */
            lb_qparams *q = &s.qp[l];
            for (int64_t p = 0; p < q->nparams; p++)
                if (!isfinite(q->theta[p]) || fabsf(q->theta[p]) > 65504.0f) {
                    rc = lb_err_set(err, LB_ENUMERIC,
                                    "distill: %s parameter %lld diverged (%g); lower "
                                    "--distill-lr",
                                    lb_linear_name((lb_linear)l), (long long)p,
                                    (double)q->theta[p]);
                    break;
                }
            work[l] = packed[l];
        }
        if (rc)
            goto cleanup;
        for (int l = 0; l < LB_LINEAR_COUNT; l++)
            if (work[l] && (rc = lb_qparams_store(&s.qp[l], work[l], err)))
                goto cleanup; /* not reached: values were checked above */
        student_refresh(&s);
        rc = full_loss(tape, &s, x_s, y_t, n_seq, cb, L, dim, xb, yb, seqs, &st.loss_after, err);
        if (rc || !(st.loss_after < st.loss_before)) {
            for (int l = 0; l < LB_LINEAR_COUNT; l++) {
                if (!s.on[l])
                    continue;
                memcpy(s.qp[l].theta, theta0 + off[l], (size_t)s.qp[l].nparams * sizeof(float));
                lb_qparams_store(&s.qp[l], packed[l], NULL);
            }
            st.kept_original = true;
            st.loss_after = st.loss_before;
            if (rc)
                goto cleanup; /* packed restored above */
        }
    }
cleanup:
    st.seconds = lb_now_s() - t0;
    if (stats)
        *stats = st;
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        free(dW[l]);
    student_free(&s);
    lb_tape_free(&tape);
    free(xb);
    free(yb);
    free(dy);
    free(seqs);
    free(order);
    free(g);
    free(m1);
    free(m2);
    free(theta0);
    free(step_scale);
    return rc;
}

int lb_distill_eval(const lb_config *cfg, const lb_block_weights *fp,
                    lb_qpacked *const packed[LB_LINEAR_COUNT], const float *x_s, const float *y_t,
                    int64_t n_seq, int64_t seq_len, double *loss, double *const grad[LB_LINEAR_COUNT],
                    lb_err *err)
{
    if (n_seq < 1 || seq_len < 1 || n_seq > INT64_MAX / seq_len / cfg->hidden_size)
        return lb_err_set(err, LB_EINVAL, "distill: bad batch %lld x %lld", (long long)n_seq,
                          (long long)seq_len);
    const int64_t dim = cfg->hidden_size, n = n_seq * seq_len * dim;
    student s;
    memset(&s, 0, sizeof s);
    int64_t off[LB_LINEAR_COUNT + 1];
    float *dW[LB_LINEAR_COUNT] = {NULL};
    lb_tape *tape = NULL;
    float *y = NULL, *dy = NULL;
    int64_t *seqs = NULL;
    int rc = student_init(cfg, fp, packed, &s, off, grad ? dW : NULL, err);
    if (rc)
        return rc;
    if ((rc = lb_tape_new(cfg, n_seq * seq_len, seq_len, &tape, err)))
        goto cleanup;
    y = malloc((size_t)n * sizeof *y);
    dy = malloc((size_t)n * sizeof *dy);
    seqs = malloc((size_t)n_seq * sizeof *seqs);
    if (!y || !dy || !seqs) {
        rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory");
        goto cleanup;
    }
    for (int64_t i = 0; i < n_seq; i++)
        seqs[i] = i;
    float *xb = malloc((size_t)n * sizeof *xb);
    if (!xb) {
        rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory");
        goto cleanup;
    }
    rc = batch_loss(tape, &s, x_s, y_t, seqs, n_seq, seq_len, dim, xb, y, dy, loss, err);
    free(xb);
    if (rc || !grad)
        goto cleanup;
    if ((rc = lb_tape_backward(tape, &s.w, dy, NULL, dW, err)))
        goto cleanup;
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        if (s.on[l] && grad[l])
            lb_qparams_grad(&s.qp[l], dW[l], grad[l]);
cleanup:
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        free(dW[l]);
    student_free(&s);
    lb_tape_free(&tape);
    free(y);
    free(dy);
    free(seqs);
    return rc;
}

const char *lb_distill_usage(void)
{
    return "  --distill STEPS          Adam steps of scale distillation per block, 0 = off (0)\n"
           "  --distill-lr LR          peak relative learning rate, (0, 1] (0.001)\n"
           "  --distill-batch N        sequences per step (8)\n"
           "  --distill-seed S         minibatch order (0)\n";
}

int lb_distill_parse_arg(lb_distill_opts *o, int argc, char **argv, int *i, lb_err *err)
{
    static const char *const names[] = {"--distill", "--distill-lr", "--distill-batch",
                                        "--distill-seed"};
    const char *a = argv[*i], *val = NULL;
    int which = -1;
    for (int k = 0; k < 4 && which < 0; k++) {
        const size_t n = strlen(names[k]);
        if (!strcmp(a, names[k])) {
            which = k;
            val = *i + 1 < argc ? argv[*i + 1] : NULL;
        } else if (!strncmp(a, names[k], n) && a[n] == '=') {
            which = k;
            val = a + n + 1;
        }
    }
    if (which < 0)
        return 0;
    char *end = NULL;
    errno = 0;
    const double v = val ? strtod(val, &end) : (double)NAN;
    const bool num_ok = val && end != val && !*end && !errno && isfinite(v);
    const bool integral = num_ok && v == floor(v);
    switch (which) {
    case 0:
        if (!integral || v < 0 || v > 1e6)
            return lb_err_set(err, LB_EINVAL, "--distill: '%s' is not a step count 0..1000000",
                              val ? val : "(missing)");
        o->steps = (int32_t)v;
        break;
    case 1:
        if (!num_ok || !(v > 0.0 && v <= 1.0))
            return lb_err_set(err, LB_EINVAL, "--distill-lr: '%s' is not in (0, 1]",
                              val ? val : "(missing)");
        o->lr = v;
        break;
    case 2:
        if (!integral || v < 1 || v > 1e9)
            return lb_err_set(err, LB_EINVAL, "--distill-batch: '%s' is not a count >= 1",
                              val ? val : "(missing)");
        o->batch_seqs = (int64_t)v;
        break;
    default:
        if (!integral || v < 0 || v > 9007199254740992.0)
            return lb_err_set(err, LB_EINVAL, "--distill-seed: '%s' is not an integer >= 0",
                              val ? val : "(missing)");
        o->seed = (uint64_t)v;
        break;
    }
    *i += strchr(a, '=') ? 1 : 2;
    return 1;
}

int lb_distill_opts_json(const lb_distill_opts *o, char *buf, size_t size, lb_err *err)
{
    int n = snprintf(buf, size,
                     "{\"steps\":%d,\"lr\":%.17g,\"beta1\":%.17g,\"beta2\":%.17g,\"eps\":%.17g,"
                     "\"batch_seqs\":%lld,\"seed\":%llu,\"schedule\":\"cosine\","
                     "\"loss\":\"block output MSE\","
                     "\"inputs\":\"student: quantized-path block input; teacher: fp block on fp "
                     "input\"}",
                     (int)o->steps, o->lr, o->beta1, o->beta2, o->eps, (long long)o->batch_seqs,
                     (unsigned long long)o->seed);
    if (n < 0 || (size_t)n >= size)
        return lb_err_set(err, LB_EINVAL, "distill: settings JSON needs %d bytes, buffer has %zu",
                          n, size);
    return LB_OK;
}

/* ---- final stage: all blocks against the fp logits (KL) ---- */

/* RMSNorm forward keeping inv = rsqrt(mean(x²) + eps) per row, and its backward
 * (dx += inv g do - x inv³/dim Σ do g x); same math as lb_backward's */
static void rms_fwd_keep(const float *x, const float *g, float *o, float *inv, int64_t ntok,
                         int64_t dim, double eps)
{
    for (int64_t r = 0; r < ntok; r++) {
        double ss = 0.0;
        for (int64_t i = 0; i < dim; i++)
            ss += (double)x[r * dim + i] * (double)x[r * dim + i];
        inv[r] = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t i = 0; i < dim; i++)
            o[r * dim + i] = x[r * dim + i] * inv[r] * g[i];
    }
}

static void rms_bwd_keep(const float *x, const float *g, const float *inv, const float *dout,
                         float *dx, int64_t ntok, int64_t dim)
{
    for (int64_t r = 0; r < ntok; r++) {
        const float *xr = x + r * dim, *dr = dout + r * dim;
        double dot = 0.0;
        for (int64_t j = 0; j < dim; j++)
            dot += (double)dr[j] * (double)g[j] * (double)xr[j];
        const double iv = (double)inv[r], c = iv * iv * iv * dot / (double)dim;
        for (int64_t i = 0; i < dim; i++)
            dx[r * dim + i] += (float)(iv * (double)g[i] * (double)dr[i] - (double)xr[i] * c);
    }
}

typedef struct {
    const lb_config *cfg;
    const lb_head_weights *head;
    const lb_block_weights *fp;
    int32_t nl;
    int64_t cb, L, dim, vocab;
    student *s;            /* (nl,) */
    lb_tape **tape;        /* (nl,) */
    float **xs;            /* (nl + 1,) block inputs / final stream, (cb * L, dim) */
    float *xt, *lt, *ls;   /* teacher stream, teacher logits, student logits */
    float *xn, *inv, *dh, *dh2;
    float *dW[LB_LINEAR_COUNT]; /* largest shapes; reused per block */
    lb_fwd_workspace *ws;
    int64_t *off;          /* (nl * LB_LINEAR_COUNT + 1,) parameter offsets */
} mstage;

static void mstage_free(mstage *m)
{
    if (m->s)
        for (int32_t l = 0; l < m->nl; l++)
            student_free(&m->s[l]);
    if (m->tape)
        for (int32_t l = 0; l < m->nl; l++)
            lb_tape_free(&m->tape[l]);
    if (m->xs)
        for (int32_t l = 0; l <= m->nl; l++)
            free(m->xs[l]);
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        free(m->dW[l]);
    free(m->s);
    free(m->tape);
    free(m->xs);
    free(m->xt);
    free(m->lt);
    free(m->ls);
    free(m->xn);
    free(m->inv);
    free(m->dh);
    free(m->dh2);
    free(m->off);
    lb_fwd_workspace_free(&m->ws);
    memset(m, 0, sizeof *m);
}

static int mstage_init(mstage *m, const lb_config *cfg, const lb_head_weights *head,
                       const lb_block_weights *fp, lb_qpacked *const (*packed)[LB_LINEAR_COUNT],
                       int64_t cb, int64_t L, lb_err *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = cfg;
    m->head = head;
    m->fp = fp;
    m->nl = cfg->num_hidden_layers;
    m->cb = cb;
    m->L = L;
    m->dim = cfg->hidden_size;
    m->vocab = head->vocab;
    const int64_t ntok = cb * L;
    if (ntok > INT64_MAX / (m->vocab > m->dim ? m->vocab : m->dim) / 4)
        return lb_err_set(err, LB_EINVAL, "distill: batch too large");
    m->s = calloc((size_t)m->nl, sizeof *m->s);
    m->tape = calloc((size_t)m->nl, sizeof *m->tape);
    m->xs = calloc((size_t)m->nl + 1, sizeof *m->xs);
    m->off = calloc((size_t)m->nl * LB_LINEAR_COUNT + 1, sizeof *m->off);
    m->xt = malloc((size_t)(ntok * m->dim) * sizeof(float));
    m->lt = malloc((size_t)(ntok * m->vocab) * sizeof(float));
    m->ls = malloc((size_t)(ntok * m->vocab) * sizeof(float));
    m->xn = malloc((size_t)(ntok * m->dim) * sizeof(float));
    m->inv = malloc((size_t)ntok * sizeof(float));
    m->dh = malloc((size_t)(ntok * m->dim) * sizeof(float));
    m->dh2 = malloc((size_t)(ntok * m->dim) * sizeof(float));
    if (!m->s || !m->tape || !m->xs || !m->off || !m->xt || !m->lt || !m->ls || !m->xn ||
        !m->inv || !m->dh || !m->dh2)
        goto oom;
    for (int32_t l = 0; l <= m->nl; l++)
        if (!(m->xs[l] = malloc((size_t)(ntok * m->dim) * sizeof(float))))
            goto oom;
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        int64_t r, c;
        lb_linear_shape(cfg, (lb_linear)l, &r, &c);
        if (!(m->dW[l] = malloc((size_t)(r * c) * sizeof(float))))
            goto oom;
    }
    int rc;
    for (int32_t l = 0; l < m->nl; l++) {
        int64_t off[LB_LINEAR_COUNT + 1];
        if ((rc = student_init(cfg, &fp[l], packed[l], &m->s[l], off, NULL, err)) ||
            (rc = lb_tape_new(cfg, ntok, L, &m->tape[l], err))) {
            mstage_free(m);
            return rc;
        }
        for (int k = 0; k < LB_LINEAR_COUNT; k++)
            m->off[l * LB_LINEAR_COUNT + k + 1] =
                m->off[l * LB_LINEAR_COUNT + k] + (off[k + 1] - off[k]);
    }
    if ((rc = lb_fwd_workspace_new(cfg, ntok, L, &m->ws, err))) {
        mstage_free(m);
        return rc;
    }
    return LB_OK;
oom:
    mstage_free(m);
    return lb_err_set(err, LB_ENOMEM, "distill: out of memory for the final stage");
}

/* KL(p_t || p_s) averaged over the batch's tokens; g (all parameters) when non-NULL */
static int mstage_step(mstage *m, const uint32_t *tokens, const int64_t *seqs, int64_t nb,
                       double *loss, double *g, lb_err *err)
{
    const int64_t L = m->L, dim = m->dim, V = m->vocab, ntok = nb * L;
    for (int64_t b = 0; b < nb; b++) {
        int rc = lb_fwd_embed(m->head, tokens + seqs[b] * L, L, m->xs[0] + b * L * dim, err);
        if (rc)
            return rc;
    }
    memcpy(m->xt, m->xs[0], (size_t)(ntok * dim) * sizeof(float));
    for (int32_t l = 0; l < m->nl; l++) {
        int rc = lb_fwd_block(m->cfg, &m->fp[l], m->xt, nb, L, m->ws, NULL, err);
        if (!rc)
            rc = lb_tape_forward(m->tape[l], &m->s[l].w, m->xs[l], nb, L, m->xs[l + 1], err);
        if (rc)
            return rc;
    }
    lb_fwd_logits(m->cfg, m->head, m->xt, ntok, m->lt);
    /* student head with the final norm's inv kept for the backward */
    rms_fwd_keep(m->xs[m->nl], m->head->final_norm, m->xn, m->inv, ntok, dim,
                 m->cfg->rms_norm_eps);
    lb_sgemm(false, true, ntok, V, dim, 1.0f, m->xn, dim, m->head->lm_head, dim, 0.0f, m->ls, V);
    double total = 0.0;
    for (int64_t t = 0; t < ntok; t++) {
        const float *a = m->lt + t * V;
        float *b = m->ls + t * V;
        double ma = a[0], mb = b[0], za = 0.0, zb = 0.0, kl = 0.0;
        for (int64_t v = 1; v < V; v++) {
            ma = fmax(ma, (double)a[v]);
            mb = fmax(mb, (double)b[v]);
        }
        for (int64_t v = 0; v < V; v++) {
            za += exp((double)a[v] - ma);
            zb += exp((double)b[v] - mb);
        }
        const double lza = log(za), lzb = log(zb);
        for (int64_t v = 0; v < V; v++) {
            const double lpa = (double)a[v] - ma - lza, lpb = (double)b[v] - mb - lzb;
            const double pa = exp(lpa);
            kl += pa * (lpa - lpb);
            b[v] = (float)((exp(lpb) - pa) / (double)ntok); // d KL / d logit_s
        }
        total += kl;
    }
    *loss = total / (double)ntok;
    if (!isfinite(*loss))
        return lb_err_set(err, LB_ENUMERIC, "distill: KL is %g; lower --distill-lr", *loss);
    if (!g)
        return LB_OK;
    // dxn (ntok, dim) = dlogits (ntok, V) @ lm_head (V, dim)
    lb_sgemm(false, false, ntok, dim, V, 1.0f, m->ls, V, m->head->lm_head, dim, 0.0f, m->xn, dim);
    memset(m->dh, 0, (size_t)(ntok * dim) * sizeof(float));
    rms_bwd_keep(m->xs[m->nl], m->head->final_norm, m->inv, m->xn, m->dh, ntok, dim);
    for (int32_t l = m->nl - 1; l >= 0; l--) {
        float *dWl[LB_LINEAR_COUNT] = {NULL};
        for (int k = 0; k < LB_LINEAR_COUNT; k++)
            dWl[k] = m->s[l].on[k] ? m->dW[k] : NULL;
        int rc = lb_tape_backward(m->tape[l], &m->s[l].w, m->dh, l > 0 ? m->dh2 : NULL, dWl, err);
        if (rc)
            return rc;
        for (int k = 0; k < LB_LINEAR_COUNT; k++)
            if (m->s[l].on[k])
                lb_qparams_grad(&m->s[l].qp[k], m->dW[k], g + m->off[l * LB_LINEAR_COUNT + k]);
        float *tmp = m->dh;
        m->dh = m->dh2;
        m->dh2 = tmp;
    }
    return LB_OK;
}

static int mstage_full_loss(mstage *m, const uint32_t *tokens, int64_t n_seq, int64_t *seqs,
                            double *loss, lb_err *err)
{
    double acc = 0.0;
    for (int64_t s0 = 0; s0 < n_seq; s0 += m->cb) {
        const int64_t nb = n_seq - s0 < m->cb ? n_seq - s0 : m->cb;
        for (int64_t b = 0; b < nb; b++)
            seqs[b] = s0 + b;
        double l;
        int rc = mstage_step(m, tokens, seqs, nb, &l, NULL, err);
        if (rc)
            return rc;
        acc += l * (double)nb;
    }
    *loss = acc / (double)n_seq;
    return LB_OK;
}

static lb_qparams *mstage_qp(mstage *m, int64_t lk)
{
    return &m->s[lk / LB_LINEAR_COUNT].qp[lk % LB_LINEAR_COUNT];
}

static bool mstage_on(const mstage *m, int64_t lk)
{
    return m->s[lk / LB_LINEAR_COUNT].on[lk % LB_LINEAR_COUNT];
}

int lb_distill_model_eval(const lb_config *cfg, const lb_head_weights *head,
                          const lb_block_weights *fp,
                          lb_qpacked *const (*packed)[LB_LINEAR_COUNT], const uint32_t *tokens,
                          int64_t n_seq, int64_t seq_len, double *loss,
                          double *const (*grad)[LB_LINEAR_COUNT], lb_err *err)
{
    if (n_seq < 1 || seq_len < 1)
        return lb_err_set(err, LB_EINVAL, "distill: bad batch %lld x %lld", (long long)n_seq,
                          (long long)seq_len);
    mstage m;
    int rc = mstage_init(&m, cfg, head, fp, packed, n_seq, seq_len, err);
    if (rc)
        return rc;
    const int64_t np = m.off[m.nl * LB_LINEAR_COUNT];
    double *g = grad ? calloc((size_t)(np > 0 ? np : 1), sizeof *g) : NULL;
    int64_t *seqs = malloc((size_t)n_seq * sizeof *seqs);
    if ((grad && !g) || !seqs) {
        rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory");
        goto cleanup;
    }
    for (int64_t i = 0; i < n_seq; i++)
        seqs[i] = i;
    int blas = lb_blas_get_threads();
    lb_blas_set_threads(1);
    rc = mstage_step(&m, tokens, seqs, n_seq, loss, g, err);
    lb_blas_set_threads(blas);
    if (!rc && grad)
        for (int64_t lk = 0; lk < (int64_t)m.nl * LB_LINEAR_COUNT; lk++)
            if (mstage_on(&m, lk) && grad[lk / LB_LINEAR_COUNT][lk % LB_LINEAR_COUNT])
                memcpy(grad[lk / LB_LINEAR_COUNT][lk % LB_LINEAR_COUNT], g + m.off[lk],
                       (size_t)(m.off[lk + 1] - m.off[lk]) * sizeof *g);
cleanup:
    free(g);
    free(seqs);
    mstage_free(&m);
    return rc;
}

int lb_distill_model(const lb_config *cfg, const lb_head_weights *head,
                     const lb_block_weights *fp, lb_qpacked *const (*packed)[LB_LINEAR_COUNT],
                     const uint32_t *tokens, int64_t n_seq, int64_t seq_len,
                     const lb_distill_opts *o, lb_distill_stats *stats, lb_err *err)
{
    const double t0 = lb_now_s();
    lb_distill_stats st = {0};
    if (o->steps < 0 || !(o->lr > 0.0) || !isfinite(o->lr) || n_seq < 1 || seq_len < 1)
        return lb_err_set(err, LB_EINVAL, "distill: steps %d, lr %g, batch %lld x %lld invalid",
                          (int)o->steps, o->lr, (long long)n_seq, (long long)seq_len);
    const int64_t cb = o->batch_seqs > 0 && o->batch_seqs < n_seq ? o->batch_seqs : n_seq;
    mstage m;
    int rc = mstage_init(&m, cfg, head, fp, packed, cb, seq_len, err);
    if (rc)
        return rc;
    const int64_t nlk = (int64_t)m.nl * LB_LINEAR_COUNT, np = m.off[nlk];
    const size_t npz = (size_t)(np > 0 ? np : 1);
    double *g = malloc(npz * sizeof *g), *m1 = calloc(npz, sizeof *m1), *m2 = calloc(npz, sizeof *m2);
    float *theta0 = malloc(npz * sizeof *theta0), *scale = malloc(npz * sizeof *scale);
    int64_t *seqs = malloc((size_t)n_seq * sizeof *seqs), *order = malloc((size_t)n_seq * sizeof *order);
    const int blas = lb_blas_get_threads();
    lb_blas_set_threads(1);
    if (!g || !m1 || !m2 || !theta0 || !scale || !seqs || !order) {
        rc = lb_err_set(err, LB_ENOMEM, "distill: out of memory for %lld parameters",
                        (long long)np);
        goto cleanup;
    }
    st.nparams = np;
    for (int64_t lk = 0; lk < nlk; lk++) {
        if (!mstage_on(&m, lk))
            continue;
        const lb_qparams *q = mstage_qp(&m, lk);
        for (int32_t f = 0; f < q->nfields; f++) {
            double ss = 0.0;
            for (int64_t p = q->offset[f]; p < q->offset[f + 1]; p++)
                ss += (double)q->theta[p] * (double)q->theta[p];
            const int64_t cnt = q->offset[f + 1] - q->offset[f];
            const float rms = cnt ? (float)sqrt(ss / (double)cnt) : 0.0f;
            for (int64_t p = q->offset[f]; p < q->offset[f + 1]; p++) {
                scale[m.off[lk] + p] = rms > 0.0f ? rms : 1e-3f;
                theta0[m.off[lk] + p] = q->theta[p];
            }
        }
    }
    if ((rc = mstage_full_loss(&m, tokens, n_seq, seqs, &st.loss_before, err)))
        goto cleanup;
    st.loss_after = st.loss_before;
    lb_rng rng;
    lb_rng_seed(&rng, o->seed, 0x6b6cull);
    for (int64_t i = 0; i < n_seq; i++)
        order[i] = i;
    int64_t cursor = n_seq;
    for (int32_t step = 0; step < o->steps && np > 0; step++) {
        for (int64_t b = 0; b < cb; b++) {
            if (cursor == n_seq) {
                for (int64_t i = n_seq - 1; i > 0; i--) {
                    int64_t j = (int64_t)(lb_rng_next(&rng) % (uint64_t)(i + 1)), tmp = order[i];
                    order[i] = order[j];
                    order[j] = tmp;
                }
                cursor = 0;
            }
            seqs[b] = order[cursor++];
        }
        double loss;
        if ((rc = mstage_step(&m, tokens, seqs, cb, &loss, g, err)))
            goto restore;
        const double lr = o->lr * 0.5 * (1.0 + cos(M_PI * (double)step / (double)o->steps));
        const double bc1 = 1.0 - pow(o->beta1, step + 1), bc2 = 1.0 - pow(o->beta2, step + 1);
        for (int64_t lk = 0; lk < nlk; lk++) {
            if (!mstage_on(&m, lk))
                continue;
            lb_qparams *q = mstage_qp(&m, lk);
            for (int64_t p = 0; p < q->nparams; p++) {
                const int64_t i = m.off[lk] + p;
                m1[i] = o->beta1 * m1[i] + (1.0 - o->beta1) * g[i];
                m2[i] = o->beta2 * m2[i] + (1.0 - o->beta2) * g[i] * g[i];
                q->theta[p] = (float)((double)q->theta[p] - lr * (double)scale[i] * (m1[i] / bc1) /
                                                                (sqrt(m2[i] / bc2) + o->eps));
                if (!isfinite(q->theta[p]) || fabsf(q->theta[p]) > 65504.0f) {
                    rc = lb_err_set(err, LB_ENUMERIC, "distill: parameter diverged; lower "
                                                      "--distill-lr");
                    goto restore;
                }
            }
        }
        for (int32_t l = 0; l < m.nl; l++)
            student_refresh(&m.s[l]);
        st.steps = step + 1;
    }
    for (int64_t lk = 0; lk < nlk; lk++)
        if (mstage_on(&m, lk))
            lb_qparams_store(mstage_qp(&m, lk), packed[lk / LB_LINEAR_COUNT][lk % LB_LINEAR_COUNT],
                             NULL); /* values were range-checked each step */
    for (int32_t l = 0; l < m.nl; l++)
        student_refresh(&m.s[l]);
    rc = mstage_full_loss(&m, tokens, n_seq, seqs, &st.loss_after, err);
    if (!rc && st.loss_after < st.loss_before)
        goto cleanup;
restore:
    for (int64_t lk = 0; lk < nlk; lk++)
        if (mstage_on(&m, lk)) {
            lb_qparams *q = mstage_qp(&m, lk);
            memcpy(q->theta, theta0 + m.off[lk], (size_t)q->nparams * sizeof(float));
            lb_qparams_store(q, packed[lk / LB_LINEAR_COUNT][lk % LB_LINEAR_COUNT], NULL);
        }
    st.kept_original = true;
    st.loss_after = st.loss_before;
cleanup:
    lb_blas_set_threads(blas);
    st.seconds = lb_now_s() - t0;
    if (stats)
        *stats = st;
    free(g);
    free(m1);
    free(m2);
    free(theta0);
    free(scale);
    free(seqs);
    free(order);
    mstage_free(&m);
    return rc;
}
