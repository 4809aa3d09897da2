#include "lb_claq.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_dtype.h"
#include "lb_gptq.h"
#include "lb_kmeans1d.h"

#define CLAQ_MAX_WIDTH 4

const lb_qmethod lb_qmethod_claq = {
    .name = "claq",
    .summary = "CLAQ: per-column exact K-means codebooks (f16) in the GPTQ loop, "
               "outlier-guided adaptive precision (fractional bits), fp16 outlier reservation",
    .quantize = lb_claq_quantize,
    .dequantize = lb_claq_dequantize,
};

/* Bits to store any value in 0..maxval (at least 1). */
static uint32_t bits_for_max(uint64_t maxval)
{
    uint32_t b = 1;
    while (b < 64 && (maxval >> b) != 0)
        b++;
    return b;
}

/* Bits for an index in 0..n-1: ceil(log2(n)), at least 1. */
static uint32_t bits_for_index(int64_t n)
{
    return bits_for_max(n > 1 ? (uint64_t)(n - 1) : 1u);
}

/* ---- plan: adaptive precision and outlier reservation ---- */

typedef struct {
    double score;
    double tie; /* max |w| (or max w^2 H_jj): breaks ties such as "no outliers at all" */
    int64_t id; /* original column: last tie-break */
    int64_t c;  /* position in the caller's order */
} claq_rank;

