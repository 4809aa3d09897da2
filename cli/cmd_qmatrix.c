/* lowbit qmatrix: quantize one weight matrix W (rows, cols) with its Hessian H
 * (cols, cols) by any registered method and report bits per weight and the
 * Hessian-weighted error err = tr((W - W_hat) H (W - W_hat)ᵀ). */
#include <errno.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "lb_blas.h"
#include "lb_cli.h"
#include "lb_qopts_parse.h"
#include "lb_quant.h"
#include "lb_rotate.h"
#include "lb_safetensors.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit qmatrix --weight FILE[:TENSOR] --hessian FILE[:TENSOR] --method M\n"
            "                      [quantization options] [--threads N] [--out FILE] [--json]\n"
            "\n"
            "Quantizes W (rows, cols) with H (cols, cols), both 2-D float tensors in\n"
            "safetensors files (TENSOR may be left out when the file holds one tensor).\n"
            "H is the layer-input Hessian (any positive scale, e.g. 2/N sum x xᵀ).\n"
            "Reports bpw (every stored bit / weights), err = tr((W-Ŵ)H(W-Ŵ)ᵀ) in float64,\n"
            "rel_err = err / tr(W H Wᵀ), and the seconds the method took.\n"
            "\n"
            "  --method M     one of:");
    lb_cli_print_methods(out);
    fprintf(out,
            "\n"
            "  --threads N    OpenMP and BLAS threads (default: all cores)\n"
            "  --out FILE     write W_hat (F32, same tensor name) to a safetensors file\n"
            "  --json         print one JSON object {method, options, weight, hessian, rows,\n"
            "                 cols, bpw, bits, fields, err, ref, rel_err, seconds, exact}\n"
            "\n%s",
            lb_qopts_usage());
}

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "lowbit qmatrix: %s%s; run `lowbit qmatrix --help`\n", msg, arg ? arg : "");
    return 2;
}

typedef struct {
    float *data;
    int64_t rows, cols;
    char name[256];
} matrix;

/* Loads "FILE[:TENSOR]": a path that exists as given is a file without a tensor name;
 * otherwise the text after the last ':' names the tensor. */
static int load_matrix(const char *spec, const char *what, matrix *m, lb_err *err)
{
    char path[4096];
    const char *tensor = NULL;
    struct stat sb;
    if (strlen(spec) >= sizeof path)
        return lb_err_set(err, LB_EINVAL, "--%s: path too long", what);
    strcpy(path, spec);
    if (stat(path, &sb) != 0) {
        char *colon = strrchr(path, ':');
        if (colon) {
            *colon = '\0';
            tensor = colon + 1;
        }
    }
    lb_st *st = NULL;
    int rc = lb_st_open(&st, path, err);
    if (rc)
        return lb_err_prefix(err, "--%s", what);
    const lb_st_tensor *t = NULL;
    if (tensor && *tensor) {
        t = lb_st_find(st, tensor);
        if (!t) {
            rc = lb_err_set(err, LB_ENOTFOUND, "--%s: %s has no tensor '%s'", what, path, tensor);
            goto done;
        }
    } else if (lb_st_count(st) == 1) {
        t = lb_st_at(st, 0);
    } else {
        rc = lb_err_set(err, LB_EINVAL, "--%s: %s holds %lld tensors; name one as FILE:TENSOR",
                        what, path, (long long)lb_st_count(st));
        goto done;
    }
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1) {
        rc = lb_err_set(err, LB_EFORMAT, "--%s: tensor '%s' in %s is not a non-empty 2-D matrix",
                        what, t->name, path);
        goto done;
    }
    m->rows = t->shape[0];
    m->cols = t->shape[1];
    snprintf(m->name, sizeof m->name, "%s", t->name);
    m->data = malloc((size_t)t->numel * sizeof *m->data);
    if (!m->data) {
        rc = lb_err_set(err, LB_ENOMEM, "--%s: out of memory for %lld x %lld", what,
                        (long long)m->rows, (long long)m->cols);
        goto done;
    }
    rc = lb_st_read_f32(st, t->name, m->data, t->numel, err);
    if (rc) {
        lb_err_prefix(err, "--%s", what);
        free(m->data);
        m->data = NULL;
    }
done:
    lb_st_free(&st);
    return rc;
}

static json_t *options_json(const lb_qopts *o)
{
    return lb_qopts_json(o); /* generated from lb_qopts_table.h */
}

static int write_out(const char *path, const matrix *W, const float *W_hat, const char *method,
                     double bpw, lb_err *err)
{
    lb_st_writer *w = NULL;
    int64_t shape[2] = {W->rows, W->cols};
    char buf[64];
    snprintf(buf, sizeof buf, "%.17g", bpw);
    int rc = lb_st_writer_new(&w, path, err);
    if (!rc)
        rc = lb_st_writer_add_tensor(w, W->name, LB_DTYPE_F32, 2, shape, err);
    if (!rc)
        rc = lb_st_writer_set_metadata(w, "lowbit.method", method, err);
    if (!rc)
        rc = lb_st_writer_set_metadata(w, "lowbit.bpw", buf, err);
    if (!rc)
        rc = lb_st_writer_write_f32(w, W->name, W_hat, (size_t)(W->rows * W->cols), err);
    if (!rc)
        rc = lb_st_writer_finish(w, err);
    lb_st_writer_free(&w);
    return rc;
}

