/* lb_job: msgpack encode/decode of jobs and results (see lb_job.h).
 *
 * Job array, in order:
 *   0 "lbjob"  1 version  2 type  3 id  4 block  5 linear  6 stage  7 tensor
 *   8 method   9 opts[23] 10 lowbit_version  11 model_fp  12 calib_fp
 *   13 n_seq  14 seq_len  15 model_dir  16 out_dir  17 options_json
 *   18 inputs[str]  19 outputs[str]  20 distill[7]  21 chunk  22 n_chunks
 * distill: steps lr beta1 beta2 eps batch_seqs seed
 * opts: the rows of common/quant/lb_qopts_table.h in order (bits group_size
 *   ... gptq_init seed), then the LATE rows (rotate, ...) up to the last one
 *   that is not at its default
 * Result array: "lbres" version job_id status err_code outputs[str] bpw seconds
 *   cached error */
#include "lb_job.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "lb_qopts_parse.h"
#include "lb_sha256.h"

#define JOB_FIELDS 23
#define DISTILL_FIELDS 7
/* a 24th value, rotate, is sent only when set, so jobs without it keep their bytes */
#define RES_FIELDS 10

void lb_job_init(lb_job *job)
{
    memset(job, 0, sizeof *job);
    job->block = -1;
    job->linear = -1;
    job->stage = -1;
    job->chunk = -1;
    lb_qopts_init(&job->opts);
    lb_distill_opts_init(&job->distill);
}

void lb_job_clear(lb_job *job)
{
    if (!job)
        return;
    free(job->inputs);
    lb_job_init(job);
}

int lb_job_set_inputs(lb_job *job, const lb_artifact_id *ids, int32_t n, lb_err *err)
{
    if (n < 0 || n > LB_JOB_MAX_INPUTS || (n > 0 && !ids))
        return lb_err_set(err, LB_EINVAL, "job: %d inputs (0..%d allowed)", (int)n,
                          LB_JOB_MAX_INPUTS);
    lb_artifact_id *copy = NULL;
    if (n > 0) {
        copy = malloc((size_t)n * sizeof *copy);
        if (!copy)
            return lb_err_set(err, LB_ENOMEM, "job: out of memory for %d input ids", (int)n);
        memcpy(copy, ids, (size_t)n * sizeof *copy);
    }
    free(job->inputs);
    job->inputs = copy;
    job->n_inputs = n;
    return 0;
}

int lb_job_copy(lb_job *dst, const lb_job *src, lb_err *err)
{
    *dst = *src;
    dst->inputs = NULL;
    dst->n_inputs = 0;
    int rc = lb_job_set_inputs(dst, src->inputs, src->n_inputs, err);
    if (rc)
        lb_job_init(dst);
    return rc;
}

const char *lb_job_type_name(lb_job_type t)
{
    switch (t) {
    case LB_JOB_COLLECT_HESSIAN: return "collect-hessian";
    case LB_JOB_QUANTIZE_LINEAR: return "quantize-linear";
    case LB_JOB_PROPAGATE: return "propagate";
    case LB_JOB_MERGE: return "merge";
    case LB_JOB_DISTILL: return "distill";
    case LB_JOB_REDUCE_HESSIAN: return "reduce-hessian";
    case LB_JOB_MEASURE: return "measure";
    case LB_JOB_PROPAGATE_FP: return "propagate-fp";
    }
    return "?";
}

int lb_id_valid(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[64] == '\0';
}

