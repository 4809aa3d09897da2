/* lb_rotate: random-sign block Hadamard rotations of linears and their Hessians
 * (incoherence processing), and the method wrappers that record them in the packed
 * matrix. The math is in lb_rotate.h and docs/rotation.md. */
#include "lb_rotate.h"

#include "lb_kquant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *lb_rotate_name(int32_t kind)
{
    return kind == LB_ROTATE_HADAMARD ? "hadamard" : kind == LB_ROTATE_AUTO ? "auto" : "none";
}

int32_t lb_rotate_default(const char *method)
{
    static const char *const rotated[] = {"rtn", "gptq", "claq", "billm", "qbb"};
    for (size_t i = 0; method && i < sizeof rotated / sizeof rotated[0]; i++)
        if (!strcmp(method, rotated[i]))
            return LB_ROTATE_HADAMARD;
    return LB_ROTATE_NONE;
}

int32_t lb_rotate_resolve(const char *method, int32_t rotate)
{
    return rotate == LB_ROTATE_AUTO ? lb_rotate_default(method) : rotate;
}

int64_t lb_rotate_block(int64_t n)
{
    return n < 1 ? 0 : (n & -n);
}

static uint64_t splitmix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double lb_rotate_sign(uint64_t seed, lb_rot_side side, int64_t i)
{
    /* one independent stream per (seed, side); index i hashed in, so no state */
    uint64_t z = splitmix64(splitmix64(seed ^ (side == LB_ROT_OUT ? 0x5bd1e995ull : 0)) +
                            (uint64_t)i);
    return (z >> 63) ? -1.0 : 1.0;
}

void lb_fwht(double *x, int64_t n)
{
    for (int64_t h = 1; h < n; h <<= 1)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
}

static void block_fwht(double *x, int64_t n)
{
    const int64_t b = lb_rotate_block(n);
    const double scale = 1.0 / sqrt((double)b);
    for (int64_t o = 0; o < n; o += b)
        lb_fwht(x + o, b);
    for (int64_t i = 0; i < n; i++)
        x[i] *= scale;
}

void lb_rotate_vec(double *x, int64_t n, uint64_t seed, lb_rot_side side)
{
    for (int64_t i = 0; i < n; i++)
        x[i] *= lb_rotate_sign(seed, side, i);
    block_fwht(x, n);
}

void lb_rotate_vec_t(double *x, int64_t n, uint64_t seed, lb_rot_side side)
{
    block_fwht(x, n);
    for (int64_t i = 0; i < n; i++)
        x[i] *= lb_rotate_sign(seed, side, i);
}

/* A (n, m) <- R A or R^T A: the transform along axis 0, done as butterflies on whole
 * rows so the memory access stays sequential. */
static void rotate_axis0(double *A, int64_t n, int64_t m, uint64_t seed, lb_rot_side side,
                         int transpose)
{
    const int64_t b = lb_rotate_block(n);
    const double scale = 1.0 / sqrt((double)b);
    if (!transpose)
        for (int64_t i = 0; i < n; i++) {
            const double s = lb_rotate_sign(seed, side, i);
            for (int64_t k = 0; k < m; k++)
                A[i * m + k] *= s;
        }
    /* columns in independent slices of 64, one per thread */
#pragma omp parallel for schedule(static)
    for (int64_t k0 = 0; k0 < m; k0 += 64) {
        const int64_t k1 = k0 + 64 < m ? k0 + 64 : m;
        for (int64_t o = 0; o < n; o += b)
            for (int64_t h = 1; h < b; h <<= 1)
                for (int64_t i = o; i < o + b; i += 2 * h)
                    for (int64_t j = i; j < i + h; j++) {
                        double *ra = A + j * m, *rb = A + (j + h) * m;
                        for (int64_t k = k0; k < k1; k++) {
                            double a = ra[k], c = rb[k];
                            ra[k] = a + c;
                            rb[k] = a - c;
                        }
                    }
    }
    for (int64_t i = 0; i < n; i++) {
        const double s = transpose ? scale * lb_rotate_sign(seed, side, i) : scale;
        for (int64_t k = 0; k < m; k++)
            A[i * m + k] *= s;
    }
}