int lb_cmd_qmatrix(int argc, char **argv)
{
    const char *weight = NULL, *hessian = NULL, *method = NULL, *out = NULL;
    bool json = false;
    long threads = 0;
    lb_qopts opts;
    lb_qopts_init(&opts);
    lb_err err = {0};
    for (int i = 1; i < argc;) {
        const char *a = argv[i];
        int r = lb_qopts_parse_arg(&opts, argc, argv, &i, &err);
        if (r < 0)
            return usage_error(err.msg, NULL);
        if (r > 0)
            continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = true;
            i++;
            continue;
        }
        const char **dst = !strcmp(a, "--weight")    ? &weight
                           : !strcmp(a, "--hessian") ? &hessian
                           : !strcmp(a, "--method")  ? &method
                           : !strcmp(a, "--out")     ? &out
                                                     : NULL;
        if (dst || !strcmp(a, "--threads")) {
            if (i + 1 >= argc)
                return usage_error("missing value for ", a);
            if (dst) {
                *dst = argv[i + 1];
            } else {
                char *end = NULL;
                errno = 0;
                threads = strtol(argv[i + 1], &end, 10);
                if (errno || end == argv[i + 1] || *end || threads < 1 || threads > 1024)
                    return usage_error("--threads must be an integer in 1..1024, not ",
                                       argv[i + 1]);
            }
            i += 2;
            continue;
        }
        return usage_error("unknown option ", a);
    }
    if (!weight || !hessian || !method)
        return usage_error("--weight, --hessian and --method are required", NULL);
    const lb_qmethod *m = lb_qmethod_find(method);
    if (!m)
        return usage_error("unknown --method ", method);
    if (lb_qopts_validate(&opts, &err))
        return usage_error(err.msg, NULL);
    opts.rotate = lb_rotate_resolve(method, opts.rotate);
    if (threads > 0) {
        omp_set_num_threads((int)threads);
        lb_blas_set_threads((int)threads);
    }

    int status = 1;
    matrix W = {0}, H = {0};
    lb_qresult res = {0};
    float *back = NULL;
    if (load_matrix(weight, "weight", &W, &err) || load_matrix(hessian, "hessian", &H, &err))
        goto fail;
    if (H.rows != H.cols || H.cols != W.cols) {
        lb_err_set(&err, LB_EINVAL,
                   "--hessian: H is %lld x %lld but W has %lld columns; H must be square "
                   "(cols, cols)",
                   (long long)H.rows, (long long)H.cols, (long long)W.cols);
        goto fail;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lb_qmethod_quantize(m, W.data, W.rows, W.cols, H.data, &opts, &res, &err)) {
        lb_err_prefix(&err, "%s", method);
        goto fail;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    double e = 0, ref = 0;
    if (lb_quant_error(W.data, res.W_hat, W.rows, W.cols, H.data, &e, &ref, &err))
        goto fail;
    // the accounting is honest only if the packed form alone rebuilds W_hat
    back = malloc((size_t)(W.rows * W.cols) * sizeof *back);
    if (!back) {
        lb_err_set(&err, LB_ENOMEM, "out of memory");
        goto fail;
    }
    if (lb_qmethod_dequantize(m, &res.packed, back, &err))
        goto fail;
    bool exact = !memcmp(back, res.W_hat, (size_t)(W.rows * W.cols) * sizeof *back);
    if (out && write_out(out, &W, res.W_hat, method, res.bpw, &err))
        goto fail;
    double rel = ref > 0 ? e / ref : 0.0;
    if (json) {
        json_t *fields = json_array();
        for (int32_t i = 0; i < res.packed.nfields; i++) {
            const lb_qfield *f = &res.packed.fields[i];
            json_array_append_new(fields, json_pack("{s:s, s:i, s:I, s:I}", "name", f->name,
                                                    "bits", (int)f->bits, "count",
                                                    (json_int_t)f->count, "bytes",
                                                    (json_int_t)f->nbytes));
        }
        json_t *o = json_pack("{s:s, s:o, s:s, s:s, s:I, s:I, s:f, s:I, s:o, s:f, s:f, s:f,"
                              " s:f, s:b}",
                              "method", method, "options", options_json(&opts), "weight",
                              weight, "hessian", hessian, "rows", (json_int_t)W.rows, "cols",
                              (json_int_t)W.cols, "bpw", res.bpw, "bits",
                              (json_int_t)lb_qpacked_bits(&res.packed), "fields", fields, "err",
                              e, "ref", ref, "rel_err", rel, "seconds", seconds, "exact", exact);
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
        if (!s) {
            json_decref(o);
            lb_err_set(&err, LB_ENOMEM, "cannot format JSON");
            goto fail;
        }
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("%s %lld x %lld: bpw %.4f, err %.6g, rel_err %.6g, %.3f s%s\n", method,
               (long long)W.rows, (long long)W.cols, res.bpw, e, rel, seconds,
               exact ? "" : " (WARNING: dequantize(packed) != W_hat)");
    }
    status = exact ? 0 : 1;
    if (!exact)
        fprintf(stderr, "lowbit qmatrix: %s: dequantize(packed) does not reproduce W_hat; the "
                        "method's packing is broken\n", method);
    goto cleanup;
fail:
    fprintf(stderr, "lowbit qmatrix: %s\n", err.msg);
cleanup:
    free(W.data);
    free(H.data);
    free(back);
    lb_qresult_free(&res);
    return status;
}