static int cmp_rank(const void *pa, const void *pb)
{
    const claq_rank *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    if (a->tie != b->tie)
        return a->tie > b->tie ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int claq_check_opts(const lb_qopts *o, int32_t *base, int64_t cols, int64_t *n_hi,
                           lb_err *err)
{
    if (!isfinite(o->bits) || o->bits < 1.0 || o->bits > 4.0)
        return lb_err_set(err, LB_EINVAL,
                          "claq: bits=%g outside [1, 4]; use e.g. 2, 2.1 or 3", o->bits);
    int32_t b = (int32_t)floor(o->bits + 1e-9);
    double frac = o->bits - (double)b;
    if (frac < 1e-9)
        frac = 0.0;
    if (b >= CLAQ_MAX_WIDTH && frac > 0.0)
        return lb_err_set(err, LB_EINVAL, "claq: bits=%g needs widths above 4; use <= 4",
                          o->bits);
    if (!(o->outlier_threshold >= 0.0) || !isfinite(o->outlier_threshold))
        return lb_err_set(err, LB_EINVAL, "claq: outlier_threshold=%g must be >= 0",
                          o->outlier_threshold);
    if (!(o->outlier_keep_top >= 0.0 && o->outlier_keep_top <= 1.0) ||
        !(o->outlier_keep_rest >= 0.0 && o->outlier_keep_rest <= 1.0) ||
        !(o->outlier_top_frac >= 0.0 && o->outlier_top_frac <= 1.0))
        return lb_err_set(err, LB_EINVAL,
                          "claq: outlier keep ratios (%g, %g) and top fraction %g must be in [0, 1]",
                          o->outlier_keep_top, o->outlier_keep_rest, o->outlier_top_frac);
    *base = b;
    *n_hi = (int64_t)llround(frac * (double)cols);
    return 0;
}

int lb_claq_plan(const float *Wt, int64_t rows, int64_t cols, const float *hdiag,
                 const int64_t *colid, const lb_qopts *opts, int32_t *width, int32_t *keep,
                 double *score, lb_err *err)
{
    if (!Wt || !opts || !width || !keep || rows < 1 || cols < 1 ||
        rows > INT64_MAX / cols)
        return lb_err_set(err, LB_EINVAL, "claq plan: empty matrix or NULL argument");
    if (opts->outlier_hessian_score && !hdiag)
        return lb_err_set(err, LB_EINVAL,
                          "claq plan: outlier_hessian_score needs the Hessian diagonal");
    int32_t base;
    int64_t n_hi;
    int rc = claq_check_opts(opts, &base, cols, &n_hi, err);
    if (rc)
        return rc;
    claq_rank *rk = malloc((size_t)cols * sizeof *rk);
    if (!rk)
        return lb_err_set(err, LB_ENOMEM, "claq plan: out of memory for %lld columns",
                          (long long)cols);
    /* mean |W| over the whole matrix (CLAQ: outlier = |w| >= t * mean|W|) */
    double mean = 0.0;
    for (int64_t i = 0; i < rows * cols; i++)
        mean += fabs((double)Wt[i]);
    mean /= (double)(rows * cols);
    const double thr = opts->outlier_threshold * mean;
    for (int64_t c = 0; c < cols; c++) {
        const float *w = Wt + c * rows;
        double s = 0.0, amax = 0.0;
        for (int64_t i = 0; i < rows; i++) {
            double a = fabs((double)w[i]);
            if (a >= thr)
                s += opts->outlier_hessian_score ? a * a * (double)hdiag[c] : 1.0;
            if (a > amax)
                amax = a;
        }
        rk[c].score = s;
        rk[c].tie = opts->outlier_hessian_score ? amax * amax * (double)hdiag[c] : amax;
        rk[c].id = colid ? colid[c] : c;
        rk[c].c = c;
    }
    qsort(rk, (size_t)cols, sizeof *rk, cmp_rank);
    const int64_t n_top = (int64_t)llround(opts->outlier_top_frac * (double)cols);
    for (int64_t r = 0; r < cols; r++) {
        int64_t c = rk[r].c;
        width[c] = base + (r < n_hi ? 1 : 0);
        double ratio = r < n_top ? opts->outlier_keep_top : opts->outlier_keep_rest;
        int64_t k = (int64_t)llround(ratio * (double)rows);
        keep[c] = (int32_t)(k < 0 ? 0 : k > rows ? rows : k);
        if (score)
            score[c] = rk[r].score;
    }
    free(rk);
    return 0;
}

/* ---- the hook ---- */

typedef struct {
    const lb_qopts *opts;
    int64_t rows, cols;
    lb_qpacked *packed;
    int32_t *width, *keep; /* (cols,) processing order */
    lb_kmeans1d_ws *km;
    float *xfit;        /* (rows,) values the codebook is fitted on */
    float *xrest;       /* (rows,) non-kept values, ascending rows */
    uint8_t *codes;     /* (rows,) */
    uint8_t *is_kept;   /* (rows,) */
    uint64_t *sel;      /* (rows,) selection keys */
    int64_t *kept_rows; /* (rows,) */
    /* field indices into packed->fields (pointers move while fields are added) */
    int fi_width, fi_codes[CLAQ_MAX_WIDTH + 1], fi_cent, fi_ocnt, fi_orow, fi_oval;
    int64_t off_codes[CLAQ_MAX_WIDTH + 1], off_cent, off_out;
} claq_ctx;

static void claq_ctx_release(claq_ctx *cx)
{
    free(cx->width);
    free(cx->keep);
    lb_kmeans1d_ws_free(&cx->km);
    free(cx->xfit);
    free(cx->xrest);
    free(cx->codes);
    free(cx->is_kept);
    free(cx->sel);
    free(cx->kept_rows);
}

static int add_field(lb_qpacked *p, const char *name, lb_qfield_kind kind, uint32_t bits,
                     int64_t count, int *index, lb_err *err)
{
    int64_t shape[1] = {count};
    if (!lb_qpacked_add_field(p, name, kind, bits, 1, shape, err))
        return err && err->code ? err->code : LB_EINVAL;
    *index = p->nfields - 1;
    return 0;
}

static int claq_begin(void *ctx, const lb_gptq_state *st, lb_err *err)
{
    claq_ctx *cx = ctx;
    const int64_t rows = st->rows, cols = st->cols;
    cx->width = malloc((size_t)cols * sizeof *cx->width);
    cx->keep = malloc((size_t)cols * sizeof *cx->keep);
    cx->xfit = malloc((size_t)rows * sizeof *cx->xfit);
    cx->xrest = malloc((size_t)rows * sizeof *cx->xrest);
    cx->codes = malloc((size_t)rows);
    cx->is_kept = calloc((size_t)rows, 1);
    cx->sel = malloc((size_t)rows * sizeof *cx->sel);
    cx->kept_rows = malloc((size_t)rows * sizeof *cx->kept_rows);
    if (!cx->width || !cx->keep || !cx->xfit || !cx->xrest || !cx->codes || !cx->is_kept ||
        !cx->sel || !cx->kept_rows)
        return lb_err_set(err, LB_ENOMEM, "claq: out of memory for a %lld x %lld matrix",
                          (long long)rows, (long long)cols);
    int rc = lb_kmeans1d_ws_new(rows, 1 << CLAQ_MAX_WIDTH, &cx->km, err);
    if (rc)
        return rc;
    /* st->Wt holds the original W in processing order here. */
    rc = lb_claq_plan(st->Wt, rows, cols, st->Hdiag, st->perm, cx->opts, cx->width, cx->keep,
                      NULL, err);
    if (rc)
        return rc;
    int64_t ncodes[CLAQ_MAX_WIDTH + 1] = {0}, ncent = 0, nout = 0, maxkeep = 0;
    for (int64_t c = 0; c < cols; c++) {
        ncodes[cx->width[c]] += rows - cx->keep[c];
        ncent += (int64_t)1 << cx->width[c];
        nout += cx->keep[c];
        if (cx->keep[c] > maxkeep)
            maxkeep = cx->keep[c];
    }
    lb_qpacked *p = cx->packed;
    if ((rc = add_field(p, "widths", LB_QFIELD_UINT, 2, cols, &cx->fi_width, err)))
        return rc;
    for (int b = 1; b <= CLAQ_MAX_WIDTH; b++) {
        cx->fi_codes[b] = -1;
        if (!ncodes[b])
            continue;
        char name[16];
        snprintf(name, sizeof name, "codes_w%d", b);
        if ((rc = add_field(p, name, LB_QFIELD_UINT, (uint32_t)b, ncodes[b], &cx->fi_codes[b],
                            err)))
            return rc;
    }
    if ((rc = add_field(p, "centroids", LB_QFIELD_F16, 16, ncent, &cx->fi_cent, err)) ||
        (rc = add_field(p, "outlier_counts", LB_QFIELD_UINT, bits_for_max((uint64_t)maxkeep),
                        cols, &cx->fi_ocnt, err)) ||
        (rc = add_field(p, "outlier_rows", LB_QFIELD_UINT, bits_for_index(rows), nout,
                        &cx->fi_orow, err)) ||
        (rc = add_field(p, "outlier_values", LB_QFIELD_F16, 16, nout, &cx->fi_oval, err)))
        return rc;
    for (int64_t c = 0; c < cols; c++) {
        lb_qfield_put(&p->fields[cx->fi_width], c, (uint32_t)(cx->width[c] - 1));
        lb_qfield_put(&p->fields[cx->fi_ocnt], c, (uint32_t)cx->keep[c]);
    }
    return 0;
}


static int cmp_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return (a > b) - (a < b);
}