/* ---- encoding ---------------------------------------------------------- */

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_bool(msgpack_packer *pk, bool b)
{
    if (b)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

/* The options array, generated from lb_qopts_table.h: every row in order, then
 * the LATE rows up to the last one that is not at its default. */
static void pack_opts(msgpack_packer *pk, const lb_qopts *o)
{
    size_t n, len = 0;
    const lb_qopt_desc *rows = lb_qopts_table(&n);
    for (size_t k = 0; k < n; k++)
        if (!(rows[k].flags & LB_QOPT_LATE) || !lb_qopt_is_default(o, &rows[k]))
            len = k + 1;
    msgpack_pack_array(pk, len);
    for (size_t k = 0; k < len; k++) {
        const lb_qopt_desc *d = &rows[k];
        switch (d->kind) {
        case LB_QK_F64:
        case LB_QK_KEEP: msgpack_pack_double(pk, lb_qopt_get_f64(o, d)); break;
        case LB_QK_BOOL: pack_bool(pk, lb_qopt_get_int(o, d) != 0); break;
        case LB_QK_U64: msgpack_pack_uint64(pk, (uint64_t)lb_qopt_get_int(o, d)); break;
        default: msgpack_pack_int64(pk, lb_qopt_get_int(o, d)); break;
        }
    }
}

static void pack_distill(msgpack_packer *pk, const lb_distill_opts *o)
{
    msgpack_pack_array(pk, DISTILL_FIELDS);
    msgpack_pack_int32(pk, o->steps);
    msgpack_pack_double(pk, o->lr);
    msgpack_pack_double(pk, o->beta1);
    msgpack_pack_double(pk, o->beta2);
    msgpack_pack_double(pk, o->eps);
    msgpack_pack_int64(pk, o->batch_seqs);
    msgpack_pack_uint64(pk, o->seed);
}

static int check_job(const lb_job *job, lb_err *err)
{
    if (job->type < LB_JOB_COLLECT_HESSIAN || job->type > LB_JOB_TYPE_LAST)
        return lb_err_set(err, LB_EINVAL, "job: invalid type %d", (int)job->type);
    if (job->n_chunks < 0 || job->n_chunks > LB_JOB_MAX_CHUNKS || job->chunk < -1 ||
        job->chunk >= (job->n_chunks > 0 ? job->n_chunks : 0))
        return lb_err_set(err, LB_EINVAL, "job: chunk %d of %d invalid", (int)job->chunk,
                          (int)job->n_chunks);
    if (job->n_inputs < 0 || job->n_inputs > LB_JOB_MAX_INPUTS ||
        (job->n_inputs > 0 && !job->inputs))
        return lb_err_set(err, LB_EINVAL, "job: invalid input count %d", (int)job->n_inputs);
    if (job->n_outputs < 0 || job->n_outputs > LB_JOB_MAX_OUTPUTS)
        return lb_err_set(err, LB_EINVAL, "job: invalid output count %d", (int)job->n_outputs);
    return 0;
}

static int encode_job(const lb_job *job, bool canonical, uint8_t **buf, size_t *len,
                      lb_err *err)
{
    int rc = check_job(job, err);
    if (rc)
        return rc;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, JOB_FIELDS);
    pack_str(&pk, "lbjob");
    msgpack_pack_uint32(&pk, LB_JOB_WIRE_VERSION);
    msgpack_pack_int32(&pk, (int32_t)job->type);
    pack_str(&pk, canonical ? "" : job->id);
    msgpack_pack_int32(&pk, job->block);
    msgpack_pack_int32(&pk, job->linear);
    msgpack_pack_int32(&pk, job->stage);
    pack_str(&pk, job->tensor);
    pack_str(&pk, job->method);
    pack_opts(&pk, &job->opts);
    pack_str(&pk, job->lowbit_version);
    pack_str(&pk, job->model_fp);
    pack_str(&pk, job->calib_fp);
    msgpack_pack_int64(&pk, job->n_seq);
    msgpack_pack_int64(&pk, job->seq_len);
    pack_str(&pk, canonical ? "" : job->model_dir);
    pack_str(&pk, canonical ? "" : job->out_dir);
    pack_str(&pk, job->options_json);
    msgpack_pack_array(&pk, (size_t)job->n_inputs);
    for (int32_t i = 0; i < job->n_inputs; i++)
        pack_str(&pk, job->inputs[i].hex);
    if (canonical) {
        /* the number of outputs is part of what the job is; their ids derive from it */
        msgpack_pack_array(&pk, 0);
        msgpack_pack_int32(&pk, job->n_outputs);
    } else {
        msgpack_pack_array(&pk, (size_t)job->n_outputs);
        for (int32_t i = 0; i < job->n_outputs; i++)
            pack_str(&pk, job->outputs[i].hex);
    }
    pack_distill(&pk, &job->distill);
    msgpack_pack_int32(&pk, job->chunk);
    msgpack_pack_int32(&pk, job->n_chunks);
    if (!sb.data) {
        msgpack_sbuffer_destroy(&sb);
        return lb_err_set(err, LB_ENOMEM, "job: out of memory encoding");
    }
    *buf = (uint8_t *)sb.data;
    *len = sb.size;
    return 0;
}

