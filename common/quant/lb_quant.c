/* lb_quant: method registry, option defaults, packed bit-stream fields and the
 * Hessian-weighted reconstruction error shared by every method. */
#include "lb_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "lb_blas.h"
#include "lb_dtype.h"

/* ---- registry: one line per method; the object is defined in lb_<method>.c ---- */

/* qcore: RTN, GPTQ */
extern const lb_qmethod lb_qmethod_rtn;
extern const lb_qmethod lb_qmethod_gptq;
/* qclaq: CLAQ, PB-LLM */
extern const lb_qmethod lb_qmethod_claq;
extern const lb_qmethod lb_qmethod_pbllm;
/* qbin: BiLLM, QBB (extern declarations here) */
extern const lb_qmethod lb_qmethod_billm;
extern const lb_qmethod lb_qmethod_qbb;

static const lb_qmethod *const lb_qmethods[] = {
    /* qcore: RTN, GPTQ */
    &lb_qmethod_rtn,
    &lb_qmethod_gptq,
    /* qclaq: CLAQ, PB-LLM */
    &lb_qmethod_claq,
    &lb_qmethod_pbllm,
    /* qbin: BiLLM, QBB */
    &lb_qmethod_billm,
    &lb_qmethod_qbb,
    NULL,
};

const lb_qmethod *lb_qmethod_find(const char *name)
{
    if (!name)
        return NULL;
    for (int i = 0; lb_qmethods[i]; i++)
        if (!strcmp(lb_qmethods[i]->name, name))
            return lb_qmethods[i];
    return NULL;
}

int lb_qmethod_list(const lb_qmethod **out, int max)
{
    int n = 0;
    for (int i = 0; lb_qmethods[i]; i++) {
        if (out && n < max)
            out[n] = lb_qmethods[i];
        n++;
    }
    return n < max || !out ? n : max;
}

/* ---- options ---- */

void lb_qopts_init(lb_qopts *opts)
{
    memset(opts, 0, sizeof *opts);
#define LB_QOPT_DEFAULT(field, kind, cli, def, ...) opts->field = (LB_QOPT_CTYPE_##kind)(def);
    LB_QOPTS_TABLE(LB_QOPT_DEFAULT)
#undef LB_QOPT_DEFAULT
}

const char *lb_qgrid_name(lb_qgrid g)
{
    return g == LB_GRID_MSE    ? "mse"
           : g == LB_GRID_Q2_K ? "q2_k"
           : g == LB_GRID_Q3_K ? "q3_k"
           : g == LB_GRID_Q4_K ? "q4_k"
                               : "minmax";
}

const char *lb_qsalient_name(lb_qsalient s)
{
    return s == LB_SALIENT_MAGNITUDE ? "magnitude" : "hessian";
}

/* ---- results and packed fields ---- */

void lb_qresult_free(lb_qresult *res)
{
    if (!res)
        return;
    free(res->W_hat);
    lb_qpacked_free(&res->packed);
    memset(res, 0, sizeof *res);
}

void lb_qpacked_free(lb_qpacked *p)
{
    if (!p)
        return;
    for (int32_t i = 0; i < p->nfields; i++)
        free(p->fields[i].data);
    free(p->fields);
    p->fields = NULL;
    p->nfields = 0;
}

lb_qfield *lb_qpacked_add_field(lb_qpacked *p, const char *name, lb_qfield_kind kind,
                                uint32_t bits, int32_t ndim, const int64_t *shape, lb_err *err)
{
    if (!p || !name || strlen(name) >= LB_QFIELD_NAME_MAX) {
        lb_err_set(err, LB_EINVAL, "packed field: name missing or longer than %d characters",
                   LB_QFIELD_NAME_MAX - 1);
        return NULL;
    }
    if (lb_qpacked_field(p, name)) {
        lb_err_set(err, LB_EINVAL, "packed field '%s' added twice", name);
        return NULL;
    }
    uint32_t want = kind == LB_QFIELD_F32 ? 32u
                    : (kind == LB_QFIELD_F16 || kind == LB_QFIELD_BF16) ? 16u : 0u;
    if ((kind == LB_QFIELD_UINT || kind == LB_QFIELD_INT) ? (bits < 1 || bits > 32)
        : (unsigned)kind > LB_QFIELD_F32 || bits != want) {
        lb_err_set(err, LB_EINVAL, "packed field '%s': %u bits invalid for its kind %d", name,
                   bits, (int)kind);
        return NULL;
    }
    if (ndim < 1 || ndim > LB_QFIELD_MAX_DIMS || !shape) {
        lb_err_set(err, LB_EINVAL, "packed field '%s': ndim %d out of 1..%d", name, ndim,
                   LB_QFIELD_MAX_DIMS);
        return NULL;
    }
    int64_t count = 1;
    for (int32_t d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && count > INT64_MAX / 32 / shape[d])) {
            lb_err_set(err, LB_EINVAL, "packed field '%s': shape overflows", name);
            return NULL;
        }
        count *= shape[d];
    }
    size_t nbytes = (size_t)(((uint64_t)count * bits + 7u) / 8u);
    lb_qfield *grown = realloc(p->fields, (size_t)(p->nfields + 1) * sizeof *grown);
    if (!grown) {
        lb_err_set(err, LB_ENOMEM, "packed field '%s': out of memory", name);
        return NULL;
    }
    p->fields = grown;
    lb_qfield *f = &p->fields[p->nfields];
    memset(f, 0, sizeof *f);
    /* calloc(0) may return NULL; keep one byte so data is never NULL. */
    f->data = calloc(nbytes ? nbytes : 1, 1);
    if (!f->data) {
        lb_err_set(err, LB_ENOMEM, "packed field '%s': out of memory for %zu bytes", name,
                   nbytes);
        return NULL;
    }
    memcpy(f->name, name, strlen(name) + 1);
    f->kind = kind;
    f->bits = bits;
    f->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++)
        f->shape[d] = shape[d];
    f->count = count;
    f->nbytes = nbytes;
    p->nfields++;
    return f;
}

