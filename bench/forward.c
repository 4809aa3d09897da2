/* bench_forward: speed of the fp32 forward pass on a LLaMA-7B-shaped block,
 * against plain lb_sgemm on the same shapes measured in the same run.
 *
 *   bench_forward [--model DIR] [--preset NAME] [--layers N] [--seqs N]
 *                 [--seq-len N] [--repeats N] [--threads N]
 *
 * Without --model it synthesizes a model (lowbit synth, bf16) into a temp dir
 * and removes it afterwards. All blocks are converted to f32 once, up front;
 * the timed part is lb_fwd_embed + lb_fwd_block per layer + lb_fwd_logits, with
 * a warm-up (embed + block 0) and --repeats timed runs (median reported).
 *
 * Projection timing basis: lb_fwd_block exposes no per-phase timing, so
 * proj_gflops = projection flops / WHOLE-block time (attention, norms, RoPE
 * and SwiGLU included): a lower bound on the projections' own rate. The line
 * also reports the attention flops (the causal useful work: s (s + 1) / 2
 * (query, key) pairs per head) and total_gflops = (layers * (projection +
 * attention) + lm_head flops) / whole forward time. sgemm_gflops: each distinct projection shape run as ONE lb_sgemm call
 * (x (ntok, k) @ W (n, k)^T, OpenBLAS threads = --threads), weighted by the
 * seven projections of a block. */
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lb_blas.h"
#include "lb_forward.h"
#include "lb_model.h"
#include "lb_synth.h"
#include "lb_time.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void emit(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s)
        printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(j);
}