int lb_job_encode(const lb_job *job, uint8_t **buf, size_t *len, lb_err *err)
{
    return encode_job(job, false, buf, len, err);
}

int lb_job_compute_id(lb_job *job, lb_err *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = encode_job(job, true, &buf, &len, err);
    if (rc)
        return rc;
    lb_sha256_hex(buf, len, job->id);
    free(buf);
    for (int32_t i = 0; i < job->n_outputs; i++) {
        char tmp[LB_ID_HEX + 16];
        int n = snprintf(tmp, sizeof tmp, "%s:%d", job->id, (int)i);
        lb_sha256_hex(tmp, (size_t)n, job->outputs[i].hex);
    }
    return 0;
}

int lb_job_result_encode(const lb_job_result *res, uint8_t **buf, size_t *len, lb_err *err)
{
    if (res->n_outputs < 0 || res->n_outputs > LB_JOB_MAX_OUTPUTS)
        return lb_err_set(err, LB_EINVAL, "result: invalid output count %d",
                          (int)res->n_outputs);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, RES_FIELDS);
    pack_str(&pk, "lbres");
    msgpack_pack_uint32(&pk, LB_JOB_WIRE_VERSION);
    pack_str(&pk, res->job_id);
    msgpack_pack_int32(&pk, (int32_t)res->status);
    msgpack_pack_int32(&pk, res->err_code);
    msgpack_pack_array(&pk, (size_t)res->n_outputs);
    for (int32_t i = 0; i < res->n_outputs; i++)
        pack_str(&pk, res->outputs[i].hex);
    msgpack_pack_double(&pk, res->bpw);
    msgpack_pack_double(&pk, res->seconds);
    msgpack_pack_int32(&pk, res->cached);
    pack_str(&pk, res->error);
    if (!sb.data) {
        msgpack_sbuffer_destroy(&sb);
        return lb_err_set(err, LB_ENOMEM, "result: out of memory encoding");
    }
    *buf = (uint8_t *)sb.data;
    *len = sb.size;
    return 0;
}

/* ---- decoding ---------------------------------------------------------- */

typedef struct {
    const msgpack_object *items;
    uint32_t n;
    const char *what; /* "job" / "job options" / "result" */
    lb_err *err;
} cursor;

static int bad(const cursor *c, uint32_t i, const char *problem)
{
    return lb_err_set(c->err, LB_EFORMAT, "%s message: field %u %s; the sender is not a "
                      "compatible lowbit or the message was corrupted", c->what, (unsigned)i,
                      problem);
}

static int get_i64(const cursor *c, uint32_t i, int64_t lo, int64_t hi, int64_t *out)
{
    const msgpack_object *o = &c->items[i];
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return bad(c, i, "is out of range");
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return bad(c, i, "is not an integer");
    }
    if (v < lo || v > hi)
        return bad(c, i, "is out of range");
    *out = v;
    return 0;
}

static int get_i32(const cursor *c, uint32_t i, int32_t lo, int32_t hi, int32_t *out)
{
    int64_t v;
    int rc = get_i64(c, i, lo, hi, &v);
    if (!rc)
        *out = (int32_t)v;
    return rc;
}

static int get_f64(const cursor *c, uint32_t i, double *out)
{
    const msgpack_object *o = &c->items[i];
    if (o->type != MSGPACK_OBJECT_FLOAT64 && o->type != MSGPACK_OBJECT_FLOAT32)
        return bad(c, i, "is not a float");
    if (!isfinite(o->via.f64))
        return bad(c, i, "is not finite");
    *out = o->via.f64;
    return 0;
}

