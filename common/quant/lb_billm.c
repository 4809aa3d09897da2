#include "lb_billm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_gptq.h"

void lb_billm_cfg_init(lb_billm_cfg *cfg)
{
    cfg->max_salient = 50;
}

void lb_billm_plan_free(lb_billm_plan *plan)
{
    if (!plan)
        return;
    free(plan->salient);
    free(plan->alpha);
    free(plan->order);
    free(plan->rank);
    free(plan->score);
    free(plan->cand_err);
    free(plan->items);
    free(plan->rowerr);
    free(plan->colw);
    memset(plan, 0, sizeof(*plan));
}

int lb_billm_plan_init(lb_billm_plan *plan, int64_t rows, int64_t nb_max,
                       const lb_billm_cfg *cfg, lb_err *err)
{
    memset(plan, 0, sizeof(*plan));
    if (rows <= 0 || nb_max <= 0 || nb_max > INT32_MAX || rows > INT64_MAX / (nb_max + 1) ||
        (uint64_t)(rows * (nb_max + 1)) > SIZE_MAX / sizeof(lb_billm_item) / 2 ||
        cfg->max_salient < 0)
        return lb_err_set(err, LB_EINVAL,
                          "billm: bad plan size %lld x %lld or search config (max_salient %d)",
                          (long long)rows, (long long)nb_max, (int)cfg->max_salient);
    plan->rows = rows;
    plan->nb_max = nb_max;
    plan->salient = calloc((size_t)nb_max, 1);
    plan->alpha = calloc((size_t)rows * 4, sizeof(float));
    plan->order = malloc((size_t)nb_max * sizeof(int64_t));
    plan->rank = malloc((size_t)nb_max * sizeof(int32_t));
    plan->score = malloc((size_t)nb_max * sizeof(double));
    plan->cand_err = malloc((size_t)(nb_max + 1) * sizeof(double));
    plan->items = malloc((size_t)(rows * nb_max) * sizeof(lb_billm_item));
    plan->rowerr = malloc((size_t)(rows * (nb_max + 1)) * sizeof(double));
    plan->colw = malloc((size_t)nb_max * sizeof(double));
    if (!plan->salient || !plan->alpha || !plan->order || !plan->rank || !plan->score ||
        !plan->cand_err || !plan->items || !plan->rowerr || !plan->colw) {
        lb_billm_plan_free(plan);
        return lb_err_set(err, LB_ENOMEM, "billm: out of memory for a %lld x %lld block plan",
                          (long long)rows, (long long)nb_max);
    }
    return LB_OK;
}

static inline float f16_round(double v)
{
    return lb_f16_to_f32(lb_f32_to_f16((float)v));
}

