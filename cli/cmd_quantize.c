/* lowbit quantize: whole-model quantization, block by block (GPTQ's sequential
 * protocol), as content-addressed jobs run by the embedded runner. This file
 * parses the options into an lb_quantize_spec (shared with `lowbit coordinator`)
 * and runs an lb_session. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_cli.h"
#include "lb_dist.h"
#include "lb_distill.h"
#include "lb_distill_opts.h"
#include "lb_job.h"
#include "lb_qopts_parse.h"
#include "lb_exec_measure.h"
#include "lb_session.h"
#include "lb_tbpw.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit quantize --model DIR (--calib TOKENS | --calib-text FILE) --out DIR\n"
            "                       --method M [--bits B]\n"
            "                       [method options] [--ctx N] [--nsamples N]\n"
            "                       [--override 'REGEX=METHOD[:opt=val,...]' ...]\n"
            "                       [--true-sequential] [--quantize-lm-head] [--threads N]\n"
            "                       [--force] [--json] [--distill STEPS [--distill-lr LR] ...]\n"
            "                       [--collect-chunks K]\n"
            "                       [--target-bpw B [--candidates LIST] [--proxy NAME]]\n"
            "\n"
            "Quantizes every linear of every block (q/k/v/o/gate/up/down) with M, block by\n"
            "block: Hessians from calibration activations that went through the already\n"
            "quantized earlier blocks, one job per linear, then the block's outputs with\n"
            "the quantized weights feed the next block. Embeddings, norms and lm_head stay\n"
            "as they are (lm_head: unless --quantize-lm-head). Writes a packed checkpoint\n"
            "(config.json with quantization_config, model.safetensors, manifest.json) to\n"
            "--out. Intermediate artifacts are kept\n"
            "by content id in OUT/.lowbit/artifacts, so a rerun resumes where it stopped.\n"
            "\n"
            "  --method M         one of:");
    lb_cli_print_methods(out);
    fprintf(out,
            "\n"
            "  --calib TOKENS     token ids (.u32 or .npy), cut into windows of --ctx\n"
            "  --calib-text FILE  text, tokenized with DIR/tokenizer.json (lowbit tokenize):\n"
            "                     every whole --ctx window, or --nsamples windows spread\n"
            "                     evenly over the text (deterministic)\n"
            "  --ctx N            window length (default min(2048, max_position_embeddings))\n"
            "  --nsamples N       use the first N windows (default all)\n"
            "  --override R=M[:o] tensors whose full name matches the POSIX extended regex R\n"
            "                     (whole name) use method M with the global options changed\n"
            "                     by o (e.g. 'bits=4,group-size=32'); the last match wins\n"
            "  --true-sequential  re-collect inside the block: o_proj's input after q/k/v are\n"
            "                     quantized, gate/up's after attention, down's after gate/up\n"
            "  --quantize-lm-head also quantize lm_head.weight (vocab x dim) after the last\n"
            "                     block, with the Hessian of its input (the final-normed\n"
            "                     hidden states through the quantized blocks) and the global\n"
            "                     method/options or --override 'lm_head\\.weight=M[:o]'; a\n"
            "                     tied model is untied (the embedding stays full precision)\n"
            "  --threads N        pool workers and forward threads (default: all cores);\n"
            "                     the output is byte-identical for any N\n"
            "  --collect-chunks K split each block's collect and propagate into K jobs over\n"
            "                     contiguous calibration window ranges plus one reduce of\n"
            "                     the partial Hessians (same output bytes; default 1, and %d\n"
            "                     under lowbit coordinator, so several workers share a block)\n"
            "  --target-bpw B     choose each linear's method from --candidates so that the\n"
            "                     stored bits are <= B per weight with the least summed\n"
            "                     --proxy (measured per tensor and candidate by jobs whose\n"
            "                     results are kept and reused; docs/target-bpw.md);\n"
            "                     --method is then optional, --override tensors are fixed\n"
            "  --candidates LIST  'METHOD[:opt=val,...];...' (default: GPTQ 2/3/4 x group\n"
            "                     0/32/128, CLAQ 2.1/3.1, PB-LLM, QBB 1-3 bases, RTN 8)\n"
            "  --proxy NAME       rel_err, out_err, out_abs, block_err, block_abs, kl\n"
            "                     (default %s)\n"
            "  --force            reuse an --out directory that holds another job\n"
            "  --json             one JSON status line per finished job and a summary line\n"
            "\n%s\n"
            "Scale distillation (after a block's linears are quantized, its continuous\n"
            "parameters are trained so that the block on the quantized-path input matches\n"
            "the fp block on the fp-path input; codes and bpw do not change):\n%s",
            LB_SESSION_DIST_CHUNKS, LB_TBPW_DEFAULT_PROXY,
            lb_qopts_usage(), lb_distill_usage());
}

int lb_cli_quantize_arg(lb_quantize_spec *q, int argc, char **argv, int *ip)
{
    int i = *ip;
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    lb_err err;
    lb_err_clear(&err);
    int rc = lb_distill_parse_arg(&q->distill, argc, argv, ip, &err);
    if (rc == 0)
        rc = lb_qopts_parse_arg(&q->opts, argc, argv, ip, &err);
    if (rc < 0) {
        fprintf(stderr, "lowbit quantize: %s\n", err.msg);
        return -2;
    }
    if (rc == 1)
        return 1; /* *ip is past the option */
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
        usage(stdout);
        return -1;
    } else if (!strcmp(a, "--json")) {
        q->json = true;
    } else if (!strcmp(a, "--true-sequential")) {
        q->true_sequential = true;
    } else if (!strcmp(a, "--force")) {
        q->force = true;
    } else if (!strcmp(a, "--quantize-lm-head")) {
        q->lm_head = true;
    } else if (v && !strcmp(a, "--target-bpw")) {
        i++;
        char *end = NULL;
        q->target_bpw = strtod(v, &end);
        if (!end || *end || !(q->target_bpw > 0 && q->target_bpw <= 64)) {
            fprintf(stderr, "lowbit quantize: --target-bpw needs a number in (0, 64], got "
                            "\"%s\"\n", v);
            return -2;
        }
    } else if (v && (!strcmp(a, "--candidates") || !strcmp(a, "--proxy"))) {
        i++;
        *(!strcmp(a, "--proxy") ? &q->proxy : &q->candidates) = v;
    } else if (v && (!strcmp(a, "--model") || !strcmp(a, "--calib") || !strcmp(a, "--out") ||
                     !strcmp(a, "--calib-text") || !strcmp(a, "--method") ||
                     !strcmp(a, "--override"))) {
        i++;
        if (!strcmp(a, "--model")) q->model_dir = v;
        else if (!strcmp(a, "--calib")) q->calib = v;
        else if (!strcmp(a, "--calib-text")) q->calib_text = v;
        else if (!strcmp(a, "--out")) q->out = v;
        else if (!strcmp(a, "--method")) q->method = v;
        else {
            if (q->n_overrides == LB_SESSION_MAX_OVERRIDES) {
                fprintf(stderr, "lowbit quantize: more than %d --override\n",
                        LB_SESSION_MAX_OVERRIDES);
                return -2;
            }
            q->overrides[q->n_overrides++] = v;
        }
    } else if (v && (!strcmp(a, "--ctx") || !strcmp(a, "--nsamples") ||
                     !strcmp(a, "--threads") || !strcmp(a, "--collect-chunks"))) {
        i++;
        char *end = NULL;
        long long num = strtoll(v, &end, 10);
        if (!end || *end || num <= 0 || num > (1LL << 40)) {
            fprintf(stderr, "lowbit quantize: %s needs a positive integer, got \"%s\"\n", a, v);
            return -2;
        }
        if (!strcmp(a, "--ctx")) q->ctx = num;
        else if (!strcmp(a, "--nsamples")) q->nsamples = num;
        else if (!strcmp(a, "--threads")) q->threads = (int)(num > 1024 ? 1024 : num);
        else if (num > LB_JOB_MAX_CHUNKS) {
            fprintf(stderr, "lowbit quantize: --collect-chunks %lld is above %d\n", num,
                    LB_JOB_MAX_CHUNKS);
            return -2;
        } else {
            q->collect_chunks = (int)num;
        }
    } else {
        fprintf(stderr, "lowbit quantize: unknown or incomplete option \"%s\" (see lowbit "
                        "quantize --help)\n", a);
        return -2;
    }
    *ip = i + 1;
    return 1;
}