static int get_bool(const cursor *c, uint32_t i, bool *out)
{
    const msgpack_object *o = &c->items[i];
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return bad(c, i, "is not a boolean");
    *out = o->via.boolean;
    return 0;
}

/* Copies a string field into dst[size] (must fit with its NUL, no embedded NUL). */
static int get_str(const cursor *c, uint32_t i, char *dst, size_t size)
{
    const msgpack_object *o = &c->items[i];
    if (o->type != MSGPACK_OBJECT_STR)
        return bad(c, i, "is not a string");
    if (o->via.str.size >= size)
        return bad(c, i, "is too long");
    if (o->via.str.size && memchr(o->via.str.ptr, 0, o->via.str.size))
        return bad(c, i, "holds a NUL byte");
    if (o->via.str.size) /* an empty string may come with a NULL pointer */
        memcpy(dst, o->via.str.ptr, o->via.str.size);
    dst[o->via.str.size] = '\0';
    return 0;
}

static int get_id(const cursor *c, uint32_t i, char *dst, bool allow_empty)
{
    int rc = get_str(c, i, dst, LB_ID_HEX);
    if (rc)
        return rc;
    if (allow_empty && dst[0] == '\0')
        return 0;
    return lb_id_valid(dst) ? 0 : bad(c, i, "is not a 64-digit lower-case hex id");
}

static int get_array(const cursor *c, uint32_t i, uint32_t max, cursor *sub, const char *what)
{
    const msgpack_object *o = &c->items[i];
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return bad(c, i, "is not an array");
    if (o->via.array.size > max)
        return bad(c, i, "has too many elements");
    sub->items = o->via.array.ptr;
    sub->n = o->via.array.size;
    sub->what = what;
    sub->err = c->err;
    return 0;
}

/* the rows every job message carries (the ones before the first LATE row) */
static uint32_t opts_fields(void)
{
    size_t n, k = 0;
    const lb_qopt_desc *rows = lb_qopts_table(&n);
    while (k < n && !(rows[k].flags & LB_QOPT_LATE))
        k++;
    return (uint32_t)k;
}

static uint32_t opts_fields_max(void)
{
    size_t n;
    lb_qopts_table(&n);
    return (uint32_t)n;
}