/* One row's weights of a block, sorted by |w| ascending (ties: column order). */
static int cmp_item(const void *x, const void *y)
{
    const lb_billm_item *a = x, *b = y;
    if (a->a != b->a)
        return a->a < b->a ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

/* Weighted sums of one column set of a row: weight, Σ c|w|, Σ c w², count. */
typedef struct {
    double c, s, q;
    int64_t n;
} wsum;

/* Error of the best two-level fit {L_lo, L_hi} of a set's |w| given its totals T and the
 * prefix P of its values below a candidate split: Σ c a² - S_lo²/C_lo - S_hi²/C_hi. */
static double split_err(const wsum *T, const wsum *P)
{
    double e = T->q;
    if (P->n > 0)
        e -= P->s * P->s / P->c;
    if (T->n - P->n > 0) {
        double c = T->c - P->c, sv = T->s - P->s;
        e -= sv * sv / c;
    }
    return e;
}

/* For the row's items (sorted by |w|) and a membership test (rank[j] < k: set 0,
 * else set 1), the lowest two-level error of each set over every split between distinct
 * values; OUT best prefix (lower-level sums) of each set. Returns the summed error. */
static double row_two_sets(const lb_billm_item *it, int64_t nb, const int32_t *rank, int64_t k,
                           const double *cw, wsum best_lo[2])
{
    wsum T[2] = {{0}}, P[2] = {{0}};
    for (int64_t i = 0; i < nb; i++) {
        int g = rank[it[i].j] < k ? 0 : 1;
        double c = cw[it[i].j], a = (double)it[i].a;
        T[g].c += c;
        T[g].s += c * a;
        T[g].q += c * a * a;
        T[g].n++;
    }
    double best[2];
    for (int g = 0; g < 2; g++) {
        best[g] = split_err(&T[g], &P[g]); /* one level */
        best_lo[g] = P[g];
    }
    bool dirty[2] = {false, false}; /* prefix changed since its last evaluation */
    for (int64_t i = 0; i < nb; i++) {
        int g = rank[it[i].j] < k ? 0 : 1;
        double c = cw[it[i].j], a = (double)it[i].a;
        P[g].c += c;
        P[g].s += c * a;
        P[g].q += c * a * a;
        P[g].n++;
        dirty[g] = true;
        if (i + 1 < nb && it[i + 1].a == it[i].a)
            continue; /* equal values always share a level */
        for (int h = 0; h < 2; h++) {
            if (!dirty[h])
                continue; /* same prefix, same error as last time */
            dirty[h] = false;
            double e = split_err(&T[h], &P[h]);
            if (e < best[h]) {
                best[h] = e;
                best_lo[h] = P[h];
            }
        }
    }
    return best[0] + best[1];
}

int lb_billm_plan_block(lb_billm_plan *plan, const float *Wb, int64_t nb, int64_t ld,
                        const double *hinv_diag, const double *colw, const lb_billm_cfg *cfg,
                        lb_err *err)
{
    const int64_t rows = plan->rows;
    if (nb <= 0 || nb > plan->nb_max || ld < nb)
        return lb_err_set(err, LB_EINVAL, "billm: block of %lld columns does not fit the plan",
                          (long long)nb);
    plan->nb = nb;
    double *cw = plan->colw;
    for (int64_t j = 0; j < nb; j++) {
        cw[j] = colw ? colw[j] : 1.0;
        if (!(cw[j] > 0.0) || !isfinite(cw[j]))
            return lb_err_set(err, LB_EINVAL, "billm: column %lld has loss weight %g; "
                                              "weights must be finite and > 0",
                              (long long)j, cw[j]);
    }

    /* 1. salient score per column, paper Eq. 6: Σ_rows w² / [H^-1]_jj². */
    for (int64_t j = 0; j < nb; j++) {
        double s = 0.0;
        for (int64_t r = 0; r < rows; r++)
            s += (double)Wb[r * ld + j] * (double)Wb[r * ld + j];
        double d = hinv_diag[j];
        if (!(d > 0.0) || !isfinite(s))
            return lb_err_set(err, LB_EINVAL, "billm: column %lld has [H^-1]_jj = %g or a "
                                              "non-finite weight", (long long)j, d);
        plan->score[j] = s / (d * d);
        plan->order[j] = j;
    }
    /* columns by descending score; insertion sort is stable (ties: lower index first) */
    for (int64_t i = 1; i < nb; i++) {
        int64_t o = plan->order[i];
        int64_t k = i;
        while (k > 0 && plan->score[plan->order[k - 1]] < plan->score[o]) {
            plan->order[k] = plan->order[k - 1];
            k--;
        }
        plan->order[k] = o;
    }
    for (int64_t i = 0; i < nb; i++)
        plan->rank[plan->order[i]] = (int32_t)i;

    /* 2. search the salient count k: for every k, each row's top-k columns and the rest
     * each get their best two-level fit of |w| (salient: ±α1 ± α2, rest: ±α_c / ±α_s),
     * every error weighted by the column's loss weight. Rows in parallel; each row's
     * errors go to its own slot and are summed in row order, so the result does not
     * depend on the thread count. */
    int64_t kmax = cfg->max_salient < nb ? cfg->max_salient : nb;
    const int64_t ke = kmax + 1;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        lb_billm_item *it = plan->items + r * plan->nb_max;
        double *er = plan->rowerr + r * ke;
        for (int64_t j = 0; j < nb; j++) {
            it[j].a = fabsf(Wb[r * ld + j]);
            it[j].j = (int32_t)j;
        }
        qsort(it, (size_t)nb, sizeof(*it), cmp_item);
        wsum lo[2];
        for (int64_t k = 0; k <= kmax; k++)
            er[k] = row_two_sets(it, nb, plan->rank, k, cw, lo);
    }
    for (int64_t k = 0; k <= kmax; k++)
        plan->cand_err[k] = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k <= kmax; k++)
            plan->cand_err[k] += plan->rowerr[r * ke + k];
    int64_t best_k = 0;
    for (int64_t k = 1; k <= kmax; k++)
        if (plan->cand_err[k] < plan->cand_err[best_k])
            best_k = k;
    memset(plan->salient, 0, (size_t)nb);
    for (int64_t i = 0; i < best_k; i++)
        plan->salient[plan->order[i]] = 1;
    plan->nsalient = best_k;

    /* 3. scales per row from the best split of each set (weighted means of the two
     * levels), rounded to f16; then the block's weighted error under the final plan */
    int bad_row = -1;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const lb_billm_item *it = plan->items + r * plan->nb_max;
        float *al = plan->alpha + r * 4;
        const float *w = Wb + r * ld;
        wsum lo[2], T[2] = {{0}};
        row_two_sets(it, nb, plan->rank, best_k, cw, lo);
        for (int64_t j = 0; j < nb; j++) {
            int g = plan->salient[j] ? 0 : 1;
            T[g].c += cw[j];
            T[g].s += cw[j] * fabs((double)w[j]);
            T[g].n++;
        }
        double L[2][2];
        for (int g = 0; g < 2; g++) {
            double all = T[g].n ? T[g].s / T[g].c : 0.0;
            L[g][0] = lo[g].n ? lo[g].s / lo[g].c : all;
            L[g][1] = T[g].n - lo[g].n ? (T[g].s - lo[g].s) / (T[g].c - lo[g].c) : all;
        }
        al[LB_BILLM_A1] = f16_round(0.5 * (L[0][0] + L[0][1]));
        al[LB_BILLM_A2] = f16_round(0.5 * (L[0][1] - L[0][0]));
        al[LB_BILLM_AC] = f16_round(L[1][0]);
        al[LB_BILLM_AS] = f16_round(L[1][1]);
        double e2 = 0.0;
        for (int64_t j = 0; j < nb; j++) {
            uint8_t code;
            double d = (double)w[j] - (double)lb_billm_quant(w[j], plan->salient[j], al, &code);
            e2 += cw[j] * d * d;
        }
        plan->rowerr[r] = e2;
        for (int k = 0; k < 4; k++)
            if (!isfinite(al[k])) {
                #pragma omp critical(lb_billm_bad_row)
                bad_row = (int)r;
            }
    }
    if (bad_row >= 0)
        return lb_err_set(err, LB_ENUMERIC, "billm: scale of row %d overflows f16; rescale W",
                          bad_row);
    double err_total = 0.0;
    for (int64_t r = 0; r < rows; r++)
        err_total += plan->rowerr[r];
    plan->err = err_total;
    return LB_OK;
}

