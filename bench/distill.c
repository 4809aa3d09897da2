/* bench_distill: whole-model quantization of a (small) model block by block through
 * the library, with and without scale distillation, and KL / ppl against the fp model.
 *
 * Usage: bench_distill MODEL EVAL_TOKENS STEPS LR CALIB_TOKENS...
 * For each calibration file and each method configuration (QBB N=2, PB-LLM 10%,
 * CLAQ 2.1, GPTQ 2-bit, and GPTQ 4-bit and RTN 8-bit as references; env LB_BENCH_ONLY=comma-separated
 * substrings of labels restricts the set) it runs the GPTQ sequential protocol twice (distill off / on):
 * per block, Hessians from the inputs that passed through the quantized earlier
 * blocks, quantize the 7 linears, [distill: student on the quantized-path input,
 * teacher = fp block on the fp input], propagate with the dequantized weights.
 * Eval: non-overlapping windows of 256 tokens, KL(fp || quant) and ppl.
 * Env LB_BENCH_FINAL=STEPS adds the final stage (all blocks against the fp logits, KL on
 * the calibration tokens) after the block-wise distillation.
 * Prints one JSON line per run. Keeps every block in RAM (bench for small models). */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_distill.h"
#include "lb_eval.h"
#include "lb_forward.h"
#include "lb_hessian.h"
#include "lb_model.h"
#include "lb_quant.h"
#include "lb_tokens.h"
#include "lb_time.h"

#define CTX 256