static int claq_column(void *ctx, const lb_gptq_state *st, int64_t c, const float *w, float *q,
                       float *err_scale, lb_err *err)
{
    (void)err_scale; /* every column is quantized: the full error is compensated */
    claq_ctx *cx = ctx;
    const int64_t rows = st->rows;
    const int32_t width = cx->width[c], k = 1 << width;
    const int64_t nk = cx->keep[c];
    lb_qpacked *p = cx->packed;

    /* Outlier reservation: the nk largest |w| (ties: lower row), ascending rows. */
    if (nk > 0) {
        for (int64_t i = 0; i < rows; i++) {
            float a = fabsf(w[i]);
            uint32_t bitsv;
            memcpy(&bitsv, &a, sizeof bitsv);
            cx->sel[i] = ((uint64_t)bitsv << 32) | (uint64_t)(UINT32_MAX - (uint32_t)i);
        }
        lb_quant_select_top_u64(cx->sel, rows, nk);
        for (int64_t t = 0; t < nk; t++)
            cx->kept_rows[t] = (int64_t)(UINT32_MAX - (uint32_t)(cx->sel[t] & 0xffffffffu));
        qsort(cx->kept_rows, (size_t)nk, sizeof *cx->kept_rows, cmp_i64);
        for (int64_t t = 0; t < nk; t++)
            cx->is_kept[cx->kept_rows[t]] = 1;
    }
    int64_t nrest = 0, nfit = 0;
    for (int64_t i = 0; i < rows; i++) {
        if (!cx->is_kept[i])
            cx->xrest[nrest++] = w[i];
        if (!cx->is_kept[i] || cx->opts->centroids_with_outliers)
            cx->xfit[nfit++] = w[i];
    }
    float cent[1 << CLAQ_MAX_WIDTH];
    int rc = 0;
    if (nfit > 0) {
        rc = lb_kmeans1d_fit(cx->km, cx->xfit, nfit, k, cent, NULL, err);
        if (rc) {
            lb_err_prefix(err, "claq column %lld", (long long)c);
            goto done;
        }
    } else {
        for (int32_t m = 0; m < k; m++)
            cent[m] = 0.0f;
    }
    /* Store the centroids as f16 and assign to the stored values (monotone rounding keeps
     * them sorted). */
    lb_qfield *fc = &p->fields[cx->fi_cent];
    for (int32_t m = 0; m < k; m++) {
        cent[m] = lb_qfield_put_float(fc, cx->off_cent + m, cent[m]);
        if (!isfinite(cent[m])) {
            rc = lb_err_set(err, LB_ENUMERIC,
                            "claq column %lld: a centroid is beyond the f16 range (|w| > 65504)",
                            (long long)c);
            goto done;
        }
    }
    cx->off_cent += k;
    lb_kmeans1d_assign_sorted(cx->xrest, nrest, cent, k, cx->codes);
    lb_qfield *fq = &p->fields[cx->fi_codes[width]];
    lb_qfield *frow = &p->fields[cx->fi_orow], *fval = &p->fields[cx->fi_oval];
    int64_t r = 0;
    for (int64_t i = 0; i < rows; i++) {
        if (cx->is_kept[i]) {
            lb_qfield_put(frow, cx->off_out, (uint32_t)i);
            q[i] = lb_qfield_put_float(fval, cx->off_out, w[i]);
            cx->off_out++;
            if (!isfinite(q[i])) {
                rc = lb_err_set(err, LB_ENUMERIC,
                                "claq column %lld row %lld: outlier %g is beyond the f16 range",
                                (long long)c, (long long)i, (double)w[i]);
                goto done;
            }
        } else {
            uint8_t code = cx->codes[r++];
            lb_qfield_put(fq, cx->off_codes[width]++, code);
            q[i] = cent[code];
        }
    }
done:
    for (int64_t t = 0; t < nk; t++)
        cx->is_kept[cx->kept_rows[t]] = 0;
    return rc;
}

