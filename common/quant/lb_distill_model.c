/* lb_distill_model: the final distillation stage, all blocks against the fp logits
 * (KL); see lb_distill.h. */
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
            lb_distill_student_free(&m->s[l]);
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
        if ((rc = lb_distill_student_init(cfg, &fp[l], packed[l], &m->s[l], off, NULL, err)) ||
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
            lb_distill_student_refresh(&m.s[l]);
        st.steps = step + 1;
    }
    for (int64_t lk = 0; lk < nlk; lk++)
        if (mstage_on(&m, lk))
            lb_qparams_store(mstage_qp(&m, lk), packed[lk / LB_LINEAR_COUNT][lk % LB_LINEAR_COUNT],
                             NULL); /* values were range-checked each step */
    for (int32_t l = 0; l < m.nl; l++)
        lb_distill_student_refresh(&m.s[l]);
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
