/* Export: any model lowbit opens (packed or fp) -> a plain HF checkpoint. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_io_util.h"
#include "lb_packed.h"
#include "lb_packed_stage.h"
#include "lb_qpacked_io.h"

#define NAME_CAP 1024

static int is_float(lb_dtype dt)
{
    return dt == LB_DTYPE_F32 || dt == LB_DTYPE_F16 || dt == LB_DTYPE_BF16 || dt == LB_DTYPE_F64;
}

/* If tensor name is a field of a packed matrix, the weight it belongs to
 * ("X.q.field" -> "X.weight") into weight. */
static int packed_weight_of(const lb_st *st, const char *name, char *prefix, char *weight)
{
    char base[NAME_CAP];
    if (!lb_qpacked_io_field_of(st, name, prefix, base, NAME_CAP - 8))
        return 0;
    snprintf(weight, NAME_CAP, "%.*s.weight", NAME_CAP - 8, base);
    return 1;
}

typedef struct {
    char name[NAME_CAP];
    int packed;         /* dequantize through the model */
    const lb_st_tensor *t; /* plain: the source tensor */
    int64_t rows, cols;
} out_tensor;

static int collect(const lb_model *m, out_tensor **out, int64_t *n, lb_err *err)
{
    const lb_st *st = lb_model_tensors(m);
    int64_t count = lb_st_count(st), k = 0;
    out_tensor *list = calloc((size_t)(count ? count : 1), sizeof *list);
    char prefix[NAME_CAP], weight[NAME_CAP], last[NAME_CAP] = "";
    if (!list)
        return lb_err_set(err, LB_ENOMEM, "export: out of memory");
    for (int64_t i = 0; i < count; i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        if (lb_model_is_packed(m) && packed_weight_of(st, t->name, prefix, weight)) {
            if (!strcmp(prefix, last))
                continue; /* further fields of the same matrix (declared together) */
            snprintf(last, sizeof last, "%s", prefix);
            lb_qpacked p = {0};
            int rc = lb_qpacked_io_read(st, prefix, &p, err);
            if (rc) {
                free(list);
                return rc;
            }
            snprintf(list[k].name, NAME_CAP, "%s", weight);
            list[k].packed = 1;
            list[k].rows = p.rows;
            list[k].cols = p.cols;
            lb_qpacked_free(&p);
            k++;
            continue;
        }
        snprintf(list[k].name, NAME_CAP, "%s", t->name);
        list[k].t = t;
        k++;
    }
    *out = list;
    *n = k;
    return 0;
}

static int write_model(const char *path, const lb_model *m, const out_tensor *list, int64_t n,
                       lb_dtype dtype, lb_err *err)
{
    lb_st_writer *w = NULL;
    float *buf = NULL;
    int rc = lb_st_writer_new(&w, path, err);
    if (rc)
        return rc;
    if ((rc = lb_st_writer_set_metadata(w, "format", "pt", err)))
        goto fail;
    for (int64_t i = 0; i < n; i++) {
        const out_tensor *o = &list[i];
        if (o->packed) {
            int64_t shape[2] = {o->rows, o->cols};
            rc = lb_st_writer_add_tensor(w, o->name, dtype, 2, shape, err);
        } else {
            rc = lb_st_writer_add_tensor(w, o->name, is_float(o->t->dtype) ? dtype : o->t->dtype,
                                         o->t->ndim, o->t->shape, err);
        }
        if (rc)
            goto fail;
    }
    for (int64_t i = 0; i < n; i++) {
        const out_tensor *o = &list[i];
        if (!o->packed && !is_float(o->t->dtype)) {
            if ((rc = lb_st_writer_write(w, o->name, o->t->data, o->t->nbytes, err)))
                goto fail;
            continue;
        }
        int64_t numel = o->packed ? o->rows * o->cols : o->t->numel;
        free(buf);
        buf = malloc((size_t)(numel ? numel : 1) * sizeof *buf);
        if (!buf) {
            rc = lb_err_set(err, LB_ENOMEM, "export: cannot allocate %s", o->name);
            goto fail;
        }
        rc = o->packed ? lb_packed_load_weight(lb_model_tensors(m), o->name, buf, numel, err)
                       : lb_st_read_f32(lb_model_tensors(m), o->name, buf, numel, err);
        if (rc || (rc = lb_st_writer_write_f32(w, o->name, buf, (size_t)numel, err)))
            goto fail;
        free(buf);
        buf = NULL;
    }
    rc = lb_st_writer_finish(w, err);
fail:
    free(buf);
    lb_st_writer_free(&w);
    return rc;
}

static const char *torch_dtype(lb_dtype dt)
{
    return dt == LB_DTYPE_F16 ? "float16" : dt == LB_DTYPE_BF16 ? "bfloat16" : "float32";
}

int lb_packed_export(const char *in_dir, const char *out_dir, lb_dtype dtype, lb_err *err)
{
    lb_model *m = NULL;
    lb_packed_stage stg = {0};
    out_tensor *list = NULL;
    int64_t n = 0;
    json_t *cfg = NULL;
    char *cfg_in = NULL, *cfg_out = NULL, *st_path = NULL, *text = NULL;
    char rin[PATH_MAX], rout[PATH_MAX];
    int rc;
    if (!in_dir || !out_dir)
        return lb_err_set(err, LB_EINVAL, "export: missing --model or --out");
    if (dtype != LB_DTYPE_F32 && dtype != LB_DTYPE_F16 && dtype != LB_DTYPE_BF16)
        return lb_err_set(err, LB_EINVAL, "export: dtype must be f32, f16 or bf16");
    if (realpath(in_dir, rin) && realpath(out_dir, rout) && !strcmp(rin, rout))
        return lb_err_set(err, LB_EINVAL, "export: --out %s is the input directory; pick another",
                          out_dir);
    if ((rc = lb_packed_model_open(&m, in_dir, err)) || (rc = collect(m, &list, &n, err)))
        goto fail;
    cfg_in = lb_io_path_join(in_dir, "config.json");
    json_error_t jerr;
    cfg = cfg_in ? json_load_file(cfg_in, 0, &jerr) : NULL;
    if (!json_is_object(cfg)) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: cannot re-read config.json", in_dir);
        goto fail;
    }
    json_object_del(cfg, "quantization_config");
    json_object_set_new(cfg, "torch_dtype", json_string(torch_dtype(dtype)));
    if ((rc = lb_packed_stage_open(&stg, out_dir, err)))
        goto fail;
    st_path = lb_packed_stage_file(&stg, "model.safetensors");
    cfg_out = lb_packed_stage_file(&stg, "config.json");
    text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!st_path || !cfg_out || !text) {
        rc = lb_err_set(err, LB_ENOMEM, "export: out of memory");
        goto fail;
    }
    if ((rc = write_model(st_path, m, list, n, dtype, err)) ||
        (rc = lb_io_write_atomic(cfg_out, text, strlen(text), err)))
        goto fail;
    rc = lb_packed_stage_finish_export(&stg, in_dir, err);
fail:
    if (rc)
        lb_err_prefix(err, "export %s -> %s", in_dir, out_dir);
    lb_packed_stage_abort(&stg);
    lb_model_free(&m);
    json_decref(cfg);
    free(list);
    free(cfg_in);
    free(cfg_out);
    free(st_path);
    free(text);
    return rc;
}