int lb_cli_quantize_check(lb_quantize_spec *q)
{
    if (q->target_bpw > 0 && !q->method)
        q->method = "gptq"; /* recorded only; --target-bpw picks per tensor */
    if ((q->candidates || q->proxy) && q->target_bpw <= 0) {
        fprintf(stderr, "lowbit quantize: --candidates and --proxy need --target-bpw\n");
        return 2;
    }
    if (q->target_bpw > 0 && (q->lm_head || q->distill.steps > 0)) {
        fprintf(stderr, "lowbit quantize: --target-bpw does not support --quantize-lm-head or "
                        "--distill yet; drop one of them\n");
        return 2;
    }
    if (q->proxy && lb_measure_proxy_index(q->proxy) < 0) {
        fprintf(stderr, "lowbit quantize: --proxy %s: one of rel_err, out_err, out_abs, "
                        "block_err, block_abs, kl\n", q->proxy);
        return 2;
    }
    if (!q->model_dir || !q->calib == !q->calib_text || !q->out || !q->method) {
        fprintf(stderr, "lowbit quantize: --model, --calib or --calib-text (one), --out and "
                        "--method are required (see lowbit quantize --help)\n");
        return 2;
    }
    if (!lb_qmethod_find(q->method)) {
        fprintf(stderr, "lowbit quantize: unknown method \"%s\"; one of:", q->method);
        lb_cli_print_methods(stderr);
        fprintf(stderr, "\n");
        return 2;
    }
    lb_err err;
    lb_err_clear(&err);
    if (lb_qopts_validate(&q->opts, &err)) {
        fprintf(stderr, "lowbit quantize: %s\n", err.msg);
        return 2;
    }
    return 0;
}