int lb_claq_quantize(const float *W, int64_t rows, int64_t cols, const float *H,
                     const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    int rc = lb_gptq_method_check("claq", W, rows, cols, H, opts, out, err);
    if (rc)
        return rc;
    int32_t base;
    int64_t n_hi;
    rc = claq_check_opts(opts, &base, cols, &n_hi, err);
    if (rc)
        return rc;
    claq_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.opts = opts;
    cx.rows = rows;
    cx.cols = cols;
    cx.packed = &out->packed;
    snprintf(out->packed.method, sizeof out->packed.method, "claq");
    out->packed.rows = rows;
    out->packed.cols = cols;
    lb_gptq_hook hook = {.ctx = &cx, .begin = claq_begin, .column = claq_column};
    rc = lb_gptq_method_run("claq", W, rows, cols, H, opts, &hook, LB_GPTQ_PACK_PERM, out, err);
    claq_ctx_release(&cx);
    return rc;
}

/* ---- dequantize: rebuild W_hat from the packed fields alone ---- */

/* A field of count 0 (no outliers, no column at some width) may be absent. */
static const lb_qfield *need_field(const lb_qpacked *p, const char *name, lb_qfield_kind kind,
                                   int64_t count, lb_err *err)
{
    if (count == 0 && !lb_qpacked_field(p, name))
        return NULL;
    return lb_qpacked_need_field(p, name, kind, count, err);
}