/* ---- the method: structure at block_begin, columns inside the GPTQ engine ---- */

typedef struct {
    lb_billm_cfg cfg;
    lb_billm_plan plan;
    int64_t rows, cols, bs, nblocks;
    double *hinv_diag; /* (cols,) [H^-1]_jj */
    double *colw;      /* (cols,) loss weight 1 / U_jj² of each column */
    float *block;      /* (rows, bs) the current block, row-major */
    uint8_t *codes_t;  /* (cols, rows) code bits, column-major */
    uint8_t *salient;  /* (cols,) */
    float *scales;     /* (rows, nblocks, 4) */
    int64_t c0;
} billm_ctx;

static int hook_begin(void *vctx, const lb_gptq_state *st, lb_err *err)
{
    billm_ctx *x = vctx;
    (void)err;
    /* The engine's loss is Σ_j (w_j - q_j)² / U_jj² over the columns as they are
     * quantized, so 1 / U_jj² is what an error in column j costs: the planner weighs
     * every choice with it. Without it a column whose input is 50x the others (an
     * outlier channel) counts like any other and is binarized like one (issue 11). */
    for (int64_t j = 0; j < st->cols; j++) {
        double u = (double)st->U[j * st->cols + j];
        x->colw[j] = 1.0 / (u * u);
    }
    /* [H^-1]_jj = Σ_{i<=j} U_ij², since H^-1 = Uᵀ U with U upper. The magnitude
     * criterion scores columns by Σ w² alone (denominator 1). */
    bool magnitude = st->opts->salient_criterion == LB_SALIENT_MAGNITUDE;
    for (int64_t j = 0; j < st->cols; j++)
        x->hinv_diag[j] = magnitude ? 1.0 : 0.0;
    if (magnitude)
        return LB_OK;
    for (int64_t i = 0; i < st->cols; i++) {
        const float *Ui = st->U + i * st->cols;
        for (int64_t j = i; j < st->cols; j++)
            x->hinv_diag[j] += (double)Ui[j] * (double)Ui[j];
    }
    return LB_OK;
}

