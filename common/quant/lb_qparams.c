#include "lb_qparams.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_billm.h"
#include "lb_pbllm.h"
#include "lb_gptq.h"

#define QP_MAX_FIELDS ((int32_t)(sizeof((lb_qparams *)0)->field / sizeof(int32_t)))

void lb_qparams_free(lb_qparams *q)
{
    if (!q)
        return;
    free(q->theta);
    free(q->idx);
    free(q->coef);
    memset(q, 0, sizeof *q);
}

static bool is_float_kind(lb_qfield_kind k)
{
    return k == LB_QFIELD_F16 || k == LB_QFIELD_BF16 || k == LB_QFIELD_F32;
}

/* first parameter index of float field `name`, -1 when absent */
static int64_t param_base(const lb_qparams *q, const lb_qpacked *p, const char *name)
{
    for (int32_t f = 0; f < q->nfields; f++)
        if (!strcmp(p->fields[q->field[f]].name, name))
            return q->offset[f];
    return -1;
}

static void term(lb_qparams *q, int64_t r, int64_t c, int32_t t, int64_t param, float coef)
{
    const int64_t at = (r * q->cols + c) * q->K + t;
    q->idx[at] = (int32_t)param;
    q->coef[at] = coef;
}

static int get_perm(const lb_qpacked *p, int64_t *perm, lb_err *err)
{
    if (lb_qpacked_field(p, "perm"))
        return lb_gptq_unpack_perm(p, perm, p->cols, err);
    for (int64_t c = 0; c < p->cols; c++)
        perm[c] = c;
    return LB_OK;
}

/* ---- per-method maps (each mirrors its method's dequantize; fields were
 * validated by that dequantize before these run) ---- */

static int map_uniform(lb_qparams *q, const lb_qpacked *p, int64_t *perm, lb_err *err)
{
    const lb_qfield *fg = lb_qpacked_field(p, "group_size"), *fc = lb_qpacked_field(p, "codes");
    const lb_qfield *fz = lb_qpacked_field(p, "zeros");
    const int64_t rows = p->rows, cols = p->cols, sb = param_base(q, p, "scales");
    const int64_t gs = (int64_t)lb_qfield_get(fg, 0), g = gs > 0 && gs < cols ? gs : cols;
    const int64_t ngroups = (cols + g - 1) / g;
    const int32_t zsym = (int32_t)((1u << fc->bits) / 2u);
    int rc = get_perm(p, perm, err);
    if (rc)
        return rc;
    int64_t *group_of = malloc((size_t)cols * sizeof *group_of);
    if (!group_of)
        return lb_err_set(err, LB_ENOMEM, "qparams: out of memory");
    for (int64_t c = 0; c < cols; c++)
        group_of[perm[c]] = c / g;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < cols; o++) {
            const int64_t gi = r * ngroups + group_of[o];
            const int32_t z = fz ? (int32_t)lb_qfield_get(fz, gi) : zsym;
            // Ŵ = s (q - z): linear in the scale, zero point is a code
            term(q, r, o, 0, sb + gi, (float)((int32_t)lb_qfield_get(fc, r * cols + o) - z));
        }
    free(group_of);
    return LB_OK;
}

static int map_claq(lb_qparams *q, const lb_qpacked *p, int64_t *perm, lb_err *err)
{
    const int64_t rows = p->rows, cols = p->cols;
    const lb_qfield *fw = lb_qpacked_field(p, "widths"), *fn = lb_qpacked_field(p, "outlier_counts");
    const lb_qfield *frow = lb_qpacked_field(p, "outlier_rows"), *fq[5] = {NULL};
    for (int b = 1; b <= 4; b++) {
        char name[16];
        snprintf(name, sizeof name, "codes_w%d", b);
        fq[b] = lb_qpacked_field(p, name);
    }
    const int64_t cb = param_base(q, p, "centroids"), ob = param_base(q, p, "outlier_values");
    int rc = get_perm(p, perm, err);
    if (rc)
        return rc;
    int64_t off_q[5] = {0}, off_c = 0, off_o = 0;
    for (int64_t c = 0; c < cols; c++) {
        const int32_t wb = (int32_t)lb_qfield_get(fw, c) + 1;
        const int64_t kc = lb_qfield_get(fn, c), col = perm[c];
        int64_t t = 0;
        for (int64_t i = 0; i < rows; i++) {
            if (t < kc && (int64_t)lb_qfield_get(frow, off_o + t) == i) {
                term(q, i, col, 0, ob + off_o + t, 1.0f); // kept fp16 outlier
                t++;
            } else {
                term(q, i, col, 0, cb + off_c + lb_qfield_get(fq[wb], off_q[wb]++), 1.0f);
            }
        }
        off_c += (int64_t)1 << wb;
        off_o += kc;
    }
    return LB_OK;
}