int lb_claq_dequantize(const lb_qpacked *p, float *W_out, lb_err *err)
{
    lb_err local = {0};
    if (!err)
        err = &local;
    if (!p || !W_out)
        return lb_err_set(err, LB_EINVAL, "claq dequantize: NULL argument");
    const int64_t rows = p->rows, cols = p->cols;
    if (strcmp(p->method, "claq") || rows < 1 || cols < 1 || rows > INT32_MAX ||
        rows > INT64_MAX / cols)
        return lb_err_set(err, LB_EFORMAT,
                          "claq dequantize: packed is method '%.16s', %lld x %lld; expected a "
                          "non-empty claq matrix",
                          p->method, (long long)rows, (long long)cols);
    int rc = 0;
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    int64_t *kept = malloc((size_t)rows * sizeof *kept);
    if (!perm || !kept) {
        rc = lb_err_set(err, LB_ENOMEM, "claq dequantize: out of memory");
        goto cleanup;
    }
    const lb_qfield *fw = need_field(p, "widths", LB_QFIELD_UINT, cols, err);
    const lb_qfield *fcnt = fw ? need_field(p, "outlier_counts", LB_QFIELD_UINT, cols, err)
                               : NULL;
    if (!fw || !fcnt) {
        rc = err->code ? err->code : LB_EFORMAT;
        goto cleanup;
    }
    if (fw->bits != 2) {
        rc = lb_err_set(err, LB_EFORMAT, "claq packed: widths are %u-bit, expected 2; corrupt",
                        fw->bits);
        goto cleanup;
    }
    int64_t ncodes[CLAQ_MAX_WIDTH + 1] = {0}, ncent = 0, nout = 0;
    for (int64_t c = 0; c < cols; c++) {
        int64_t wb = (int64_t)lb_qfield_get(fw, c) + 1, kc = lb_qfield_get(fcnt, c);
        if (kc > rows) {
            rc = lb_err_set(err, LB_EFORMAT,
                            "claq packed: column %lld keeps %lld outliers of %lld rows; corrupt",
                            (long long)c, (long long)kc, (long long)rows);
            goto cleanup;
        }
        ncodes[wb] += rows - kc;
        ncent += (int64_t)1 << wb;
        nout += kc;
    }
    const lb_qfield *fq[CLAQ_MAX_WIDTH + 1] = {NULL};
    for (int b = 1; b <= CLAQ_MAX_WIDTH; b++) {
        char name[16];
        snprintf(name, sizeof name, "codes_w%d", b);
        fq[b] = need_field(p, name, LB_QFIELD_UINT, ncodes[b], err);
        if (ncodes[b] && (!fq[b] || fq[b]->bits != (uint32_t)b)) {
            rc = fq[b] ? lb_err_set(err, LB_EFORMAT, "claq packed: %s is not %d-bit", name, b)
                       : err->code;
            goto cleanup;
        }
    }
    const lb_qfield *fc = need_field(p, "centroids", LB_QFIELD_F16, ncent, err);
    const lb_qfield *frow = need_field(p, "outlier_rows", LB_QFIELD_UINT, nout, err);
    const lb_qfield *fval = need_field(p, "outlier_values", LB_QFIELD_F16, nout, err);
    if (!fc || (nout && (!frow || !fval))) {
        rc = err->code ? err->code : LB_EFORMAT;
        goto cleanup;
    }
    if (lb_qpacked_field(p, "perm")) {
        if ((rc = lb_gptq_unpack_perm(p, perm, cols, err)))
            goto cleanup;
    } else {
        for (int64_t c = 0; c < cols; c++)
            perm[c] = c;
    }
    int64_t off_q[CLAQ_MAX_WIDTH + 1] = {0}, off_c = 0, off_o = 0;
    for (int64_t c = 0; c < cols; c++) {
        const int32_t wb = (int32_t)lb_qfield_get(fw, c) + 1;
        const int64_t kc = lb_qfield_get(fcnt, c), col = perm[c];
        float cent[1 << CLAQ_MAX_WIDTH];
        for (int32_t m = 0; m < (1 << wb); m++) {
            cent[m] = lb_qfield_get_float(fc, off_c++);
            if (!isfinite(cent[m])) {
                rc = lb_err_set(err, LB_ENUMERIC,
                                "claq packed: centroid of column %lld is NaN/Inf; corrupt",
                                (long long)c);
                goto cleanup;
            }
        }
        for (int64_t t = 0; t < kc; t++) {
            kept[t] = lb_qfield_get(frow, off_o + t);
            if (kept[t] >= rows || (t > 0 && kept[t] <= kept[t - 1])) {
                rc = lb_err_set(err, LB_EFORMAT,
                                "claq packed: outlier rows of column %lld not ascending below "
                                "%lld; corrupt",
                                (long long)c, (long long)rows);
                goto cleanup;
            }
        }
        int64_t t = 0;
        for (int64_t i = 0; i < rows; i++) {
            float v;
            if (t < kc && kept[t] == i) {
                v = lb_qfield_get_float(fval, off_o + t);
                t++;
                if (!isfinite(v)) {
                    rc = lb_err_set(err, LB_ENUMERIC,
                                    "claq packed: outlier value at column %lld row %lld is "
                                    "NaN/Inf; corrupt",
                                    (long long)c, (long long)i);
                    goto cleanup;
                }
            } else {
                v = cent[lb_qfield_get(fq[wb], off_q[wb]++)];
            }
            W_out[i * cols + col] = v;
        }
        off_o += kc;
    }
cleanup:
    free(perm);
    free(kept);
    return rc;
}
