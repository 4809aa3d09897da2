/* lb_quant: types shared by every quantization method.
 *
 * A method turns W (rows, cols) and the layer-input Hessian H (cols, cols) into
 *   - the dequantized W_hat (rows, cols), and
 *   - a packed representation: a list of named fields, each a little-endian bit
 *     stream of `count` elements of `bits` bits.
 * The bits per weight are counted from what is stored, nothing else:
 *   bpw = 8 * sum(field bytes) / (rows * cols).
 * Each method's dequantize(packed) must reproduce W_hat exactly (bit for bit);
 * that is what makes the accounting honest. */
#ifndef LB_QUANT_H
#define LB_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_qopts_table.h"

typedef enum {
    LB_QFIELD_UINT = 0, /* unsigned integer codes of `bits` bits (1..32) */
    LB_QFIELD_INT = 1,  /* two's complement integers of `bits` bits */
    LB_QFIELD_F16 = 2,  /* IEEE half, bits = 16 */
    LB_QFIELD_BF16 = 3, /* bfloat16, bits = 16 */
    LB_QFIELD_F32 = 4,  /* IEEE single, bits = 32 */
} lb_qfield_kind;

#define LB_QFIELD_NAME_MAX 32
#define LB_QFIELD_MAX_DIMS 4

typedef struct {
    char name[LB_QFIELD_NAME_MAX]; /* "codes", "scales", "zeros", "centroids", "mask", ... */
    lb_qfield_kind kind;
    uint32_t bits;                      /* bits per element as stored */
    int32_t ndim;                       /* logical shape, product == count */
    int64_t shape[LB_QFIELD_MAX_DIMS];
    int64_t count;                      /* elements */
    uint8_t *data;                      /* ceil(count * bits / 8) bytes, owned */
    size_t nbytes;
} lb_qfield;

typedef struct {
    char method[16];
    int64_t rows, cols;
    int32_t nfields;
    lb_qfield *fields; /* owned */
} lb_qpacked;

/* One option vocabulary for every method; lb_qopts_init sets the defaults. */
/* LB_GRID_Q*_K: gptq onto llama.cpp's K-quant blocks (lb_kquant.h) */
typedef enum {
    LB_GRID_MINMAX = 0,
    LB_GRID_MSE = 1,
    LB_GRID_Q2_K = 2,
    LB_GRID_Q3_K = 3,
    LB_GRID_Q4_K = 4,
} lb_qgrid;
typedef enum { LB_SALIENT_HESSIAN = 0, LB_SALIENT_MAGNITUDE = 1 } lb_qsalient;

/* The fields, their defaults, ranges and help: lb_qopts_table.h (row order). */
typedef struct {
    LB_QOPTS_TABLE(LB_QOPT_FIELD)
} lb_qopts;

void lb_qopts_init(lb_qopts *opts);
/* the spellings of the enum options (--grid, --salient-criterion) */
const char *lb_qgrid_name(lb_qgrid g);
const char *lb_qsalient_name(lb_qsalient s);

/* Per-phase wall time (seconds) and nominal flops of one GPTQ engine run
 * (lb_gptq_run_ex), for benchmarks. Phases: prep = input scans, dead columns, damping,
 * act-order, H copy and W transpose; chol = blocked Cholesky of J H J; inv = triangular
 * inverse into U and its checks; hook = time inside hook->begin/block_begin/column;
 * update = in-block rank-1 updates and sub-block GEMMs (plus error/finiteness pass);
 * gemm = lazy-batch trailing GEMMs and group flushes; end = hook->end (e.g. packing);
 * finish = the transpose back to W_hat. */
typedef struct {
    double prep_s, chol_s, inv_s, hook_s, update_s, gemm_s, end_s, finish_s, total_s;
    double chol_flops, inv_flops, update_flops, gemm_flops;
} lb_gptq_stats;

typedef struct {
    float *W_hat;      /* (rows, cols), owned */
    lb_qpacked packed; /* owned */
    double bpw;        /* 8 * bytes stored / (rows * cols) */
    int32_t gptq_runs;        /* GPTQ engine runs behind this result (0: none) */
    lb_gptq_stats gptq_stats; /* the last one's phase times, when gptq_runs > 0 */
} lb_qresult;

/* Frees everything a method put in res and zeroes it. Safe on a zeroed struct. */
void lb_qresult_free(lb_qresult *res);