/* A (n, m): every row x <- R x or R^T x (i.e. A <- A R^T or A R). */
static void rotate_axis1(double *A, int64_t n, int64_t m, uint64_t seed, lb_rot_side side,
                         int transpose)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        if (transpose)
            lb_rotate_vec_t(A + i * m, m, seed, side);
        else
            lb_rotate_vec(A + i * m, m, seed, side);
    }
}

int lb_rotate_weight(float *W, int64_t rows, int64_t cols, uint64_t seed, int inverse,
                     lb_err *err)
{
    const size_t n = (size_t)rows * (size_t)cols;
    double *A = lb_quant_big_alloc(n * sizeof *A);
    if (!A)
        return lb_err_set(err, LB_ENOMEM, "rotate: out of memory for a %lld x %lld matrix",
                          (long long)rows, (long long)cols);
    for (size_t i = 0; i < n; i++)
        A[i] = (double)W[i];
    /* forward: R_out W R_in^T; inverse: R_out^T W R_in */
    rotate_axis1(A, rows, cols, seed, LB_ROT_IN, inverse);
    rotate_axis0(A, rows, cols, seed, LB_ROT_OUT, inverse);
    for (size_t i = 0; i < n; i++)
        W[i] = (float)A[i];
    free(A);
    return LB_OK;
}

int lb_rotate_hessian(float *H, int64_t n, uint64_t seed, lb_err *err)
{
    const size_t nn = (size_t)n * (size_t)n;
    double *A = lb_quant_big_alloc(nn * sizeof *A);
    if (!A)
        return lb_err_set(err, LB_ENOMEM, "rotate: out of memory for a %lld x %lld Hessian",
                          (long long)n, (long long)n);
    for (size_t i = 0; i < nn; i++)
        A[i] = (double)H[i];
    rotate_axis0(A, n, n, seed, LB_ROT_IN, 0); /* R H */
    rotate_axis1(A, n, n, seed, LB_ROT_IN, 0); /* (R H) R^T */
    /* symmetric in exact arithmetic; average away the rounding so methods that
     * factor H see an exactly symmetric matrix */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++) {
            double v = 0.5 * (A[i * n + j] + A[j * n + i]);
            A[i * n + j] = A[j * n + i] = v;
        }
    for (size_t i = 0; i < nn; i++)
        H[i] = (float)A[i];
    free(A);
    return LB_OK;
}

int lb_qpacked_rotation(const lb_qpacked *p, int32_t *kind, uint64_t *seed, lb_err *err)
{
    *kind = LB_ROTATE_NONE;
    *seed = 0;
    const lb_qfield *k = lb_qpacked_field(p, "rot_kind");
    const lb_qfield *s = lb_qpacked_field(p, "rot_seed");
    if (!k && !s)
        return LB_OK;
    if (!k || !s || k->kind != LB_QFIELD_UINT || k->bits != 8 || k->count != 1 ||
        k->nbytes < 1 || s->kind != LB_QFIELD_UINT || s->bits != 32 || s->count != 2 ||
        s->nbytes < 8)
        return lb_err_set(err, LB_EFORMAT, "%s packed: rotation fields rot_kind (UINT 8 x 1) "
                          "and rot_seed (UINT 32 x 2) missing or corrupt; re-quantize",
                          p->method);
    uint32_t v = lb_qfield_get(k, 0);
    if (v != LB_ROTATE_HADAMARD)
        return lb_err_set(err, LB_EFORMAT, "%s packed: unknown rotation kind %u (this build "
                          "knows 1 = hadamard)", p->method, v);
    *kind = (int32_t)v;
    *seed = (uint64_t)lb_qfield_get(s, 0) | ((uint64_t)lb_qfield_get(s, 1) << 32);
    return LB_OK;
}