static int decode_opts(const cursor *c, lb_qopts *o)
{
    size_t n;
    const lb_qopt_desc *rows = lb_qopts_table(&n);
    if (c->n < opts_fields() || c->n > n)
        return lb_err_set(c->err, LB_EFORMAT, "job message: options hold %u values, expected "
                          "%u to %u", (unsigned)c->n, (unsigned)opts_fields(), (unsigned)n);
    lb_qopts_init(o); /* LATE rows not sent keep their defaults */
    for (uint32_t k = 0; k < c->n; k++) {
        const lb_qopt_desc *d = &rows[k];
        int rc = 0;
        double f = 0;
        int32_t i32 = 0;
        int64_t i64 = 0;
        bool b = false;
        switch (d->kind) {
        case LB_QK_F64:
        case LB_QK_KEEP:
            if (!(rc = get_f64(c, k, &f)))
                lb_qopt_set_f64(o, d, f);
            break;
        case LB_QK_BOOL:
            if (!(rc = get_bool(c, k, &b)))
                lb_qopt_set_int(o, d, b);
            break;
        case LB_QK_U64:
            if (c->items[k].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return bad(c, k, "is not an unsigned integer");
            lb_qopt_set_int(o, d, (int64_t)c->items[k].via.u64);
            break;
        case LB_QK_GRID:
        case LB_QK_CRIT:
            if (!(rc = get_i64(c, k, 0, d->wire_max, &i64)))
                lb_qopt_set_int(o, d, i64);
            break;
        default:
            if (!(rc = get_i32(c, k, 0, (int32_t)d->wire_max, &i32)))
                lb_qopt_set_int(o, d, i32);
            break;
        }
        if (rc)
            return rc;
    }
    return 0;
}

static int decode_distill(const cursor *c, lb_distill_opts *o)
{
    if (c->n != DISTILL_FIELDS)
        return lb_err_set(c->err, LB_EFORMAT, "job message: distill options hold %u values, "
                          "expected %d", (unsigned)c->n, DISTILL_FIELDS);
    int rc;
    if ((rc = get_i32(c, 0, 0, 1000000, &o->steps)) || (rc = get_f64(c, 1, &o->lr)) ||
        (rc = get_f64(c, 2, &o->beta1)) || (rc = get_f64(c, 3, &o->beta2)) ||
        (rc = get_f64(c, 4, &o->eps)) || (rc = get_i64(c, 5, INT64_MIN, INT64_MAX, &o->batch_seqs)))
        return rc;
    if (c->items[6].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return bad(c, 6, "is not an unsigned integer");
    o->seed = c->items[6].via.u64;
    if (!(o->lr >= 0.0 && o->lr <= 1.0) || !(o->beta1 >= 0.0 && o->beta1 < 1.0) ||
        !(o->beta2 >= 0.0 && o->beta2 < 1.0) || !(o->eps > 0.0))
        return lb_err_set(c->err, LB_EFORMAT, "job message: distill options out of range "
                          "(lr in [0, 1], betas in [0, 1), eps > 0)");
    return 0;
}

/* Walks the msgpack structure of buf without allocating: exactly one object
 * spanning all len bytes, every length and element count within the bytes that
 * remain. msgpack-c allocates what headers declare, so this runs first and a
 * corrupted count cannot make the decoder allocate gigabytes.
 * Returns 0, 1 (truncated), 2 (trailing bytes), 3 (invalid byte / count). */
static int msgpack_scan(const uint8_t *buf, size_t len, size_t *end)
{
    uint64_t pending = 1, pos = 0;
    while (pending > 0) {
        if (pos >= len)
            return 1;
        uint8_t b = buf[pos++];
        uint64_t skip = 0, count = 0;
        int lenbytes = 0, extra = 0;
        pending--;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            continue;
        } else if (b >= 0x80 && b <= 0x8f) {
            count = 2u * (uint64_t)(b & 0x0f);
        } else if (b >= 0x90 && b <= 0x9f) {
            count = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;
            case 0xc5: case 0xda: lenbytes = 2; break;
            case 0xc6: case 0xdb: lenbytes = 4; break;
            case 0xc7: lenbytes = 1; extra = 1; break;
            case 0xc8: lenbytes = 2; extra = 1; break;
            case 0xc9: lenbytes = 4; extra = 1; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xde: lenbytes = -2; break;
            case 0xdd: case 0xdf: lenbytes = -4; break;
            default: return 3; /* 0xc1 is never used */
            }
        }
        if (lenbytes != 0) {
            int nb = lenbytes < 0 ? -lenbytes : lenbytes;
            if (len - pos < (uint64_t)nb)
                return 1;
            uint64_t v = 0;
            for (int k = 0; k < nb; k++)
                v = (v << 8) | buf[pos + (uint64_t)k];
            pos += (uint64_t)nb;
            if (lenbytes < 0)
                count = (b == 0xde || b == 0xdf) ? 2 * v : v;
            else
                skip = v + (uint64_t)extra;
        }
        if (count > 0) {
            /* every element takes at least one byte */
            if (count > len - pos)
                return 1;
            pending += count;
        }
        if (skip > len - pos)
            return 1;
        pos += skip;
    }
    *end = (size_t)pos;
    return pos == len ? 0 : 2;
}

