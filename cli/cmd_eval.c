/* lowbit eval: perplexity (and KL / top-1 against a reference) of a model on token ids. */
#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "lb_blas.h"
#include "lb_cli.h"
#include "lb_eval.h"
#include "lb_packed.h"
#include "lb_model.h"
#include "lb_tok_text.h"
#include "lb_tokens.h"

#define EVAL_DEFAULT_CTX 2048

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit eval --model DIR (--tokens FILE | --text FILE [--tokenizer DIR])\n"
            "                   [--ctx N] [--ref DIR] [--batch N] [--threads N] [--json]\n"
            "\n"
            "Perplexity of the model on token ids: the ids are cut into non-overlapping\n"
            "windows of N tokens (the tail that does not fill a window is dropped, with a\n"
            "note), each scoring its N-1 next-token targets; ppl = exp(mean NLL).\n"
            "\n"
            "  --model DIR    HF model directory (config.json + safetensors)\n"
            "  --tokens FILE  token ids: raw little-endian uint32 (.u32) or .npy\n"
            "  --text FILE    text, tokenized as one document (lowbit tokenize) with the\n"
            "                 tokenizer.json of --tokenizer DIR (default: --model DIR,\n"
            "                 which quantize copies it into, else --ref DIR)\n"
            "  --ctx N        window length (default min(%d, max_position_embeddings))\n"
            "  --ref DIR      reference model (same vocab): also report the mean per-token\n"
            "                 KL(ref || model) and top-1 agreement over the scored positions\n"
            "  --batch N      windows per forward pass (default 8)\n"
            "  --threads N    OpenMP and BLAS threads (default: all cores)\n"
            "  --json         print one JSON object {model, tokens, ctx, windows,\n"
            "                 tokens_scored, ppl, nll, [kl, top1,] seconds}\n",
            EVAL_DEFAULT_CTX);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "lowbit eval: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "; run `lowbit eval --help`\n");
    return 2;
}

/* Parses a positive integer <= max; returns 0 on success. */
static int parse_positive(const char *s, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || end == s || *end || v < 1 || v > max)
        return -1;
    *out = v;
    return 0;
}

typedef struct {
    bool enabled;
    bool line_open; /* a progress line without its newline is on stderr */
} progress_state;