static int hook_block_begin(void *vctx, const lb_gptq_state *st, int64_t c0, int64_t nb,
                            lb_err *err)
{
    billm_ctx *x = vctx;
    for (int64_t j = 0; j < nb; j++) {
        const float *col = st->Wt + (c0 + j) * st->rows;
        for (int64_t r = 0; r < st->rows; r++)
            x->block[r * x->bs + j] = col[r];
    }
    int rc = lb_billm_plan_block(&x->plan, x->block, nb, x->bs, x->hinv_diag + c0,
                                 x->colw + c0, &x->cfg,
                                 err);
    if (rc)
        return rc;
    int64_t b = c0 / x->bs;
    memcpy(x->salient + c0, x->plan.salient, (size_t)nb);
    for (int64_t r = 0; r < st->rows; r++)
        memcpy(x->scales + (r * x->nblocks + b) * 4, x->plan.alpha + r * 4, 4 * sizeof(float));
    x->c0 = c0;
    return LB_OK;
}

static int hook_column(void *vctx, const lb_gptq_state *st, int64_t c, const float *w, float *q,
                       float *err_scale, lb_err *err)
{
    billm_ctx *x = vctx;
    (void)err;
    (void)err_scale;
    bool sal = x->salient[c];
    uint8_t *codes = x->codes_t + c * st->rows;
    /* serial: a parallel region per column would leave spinning OpenMP threads competing
     * with the engine's BLAS threads between columns */
    for (int64_t r = 0; r < st->rows; r++)
        q[r] = lb_billm_quant(w[r], sal, x->plan.alpha + r * 4, &codes[r]);
    return LB_OK;
}

static int64_t nblocks_of(int64_t cols, int64_t bs)
{
    return (cols + bs - 1) / bs;
}