/* Unpacks exactly one top-level array from buf. */
static int unpack_one(const uint8_t *buf, size_t len, msgpack_unpacked *u, const char *what,
                      lb_err *err)
{
    if (!buf || len == 0)
        return lb_err_set(err, LB_EFORMAT, "%s message: empty", what);
    size_t off = 0;
    int scan = msgpack_scan(buf, len, &off);
    if (scan == 1)
        return lb_err_set(err, LB_EFORMAT, "%s message: truncated (%zu bytes); resend it",
                          what, len);
    if (scan == 2)
        return lb_err_set(err, LB_EFORMAT, "%s message: %zu trailing bytes after the message",
                          what, len - off);
    if (scan == 3)
        return lb_err_set(err, LB_EFORMAT, "%s message: not valid msgpack", what);
    off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(u, (const char *)buf, len, &off);
    if (r == MSGPACK_UNPACK_CONTINUE)
        return lb_err_set(err, LB_EFORMAT, "%s message: truncated (%zu bytes); resend it",
                          what, len);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        /* msgpack-c allocates what a header declares; a corrupted length lands here */
        return lb_err_set(err, LB_EFORMAT, "%s message: declares more elements than can be "
                          "allocated (corrupted length?)", what);
    if (r != MSGPACK_UNPACK_SUCCESS && r != MSGPACK_UNPACK_EXTRA_BYTES)
        return lb_err_set(err, LB_EFORMAT, "%s message: not valid msgpack", what);
    if (off != len)
        return lb_err_set(err, LB_EFORMAT, "%s message: %zu trailing bytes after the message",
                          what, len - off);
    if (u->data.type != MSGPACK_OBJECT_ARRAY)
        return lb_err_set(err, LB_EFORMAT, "%s message: not an array", what);
    return 0;
}

static int check_header(const cursor *c, const char *magic, uint32_t nfields)
{
    char m[8];
    if (c->n < 2 || get_str(c, 0, m, sizeof m) || strcmp(m, magic) != 0)
        return lb_err_set(c->err, LB_EFORMAT, "%s message: missing \"%s\" magic; not a lowbit "
                          "%s", c->what, magic, c->what);
    int64_t ver;
    if (get_i64(c, 1, 0, INT32_MAX, &ver))
        return c->err->code;
    if (ver != LB_JOB_WIRE_VERSION)
        return lb_err_set(c->err, LB_EFORMAT, "%s message: wire version %lld, this lowbit "
                          "speaks %d; run the same lowbit version everywhere", c->what,
                          (long long)ver, LB_JOB_WIRE_VERSION);
    if (c->n != nfields)
        return lb_err_set(c->err, LB_EFORMAT, "%s message: %u fields, expected %u", c->what,
                          (unsigned)c->n, (unsigned)nfields);
    return 0;
}