int lb_cli_quantize_run(const lb_quantize_spec *q, const lb_dist_opts *dist)
{
    lb_err err;
    lb_err_clear(&err);
    lb_session *s = NULL;
    lb_quantize_spec qd = *q; /* --target-bpw's measurement runs where the quantize does */
    qd.dist = dist;
    int rc = lb_session_prepare(&qd, &s, &err);
    if (rc == 0)
        rc = dist ? lb_session_run_distributed(s, dist, &err)
                  : lb_session_run_embedded(s, &err);
    if (rc == 0)
        rc = lb_session_finish(s, &err);
    lb_session_free(&s);
    if (rc == 0)
        return 0;
    if (err.msg[0])
        fprintf(stderr, "lowbit quantize: %s\n", err.msg);
    return rc == LB_EINVAL ? 2 : 1;
}

int lb_cmd_quantize(int argc, char **argv)
{
    lb_quantize_spec q;
    lb_quantize_spec_init(&q, false);
    const char *crash = getenv("LOWBIT_TEST_CRASH_AFTER_JOBS");
    if (crash && *crash)
        q.crash_after_jobs = atoi(crash);
    for (int i = 1; i < argc;) {
        int rc = lb_cli_quantize_arg(&q, argc, argv, &i);
        if (rc < 0)
            return rc == -1 ? 0 : 2;
    }
    int st = lb_cli_quantize_check(&q);
    return st ? st : lb_cli_quantize_run(&q, NULL);
}