static int map_pbllm(lb_qparams *q, const lb_qpacked *p, int64_t *perm, lb_err *err)
{
    const int64_t rows = p->rows, cols = p->cols;
    const lb_qfield *fbs = lb_qpacked_field(p, "block_size");
    const lb_qfield *fs = lb_qpacked_field(p, "signs"), *fc = lb_qpacked_field(p, "salient_codes");
    const int64_t bs = lb_qfield_get(fbs, 0);
    const int64_t mub = param_base(q, p, "mu"), alb = param_base(q, p, "alpha");
    const int64_t lob = param_base(q, p, "salient_min"), stb = param_base(q, p, "salient_step");
    int rc = get_perm(p, perm, err);
    if (rc)
        return rc;
    /* the mask is stored as a bitmap or as per-row positions, whichever is smaller */
    uint8_t *mask = calloc((size_t)((rows * cols + 7) / 8), 1);
    int64_t nsal = 0;
    if (!mask)
        return lb_err_set(err, LB_ENOMEM, "qparams: out of memory for the pbllm mask");
    if ((rc = lb_pbllm_unpack_mask(p, bs, mask, &nsal, err))) {
        free(mask);
        return rc;
    }
    int64_t os = 0, oc = 0;
    for (int64_t c = 0; c < cols; c++) {
        const int64_t blk = c / bs, col = perm[c];
        for (int64_t i = 0; i < rows; i++) {
            const int64_t k = c * rows + i;
            if ((mask[k >> 3] >> (k & 7)) & 1) { // salient: lo + step * code
                term(q, i, col, 0, lob + i, 1.0f);
                term(q, i, col, 1, stb + i, (float)lb_qfield_get(fc, oc++));
            } else { // binary: mu ± alpha
                term(q, i, col, 0, mub + blk * rows + i, 1.0f);
                term(q, i, col, 1, alb + blk * rows + i, lb_qfield_get(fs, os++) ? 1.0f : -1.0f);
            }
        }
    }
    free(mask);
    return LB_OK;
}

static int map_qbb(lb_qparams *q, const lb_qpacked *p, int64_t *perm, lb_err *err)
{
    (void)perm;
    (void)err;
    const lb_qfield *fs = lb_qpacked_field(p, "scales"), *fb = lb_qpacked_field(p, "signs");
    const int64_t rows = p->rows, cols = p->cols, n = fs->shape[1];
    const int64_t sb = param_base(q, p, "scales");
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++)
            for (int64_t i = 0; i < n; i++) // Ŵ = Σ_i s_ri b_irj
                term(q, r, j, (int32_t)i, sb + r * n + i,
                     lb_qfield_get(fb, (i * rows + r) * cols + j) ? 1.0f : -1.0f);
    return LB_OK;
}

static int map_billm(lb_qparams *q, const lb_qpacked *p, int64_t *perm, lb_err *err)
{
    (void)perm;
    (void)err;
    const int64_t rows = p->rows, cols = p->cols;
    const lb_qfield *fbs = lb_qpacked_field(p, "block_size"), *fsal = lb_qpacked_field(p, "salient");
    const lb_qfield *fs1 = lb_qpacked_field(p, "sign1"), *fs2 = lb_qpacked_field(p, "sign2");
    const lb_qfield *fg = lb_qpacked_field(p, "group");
    const int64_t bs = lb_qfield_get(fbs, 0), nblocks = (cols + bs - 1) / bs;
    const int64_t sb = param_base(q, p, "scales");
    int64_t nsal = 0;
    for (int64_t c = 0; c < cols; c++)
        nsal += lb_qfield_get(fsal, c);
    for (int64_t r = 0; r < rows; r++) {
        int64_t i2 = r * nsal, ig = r * (cols - nsal);
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t a0 = sb + (r * nblocks + b) * 4;
            const int64_t c1 = (b + 1) * bs < cols ? (b + 1) * bs : cols;
            for (int64_t c = b * bs; c < c1; c++) {
                const float s1 = lb_qfield_get(fs1, r * cols + c) ? 1.0f : -1.0f;
                if (lb_qfield_get(fsal, c)) { // ±α1 ± α2 (order-2 residual)
                    term(q, r, c, 0, a0 + LB_BILLM_A1, s1);
                    term(q, r, c, 1, a0 + LB_BILLM_A2, lb_qfield_get(fs2, i2++) ? 1.0f : -1.0f);
                } else { // ±αs or ±αc by group
                    term(q, r, c, 0, a0 + (lb_qfield_get(fg, ig++) ? LB_BILLM_AS : LB_BILLM_AC),
                         s1);
                }
            }
        }
    }
    return LB_OK;
}