static void on_progress(void *user, int64_t done, int64_t total, double seconds)
{
    progress_state *ps = user;
    if (!ps->enabled)
        return;
    double eta = done > 0 ? seconds * (double)(total - done) / (double)done : 0.0;
    fprintf(stderr, "\reval: window %lld/%lld, %.1f s, ETA %.0f s   ", (long long)done,
            (long long)total, seconds, eta);
    ps->line_open = done != total;
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

static int print_json(const char *model, const char *tokens, const lb_eval_result *r)
{
    json_t *o = json_object();
    if (!o)
        return -1;
    int bad = 0;
    bad |= json_object_set_new(o, "model", json_string(model));
    bad |= json_object_set_new(o, "tokens", json_string(tokens));
    bad |= json_object_set_new(o, "ctx", json_integer(r->ctx));
    bad |= json_object_set_new(o, "windows", json_integer(r->windows));
    bad |= json_object_set_new(o, "tokens_scored", json_integer(r->tokens_scored));
    bad |= json_object_set_new(o, "ppl", json_real(r->ppl));
    bad |= json_object_set_new(o, "nll", json_real(r->nll));
    if (r->has_ref) {
        bad |= json_object_set_new(o, "kl", json_real(r->kl));
        bad |= json_object_set_new(o, "top1", json_real(r->top1));
    }
    bad |= json_object_set_new(o, "seconds", json_real(r->seconds));
    char *s = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(o);
    if (!s)
        return -1;
    printf("%s\n", s);
    free(s);
    return 0;
}

int lb_cmd_eval(int argc, char **argv)
{
    const char *model_dir = NULL, *tokens_path = NULL, *ref_dir = NULL, *text_path = NULL;
    const char *tok_dir = NULL;
    long long ctx = 0, batch = 8, threads = 0;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = true;
            continue;
        }
        bool takes = !strcmp(a, "--model") || !strcmp(a, "--tokens") || !strcmp(a, "--ref") ||
                     !strcmp(a, "--text") || !strcmp(a, "--tokenizer") ||
                     !strcmp(a, "--ctx") || !strcmp(a, "--batch") || !strcmp(a, "--threads");
        if (!takes)
            return usage_error("unknown option '%s'", a);
        if (i + 1 >= argc)
            return usage_error("%s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--model"))
            model_dir = v;
        else if (!strcmp(a, "--tokens"))
            tokens_path = v;
        else if (!strcmp(a, "--ref"))
            ref_dir = v;
        else if (!strcmp(a, "--text"))
            text_path = v;
        else if (!strcmp(a, "--tokenizer"))
            tok_dir = v;
        else if (!strcmp(a, "--ctx") && parse_positive(v, 1 << 24, &ctx))
            return usage_error("--ctx wants a positive integer, got '%s'", v);
        else if (!strcmp(a, "--batch") && parse_positive(v, 1 << 16, &batch))
            return usage_error("--batch wants a positive integer, got '%s'", v);
        else if (!strcmp(a, "--threads") && parse_positive(v, 4096, &threads))
            return usage_error("--threads wants a positive integer, got '%s'", v);
    }
    if (!model_dir)
        return usage_error("%s is required", "--model");
    if (!tokens_path == !text_path)
        return usage_error("%s: give one of them", "--tokens or --text");
    if (ctx == 1)
        return usage_error("--ctx must be at least 2, got '%s'", "1");

    if (threads > 0) {
        omp_set_num_threads((int)threads);
        lb_blas_set_threads((int)threads);
    }

    lb_err err = {0};
    lb_model *model = NULL, *ref = NULL;
    uint32_t *tokens = NULL;
    int64_t n = 0;
    int status = 1;
    progress_state ps = {0};
    if (lb_packed_model_open(&model, model_dir, &err))
        goto done;
    if (ref_dir && lb_packed_model_open(&ref, ref_dir, &err))
        goto done;
    const lb_config *cfg = lb_model_config(model);
    if (text_path) {
        if (!tok_dir)
            tok_dir = lb_tok_text_dir(model_dir, ref_dir);
        if (lb_tok_text_file(tok_dir, text_path, 0, 0, cfg->vocab_size, &tokens, &n, NULL, &err))
            goto done;
        tokens_path = text_path;
    } else if (lb_tokens_load(tokens_path, &tokens, &n, &err)) {
        goto done;
    }
    if (lb_tokens_check_vocab(tokens, n, cfg->vocab_size, tokens_path, &err))
        goto done;
    if (ctx == 0)
        ctx = cfg->max_position_embeddings < EVAL_DEFAULT_CTX ? cfg->max_position_embeddings
                                                              : EVAL_DEFAULT_CTX;
    if (n < ctx) {
        lb_err_set(&err, LB_EINVAL, "%s: %lld tokens, fewer than one window of %lld; lower --ctx",
                   tokens_path, (long long)n, ctx);
        goto done;
    }
    ps.enabled = isatty(STDERR_FILENO) == 1;
    lb_eval_opts opts = {.ctx = ctx, .batch = batch, .progress = on_progress, .progress_user = &ps};
    lb_eval_result r;
    if (lb_eval_run(model, ref, tokens, n, &opts, &r, &err))
        goto done;
    if (r.tokens_dropped)
        fprintf(stderr,
                "lowbit eval: note: %lld tail tokens (of %lld) do not fill a window of %lld "
                "and are not scored\n",
                (long long)r.tokens_dropped, (long long)n, (long long)r.ctx);
    if (json) {
        if (print_json(model_dir, tokens_path, &r)) {
            lb_err_set(&err, LB_ENOMEM, "cannot format the JSON result");
            goto done;
        }
    } else {
        printf("model          %s\n", model_dir);
        printf("tokens         %s (%lld ids)\n", tokens_path, (long long)n);
        printf("windows        %lld of %lld tokens, %lld targets scored\n", (long long)r.windows,
               (long long)r.ctx, (long long)r.tokens_scored);
        printf("perplexity     %.4f\n", r.ppl);
        printf("mean nll       %.6f nats\n", r.nll);
        if (r.has_ref) {
            printf("reference      %s\n", ref_dir);
            printf("KL(ref||model) %.6g nats/token\n", r.kl);
            printf("top-1 agree    %.4f\n", r.top1);
        }
        printf("time           %.2f s\n", r.seconds);
    }
    status = 0;
done:
    if (status)
        fprintf(stderr, "%slowbit eval: %s\n", ps.line_open ? "\n" : "", err.msg);
    free(tokens);
    lb_model_free(&ref);
    lb_model_free(&model);
    return status;
}