#define CHECK(x)                                                                            \
    do {                                                                                     \
        if ((x) != 0) {                                                                      \
            fprintf(stderr, "bench_distill: %s (line %d)\n", err.msg, __LINE__);             \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

typedef struct {
    const char *label, *method;
    double bits;
    int32_t bases;
    double salient_frac;
} qconf;

static float *xalloc(int64_t n)
{
    float *p = malloc((size_t)n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_distill: out of memory\n");
        exit(1);
    }
    return p;
}

/* logits of all eval windows through blocks (n_layers) and head */
static void model_logits(const lb_config *cfg, const lb_head_weights *head,
                         const lb_block_weights *blocks, const uint32_t *tok, int64_t nwin,
                         float *logits)
{
    lb_err err = {0};
    lb_fwd_workspace *ws = NULL;
    CHECK(lb_fwd_workspace_new(cfg, nwin * CTX, CTX, &ws, &err));
    float *x = xalloc(nwin * CTX * cfg->hidden_size);
    CHECK(lb_fwd_embed(head, tok, nwin * CTX, x, &err));
    for (int32_t l = 0; l < cfg->num_hidden_layers; l++)
        CHECK(lb_fwd_block(cfg, &blocks[l], x, nwin, CTX, ws, NULL, &err));
    lb_fwd_logits(cfg, head, x, nwin * CTX, logits);
    free(x);
    lb_fwd_workspace_free(&ws);
}

/* only: comma-separated substrings; true when one of them is in label */
static bool label_selected(const char *only, const char *label)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", only);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (strstr(label, tok))
            return true;
    return false;
}

/* What every run shares: the model, its fp blocks, the eval tokens and fp logits. */
typedef struct {
    const lb_config *cfg;
    lb_head_weights head;
    lb_block_weights *fp, *qb;
    lb_qresult (*allres)[LB_LINEAR_COUNT];
    lb_qpacked *(*allpk)[LB_LINEAR_COUNT];
    uint32_t *ev;
    int64_t nwin;
    float *ref, *lg;
    lb_distill_opts dopt;
    int final_steps;
} bench;

/* One run: configuration c, distill off / on, on the calibration tokens cal
 * (nseq windows, file name calib). Prints its JSON line. */
static void run_conf(bench *b, const qconf *c, int distill, const char *calib,
                     const uint32_t *cal, int64_t nseq)
{
    lb_err err = {0};
    const lb_config *cfg = b->cfg;
    lb_head_weights head = b->head; /* a shallow copy: main frees it */
    lb_block_weights *fp = b->fp, *qb = b->qb;
    lb_qresult(*allres)[LB_LINEAR_COUNT] = b->allres;
    lb_qpacked *(*allpk)[LB_LINEAR_COUNT] = b->allpk;
    const uint32_t *ev = b->ev;
    const int64_t nwin = b->nwin, ntok = nseq * CTX;
    float *ref = b->ref, *lg = b->lg;
    const lb_distill_opts dopt = b->dopt;
    const int final_steps = b->final_steps, nl = cfg->num_hidden_layers;
    const int64_t dim = cfg->hidden_size, vocab = cfg->vocab_size;
    lb_qopts qo;
    lb_qopts_init(&qo);
    qo.bits = c->bits;
    if (c->bases)
        qo.bases = c->bases;
    if (c->salient_frac > 0)
        qo.salient_frac = c->salient_frac;
    const lb_qmethod *meth = lb_qmethod_find(c->method);
    float *xf = xalloc(ntok * dim), *xq = xalloc(ntok * dim), *yt = xalloc(ntok * dim);
    CHECK(lb_fwd_embed(&head, cal, ntok, xf, &err));
    memcpy(xq, xf, (size_t)(ntok * dim) * sizeof(float));
    lb_fwd_workspace *ws = NULL;
    CHECK(lb_fwd_workspace_new(cfg, ntok, CTX, &ws, &err));
    const int64_t widths[4] = {dim, (int64_t)cfg->num_attention_heads * cfg->head_dim,
                               dim, cfg->intermediate_size};
    float *cap[4];
    for (int i = 0; i < 4; i++)
        cap[i] = xalloc(ntok * widths[i]);
    uint64_t bits = 0, nweights = 0;
    double t_quant = 0, t_dist = 0, dl_before = 0, dl_after = 0;
    const double t0 = lb_now_s();
    for (int32_t l = 0; l < nl; l++) {
        // (1) Hessians from quantized-path inputs through the fp block
        lb_fwd_capture capture = {cap[0], cap[1], cap[2], cap[3]};
        memcpy(yt, xq, (size_t)(ntok * dim) * sizeof(float));
        CHECK(lb_fwd_block(cfg, &fp[l], yt, nseq, CTX, ws, &capture, &err));
        float *H[4];
        for (int i = 0; i < 4; i++) {
            lb_hessian *h = NULL;
            CHECK(lb_hessian_new(widths[i], &h, &err));
            CHECK(lb_hessian_add_chunk(h, cap[i], ntok, widths[i], &err));
            H[i] = xalloc(widths[i] * widths[i]);
            CHECK(lb_hessian_get(h, H[i], &err));
            lb_hessian_free(&h);
        }
        // (2) quantize
        const double tq = lb_now_s();
        lb_qresult *res = allres[l];
        lb_qpacked **packed = allpk[l];
        for (int li = 0; li < LB_LINEAR_COUNT; li++) {
            int64_t r, cc;
            lb_linear_shape(cfg, (lb_linear)li, &r, &cc);
            const int hi = li <= LB_LINEAR_V ? 0 : li == LB_LINEAR_O ? 1
                                            : li == LB_LINEAR_DOWN ? 3 : 2;
            CHECK(meth->quantize(lb_block_linear(&fp[l], (lb_linear)li), r, cc, H[hi],
                                 &qo, &res[li], &err));
            packed[li] = &res[li].packed;
        }
        t_quant += lb_now_s() - tq;
        // (3) teacher: fp block on the fp stream
        memcpy(yt, xf, (size_t)(ntok * dim) * sizeof(float));
        CHECK(lb_fwd_block(cfg, &fp[l], yt, nseq, CTX, ws, NULL, &err));
        if (distill) {
            lb_distill_stats st;
            CHECK(lb_distill_block(cfg, &fp[l], packed, xq, yt, nseq, CTX, &dopt, &st,
                                   &err));
            t_dist += st.seconds;
            dl_before += st.loss_before;
            dl_after += st.loss_after;
            fprintf(stderr, "  %s block %d: mse %.5g -> %.5g%s, %.2f s\n", c->label,
                    l, st.loss_before, st.loss_after,
                    st.kept_original ? " (kept original)" : "", st.seconds);
        }
        // (4) propagate with the dequantized weights
        lb_block_weights_free(&qb[l]);
        CHECK(lb_block_weights_alloc(cfg, &qb[l], &err));
        memcpy(qb[l].attn_norm, fp[l].attn_norm, (size_t)dim * sizeof(float));
        memcpy(qb[l].ffn_norm, fp[l].ffn_norm, (size_t)dim * sizeof(float));
        for (int li = 0; li < LB_LINEAR_COUNT; li++) {
            CHECK(meth->dequantize(packed[li], lb_block_linear(&qb[l], (lb_linear)li),
                                   &err));
            bits += lb_qpacked_bits(packed[li]);
            nweights += (uint64_t)(packed[li]->rows * packed[li]->cols);
        }
        CHECK(lb_fwd_block(cfg, &qb[l], xq, nseq, CTX, ws, NULL, &err));
        memcpy(xf, yt, (size_t)(ntok * dim) * sizeof(float));
        for (int i = 0; i < 4; i++)
            free(H[i]);
    }
    double final_before = 0, final_after = 0, final_s = 0;
    if (distill && final_steps > 0) {
        lb_distill_opts fo = dopt;
        fo.steps = final_steps;
        lb_distill_stats st;
        CHECK(lb_distill_model(cfg, &head, fp, allpk, cal, nseq, CTX, &fo, &st, &err));
        final_before = st.loss_before;
        final_after = st.loss_after;
        final_s = st.seconds;
        fprintf(stderr, "  %s final stage: KL %.5g -> %.5g%s, %.2f s\n", c->label,
                st.loss_before, st.loss_after,
                st.kept_original ? " (kept original)" : "", st.seconds);
        for (int32_t l = 0; l < nl; l++)
            for (int li = 0; li < LB_LINEAR_COUNT; li++)
                CHECK(meth->dequantize(allpk[l][li],
                                       lb_block_linear(&qb[l], (lb_linear)li), &err));
    }
    for (int32_t l = 0; l < nl; l++)
        for (int li = 0; li < LB_LINEAR_COUNT; li++)
            lb_qresult_free(&allres[l][li]);
    const double total = lb_now_s() - t0;
    model_logits(cfg, &head, qb, ev, nwin, lg);
    lb_eval_acc acc = {0};
    for (int64_t w = 0; w < nwin; w++)
        CHECK(lb_eval_acc_window(&acc, lg + w * CTX * vocab, ref + w * CTX * vocab,
                                 ev + w * CTX, CTX, vocab, &err));
    lb_eval_result er;
    lb_eval_acc_result(&acc, &er);
    printf("{\"bench\":\"distill\",\"calib\":\"%s\",\"calib_seqs\":%lld,\"method\":\"%s\","
           "\"label\":\"%s\",\"distill_steps\":%d,\"lr\":%g,\"bpw\":%.4f,\"kl\":%.5f,"
           "\"ppl\":%.4f,\"top1\":%.4f,\"block_mse_before\":%.5g,\"block_mse_after\":%.5g,"
           "\"quant_s\":%.2f,\"distill_s_per_block\":%.3f,\"final_steps\":%d,"
           "\"final_kl_calib_before\":%.5g,\"final_kl_calib_after\":%.5g,\"final_s\":%.2f,"
           "\"total_s\":%.2f}\n",
           calib, (long long)nseq, c->method, c->label, distill ? dopt.steps : 0,
           dopt.lr, (double)bits / (double)nweights, er.kl, er.ppl, er.top1,
           dl_before / nl, dl_after / nl, t_quant, t_dist / nl,
           distill ? final_steps : 0, final_before, final_after, final_s, total);
    fflush(stdout);
    for (int i = 0; i < 4; i++)
        free(cap[i]);
    lb_fwd_workspace_free(&ws);
    free(xf);
    free(xq);
    free(yt);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: bench_distill MODEL EVAL_TOKENS STEPS LR CALIB_TOKENS...\n");
        return 2;
    }
    lb_err err = {0};
    lb_model *m = NULL;
    CHECK(lb_model_open(&m, argv[1], &err));
    const lb_config *cfg = lb_model_config(m);
    const int32_t nl = cfg->num_hidden_layers;
    const int64_t vocab = cfg->vocab_size;
    lb_head_weights head = {0};
    CHECK(lb_model_load_head(m, &head, &err));
    lb_block_weights *fp = calloc((size_t)nl, sizeof *fp), *qb = calloc((size_t)nl, sizeof *qb);
    for (int32_t l = 0; l < nl; l++)
        CHECK(lb_model_load_block(m, l, &fp[l], &err));
    uint32_t *ev = NULL;
    int64_t nev = 0;
    CHECK(lb_tokens_load(argv[2], &ev, &nev, &err));
    const int64_t nwin = nev / CTX;
    float *ref = xalloc(nwin * CTX * vocab), *lg = xalloc(nwin * CTX * vocab);
    model_logits(cfg, &head, fp, ev, nwin, ref);
    lb_distill_opts dopt;
    lb_distill_opts_init(&dopt);
    dopt.steps = atoi(argv[3]);
    dopt.lr = atof(argv[4]);
    const qconf confs[] = {
        {"QBB N=2", "qbb", 2, 2, 0},
        {"PB-LLM 10%", "pbllm", 1, 0, 0.1},
        {"CLAQ 2.1", "claq", 2.1, 0, 0},
        {"GPTQ 2-bit", "gptq", 2, 0, 0},
        {"GPTQ 4-bit", "gptq", 4, 0, 0}, /* references for scale */
        {"RTN 4-bit", "rtn", 4, 0, 0},
        {"RTN 8-bit", "rtn", 8, 0, 0},
    };
    const char *fs_env = getenv("LB_BENCH_FINAL"); /* final-stage steps after block distill */
    const int final_steps = fs_env ? atoi(fs_env) : 0;
    lb_qresult(*allres)[LB_LINEAR_COUNT] = calloc((size_t)nl, sizeof *allres);
    lb_qpacked *(*allpk)[LB_LINEAR_COUNT] = calloc((size_t)nl, sizeof *allpk);
    if (!allres || !allpk)
        return 1;
    for (int32_t l = 0; l < nl; l++)
        for (int li = 0; li < LB_LINEAR_COUNT; li++)
            allpk[l][li] = &allres[l][li].packed;
    bench b = {cfg, head, fp, qb, allres, allpk, ev, nwin, ref, lg, dopt, final_steps};
    const char *only = getenv("LB_BENCH_ONLY"); /* substring of a label, e.g. "4-bit" */
    for (int ci = 5; ci < argc; ci++) {
        uint32_t *cal = NULL;
        int64_t ncal = 0;
        CHECK(lb_tokens_load(argv[ci], &cal, &ncal, &err));
        CHECK(lb_tokens_check_vocab(cal, ncal, vocab, argv[ci], &err));
        const int64_t nseq = ncal / CTX;
        for (size_t k = 0; k < sizeof confs / sizeof confs[0]; k++)
            for (int distill = 0; distill < 2; distill++) {
                const qconf *c = &confs[k];
                if (only && !label_selected(only, c->label))
                    continue;
                run_conf(&b, c, distill, argv[ci], cal, nseq);
            }
        free(cal);
    }
    /* fp reference line: ppl of the fp model */
    lb_eval_acc acc = {0};
    for (int64_t w = 0; w < nwin; w++)
        CHECK(lb_eval_acc_window(&acc, ref + w * CTX * vocab, NULL, ev + w * CTX, CTX, vocab, &err));
    lb_eval_result er;
    lb_eval_acc_result(&acc, &er);
    printf("{\"bench\":\"distill\",\"label\":\"fp32\",\"ppl\":%.4f}\n", er.ppl);
    for (int32_t l = 0; l < nl; l++) {
        lb_block_weights_free(&fp[l]);
        lb_block_weights_free(&qb[l]);
    }
    free(fp);
    free(qb);
    free(allres);
    free(allpk);
    free(ref);
    free(lg);
    free(ev);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    return 0;
}
