/* bench_qbin_layers: BiLLM and QBB against GPTQ/RTN on the real linears of a model, with
 * Hessians from the fp32 forward on calibration tokens (layer-wise: every layer sees the
 * full-precision inputs). One JSON line per (layer, linear, method):
 * bpw, relative H-weighted error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), seconds.
 * Usage: bench_qbin_layers MODEL_DIR TOKENS.u32 [n_seq [seq_len]]  (default 16 x 256) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_forward.h"
#include "lb_hessian.h"
#include "lb_model.h"
#include "lb_quant.h"
#include "lb_tokens.h"
#include "lb_time.h"

typedef struct {
    const char *method, *label;
    double bits;
    int32_t bases;
    bool hw;
} variant;

static const variant k_variants[] = {
    {"rtn", "bits=1", 1, 0, false},      {"gptq", "bits=2", 2, 0, false},
    {"gptq", "bits=3", 3, 0, false},     {"billm", "block=128", 4, 0, false},
    {"qbb", "N=2", 4, 2, false},         {"qbb", "N=3", 4, 3, false},
    {"qbb", "N=3 hessian_weighted", 4, 3, true},
};

static int run_linear(int32_t layer, lb_linear which, const float *W, int64_t rows,
                      int64_t cols, const float *H)
{
    for (size_t v = 0; v < sizeof(k_variants) / sizeof(k_variants[0]); v++) {
        const variant *x = &k_variants[v];
        lb_qopts o;
        lb_qopts_init(&o);
        o.bits = x->bits;
        if (x->bases)
            o.bases = x->bases;
        o.hessian_weighted = x->hw;
        lb_qresult res;
        lb_err e;
        double t0 = lb_now_s();
        if (lb_qmethod_find(x->method)->quantize(W, rows, cols, H, &o, &res, &e)) {
            fprintf(stderr, "bench_qbin_layers: %s: %s\n", x->method, e.msg);
            return 1;
        }
        double dt = lb_now_s() - t0, err = 0.0, ref = 0.0;
        if (lb_quant_error(W, res.W_hat, rows, cols, H, &err, &ref, &e)) {
            fprintf(stderr, "bench_qbin_layers: %s\n", e.msg);
            lb_qresult_free(&res);
            return 1;
        }
        json_t *j = json_pack("{s:s, s:i, s:s, s:s, s:s, s:I, s:I, s:f, s:f, s:f}", "bench",
                              "qbin_layers", "layer", (int)layer, "linear", lb_linear_name(which),
                              "method", x->method, "config", x->label, "rows", (json_int_t)rows,
                              "cols", (json_int_t)cols, "bpw", res.bpw, "rel_h_error",
                              ref > 0.0 ? err / ref : 0.0, "seconds", dt);
        char *s = json_dumps(j, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        json_decref(j);
        lb_qresult_free(&res);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_qbin_layers MODEL_DIR TOKENS.u32 [n_seq [seq_len]]\n");
        return 2;
    }
    int64_t n_seq = argc > 3 ? atoll(argv[3]) : 16, seq_len = argc > 4 ? atoll(argv[4]) : 256;
    lb_err e;
    lb_model *m = NULL;
    lb_head_weights head = {0};
    lb_block_weights blk = {0};
    lb_fwd_workspace *ws = NULL;
    uint32_t *tok = NULL;
    int64_t ntok_file = 0;
    float *x = NULL, *cap_buf[4] = {NULL, NULL, NULL, NULL};
    int rc = 1;
    if (lb_model_open(&m, argv[1], &e) || lb_model_load_head(m, &head, &e) ||
        lb_tokens_load(argv[2], &tok, &ntok_file, &e))
        goto fail;
    const lb_config *cfg = lb_model_config(m);
    int64_t ntok = n_seq * seq_len;
    if (ntok <= 0 || ntok > ntok_file) {
        fprintf(stderr, "bench_qbin_layers: need %lld tokens, file has %lld\n",
                (long long)ntok, (long long)ntok_file);
        goto done;
    }
    int64_t dim = cfg->hidden_size, inter = cfg->intermediate_size;
    int64_t qdim = lb_config_q_dim(cfg);
    x = malloc(sizeof(float) * (size_t)(ntok * dim));
    cap_buf[0] = malloc(sizeof(float) * (size_t)(ntok * dim));
    cap_buf[1] = malloc(sizeof(float) * (size_t)(ntok * qdim));
    cap_buf[2] = malloc(sizeof(float) * (size_t)(ntok * dim));
    cap_buf[3] = malloc(sizeof(float) * (size_t)(ntok * inter));
    if (!x || !cap_buf[0] || !cap_buf[1] || !cap_buf[2] || !cap_buf[3])
        goto done;
    if (lb_fwd_workspace_new(cfg, ntok, seq_len, &ws, &e) ||
        lb_fwd_embed(&head, tok, ntok, x, &e))
        goto fail;
    lb_fwd_capture cap = {cap_buf[0], cap_buf[1], cap_buf[2], cap_buf[3]};
    for (int32_t layer = 0; layer < cfg->num_hidden_layers; layer++) {
        if (lb_model_load_block(m, layer, &blk, &e) ||
            lb_fwd_block(cfg, &blk, x, n_seq, seq_len, ws, &cap, &e))
            goto fail;
        for (int w = 0; w < LB_LINEAR_COUNT; w++) {
            lb_linear which = (lb_linear)w;
            int64_t rows, cols;
            lb_linear_shape(cfg, which, &rows, &cols);
            const float *X = which <= LB_LINEAR_V ? cap_buf[0]
                             : which == LB_LINEAR_O ? cap_buf[1]
                             : which == LB_LINEAR_DOWN ? cap_buf[3] : cap_buf[2];
            lb_hessian *h = NULL;
            float *H = malloc(sizeof(float) * (size_t)(cols * cols));
            if (!H || lb_hessian_new(cols, &h, &e) || lb_hessian_add_chunk(h, X, ntok, cols, &e) ||
                lb_hessian_get(h, H, &e)) {
                lb_hessian_free(&h);
                free(H);
                goto fail;
            }
            lb_hessian_free(&h);
            int r = run_linear(layer, which, lb_block_linear(&blk, which), rows, cols, H);
            free(H);
            if (r)
                goto done;
        }
        lb_block_weights_free(&blk);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "bench_qbin_layers: %s\n", e.msg);
done:
    for (int i = 0; i < 4; i++)
        free(cap_buf[i]);
    free(x);
    free(tok);
    lb_fwd_workspace_free(&ws);
    lb_block_weights_free(&blk);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    return rc;
}
