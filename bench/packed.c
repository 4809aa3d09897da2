/* bench_packed: cost and size of the packed checkpoint path on a real model.
 *
 *   bench_packed --model DIR [--method M] [--bits B] [--out DIR]
 *
 * Quantizes every linear of DIR with the method (identity Hessian: this bench
 * measures the checkpoint I/O, not quantization quality), then times
 * lb_packed_write (merge), lb_packed_verify, opening the packed model and
 * dequantizing every block (what eval does), and lb_packed_export (f32).
 * Prints one JSON line: configuration, model-wide bpw of the quantized
 * linears, bytes, file sizes, seconds per stage. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lb_model.h"
#include "lb_packed.h"
#include "lb_quant.h"
#include "lb_time.h"

static long long fsize(const char *dir, const char *name)
{
    char p[4400];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &sb) ? -1 : (long long)sb.st_size;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *method = "rtn", *out = NULL;
    double bits = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--method"))
            method = argv[i + 1];
        else if (!strcmp(argv[i], "--bits"))
            bits = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--out"))
            out = argv[i + 1];
    }
    if (!model) {
        fprintf(stderr, "usage: bench_packed --model DIR [--method M] [--bits B] [--out DIR]\n");
        return 2;
    }
    char tmpl[] = "/tmp/bench_packed.XXXXXX";
    char *base = out ? NULL : mkdtemp(tmpl);
    char packed[4096], exported[4096];
    snprintf(packed, sizeof packed, "%s/packed", out ? out : base);
    snprintf(exported, sizeof exported, "%s/export", out ? out : base);
    lb_err err = {0};
    lb_model *m = NULL;
    const lb_qmethod *meth = lb_qmethod_find(method);
    if (!meth || lb_packed_model_open(&m, model, &err)) {
        fprintf(stderr, "bench_packed: %s\n", meth ? err.msg : "unknown method");
        return 1;
    }
    const lb_config *cfg = lb_model_config(m);
    int n = cfg->num_hidden_layers * LB_LINEAR_COUNT;
    lb_qresult *res = calloc((size_t)n, sizeof *res);
    lb_packed_entry *e = calloc((size_t)n, sizeof *e);
    char (*names)[128] = calloc((size_t)n, sizeof *names);
    double t0 = lb_now_s();
    for (int32_t layer = 0, k = 0; layer < cfg->num_hidden_layers; layer++) {
        lb_block_weights bw;
        if (lb_model_load_block(m, layer, &bw, &err))
            goto fail;
        for (int l = 0; l < LB_LINEAR_COUNT; l++, k++) {
            int64_t rows, cols;
            lb_linear_shape(cfg, (lb_linear)l, &rows, &cols);
            float *H = calloc((size_t)(cols * cols), sizeof *H);
            for (int64_t j = 0; j < cols; j++)
                H[j * cols + j] = 1.0f;
            lb_qopts o;
            lb_qopts_init(&o);
            o.bits = bits;
            int rc = meth->quantize(lb_block_linear(&bw, (lb_linear)l), rows, cols, H, &o,
                                    &res[k], &err);
            free(H);
            if (rc)
                goto fail;
            lb_model_linear_tensor_name(names[k], sizeof names[k], layer, (lb_linear)l, &err);
            e[k].name = names[k];
            e[k].packed = &res[k].packed;
        }
        lb_block_weights_free(&bw);
    }
    double t_quant = lb_now_s() - t0;
    lb_packed_info info = {.method = method, .bits = bits};
    lb_packed_summary sum;
    t0 = lb_now_s();
    if (lb_packed_write(packed, m, e, n, &info, &sum, &err))
        goto fail;
    double t_merge = lb_now_s() - t0;
    t0 = lb_now_s();
    if (lb_packed_verify(packed, NULL, &err))
        goto fail;
    double t_verify = lb_now_s() - t0;
    t0 = lb_now_s();
    lb_model *p = NULL;
    if (lb_packed_model_open(&p, packed, &err))
        goto fail;
    for (int32_t layer = 0; layer < cfg->num_hidden_layers; layer++) {
        lb_block_weights bw;
        if (lb_model_load_block(p, layer, &bw, &err))
            goto fail;
        lb_block_weights_free(&bw);
    }
    lb_model_free(&p);
    double t_load = lb_now_s() - t0;
    t0 = lb_now_s();
    if (lb_packed_export(packed, exported, LB_DTYPE_F32, &err))
        goto fail;
    double t_export = lb_now_s() - t0;
    printf("{\"bench\":\"packed\",\"model\":\"%s\",\"method\":\"%s\",\"bits\":%g,\"linears\":%lld,"
           "\"weights\":%lld,\"bytes\":%llu,\"bpw\":%.6f,\"packed_file_bytes\":%llu,"
           "\"source_file_bytes\":%lld,\"export_f32_file_bytes\":%lld,\"quantize_s\":%.4f,"
           "\"merge_s\":%.4f,\"verify_s\":%.4f,\"open_and_dequantize_all_blocks_s\":%.4f,"
           "\"export_s\":%.4f}\n",
           model, method, bits, (long long)sum.n_quantized, (long long)sum.quantized_weights,
           (unsigned long long)sum.quantized_bytes, sum.bpw, (unsigned long long)sum.file_bytes,
           fsize(model, "model.safetensors"), fsize(exported, "model.safetensors"), t_quant,
           t_merge, t_verify, t_load, t_export);
    for (int k = 0; k < n; k++)
        lb_qresult_free(&res[k]);
    free(res);
    free(e);
    free(names);
    lb_model_free(&m);
    if (base) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_packed: could not remove %s\n", base);
    }
    return 0;
fail:
    fprintf(stderr, "bench_packed: %s\n", err.msg);
    return 1;
}