int lb_qmethod_quantize(const lb_qmethod *m, const float *W, int64_t rows, int64_t cols,
                        const float *H, const lb_qopts *opts, lb_qresult *out, lb_err *err)
{
    // K-quant blocks are written to GGUF as they are: no rotation unless asked (refused)
    const bool kgrid = lb_kquant_type_of_grid(opts->grid) >= 0;
    const int32_t rotate = kgrid && opts->rotate == LB_ROTATE_AUTO
                               ? LB_ROTATE_NONE
                               : lb_rotate_resolve(m->name, opts->rotate);
    if (kgrid && (strcmp(m->name, "gptq") || rotate))
        return lb_err_set(err, LB_EINVAL, "--grid %s: only gptq without --rotate quantizes "
                          "onto llama.cpp's K-quant blocks (method %s%s)",
                          lb_qgrid_name(opts->grid), m->name, rotate ? ", rotated" : "");
    if (rotate == LB_ROTATE_NONE)
        return m->quantize(W, rows, cols, H, opts, out, err);
    if (rotate != LB_ROTATE_HADAMARD)
        return lb_err_set(err, LB_EINVAL, "rotate: unknown kind %d (none or hadamard)",
                          (int)opts->rotate);
    const size_t nw = (size_t)rows * (size_t)cols, nh = (size_t)cols * (size_t)cols;
    float *Wr = lb_quant_big_alloc(nw * sizeof *Wr);
    float *Hr = H ? lb_quant_big_alloc(nh * sizeof *Hr) : NULL;
    int rc = LB_OK;
    memset(out, 0, sizeof *out);
    if (!Wr || (H && !Hr)) {
        rc = lb_err_set(err, LB_ENOMEM, "rotate: out of memory for %lld x %lld",
                        (long long)rows, (long long)cols);
        goto fail;
    }
    memcpy(Wr, W, nw * sizeof *Wr);
    if ((rc = lb_rotate_weight(Wr, rows, cols, opts->seed, 0, err)))
        goto fail;
    if (H) {
        memcpy(Hr, H, nh * sizeof *Hr);
        if ((rc = lb_rotate_hessian(Hr, cols, opts->seed, err)))
            goto fail;
    }
    if ((rc = m->quantize(Wr, rows, cols, Hr, opts, out, err)))
        goto fail;
    const int64_t one = 1, two = 2;
    if (!lb_qpacked_add_field(&out->packed, "rot_kind", LB_QFIELD_UINT, 8, 1, &one, err) ||
        !lb_qpacked_add_field(&out->packed, "rot_seed", LB_QFIELD_UINT, 32, 1, &two, err)) {
        rc = err && err->code ? err->code : LB_ENOMEM;
        goto fail;
    }
    lb_qfield *fk = &out->packed.fields[out->packed.nfields - 2];
    lb_qfield *fs = &out->packed.fields[out->packed.nfields - 1];
    lb_qfield_put(fk, 0, LB_ROTATE_HADAMARD);
    lb_qfield_put(fs, 0, (uint32_t)(opts->seed & 0xffffffffu));
    lb_qfield_put(fs, 1, (uint32_t)(opts->seed >> 32));
    if ((rc = lb_rotate_weight(out->W_hat, rows, cols, opts->seed, 1, err)))
        goto fail;
    out->bpw = lb_qpacked_bpw(&out->packed);
    free(Wr);
    free(Hr);
    return LB_OK;
fail:
    lb_qresult_free(out);
    free(Wr);
    free(Hr);
    return rc;
}

int lb_qmethod_dequantize(const lb_qmethod *m, const lb_qpacked *p, float *W_out, lb_err *err)
{
    int32_t kind;
    uint64_t seed;
    int rc = lb_qpacked_rotation(p, &kind, &seed, err);
    if (!rc)
        rc = m->dequantize(p, W_out, err);
    if (!rc && kind == LB_ROTATE_HADAMARD)
        rc = lb_rotate_weight(W_out, p->rows, p->cols, seed, 1, err);
    return rc;
}