const lb_qfield *lb_qpacked_field(const lb_qpacked *p, const char *name)
{
    if (!p || !name)
        return NULL;
    for (int32_t i = 0; i < p->nfields; i++)
        if (!strcmp(p->fields[i].name, name))
            return &p->fields[i];
    return NULL;
}

uint64_t lb_qpacked_bits(const lb_qpacked *p)
{
    uint64_t bits = 0;
    for (int32_t i = 0; p && i < p->nfields; i++)
        bits += 8u * (uint64_t)p->fields[i].nbytes;
    return bits;
}

double lb_qpacked_bpw(const lb_qpacked *p)
{
    if (!p || p->rows <= 0 || p->cols <= 0)
        return 0.0;
    return (double)lb_qpacked_bits(p) / ((double)p->rows * (double)p->cols);
}

/* Bits [i*bits, (i+1)*bits) of the little-endian stream; bytes touched stay in range
 * because nbytes = ceil(count * bits / 8). Out-of-range i is ignored (get -> 0). */
void lb_qfield_put(lb_qfield *f, int64_t i, uint32_t value)
{
    if (!f || i < 0 || i >= f->count)
        return;
    uint32_t bits = f->bits;
    if (bits < 32)
        value &= (1u << bits) - 1u;
    uint64_t pos = (uint64_t)i * bits;
    uint8_t *d = f->data + (pos >> 3);
    uint32_t shift = (uint32_t)(pos & 7u);
    uint32_t left = bits;
    uint64_t v = (uint64_t)value << shift;
    uint64_t mask = (bits == 32 ? 0xffffffffull : ((1ull << bits) - 1u)) << shift;
    left += shift;
    for (uint32_t b = 0; b * 8 < left; b++) {
        uint8_t m = (uint8_t)(mask >> (8 * b));
        d[b] = (uint8_t)((d[b] & (uint8_t)~m) | ((uint8_t)(v >> (8 * b)) & m));
    }
}

uint32_t lb_qfield_get(const lb_qfield *f, int64_t i)
{
    if (!f || i < 0 || i >= f->count)
        return 0;
    uint32_t bits = f->bits;
    uint64_t pos = (uint64_t)i * bits;
    const uint8_t *d = f->data + (pos >> 3);
    uint32_t shift = (uint32_t)(pos & 7u);
    uint64_t v = 0;
    for (uint32_t b = 0; b * 8 < bits + shift; b++)
        v |= (uint64_t)d[b] << (8 * b);
    v >>= shift;
    return bits == 32 ? (uint32_t)v : (uint32_t)(v & ((1ull << bits) - 1u));
}

void lb_qfield_put_int(lb_qfield *f, int64_t i, int32_t value)
{
    lb_qfield_put(f, i, (uint32_t)value);
}

int32_t lb_qfield_get_int(const lb_qfield *f, int64_t i)
{
    uint32_t u = lb_qfield_get(f, i);
    if (!f || f->bits >= 32)
        return (int32_t)u;
    uint32_t sign = 1u << (f->bits - 1);
    /* sign-extend: (u ^ sign) - sign, done in int64 so no overflow */
    return (int32_t)((int64_t)(u ^ sign) - (int64_t)sign);
}

float lb_qfield_put_float(lb_qfield *f, int64_t i, float v)
{
    if (!f)
        return NAN;
    switch (f->kind) {
    case LB_QFIELD_F16: {
        uint16_t h = lb_f32_to_f16(v);
        lb_qfield_put(f, i, h);
        return lb_f16_to_f32(h);
    }
    case LB_QFIELD_BF16: {
        uint16_t h = lb_f32_to_bf16(v);
        lb_qfield_put(f, i, h);
        return lb_bf16_to_f32(h);
    }
    case LB_QFIELD_F32: {
        uint32_t u;
        memcpy(&u, &v, 4);
        lb_qfield_put(f, i, u);
        return v;
    }
    default:
        return NAN;
    }
}