typedef struct {
    const char *method;
    int32_t (*terms)(const lb_qpacked *p);
    int (*map)(lb_qparams *q, const lb_qpacked *p, int64_t *perm, lb_err *err);
} qp_method;

static int32_t k1(const lb_qpacked *p)
{
    (void)p;
    return 1;
}
static int32_t k2(const lb_qpacked *p)
{
    (void)p;
    return 2;
}
static int32_t kqbb(const lb_qpacked *p)
{
    const lb_qfield *fs = lb_qpacked_field(p, "scales");
    return fs && fs->ndim == 2 ? (int32_t)fs->shape[1] : 1;
}

static const qp_method methods[] = {
    {"rtn", k1, map_uniform},  {"gptq", k1, map_uniform}, {"claq", k1, map_claq},
    {"pbllm", k2, map_pbllm},  {"billm", k2, map_billm},  {"qbb", kqbb, map_qbb},
};

int lb_qparams_from_packed(const lb_qpacked *p, lb_qparams *out, lb_err *err)
{
    memset(out, 0, sizeof *out);
    const qp_method *qm = NULL;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(p->method, methods[i].method))
            qm = &methods[i];
    const lb_qmethod *reg = lb_qmethod_find(p->method);
    if (!qm || !reg)
        return lb_err_set(err, LB_EINVAL,
                          "qparams: method '%.16s' has no continuous parameterization (supported: "
                          "rtn, gptq, claq, pbllm, billm, qbb)",
                          p->method);
    if (lb_qpacked_field(p, "rot_kind") || lb_qpacked_field(p, "rot_seed"))
        return lb_err_set(err, LB_EINVAL, "qparams: '%.16s' matrix is stored rotated "
                          "(--rotate); distillation of rotated checkpoints is not supported, "
                          "quantize without --rotate", p->method);
    if (lb_qpacked_field(p, "kq_type"))
        return lb_err_set(err, LB_EINVAL, "qparams: '%.16s' matrix holds K-quant blocks "
                          "(--grid q2_k|q3_k|q4_k), whose 6-bit sub-block scales are not "
                          "continuous parameters; distill a --grid minmax checkpoint", p->method);
    const int64_t rows = p->rows, cols = p->cols;
    if (rows < 1 || cols < 1 || rows > INT64_MAX / cols / 4)
        return lb_err_set(err, LB_EFORMAT, "qparams: bad shape %lld x %lld", (long long)rows,
                          (long long)cols);
    const int64_t n = rows * cols;
    float *W_ref = malloc((size_t)n * sizeof *W_ref);
    float *W_map = malloc((size_t)n * sizeof *W_map);
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    int rc = LB_OK;
    if (!W_ref || !W_map || !perm) {
        rc = lb_err_set(err, LB_ENOMEM, "qparams: out of memory");
        goto fail;
    }
    /* the method validates every field (shapes, kinds, counts, finiteness) */
    if ((rc = reg->dequantize(p, W_ref, err)))
        goto fail;
    out->rows = rows;
    out->cols = cols;
    out->K = qm->terms(p);
    for (int32_t f = 0; f < p->nfields; f++) {
        if (!is_float_kind(p->fields[f].kind))
            continue;
        if (out->nfields >= QP_MAX_FIELDS) {
            rc = lb_err_set(err, LB_EFORMAT, "qparams: more than %d float fields",
                            (int)QP_MAX_FIELDS);
            goto fail;
        }
        out->field[out->nfields] = f;
        out->offset[out->nfields + 1] = out->offset[out->nfields] + p->fields[f].count;
        out->nfields++;
    }
    out->nparams = out->offset[out->nfields];
    if (out->nparams > INT32_MAX || n > INT64_MAX / out->K) {
        rc = lb_err_set(err, LB_EINVAL, "qparams: %lld parameters exceed the 32-bit index",
                        (long long)out->nparams);
        goto fail;
    }
    out->theta = malloc((size_t)(out->nparams > 0 ? out->nparams : 1) * sizeof *out->theta);
    out->idx = malloc((size_t)(n * out->K) * sizeof *out->idx);
    out->coef = malloc((size_t)(n * out->K) * sizeof *out->coef);
    if (!out->theta || !out->idx || !out->coef) {
        rc = lb_err_set(err, LB_ENOMEM, "qparams: out of memory for the %lld x %lld map",
                        (long long)rows, (long long)cols);
        goto fail;
    }
    for (int32_t f = 0; f < out->nfields; f++) {
        const lb_qfield *fl = &p->fields[out->field[f]];
        for (int64_t e = 0; e < fl->count; e++)
            out->theta[out->offset[f] + e] = lb_qfield_get_float(fl, e);
    }
    for (int64_t i = 0; i < n * out->K; i++) {
        out->idx[i] = -1;
        out->coef[i] = 0.0f;
    }
    if ((rc = qm->map(out, p, perm, err)))
        goto fail;
    /* every weight must be reproduced: exactly with one term; with several the
     * method may round each partial sum, so allow a few ulps of Σ|terms| */
    lb_qparams_weights(out, W_map);
    for (int64_t i = 0; i < n; i++) {
        double mag = 0.0;
        for (int32_t t = 0; t < out->K; t++) {
            const int32_t pi = out->idx[i * out->K + t];
            mag += pi >= 0 ? fabs((double)out->coef[i * out->K + t] * (double)out->theta[pi]) : 0.0;
        }
        const double tol = out->K == 1 ? 0.0 : 4.0 * (double)FLT_EPSILON * mag;
        if (!(fabs((double)W_map[i] - (double)W_ref[i]) <= tol)) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "qparams: %s map gives %g at weight (%lld, %lld), dequantize %g; "
                            "the parameterization does not match this packed layout",
                            p->method, (double)W_map[i], (long long)(i / cols),
                            (long long)(i % cols), (double)W_ref[i]);
            goto fail;
        }
    }
    free(W_ref);
    free(W_map);
    free(perm);
    return LB_OK;
