/* bench_export_wh: writes one linear's weight W (rows, cols) and its layer-input
 * Hessian H (cols, cols) = 2/N sum x xᵀ over calibration tokens to a safetensors file
 * with tensors "W" and "H", for `lowbit qmatrix --weight F:W --hessian F:H`.
 *
 *   bench_export_wh --model DIR --tokens FILE --layer L --linear q|k|v|o|gate|up|down
 *                   --out FILE [--seq-len 256] [--nseq N]                            */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_calib.h"
#include "lb_safetensors.h"
#include "lb_tokens.h"

int main(int argc, char **argv)
{
    const char *model = NULL, *tokfile = NULL, *out = NULL, *lin = NULL;
    long layer = -1, seq_len = 256, nseq = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--tokens")) tokfile = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--linear")) lin = v;
        else if (!strcmp(a, "--layer")) layer = atol(v);
        else if (!strcmp(a, "--seq-len")) seq_len = atol(v);
        else if (!strcmp(a, "--nseq")) nseq = atol(v);
        else {
            fprintf(stderr, "bench_export_wh: unknown option %s\n", a);
            return 2;
        }
    }
    static const char *names[] = {"q", "k", "v", "o", "gate", "up", "down"};
    int which = -1;
    for (int k = 0; lin && k < 7; k++)
        if (!strcmp(lin, names[k]))
            which = k;
    if (!model || !tokfile || !out || which < 0 || layer < 0 || seq_len < 1 || nseq < 0) {
        fprintf(stderr, "usage: bench_export_wh --model DIR --tokens FILE --layer L "
                        "--linear q|k|v|o|gate|up|down --out FILE [--seq-len S] [--nseq N]\n");
        return 2;
    }
    lb_err err = {0};
    lb_model *m = NULL;
    lb_hessian *h = NULL;
    lb_block_weights bw = {0};
    lb_st_writer *w = NULL;
    uint32_t *tok = NULL;
    float *H = NULL;
    int64_t ntok = 0, rows, cols;
    int rc = lb_model_open(&m, model, &err);
    if (!rc)
        rc = lb_tokens_load(tokfile, &tok, &ntok, &err);
    if (rc)
        goto done;
    int64_t avail = ntok / seq_len;
    if (nseq == 0 || nseq > avail)
        nseq = avail;
    const lb_config *cfg = lb_model_config(m);
    lb_linear_shape(cfg, (lb_linear)which, &rows, &cols);
    int64_t shw[2] = {rows, cols}, shh[2] = {cols, cols};
    char buf[32], src[256];
    if ((rc = lb_tokens_check_vocab(tok, nseq * seq_len, cfg->vocab_size, tokfile, &err)) ||
        (rc = lb_hessian_new(cols, &h, &err)) ||
        (rc = lb_calib_hessian(m, tok, nseq, seq_len, (int32_t)layer, (lb_linear)which, 8, h,
                               &err)) ||
        (rc = lb_model_load_block(m, (int32_t)layer, &bw, &err)))
        goto done;
    H = malloc((size_t)(cols * cols) * sizeof *H);
    if (!H) {
        rc = lb_err_set(&err, LB_ENOMEM, "out of memory");
        goto done;
    }
    snprintf(buf, sizeof buf, "%lld", (long long)lb_hessian_tokens(h));
    lb_model_linear_tensor_name(src, sizeof src, (int32_t)layer, (lb_linear)which, &err);
    if ((rc = lb_hessian_get(h, H, &err)) || (rc = lb_st_writer_new(&w, out, &err)) ||
        (rc = lb_st_writer_add_tensor(w, "W", LB_DTYPE_F32, 2, shw, &err)) ||
        (rc = lb_st_writer_add_tensor(w, "H", LB_DTYPE_F32, 2, shh, &err)) ||
        (rc = lb_st_writer_set_metadata(w, "source", src, &err)) ||
        (rc = lb_st_writer_set_metadata(w, "tokens", buf, &err)) ||
        (rc = lb_st_writer_set_metadata(w, "hessian_scaling", "2/N sum x x^T", &err)) ||
        (rc = lb_st_writer_write_f32(w, "W", lb_block_linear(&bw, (lb_linear)which),
                                     (size_t)(rows * cols), &err)) ||
        (rc = lb_st_writer_write_f32(w, "H", H, (size_t)(cols * cols), &err)) ||
        (rc = lb_st_writer_finish(w, &err)))
        goto done;
    printf("{\"out\":\"%s\",\"source\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"tokens\":%s}\n", out,
           src, (long long)rows, (long long)cols, buf);
done:
    if (rc)
        fprintf(stderr, "bench_export_wh: %s\n", err.msg);
    lb_st_writer_free(&w);
    lb_block_weights_free(&bw);
    lb_hessian_free(&h);
    lb_model_free(&m);
    free(tok);
    free(H);
    return rc ? 1 : 0;
}