/* A quantization method. quantize() reads W (rows, cols) row-major and H (cols, cols)
 * (raw XᵀX sums; the method damps a private copy); fills *out (caller frees with
 * lb_qresult_free). dequantize() rebuilds W_hat (rows, cols) from packed alone. */
typedef struct {
    const char *name;
    const char *summary;
    int (*quantize)(const float *W, int64_t rows, int64_t cols, const float *H,
                    const lb_qopts *opts, lb_qresult *out, lb_err *err);
    int (*dequantize)(const lb_qpacked *packed, float *W_out, lb_err *err);
} lb_qmethod;

/* Registry: NULL when unknown. lb_qmethod_list fills out[0..max) with methods in
 * registry order and returns how many it filled; with out == NULL it returns the
 * total number of registered methods. */
const lb_qmethod *lb_qmethod_find(const char *name);
int lb_qmethod_list(const lb_qmethod **out, int max);

/* Packed fields. lb_qpacked_add_field allocates a zeroed field of count elements of
 * `bits` bits and returns it (NULL and err on failure); the packed struct owns it.
 * The returned pointer is invalidated by the next add (the array grows): add every
 * field first, then take pointers (p->fields[i] or lb_qpacked_field). */
lb_qfield *lb_qpacked_add_field(lb_qpacked *p, const char *name, lb_qfield_kind kind,
                                uint32_t bits, int32_t ndim, const int64_t *shape, lb_err *err);
const lb_qfield *lb_qpacked_field(const lb_qpacked *p, const char *name);
void lb_qpacked_free(lb_qpacked *p);
/* Total stored bits (8 * bytes) and bits per weight. */
uint64_t lb_qpacked_bits(const lb_qpacked *p);
double lb_qpacked_bpw(const lb_qpacked *p);

/* Bit streams: element i of a field occupies bits [i*bits, (i+1)*bits), little-endian. */
void lb_qfield_put(lb_qfield *f, int64_t i, uint32_t value);
uint32_t lb_qfield_get(const lb_qfield *f, int64_t i);
/* Convenience for float fields (F16/BF16/F32): stores v rounded to the field's
 * type and returns the value that was stored, so W_hat can use exactly it. */
float lb_qfield_put_float(lb_qfield *f, int64_t i, float v);
float lb_qfield_get_float(const lb_qfield *f, int64_t i);
/* LB_QFIELD_INT helpers: store the low `bits` bits of value (caller keeps it in
 * range [-2^(bits-1), 2^(bits-1))); get sign-extends. Non-float kinds: put_float
 * stores nothing and returns NAN; get_float returns NAN. Out-of-range i: put is a
 * no-op, get returns 0. */
void lb_qfield_put_int(lb_qfield *f, int64_t i, int32_t value);
int32_t lb_qfield_get_int(const lb_qfield *f, int64_t i);

/* Allocation for large matrices (W_hat, working copies): at least nbytes, released
 * with free(). Blocks of 4 MiB or more are 2 MiB-aligned and advised as transparent
 * huge pages, which cuts page faults and TLB misses of the column-wise passes.
 * Returns NULL on failure or nbytes == 0. */
void *lb_quant_big_alloc(size_t nbytes);

/* err = tr((W - W_hat) H (W - W_hat)ᵀ) in float64; ref = tr(W H Wᵀ). H is the full
 * (cols, cols) matrix. OUT: *err_out, *ref_out (either may be NULL). Returns 0,
 * LB_ENUMERIC on NaN/Inf, LB_ENOMEM. */
int lb_quant_error(const float *W, const float *W_hat, int64_t rows, int64_t cols,
                   const float *H, double *err_out, double *ref_out, lb_err *err);

/* The field `name` of p, checked for a dequantizer: kind, count (any when count < 0)
 * and enough bytes for count * bits. NULL with LB_EFORMAT in err ("<method> packed:
 * field ... missing / corrupt") otherwise. Borrowed pointer. */
const lb_qfield *lb_qpacked_need_field(const lb_qpacked *p, const char *name,
                                       lb_qfield_kind kind, int64_t count, lb_err *err);

/* Moves the k largest of n distinct keys to a[0..k) (in any order), in place,
 * by Hoare selection; expected O(n). Used to pick top-ranked columns/weights. */
void lb_quant_select_top_u64(uint64_t *a, int64_t n, int64_t k);

#endif