static void die(const char *what, const lb_err *err)
{
    fprintf(stderr, "bench_forward: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

/* Median seconds of `reps` runs of y (m, n) = x (m, k) @ W (n, k)^T (after one
 * untimed run when warm). */
static double time_sgemm(const float *x, const float *w, float *y, int64_t m, int64_t n, int64_t k,
                         int reps, bool warm)
{
    double t[16];
    if (warm)
        lb_sgemm(false, true, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
    for (int r = 0; r < reps; r++) {
        double t0 = lb_now_s();
        lb_sgemm(false, true, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
        t[r] = lb_now_s() - t0;
    }
    return median(t, reps);
}

/* Activation statistics of block 0's input_layernorm output (from the warm-up):
 * per-channel mean |act| relative to the median channel; for a synth model
 * (found by its metadata) also the ratio of its outlier channels. */
static json_t *outlier_stats(const lb_model *m, const float *a, int64_t ntok, int64_t dim)
{
    double *mean = calloc((size_t)dim, sizeof *mean),
           *sorted = malloc((size_t)dim * sizeof *sorted);
    if (!mean || !sorted)
        die("out of memory for statistics", NULL);
    for (int64_t t = 0; t < ntok; t++)
        for (int64_t c = 0; c < dim; c++)
            mean[c] += fabs((double)a[t * dim + c]);
    for (int64_t c = 0; c < dim; c++)
        sorted[c] = mean[c] /= (double)ntok;
    qsort(sorted, (size_t)dim, sizeof *sorted, cmp_double);
    const double med = sorted[dim / 2];
    json_t *j = json_pack("{s:f, s:f}", "top_channel_ratio", sorted[dim - 1] / med,
                          "p99_channel_ratio", sorted[(dim * 99) / 100] / med);
    const lb_st *st = lb_model_tensors(m);
    const char *gen = lb_st_metadata_get(st, "generator");
    const char *pre = lb_st_metadata_get(st, "preset"), *seed = lb_st_metadata_get(st, "seed");
    lb_synth *s = NULL;
    if (gen && strstr(gen, "lowbit synth") && pre && seed &&
        !lb_synth_new(lb_synth_preset_find(pre), 1, strtoull(seed, NULL, 10), &s, NULL)) {
        int64_t n = 0;
        const int64_t *o = lb_synth_outlier_channels(s, &n);
        double lo = INFINITY, hi = 0;
        for (int64_t k = 0; k < n; k++) {
            lo = fmin(lo, mean[o[k]] / med);
            hi = fmax(hi, mean[o[k]] / med);
        }
        json_object_set_new(j, "synth_outlier_channels", json_integer((json_int_t)n));
        json_object_set_new(j, "synth_outlier_ratio_min", json_real(lo));
        json_object_set_new(j, "synth_outlier_ratio_max", json_real(hi));
        lb_synth_free(&s);
    }
    free(mean);
    free(sorted);
    return j;
}

/* Options (the usage line of --help) into *a. Returns -1 to go on, else main's exit
 * status (0 after --help, 2 for a bad option). */
typedef struct {
    const char *model_dir, *preset;
    int64_t layers, n_seq, seq_len;
    int repeats, threads;
} fwd_args;

static int parse_args(int argc, char **argv, fwd_args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bench_forward [--model DIR] [--preset NAME] [--layers N] [--seqs N]\n"
                   "                     [--seq-len N] [--repeats N] [--threads N]\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr,
                    "bench_forward: %s needs a value (see the comment at the top of "
                    "bench/forward.c)\n",
                    argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--model"))
            a->model_dir = v;
        else if (!strcmp(argv[i], "--preset"))
            a->preset = v;
        else if (!strcmp(argv[i], "--layers"))
            a->layers = atoll(v);
        else if (!strcmp(argv[i], "--seqs"))
            a->n_seq = atoll(v);
        else if (!strcmp(argv[i], "--seq-len"))
            a->seq_len = atoll(v);
        else if (!strcmp(argv[i], "--repeats"))
            a->repeats = atoi(v);
        else if (!strcmp(argv[i], "--threads"))
            a->threads = atoi(v);
        else {
            fprintf(stderr, "bench_forward: unknown option %s\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (a->layers < 1 || a->n_seq < 1 || a->seq_len < 1 || a->repeats < 1 || a->repeats > 16 ||
        a->threads < 1) {
        fprintf(stderr, "bench_forward: --layers/--seqs/--seq-len >= 1, --repeats 1..16, "
                        "--threads >= 1\n");
        return 2;
    }
    return -1;
}

/* No --model: a synthetic `preset` model of `layers` layers in a new temp dir tmpl
 * (size bytes). OUT: *synth_s. Returns 0 or main's exit status. */
static int synth_model(const char *preset, int64_t layers, char *tmpl, size_t size,
                       double *synth_s)
{
    lb_err err = {0};
    const lb_synth_preset *p = lb_synth_preset_find(preset);
    if (!p) {
        fprintf(stderr, "bench_forward: unknown preset %s\n", preset);
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpl, size, "%s/bench-forward-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpl)) {
        perror("bench_forward: mkdtemp");
        return 1;
    }
    lb_synth *s = NULL;
    lb_synth_write_opts o = {.dtype = LB_DTYPE_BF16, .force = true};
    double t0 = lb_now_s();
    if (lb_synth_new(p, layers, 1, &s, &err) || lb_synth_write(s, tmpl, &o, NULL, &err))
        die("synth", &err);
    lb_synth_free(&s);
    *synth_s = lb_now_s() - t0;
    return 0;
}

/* Removes the synthetic model's temp dir tmpl. */
static void remove_synth(const char *tmpl)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", tmpl);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", tmpl);
    unlink(p);
    rmdir(tmpl);
}

/* The same projection shapes as single lb_sgemm calls on all threads: OUT t[5] =
 * seconds of q/o, k/v, gate/up, down and lm_head (ntok rows). */
static void sgemm_shapes(const lb_config *cfg, const lb_block_weights *w0, const float *lm_head,
                         int64_t ntok, int threads, double t[5])
{
    const int64_t dim = cfg->hidden_size, inter = cfg->intermediate_size;
    const int64_t q_dim = lb_config_q_dim(cfg), kv_dim = lb_config_kv_dim(cfg);
    const int64_t vocab = cfg->vocab_size;
    const int blas_saved = lb_blas_get_threads();
    lb_blas_set_threads(threads);
    float *xin = malloc((size_t)(ntok * inter) * sizeof *xin);
    float *y = malloc((size_t)(ntok * (vocab > inter ? vocab : inter)) * sizeof *y);
    if (!xin || !y)
        die("out of memory for the sgemm reference", NULL);
    for (int64_t i = 0; i < ntok * inter; i++)
        xin[i] = (float)((int64_t)(i * 2654435761u % 1000u) - 500) * 1e-3f;
    const int sg_reps = 1;
    t[0] = time_sgemm(xin, w0->wq, y, ntok, q_dim, dim, sg_reps, true);
    t[1] = kv_dim == q_dim ? t[0] : time_sgemm(xin, w0->wk, y, ntok, kv_dim, dim, sg_reps, false);
    t[2] = time_sgemm(xin, w0->w_gate, y, ntok, inter, dim, sg_reps, false);
    t[3] = time_sgemm(xin, w0->w_down, y, ntok, dim, inter, sg_reps, false);
    t[4] = time_sgemm(xin, lm_head, y, ntok, vocab, dim, sg_reps, false);
    lb_blas_set_threads(blas_saved);
    free(xin);
    free(y);
}

int main(int argc, char **argv)
{
    fwd_args opt = {NULL, "llama-7b", 2, 1, 2048, 2, omp_get_max_threads()};
    int prc = parse_args(argc, argv, &opt);
    if (prc >= 0)
        return prc;
    const char *model_dir = opt.model_dir, *preset = opt.preset;
    const int64_t n_seq = opt.n_seq, seq_len = opt.seq_len;
    const int repeats = opt.repeats, threads = opt.threads;
    omp_set_num_threads(threads);
    lb_err err = {0};
    char tmpl[4096] = "";
    double synth_s = 0;
    if (!model_dir) {
        if ((prc = synth_model(preset, opt.layers, tmpl, sizeof tmpl, &synth_s)))
            return prc;
        model_dir = tmpl;
    }

    lb_model *m = NULL;
    if (lb_model_open(&m, model_dir, &err))
        die("open", &err);
    const lb_config *cfg = lb_model_config(m);
    const int64_t L = cfg->num_hidden_layers, ntok = n_seq * seq_len;
    const int64_t dim = cfg->hidden_size, hd = cfg->head_dim, inter = cfg->intermediate_size;
    const int64_t q_dim = lb_config_q_dim(cfg), kv_dim = lb_config_kv_dim(cfg);
    const int64_t vocab = cfg->vocab_size;
    double t0 = lb_now_s();
    lb_head_weights head = {0};
    lb_block_weights *blocks = calloc((size_t)L, sizeof *blocks);
    if (!blocks)
        die("alloc", NULL);
    if (lb_model_load_head(m, &head, &err))
        die("load head", &err);
    for (int32_t l = 0; l < L; l++)
        if (lb_model_load_block(m, l, &blocks[l], &err))
            die("load block", &err);
    const double load_s = lb_now_s() - t0;

    lb_fwd_workspace *ws = NULL;
    if (lb_fwd_workspace_new(cfg, ntok, seq_len, &ws, &err))
        die("workspace", &err);
    uint32_t *tok = malloc((size_t)ntok * sizeof *tok);
    float *x = malloc((size_t)(ntok * dim) * sizeof *x);
    float *logits = malloc((size_t)(ntok * vocab) * sizeof *logits);
    if (!tok || !x || !logits)
        die("out of memory for activations", NULL);
    uint64_t rng = 12345;
    for (int64_t i = 0; i < ntok; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (uint32_t)((rng >> 33) % (uint64_t)vocab);
    }

    /* Warm-up: embed + block 0 (pages in the workspace, starts the thread pool);
     * the logits buffer is touched here so its page faults stay out of the timing.
     * A full extra forward would cost ~a third of the run on a 2-core machine. */
    memset(logits, 0, (size_t)(ntok * vocab) * sizeof *logits);
    float *attn_in = malloc((size_t)(ntok * dim) * sizeof *attn_in);
    if (!attn_in)
        die("out of memory for the capture", NULL);
    lb_fwd_capture cap = {.attn_in = attn_in};
    if (lb_fwd_embed(&head, tok, ntok, x, &err) ||
        lb_fwd_block(cfg, &blocks[0], x, n_seq, seq_len, ws, &cap, &err))
        die("warm-up", &err);
    json_t *stats = outlier_stats(m, attn_in, ntok, dim);
    free(attn_in);
    double blk[16], lmh[16], tot[16];
    for (int r = 0; r < repeats; r++) {
        double a = lb_now_s();
        if (lb_fwd_embed(&head, tok, ntok, x, &err))
            die("embed", &err);
        double b = lb_now_s();
        for (int32_t l = 0; l < L; l++)
            if (lb_fwd_block(cfg, &blocks[l], x, n_seq, seq_len, ws, NULL, &err))
                die("block", &err);
        double c = lb_now_s();
        lb_fwd_logits(cfg, &head, x, ntok, logits);
        double d = lb_now_s();
        blk[r] = c - b;
        lmh[r] = d - c;
        tot[r] = d - a;
    }
    const double block_s = median(blk, repeats), lm_s = median(lmh, repeats);
    const double total_s = median(tot, repeats);

    double ts[5];
    sgemm_shapes(cfg, &blocks[0], head.lm_head, ntok, threads, ts);
    const double t_qo = ts[0], t_kv = ts[1], t_gu = ts[2], t_dn = ts[3], t_lm = ts[4];

    const double f = 2.0 * (double)ntok;
    const double proj_flops_layer = f * (double)dim * (double)(2 * q_dim + 2 * kv_dim + 2 * inter) +
                                    f * (double)inter * (double)dim;
    // causal: QK^T and PV over the s (s + 1) / 2 unmasked (query, key) pairs, 2 flops each
    const double attn_flops_layer = (double)n_seq * (double)cfg->num_attention_heads * 2.0 *
                                    2.0 * (double)hd * (double)seq_len *
                                    (double)(seq_len + 1) / 2.0;
    const double lm_flops = f * (double)dim * (double)vocab;
    // one layer's projections as sgemm: q, o (dim x q_dim shapes), k, v, gate, up, down
    const double sg_layer_s = 2 * t_qo + 2 * t_kv + 2 * t_gu + t_dn;
    const double proj_gflops = proj_flops_layer * (double)L / block_s * 1e-9;
    const double sgemm_gflops = proj_flops_layer / sg_layer_s * 1e-9;

    json_t *conf = json_pack(
        "{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:i, s:s}", "model",
        tmpl[0] ? "synth (temp dir)" : model_dir, "preset", tmpl[0] ? preset : "", "layers",
        (json_int_t)L, "hidden", (json_int_t)dim, "intermediate", (json_int_t)inter, "heads",
        (json_int_t)cfg->num_attention_heads, "kv_heads", (json_int_t)cfg->num_key_value_heads,
        "vocab", (json_int_t)vocab, "seqs", (json_int_t)n_seq, "seq_len", (json_int_t)seq_len,
        "threads", threads, "repeats", repeats, "proj_timing", "whole_block");
    json_t *j = json_pack(
        "{s:s, s:o, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "bench",
        "forward", "config", conf, "tokens", (json_int_t)ntok, "seconds", total_s, "block_seconds",
        block_s, "lm_head_seconds", lm_s, "proj_gflops", proj_gflops, "attn_gflop_per_layer",
        attn_flops_layer * 1e-9, "total_gflops",
        ((proj_flops_layer + attn_flops_layer) * (double)L + lm_flops) / total_s * 1e-9,
        "sgemm_gflops", sgemm_gflops, "proj_fraction_of_sgemm", proj_gflops / sgemm_gflops,
        "lm_head_gflops", lm_flops / lm_s * 1e-9, "sgemm_lm_head_gflops", lm_flops / t_lm * 1e-9,
        "load_seconds", load_s, "synth_seconds", synth_s);
    json_object_set_new(j, "block0_attn_in", stats);
    emit(j);
    emit(json_pack("{s:s, s:I, s:f, s:f, s:f, s:f, s:f}", "bench", "forward_sgemm_shapes", "m",
                   (json_int_t)ntok, "qo_gflops", f * (double)dim * (double)q_dim / t_qo * 1e-9,
                   "kv_gflops", f * (double)dim * (double)kv_dim / t_kv * 1e-9, "gate_up_gflops",
                   f * (double)dim * (double)inter / t_gu * 1e-9, "down_gflops",
                   f * (double)dim * (double)inter / t_dn * 1e-9, "lm_head_gflops",
                   lm_flops / t_lm * 1e-9));

    free(tok);
    free(x);
    free(logits);
    lb_fwd_workspace_free(&ws);
    for (int64_t l = 0; l < L; l++)
        lb_block_weights_free(&blocks[l]);
    free(blocks);
    lb_head_weights_free(&head);
    lb_model_free(&m);
    if (tmpl[0])
        remove_synth(tmpl);
    return 0;
}