fail:
    free(W_ref);
    free(W_map);
    free(perm);
    lb_qparams_free(out);
    return rc;
}

void lb_qparams_weights(const lb_qparams *q, float *W)
{
    const int64_t n = q->rows * q->cols, K = q->K;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t t = 0; t < K; t++) {
            const int32_t p = q->idx[i * K + t];
            if (p >= 0)
                s += (double)q->coef[i * K + t] * (double)q->theta[p];
        }
        W[i] = (float)s;
    }
}

void lb_qparams_grad(const lb_qparams *q, const float *G, double *g)
{
    /* serial scatter: parameters are shared across rows or columns depending on
     * the method, and a fixed order keeps the sums deterministic */
    const int64_t n = q->rows * q->cols, K = q->K;
    memset(g, 0, (size_t)q->nparams * sizeof *g);
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = 0; t < K; t++) {
            const int32_t p = q->idx[i * K + t];
            if (p >= 0)
                g[p] += (double)q->coef[i * K + t] * (double)G[i];
        }
}

int lb_qparams_store(lb_qparams *q, lb_qpacked *p, lb_err *err)
{
    for (int32_t f = 0; f < q->nfields; f++) {
        const float lim = p->fields[q->field[f]].kind == LB_QFIELD_F16 ? 65504.0f : FLT_MAX;
        for (int64_t i = q->offset[f]; i < q->offset[f + 1]; i++)
            if (!isfinite(q->theta[i]) || fabsf(q->theta[i]) > lim)
                return lb_err_set(err, LB_ENUMERIC,
                                  "qparams: parameter %lld = %g does not fit field '%s'; lower "
                                  "--distill-lr",
                                  (long long)i, (double)q->theta[i], p->fields[q->field[f]].name);
    }
    for (int32_t f = 0; f < q->nfields; f++) {
        lb_qfield *fl = &p->fields[q->field[f]];
        for (int64_t e = 0; e < fl->count; e++)
            q->theta[q->offset[f] + e] = lb_qfield_put_float(fl, e, q->theta[q->offset[f] + e]);
    }
    return LB_OK;
}