int lb_job_decode(const uint8_t *buf, size_t len, lb_job *job, lb_err *err)
{
    lb_err scratch;
    if (!err)
        err = &scratch;
    lb_job_init(job);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc = unpack_one(buf, len, &u, "job", err);
    if (rc)
        goto fail;
    cursor c = {u.data.via.array.ptr, u.data.via.array.size, "job", err};
    if ((rc = check_header(&c, "lbjob", JOB_FIELDS)))
        goto fail;
    int32_t type;
    cursor opts, ins, outs, dist;
    if ((rc = get_i32(&c, 2, LB_JOB_COLLECT_HESSIAN, LB_JOB_TYPE_LAST, &type)) ||
        (rc = get_id(&c, 3, job->id, true)) ||
        (rc = get_i32(&c, 4, -1, 1 << 20, &job->block)) ||
        (rc = get_i32(&c, 5, -1, 63, &job->linear)) ||
        (rc = get_i32(&c, 6, -1, LB_STAGE_LM_HEAD, &job->stage)) ||
        (rc = get_str(&c, 7, job->tensor, sizeof job->tensor)) ||
        (rc = get_str(&c, 8, job->method, sizeof job->method)) ||
        (rc = get_array(&c, 9, opts_fields_max(), &opts, "job options")) ||
        (rc = decode_opts(&opts, &job->opts)) ||
        (rc = get_str(&c, 10, job->lowbit_version, sizeof job->lowbit_version)) ||
        (rc = get_id(&c, 11, job->model_fp, true)) || (rc = get_id(&c, 12, job->calib_fp, true)) ||
        (rc = get_i64(&c, 13, 0, INT64_MAX, &job->n_seq)) ||
        (rc = get_i64(&c, 14, 0, INT64_MAX, &job->seq_len)) ||
        (rc = get_str(&c, 15, job->model_dir, sizeof job->model_dir)) ||
        (rc = get_str(&c, 16, job->out_dir, sizeof job->out_dir)) ||
        (rc = get_str(&c, 17, job->options_json, sizeof job->options_json)) ||
        (rc = get_array(&c, 18, LB_JOB_MAX_INPUTS, &ins, "job inputs")) ||
        (rc = get_array(&c, 19, LB_JOB_MAX_OUTPUTS, &outs, "job outputs")) ||
        (rc = get_array(&c, 20, DISTILL_FIELDS, &dist, "job distill options")) ||
        (rc = decode_distill(&dist, &job->distill)) ||
        (rc = get_i32(&c, 22, 0, LB_JOB_MAX_CHUNKS, &job->n_chunks)) ||
        (rc = get_i32(&c, 21, -1, job->n_chunks - 1, &job->chunk)))
        goto fail;
    job->type = (lb_job_type)type;
    if ((job->type == LB_JOB_QUANTIZE_LINEAR || job->type == LB_JOB_MEASURE) &&
        (rc = lb_qopts_validate(&job->opts, err))) {
        lb_err_prefix(err, "job message: invalid options");
        rc = LB_EFORMAT;
        err->code = rc;
        goto fail;
    }
    if (ins.n > 0) {
        job->inputs = calloc(ins.n, sizeof *job->inputs);
        if (!job->inputs) {
            rc = lb_err_set(err, LB_ENOMEM, "job message: out of memory for %u inputs",
                            (unsigned)ins.n);
            goto fail;
        }
    }
    job->n_inputs = (int32_t)ins.n;
    for (uint32_t i = 0; i < ins.n; i++)
        if ((rc = get_id(&ins, i, job->inputs[i].hex, false)))
            goto fail;
    job->n_outputs = (int32_t)outs.n;
    for (uint32_t i = 0; i < outs.n; i++)
        if ((rc = get_id(&outs, i, job->outputs[i].hex, false)))
            goto fail;
    msgpack_unpacked_destroy(&u);
    return 0;
fail:
    msgpack_unpacked_destroy(&u);
    lb_job_clear(job);
    return rc;
}

int lb_job_result_decode(const uint8_t *buf, size_t len, lb_job_result *res, lb_err *err)
{
    lb_err scratch;
    if (!err)
        err = &scratch;
    memset(res, 0, sizeof *res);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc = unpack_one(buf, len, &u, "result", err);
    if (rc)
        goto fail;
    cursor c = {u.data.via.array.ptr, u.data.via.array.size, "result", err};
    if ((rc = check_header(&c, "lbres", RES_FIELDS)))
        goto fail;
    int32_t status;
    cursor outs;
    if ((rc = get_id(&c, 2, res->job_id, false)) || (rc = get_i32(&c, 3, 0, 1, &status)) ||
        (rc = get_i32(&c, 4, LB_ENET, 0, &res->err_code)) ||
        (rc = get_array(&c, 5, LB_JOB_MAX_OUTPUTS, &outs, "result outputs")) ||
        (rc = get_f64(&c, 6, &res->bpw)) || (rc = get_f64(&c, 7, &res->seconds)) ||
        (rc = get_i32(&c, 8, 0, 1, &res->cached)) ||
        (rc = get_str(&c, 9, res->error, sizeof res->error)))
        goto fail;
    res->status = (lb_job_status)status;
    res->n_outputs = (int32_t)outs.n;
    for (uint32_t i = 0; i < outs.n; i++)
        if ((rc = get_id(&outs, i, res->outputs[i].hex, false)))
            goto fail;
    if (res->bpw < 0 || res->seconds < 0) {
        rc = lb_err_set(err, LB_EFORMAT, "result message: negative bpw or seconds");
        goto fail;
    }
    msgpack_unpacked_destroy(&u);
    return 0;
fail:
    msgpack_unpacked_destroy(&u);
    memset(res, 0, sizeof *res);
    return rc;
}