float lb_qfield_get_float(const lb_qfield *f, int64_t i)
{
    if (!f)
        return NAN;
    uint32_t u = lb_qfield_get(f, i);
    switch (f->kind) {
    case LB_QFIELD_F16: return lb_f16_to_f32((uint16_t)u);
    case LB_QFIELD_BF16: return lb_bf16_to_f32((uint16_t)u);
    case LB_QFIELD_F32: {
        float v;
        memcpy(&v, &u, 4);
        return v;
    }
    default: return NAN;
    }
}

void *lb_quant_big_alloc(size_t nbytes)
{
    if (nbytes == 0)
        return NULL;
    const size_t huge = (size_t)2 << 20;
    if (nbytes < 2 * huge)
        return malloc(nbytes);
    void *p = NULL;
    size_t rounded = (nbytes + huge - 1) / huge * huge;
    if (rounded < nbytes || posix_memalign(&p, huge, rounded))
        return NULL;
    (void)madvise(p, rounded, MADV_HUGEPAGE); /* advice only: failure is harmless */
    return p;
}

/* ---- error metric ---- */

int lb_quant_error(const float *W, const float *W_hat, int64_t rows, int64_t cols,
                   const float *H, double *err_out, double *ref_out, lb_err *err)
{
    if (!W || !W_hat || !H || rows <= 0 || cols <= 0)
        return lb_err_set(err, LB_EINVAL, "quant error: empty matrix or NULL input");
    if (cols > (int64_t)(SIZE_MAX / sizeof(double)) / cols)
        return lb_err_set(err, LB_EINVAL, "quant error: %lld columns overflow", (long long)cols);
    /* Rows in chunks: D (chunk, cols) @ H (cols, cols) -> DH, then sum(D .* DH) = tr(D H Dᵀ).
     * Float64 throughout so the metric does not depend on the float32 rounding of H. */
    const int64_t chunk = rows < 128 ? rows : 128;
    int rc = LB_OK;
    double *Hd = malloc((size_t)(cols * cols) * sizeof *Hd);
    double *D = malloc((size_t)(2 * chunk * cols) * sizeof *D);
    double *P = malloc((size_t)(2 * chunk * cols) * sizeof *P);
    if (!Hd || !D || !P) {
        rc = lb_err_set(err, LB_ENOMEM, "quant error: out of memory for %lld x %lld",
                        (long long)cols, (long long)cols);
        goto cleanup;
    }
    for (int64_t i = 0; i < cols * cols; i++) {
        if (!isfinite(H[i])) {
            rc = lb_err_set(err, LB_ENUMERIC, "quant error: H[%lld] is not finite",
                            (long long)i);
            goto cleanup;
        }
        Hd[i] = (double)H[i];
    }
    double e = 0.0, r = 0.0;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
        /* first nr rows: W - W_hat; next nr rows: W */
        for (int64_t i = 0; i < nr * cols; i++) {
            double w = (double)W[r0 * cols + i];
            D[i] = w - (double)W_hat[r0 * cols + i];
            D[nr * cols + i] = w;
        }
        lb_dgemm(false, false, 2 * nr, cols, cols, 1.0, D, cols, Hd, cols, 0.0, P, cols);
        for (int64_t i = 0; i < nr * cols; i++) {
            e += D[i] * P[i];
            r += D[nr * cols + i] * P[nr * cols + i];
        }
    }
    if (!isfinite(e) || !isfinite(r)) {
        rc = lb_err_set(err, LB_ENUMERIC, "quant error: W or W_hat holds NaN/Inf");
        goto cleanup;
    }
    if (err_out)
        *err_out = e;
    if (ref_out)
        *ref_out = r;
cleanup:
    free(Hd);
    free(D);
    free(P);
    return rc;
}

/* Hoare selection (contract in lb_quant.h). */
void lb_quant_select_top_u64(uint64_t *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1, t = k - 1;
    while (lo < hi) {
        uint64_t x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi];
        uint64_t p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > p)
                i++;
            while (a[j] < p)
                j--;
            if (i <= j) {
                uint64_t s = a[i];
                a[i++] = a[j];
                a[j--] = s;
            }
        }
        if (t <= j)
            hi = j;
        else if (t >= i)
            lo = i;
        else
            break;
    }
}

const lb_qfield *lb_qpacked_need_field(const lb_qpacked *p, const char *name,
                                       lb_qfield_kind kind, int64_t count, lb_err *err)
{
    const lb_qfield *f = lb_qpacked_field(p, name);
    if (!f) {
        lb_err_set(err, LB_EFORMAT, "%.16s packed: field '%s' missing; re-run quantization",
                   p->method, name);
        return NULL;
    }
    if (f->kind != kind || (count >= 0 && f->count != count) || f->bits < 1 || f->bits > 32 ||
        f->nbytes < ((uint64_t)f->count * f->bits + 7u) / 8u) {
        lb_err_set(err, LB_EFORMAT,
                   "%.16s packed: field '%s' has kind %d, %lld elements (expected %lld); the "
                   "file is corrupt",
                   p->method, name, (int)f->kind, (long long)f->count, (long long)count);
        return NULL;
    }
    return f;
}