int lb_billm_quantize_cfg(const float *W, int64_t rows, int64_t cols, const float *H,
                          const lb_qopts *opts, const lb_billm_cfg *cfg, lb_qresult *out,
                          lb_err *err)
{
    int rc = lb_gptq_method_check("billm", W, rows, cols, H, opts, out, err);
    if (rc)
        return rc;
    if (!W || !H || rows <= 0 || cols <= 0 || rows > INT64_MAX / cols ||
        (uint64_t)(rows * cols) > SIZE_MAX / 8)
        return lb_err_set(err, LB_EINVAL, "billm: needs W and H and a valid shape "
                                          "(got %lld x %lld)", (long long)rows, (long long)cols);
    if (opts->block_size <= 0)
        return lb_err_set(err, LB_EINVAL, "billm: block_size = %d; use > 0 (default 128)",
                          (int)opts->block_size);
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(W[i]))
            return lb_err_set(err, LB_ENUMERIC, "billm: W element %lld is %s; clean the input",
                              (long long)i, isnan(W[i]) ? "NaN" : "Inf");
    for (int64_t i = 0; i < cols * cols; i++)
        if (!isfinite(H[i]))
            return lb_err_set(err, LB_ENUMERIC, "billm: H element %lld is %s; recollect the "
                                                "Hessian", (long long)i, isnan(H[i]) ? "NaN" : "Inf");

    billm_ctx x;
    memset(&x, 0, sizeof(x));
    x.cfg = *cfg;
    x.rows = rows;
    x.cols = cols;
    x.bs = opts->block_size < cols ? opts->block_size : cols;
    x.nblocks = nblocks_of(cols, x.bs);
    lb_qopts o = *opts;
    o.act_order = false; /* blocks are contiguous original columns */
    o.block_size = (int32_t)x.bs;
    o.group_size = 0;
    rc = lb_billm_plan_init(&x.plan, rows, x.bs, cfg, err);
    if (rc)
        return rc;
    x.hinv_diag = malloc((size_t)cols * sizeof(double));
    x.colw = malloc((size_t)cols * sizeof(double));
    x.block = malloc((size_t)(rows * x.bs) * sizeof(float));
    x.codes_t = malloc((size_t)(rows * cols));
    x.salient = calloc((size_t)cols, 1);
    x.scales = malloc((size_t)(rows * x.nblocks * 4) * sizeof(float));
    if (!x.hinv_diag || !x.colw || !x.block || !x.codes_t || !x.salient || !x.scales) {
        rc = lb_err_set(err, LB_ENOMEM, "billm: out of memory for %lld x %lld",
                        (long long)rows, (long long)cols);
        goto fail;
    }
    lb_gptq_hook hook = {.ctx = &x,
                         .begin = hook_begin,
                         .block_begin = hook_block_begin,
                         .column = hook_column,
                         .end = NULL};
    rc = lb_gptq_method_run("billm", W, rows, cols, H, &o, &hook, 0, out, err);
    if (rc) {
        lb_err_prefix(err, "billm");
        goto fail;
    }

    /* pack */
    lb_qpacked *p = &out->packed;
    snprintf(p->method, sizeof(p->method), "billm");
    p->rows = rows;
    p->cols = cols;
    int64_t nsal = 0;
    for (int64_t c = 0; c < cols; c++)
        nsal += x.salient[c];
    int64_t one = 1, s_cols[1] = {cols}, s_rc[2] = {rows, cols}, s_s2[2] = {rows, nsal},
            s_g[2] = {rows, cols - nsal}, s_sc[3] = {rows, x.nblocks, 4};
    /* add every field first: adding reallocates p->fields, so take pointers after */
    if (!lb_qpacked_add_field(p, "block_size", LB_QFIELD_UINT, 32, 1, &one, err) ||
        !lb_qpacked_add_field(p, "salient", LB_QFIELD_UINT, 1, 1, s_cols, err) ||
        !lb_qpacked_add_field(p, "sign1", LB_QFIELD_UINT, 1, 2, s_rc, err) ||
        !lb_qpacked_add_field(p, "sign2", LB_QFIELD_UINT, 1, 2, s_s2, err) ||
        !lb_qpacked_add_field(p, "group", LB_QFIELD_UINT, 1, 2, s_g, err) ||
        !lb_qpacked_add_field(p, "scales", LB_QFIELD_F16, 16, 3, s_sc, err)) {
        rc = err ? err->code : LB_ENOMEM;
        goto fail;
    }
    lb_qfield *fbs = &p->fields[0], *fsal = &p->fields[1], *fs1 = &p->fields[2],
              *fs2 = &p->fields[3], *fg = &p->fields[4], *fsc = &p->fields[5];
    lb_qfield_put(fbs, 0, (uint32_t)x.bs);
    for (int64_t c = 0; c < cols; c++)
        lb_qfield_put(fsal, c, x.salient[c]);
    for (int64_t i = 0; i < rows * x.nblocks * 4; i++)
        lb_qfield_put_float(fsc, i, x.scales[i]); /* already f16-exact */
    for (int64_t r = 0; r < rows; r++) {
        int64_t i2 = r * nsal, ig = r * (cols - nsal);
        for (int64_t c = 0; c < cols; c++) {
            uint8_t code = x.codes_t[c * rows + r];
            lb_qfield_put(fs1, r * cols + c, code & 1u);
            if (x.salient[c])
                lb_qfield_put(fs2, i2++, (code >> 1) & 1u);
            else
                lb_qfield_put(fg, ig++, (code >> 1) & 1u);
        }
    }
    out->bpw = lb_qpacked_bpw(p);
    rc = LB_OK;
    goto cleanup;

fail:
    lb_qresult_free(out);
cleanup:
    lb_billm_plan_free(&x.plan);
    free(x.hinv_diag);
    free(x.colw);
    free(x.block);
    free(x.codes_t);
    free(x.salient);
    free(x.scales);
    return rc;
}

int lb_billm_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                      const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    lb_billm_cfg cfg;
    lb_billm_cfg_init(&cfg);
    return lb_billm_quantize_cfg(W, rows, cols, H, opts, &cfg, out, err);
}

static int bad_field(lb_err *err, const char *name, const char *want)
{
    return lb_err_set(err, LB_EFORMAT, "billm dequantize: field \"%s\" missing or not %s; "
                                       "repack with method billm", name, want);
}

static bool field_ok(const lb_qfield *f, lb_qfield_kind kind, uint32_t bits, int32_t ndim,
                     const int64_t *shape)
{
    if (!f || f->kind != kind || f->bits != bits || f->ndim != ndim)
        return false;
    int64_t count = 1;
    for (int32_t d = 0; d < ndim; d++) {
        if (f->shape[d] != shape[d])
            return false;
        count *= shape[d];
    }
    return f->count == count && f->nbytes >= (size_t)(((uint64_t)count * bits + 7u) / 8u);
}

