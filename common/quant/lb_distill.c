#include "lb_distill.h"
#include "lb_distill_int.h"

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

/* Ŵ(θ) of every quantized linear into s->w */
void lb_distill_student_refresh(student *s)
{
    for (int l = 0; l < LB_LINEAR_COUNT; l++)
        if (s->on[l])
            lb_qparams_weights(&s->qp[l], lb_block_linear(&s->w, (lb_linear)l));
}

/* s = fp block with Ŵ(θ) of every packed linear; off[l] = first parameter of
 * linear l in the concatenated vector (off[7] = total); dW[l] allocated for
 * each packed linear when dW != NULL. */
int lb_distill_student_init(const lb_config *cfg, const lb_block_weights *fp,
                             lb_qpacked *const packed[LB_LINEAR_COUNT], student *sp,
                             int64_t *off, float **dW, lb_err *err)
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
    lb_distill_student_refresh(&s);
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

void lb_distill_student_free(student *s)
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

/* Per-field step scale: RMS of the field's initial values; theta0 keeps them. */
static void init_step_scale(const student *s, const int64_t *off, float *step_scale,
                            float *theta0)
{
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        if (!s->on[l])
            continue;
        const lb_qparams *q = &s->qp[l];
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
}

/* One Adam step (cosine learning rate) on every quantized linear's parameters from
 * their weight gradients dW. */
static void adam_step(student *s, const lb_distill_opts *o, int32_t step,
                      float *const dW[LB_LINEAR_COUNT], const int64_t *off,
                      const float *step_scale, double *g, double *m1, double *m2)
{
    const double lr = o->lr * 0.5 * (1.0 + cos(M_PI * (double)step / (double)o->steps));
    const double bc1 = 1.0 - pow(o->beta1, step + 1), bc2 = 1.0 - pow(o->beta2, step + 1);
    for (int l = 0; l < LB_LINEAR_COUNT; l++) {
        if (!s->on[l])
            continue;
        lb_qparams *q = &s->qp[l];
        lb_qparams_grad(q, dW[l], g + off[l]);
        for (int64_t p = 0; p < q->nparams; p++) {
            const int64_t i = off[l] + p;
            m1[i] = o->beta1 * m1[i] + (1.0 - o->beta1) * g[i];
            m2[i] = o->beta2 * m2[i] + (1.0 - o->beta2) * g[i] * g[i];
            const double upd = (m1[i] / bc1) / (sqrt(m2[i] / bc2) + o->eps);
            q->theta[p] = (float)((double)q->theta[p] - lr * (double)step_scale[i] * upd);
        }
    }
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
    int rc = lb_distill_student_init(cfg, fp, packed, &s, off, dW, err);
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
    init_step_scale(&s, off, step_scale, theta0);
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
        adam_step(&s, o, step, dW, off, step_scale, g, m1, m2);
        lb_distill_student_refresh(&s);
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
        lb_distill_student_refresh(&s);
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
    lb_distill_student_free(&s);
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
    int rc = lb_distill_student_init(cfg, fp, packed, &s, off, grad ? dW : NULL, err);
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
    lb_distill_student_free(&s);
    lb_tape_free(&tape);
    free(y);
    free(dy);
    free(seqs);
    return rc;
}