int lb_billm_dequantize(const lb_qpacked *packed, float *W_out, lb_err *err)
{
    const int64_t rows = packed->rows, cols = packed->cols;
    if (strcmp(packed->method, "billm") != 0)
        return lb_err_set(err, LB_EFORMAT, "billm dequantize: packed method is \"%.16s\"",
                          packed->method);
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / cols / 4)
        return lb_err_set(err, LB_EFORMAT, "billm dequantize: bad shape %lld x %lld",
                          (long long)rows, (long long)cols);
    int64_t one = 1;
    const lb_qfield *fbs = lb_qpacked_field(packed, "block_size");
    if (!field_ok(fbs, LB_QFIELD_UINT, 32, 1, &one))
        return bad_field(err, "block_size", "UINT32 (1,)");
    int64_t bs = lb_qfield_get(fbs, 0);
    if (bs < 1 || bs > cols)
        return lb_err_set(err, LB_EFORMAT, "billm dequantize: block_size %lld out of 1..%lld",
                          (long long)bs, (long long)cols);
    int64_t nblocks = nblocks_of(cols, bs);
    const lb_qfield *fsal = lb_qpacked_field(packed, "salient");
    int64_t s_cols[1] = {cols};
    if (!field_ok(fsal, LB_QFIELD_UINT, 1, 1, s_cols))
        return bad_field(err, "salient", "UINT1 (cols,)");
    int64_t nsal = 0;
    for (int64_t c = 0; c < cols; c++)
        nsal += lb_qfield_get(fsal, c);
    int64_t s_rc[2] = {rows, cols}, s_s2[2] = {rows, nsal}, s_g[2] = {rows, cols - nsal},
            s_sc[3] = {rows, nblocks, 4};
    const lb_qfield *fs1 = lb_qpacked_field(packed, "sign1");
    const lb_qfield *fs2 = lb_qpacked_field(packed, "sign2");
    const lb_qfield *fg = lb_qpacked_field(packed, "group");
    const lb_qfield *fsc = lb_qpacked_field(packed, "scales");
    if (!field_ok(fs1, LB_QFIELD_UINT, 1, 2, s_rc))
        return bad_field(err, "sign1", "UINT1 (rows, cols)");
    if (!field_ok(fs2, LB_QFIELD_UINT, 1, 2, s_s2))
        return bad_field(err, "sign2", "UINT1 (rows, salient columns)");
    if (!field_ok(fg, LB_QFIELD_UINT, 1, 2, s_g))
        return bad_field(err, "group", "UINT1 (rows, non-salient columns)");
    if (!field_ok(fsc, LB_QFIELD_F16, 16, 3, s_sc))
        return bad_field(err, "scales", "F16 (rows, blocks, 4)");
    for (int64_t r = 0; r < rows; r++) {
        int64_t i2 = r * nsal, ig = r * (cols - nsal);
        for (int64_t b = 0; b < nblocks; b++) {
            float a[4];
            for (int k = 0; k < 4; k++) {
                a[k] = lb_qfield_get_float(fsc, (r * nblocks + b) * 4 + k);
                if (!isfinite(a[k]))
                    return lb_err_set(err, LB_ENUMERIC, "billm dequantize: scale (%lld, %lld, "
                                                        "%d) is not finite",
                                      (long long)r, (long long)b, k);
            }
            int64_t c1 = (b + 1) * bs < cols ? (b + 1) * bs : cols;
            for (int64_t c = b * bs; c < c1; c++) {
                bool sal = lb_qfield_get(fsal, c) != 0;
                uint32_t code = lb_qfield_get(fs1, r * cols + c);
                code |= (sal ? lb_qfield_get(fs2, i2++) : lb_qfield_get(fg, ig++)) << 1;
                W_out[r * cols + c] = lb_billm_value(code, sal, a);
            }
        }
    }
    return LB_OK;
}

const lb_qmethod lb_qmethod_billm = {
    .name = "billm",
    .summary = "BiLLM: salient columns order-2 residual binarized, rest in two magnitude "
               "groups, loss-weighted search, GPTQ compensation",
    .quantize = lb_billm_quantize,
    .dequantize = lb_billm_dequantize,
};
