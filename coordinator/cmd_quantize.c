/* lowbit quantize: whole-model quantization, block by block (GPTQ's sequential
 * protocol), as content-addressed jobs run by the embedded runner. */
#include <errno.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <jansson.h>

#include "lb_cli.h"
#include "lb_dist.h"
#include "lb_distill.h"
#include "lb_rotate.h"
#include "lb_exec.h"
#include "lb_io_util.h"
#include "lb_override.h"
#include "lb_plan.h"
#include "lb_qopts_parse.h"
#include "lb_runner.h"
#include "lb_sha256.h"
#include "lb_exec_measure.h"
#include "lb_tbpw.h"
#include "lb_tok_text.h"
#include "lb_tokens.h"

#define MAX_OVERRIDES 64
/* --collect-chunks default of `lowbit coordinator` (docs/distributed.md, "Chunked
 * collection"): two workers share each block's forward; embedded runs use 1 */
#define DIST_COLLECT_CHUNKS 2

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
    const lb_qmethod *m[64];
    int n = lb_qmethod_list(m, 64);
    for (int i = 0; i < n; i++)
        fprintf(out, " %s", m[i]->name);
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
            "  --proxy NAME       rel_err, out_err, out_abs, block_err, block_abs (default %s)\n"
            "  --force            reuse an --out directory that holds another job\n"
            "  --json             one JSON status line per finished job and a summary line\n"
            "\n%s\n"
            "Scale distillation (after a block's linears are quantized, its continuous\n"
            "parameters are trained so that the block on the quantized-path input matches\n"
            "the fp block on the fp-path input; codes and bpw do not change):\n%s",
            DIST_COLLECT_CHUNKS, LB_TBPW_DEFAULT_PROXY,
            lb_qopts_usage(), lb_distill_usage());
}


typedef struct {
    bool json, tty;
    double t0;
    const lb_config *cfg;
} progress_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void on_progress(void *user, const lb_plan *plan, int32_t j, const lb_job_result *res,
                        int32_t done, int32_t total)
{
    progress_state *ps = user;
    const lb_job *job = lb_plan_job(plan, j);
    double el = now_s() - ps->t0;
    double eta = done > 0 ? el / done * (total - done) : 0;
    const char *what = job->tensor[0] ? job->tensor : "";
    if (ps->json) {
        json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:s, s:i, s:i, s:f, s:f, s:f, s:s}",
                              "event", "job", "type", lb_job_type_name(job->type), "block",
                              (int)job->block, "tensor", what, "method", job->method, "done",
                              (int)done, "total", (int)total, "seconds", res->seconds,
                              "elapsed", el, "bpw", res->bpw, "status",
                              res->status == LB_JOB_OK ? "ok" : "failed");
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s)
            printf("%s\n", s);
        fflush(stdout);
        free(s);
        json_decref(o);
        return;
    }
    char extra[64] = "";
    if (job->type == LB_JOB_QUANTIZE_LINEAR)
        snprintf(extra, sizeof extra, " %s %.4f bpw", job->method, res->bpw);
    char blk[32] = "";
    if (job->type != LB_JOB_MERGE)
        snprintf(blk, sizeof blk, job->block < 0 ? " embed"
                                  : job->block == ps->cfg->num_hidden_layers ? " lm_head"
                                  : " block %d/%d", (int)job->block,
                 (int)ps->cfg->num_hidden_layers);
    fprintf(stderr, "[%d/%d]%s %s%s%s%s %.2fs | elapsed %.1fs", (int)done, (int)total, blk,
            lb_job_type_name(job->type), what[0] ? " " : "", what, extra, res->seconds, el);
    if (ps->tty)
        fprintf(stderr, " ETA %.1fs", eta);
    fprintf(stderr, "\n");
}

/* Resolves the method/options of tensor `name` (global, then every matching
 * override: the last wins), adds them to the run id, records and prints the
 * choice. OUT: *c. */
static void choose(const char *name, const char *method, const lb_qopts *opts,
                   lb_override *ovr, int n_ovr, bool json, lb_sha256 *run, json_t *per,
                   lb_plan_choice *c, const char *by)
{
    snprintf(c->method, sizeof c->method, "%s", method);
    c->opts = *opts;
    for (int k = 0; k < n_ovr; k++)
        if (regexec(&ovr[k].re, name, 0, NULL, 0) == 0) {
            snprintf(c->method, sizeof c->method, "%s", ovr[k].method);
            c->opts = ovr[k].opts;
            by = ovr[k].spec;
            ovr[k].matched++;
        }
    c->opts.rotate = lb_rotate_resolve(c->method, c->opts.rotate);
    char desc[512];
    lb_exec_describe_opts(&c->opts, desc, sizeof desc);
    lb_sha256_update(run, c->method, strlen(c->method));
    lb_sha256_update(run, desc, strlen(desc));
    json_object_set_new(per, name, json_pack("{s:s, s:f}", "method", c->method, "bits",
                                             c->opts.bits));
    if (!json) {
        fprintf(stderr, "  %-44s %-6s bits=%g group=%d%s (%s)\n", name, c->method, c->opts.bits,
                (int)c->opts.group_size, c->opts.rotate ? " rotate=hadamard" : "", by);
        return;
    }
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "event", "choice", "tensor", name,
                          "method", c->method, "options", desc, "by", by);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return ru.ru_maxrss;
}

/* --force over another run: its checkpoint must not look complete while this
 * one runs (manifest.json goes first), and its artifacts are dead weight. */
static int forget_other_job(const char *out, const char *hidden, lb_err *err)
{
    char *manifest = lb_io_path_join(out, "manifest.json");
    char *arts = lb_io_path_join(hidden, "artifacts");
    int rc = 0;
    if (!manifest || !arts) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    if (unlink(manifest) != 0 && errno != ENOENT) {
        rc = lb_err_set(err, LB_EIO, "%s: cannot remove (%s)", manifest, strerror(errno));
        goto done;
    }
    char *alloc = lb_io_path_join(out, "allocation.json"); /* a --target-bpw run's record */
    if (alloc)
        unlink(alloc);
    free(alloc);
    DIR *d = opendir(arts);
    lb_store *st = NULL;
    lb_err serr;
    if (d && lb_store_open(out, &st, &serr) != 0)
        st = NULL;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t n = strlen(e->d_name);
            char id[LB_ID_HEX] = "";
            if (n == 64 + 12)
                snprintf(id, sizeof id, "%.64s", e->d_name);
            /* --target-bpw measurements hold for any target: kept for reuse (they are
             * a few hundred bytes, so no large artifact is read to tell) */
            struct stat sb;
            char *mf = id[0] && st ? lb_io_path_join(arts, e->d_name) : NULL;
            bool keep = mf && stat(mf, &sb) == 0 && sb.st_size < 65536 &&
                        lb_store_has(st, id, "measure");
            free(mf);
            if (keep)
                continue;
            if (n > 12 && !strcmp(e->d_name + n - 12, ".safetensors")) {
                char *f = lb_io_path_join(arts, e->d_name);
                if (f)
                    unlink(f);
                free(f);
            }
        }
        closedir(d);
    }
    lb_store_free(&st);
done:
    free(manifest);
    free(arts);
    return rc;
}

/* Compares/writes OUT/.lowbit/job.json. */
static int claim_out_dir(const char *out, const char *run_id, bool force, lb_err *err)
{
    char *hidden = lb_io_path_join(out, ".lowbit");
    char *path = hidden ? lb_io_path_join(hidden, "job.json") : NULL;
    int rc = 0;
    if (!path) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    char *text = NULL;
    size_t len = 0;
    lb_err rerr;
    if (lb_io_read_file(path, 1 << 20, &text, &len, &rerr) == 0) {
        json_t *j = json_loads(text, 0, NULL);
        const char *old = j ? json_string_value(json_object_get(j, "run_id")) : NULL;
        bool same = old && strcmp(old, run_id) == 0;
        json_decref(j);
        free(text);
        if (!same && !force) {
            rc = lb_err_set(err, LB_ESTATE, "%s holds a different quantize job (other model, "
                            "calibration or options); use another --out or pass --force", out);
            goto done;
        }
        if (!same && (rc = forget_other_job(out, hidden, err)))
            goto done;
    } else {
        /* no job record: refuse a directory that holds anything else */
        DIR *d = opendir(out);
        if (d) {
            struct dirent *e;
            bool other = false;
            while ((e = readdir(d)) != NULL)
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
                    strcmp(e->d_name, ".lowbit"))
                    other = true;
            closedir(d);
            if (other && !force) {
                rc = lb_err_set(err, LB_ESTATE, "%s is not empty and holds no lowbit quantize "
                                "job; use another --out or pass --force", out);
                goto done;
            }
            if (other && (rc = forget_other_job(out, hidden, err)))
                goto done;
        }
    }
    if ((rc = lb_io_mkdir_p(out, err)))
        goto done;
    if (mkdir(hidden, 0755) != 0 && errno != EEXIST) {
        rc = lb_err_set(err, LB_EIO, "%s: cannot create (%s)", hidden, strerror(errno));
        goto done;
    }
    char rec[256];
    int n = snprintf(rec, sizeof rec, "{\"run_id\":\"%s\"}\n", run_id);
    rc = lb_io_write_atomic(path, rec, (size_t)n, err);
done:
    free(path);
    free(hidden);
    return rc;
}

int lb_quantize_main(int argc, char **argv, const lb_dist_opts *dist)
{
    const char *model_dir = NULL, *calib = NULL, *calib_text = NULL, *out = NULL, *method = NULL;
    const char *ovr_spec[MAX_OVERRIDES];
    int n_ovr = 0, threads = 0, chunks = dist ? DIST_COLLECT_CHUNKS : 1;
    int64_t ctx = 0, nsamples = 0;
    bool json = false, true_seq = false, force = false, lm_head = false;
    double target = 0;
    const char *candidates = NULL, *proxy = NULL;
    lb_qopts opts;
    lb_qopts_init(&opts);
    lb_distill_opts dopts;
    lb_distill_opts_init(&dopts);
    lb_err err;
    lb_err_clear(&err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = lb_distill_parse_arg(&dopts, argc, argv, &i, &err);
        if (rc < 0) {
            fprintf(stderr, "lowbit quantize: %s\n", err.msg);
            return 2;
        }
        if (rc == 1) {
            i--; /* i is past the option; the loop adds one */
            continue;
        }
        rc = lb_qopts_parse_arg(&opts, argc, argv, &i, &err);
        if (rc < 0) {
            fprintf(stderr, "lowbit quantize: %s\n", err.msg);
            return 2;
        }
        if (rc == 1) {
            i--; /* the parser left i past its option; the loop adds one */
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--true-sequential")) {
            true_seq = true;
        } else if (!strcmp(a, "--force")) {
            force = true;
        } else if (!strcmp(a, "--quantize-lm-head")) {
            lm_head = true;
        } else if (v && !strcmp(a, "--target-bpw")) {
            char *end = NULL;
            target = strtod(v, &end);
            if (!end || *end || !(target > 0 && target <= 64)) {
                fprintf(stderr, "lowbit quantize: --target-bpw needs a number in (0, 64], got "
                                "\"%s\"\n", v);
                return 2;
            }
            i++;
        } else if (v && (!strcmp(a, "--candidates") || !strcmp(a, "--proxy"))) {
            *(!strcmp(a, "--proxy") ? &proxy : &candidates) = v;
            i++;
        } else if (v && (!strcmp(a, "--model") || !strcmp(a, "--calib") || !strcmp(a, "--out") ||
                         !strcmp(a, "--calib-text") ||
                         !strcmp(a, "--method") || !strcmp(a, "--ctx") ||
                         !strcmp(a, "--nsamples") || !strcmp(a, "--threads") ||
                         !strcmp(a, "--override") || !strcmp(a, "--collect-chunks"))) {
            i++;
            char *end = NULL;
            long long num = 0;
            if (!strcmp(a, "--ctx") || !strcmp(a, "--nsamples") || !strcmp(a, "--threads") ||
                !strcmp(a, "--collect-chunks")) {
                num = strtoll(v, &end, 10);
                if (!end || *end || num <= 0 || num > (1LL << 40)) {
                    fprintf(stderr, "lowbit quantize: %s needs a positive integer, got \"%s\"\n",
                            a, v);
                    return 2;
                }
            }
            if (!strcmp(a, "--model")) model_dir = v;
            else if (!strcmp(a, "--calib")) calib = v;
            else if (!strcmp(a, "--calib-text")) calib_text = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--method")) method = v;
            else if (!strcmp(a, "--ctx")) ctx = num;
            else if (!strcmp(a, "--nsamples")) nsamples = num;
            else if (!strcmp(a, "--threads")) threads = (int)(num > 1024 ? 1024 : num);
            else if (!strcmp(a, "--collect-chunks")) {
                if (num > LB_JOB_MAX_CHUNKS) {
                    fprintf(stderr, "lowbit quantize: --collect-chunks %lld is above %d\n", num,
                            LB_JOB_MAX_CHUNKS);
                    return 2;
                }
                chunks = (int)num;
            }
            else {
                if (n_ovr == MAX_OVERRIDES) {
                    fprintf(stderr, "lowbit quantize: more than %d --override\n", MAX_OVERRIDES);
                    return 2;
                }
                ovr_spec[n_ovr++] = v;
            }
        } else {
            fprintf(stderr, "lowbit quantize: unknown or incomplete option \"%s\" (see lowbit "
                            "quantize --help)\n", a);
            return 2;
        }
    }
    if (target > 0 && !method)
        method = "gptq"; /* recorded only; --target-bpw picks per tensor */
    if ((candidates || proxy) && target <= 0) {
        fprintf(stderr, "lowbit quantize: --candidates and --proxy need --target-bpw\n");
        return 2;
    }
    if (target > 0 && (lm_head || dopts.steps > 0)) {
        fprintf(stderr, "lowbit quantize: --target-bpw does not support --quantize-lm-head or "
                        "--distill yet; drop one of them\n");
        return 2;
    }
    if (proxy && lb_measure_proxy_index(proxy) < 0) {
        fprintf(stderr, "lowbit quantize: --proxy %s: one of rel_err, out_err, out_abs, "
                        "block_err, block_abs\n", proxy);
        return 2;
    }
    if (!model_dir || !calib == !calib_text || !out || !method) {
        fprintf(stderr, "lowbit quantize: --model, --calib or --calib-text (one), --out and "
                        "--method are required (see lowbit quantize --help)\n");
        return 2;
    }
    if (!lb_qmethod_find(method)) {
        fprintf(stderr, "lowbit quantize: unknown method \"%s\"; one of:", method);
        const lb_qmethod *m[64];
        int n = lb_qmethod_list(m, 64);
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %s", m[i]->name);
        fprintf(stderr, "\n");
        return 2;
    }
    if (lb_qopts_validate(&opts, &err)) {
        fprintf(stderr, "lowbit quantize: %s\n", err.msg);
        return 2;
    }
    if (threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        threads = nc > 0 ? (int)nc : 1;
    }

    int status = 1;
    double t0 = now_s();
    lb_model *model = NULL;
    uint32_t *tokens = NULL;
    lb_override ovr[MAX_OVERRIDES];
    int n_ovr_ok = 0;
    lb_plan_choice *choices = NULL;
    lb_store *store = NULL;
    lb_plan *plan = NULL;
    char *opts_json = NULL;
    json_t *per = NULL;
    lb_plan_choice *tb_choices = NULL;
    bool *tb_fixed = NULL;
    lb_tbpw_menu *menu = NULL;
    lb_tbpw_alloc alloc;
    memset(&alloc, 0, sizeof alloc);
    char *alloc_json = NULL;

    for (; n_ovr_ok < n_ovr; n_ovr_ok++)
        if (lb_override_parse(ovr_spec[n_ovr_ok], &opts, &ovr[n_ovr_ok], &err)) {
            status = 2;
            goto fail;
        }
    if (lb_model_open(&model, model_dir, &err))
        goto fail;
    const lb_config *cfg = lb_model_config(model);
    int64_t n_tok = 0;
    if (calib_text) {
        /* text: tokenized here into ready windows; the calib fingerprint below
         * hashes these ids, so other text or another tokenizer is another job */
        if (ctx == 0)
            ctx = cfg->max_position_embeddings < 2048 ? cfg->max_position_embeddings : 2048;
        if (ctx <= cfg->max_position_embeddings &&
            lb_tok_text_file(model_dir, calib_text, ctx, nsamples, cfg->vocab_size, &tokens,
                             &n_tok, NULL, &err))
            goto fail;
        calib = calib_text;
    } else if (lb_tokens_load(calib, &tokens, &n_tok, &err) ||
               lb_tokens_check_vocab(tokens, n_tok, cfg->vocab_size, calib, &err)) {
        goto fail;
    }
    if (ctx == 0)
        ctx = cfg->max_position_embeddings < 2048 ? cfg->max_position_embeddings : 2048;
    if (ctx > cfg->max_position_embeddings) {
        lb_err_set(&err, LB_EINVAL, "--ctx %lld exceeds the model's max_position_embeddings %d",
                   (long long)ctx, (int)cfg->max_position_embeddings);
        goto fail;
    }
    if (n_tok == 0 || n_tok % ctx != 0) {
        lb_err_set(&err, LB_EINVAL, "%s: %lld tokens is not a multiple of --ctx %lld (%lld "
                   "windows + %lld tokens); pass a --ctx that divides it, or trim the file",
                   calib, (long long)n_tok, (long long)ctx, (long long)(n_tok / ctx),
                   (long long)(n_tok % ctx));
        goto fail;
    }
    int64_t windows = n_tok / ctx;
    if (nsamples == 0)
        nsamples = windows;
    if (nsamples > windows) {
        lb_err_set(&err, LB_EINVAL, "--nsamples %lld but %s holds only %lld windows of %lld "
                   "tokens; lower --nsamples or --ctx", (long long)nsamples, calib,
                   (long long)windows, (long long)ctx);
        goto fail;
    }

    /* fingerprints: the model's content, the calibration windows used */
    char model_fp[LB_ID_HEX], calib_fp[LB_ID_HEX];
    if (lb_exec_model_fingerprint(model, model_fp, &err))
        goto fail;
    {
        lb_sha256 h;
        lb_sha256_init(&h);
        char head[64];
        int n = snprintf(head, sizeof head, "calib|%lld|%lld|", (long long)nsamples,
                         (long long)ctx);
        lb_sha256_update(&h, head, (size_t)n);
        lb_sha256_update(&h, tokens, (size_t)(nsamples * ctx) * sizeof *tokens);
        uint8_t d[LB_SHA256_DIGEST];
        lb_sha256_final(&h, d);
        lb_sha256_to_hex(d, calib_fp);
    }

    const int32_t L = cfg->num_hidden_layers;
    const char *crash = getenv("LOWBIT_TEST_CRASH_AFTER_JOBS");
    progress_state ps = {json, isatty(2) != 0, now_s(), cfg};
    if (target > 0) {
        lb_tbpw_args ta = {cfg, model, model_dir, out, model_fp, calib_fp, nsamples, ctx,
                           threads, json, target, candidates, proxy, &opts, ovr, n_ovr_ok, dist,
                           tokens, on_progress, &ps, crash && *crash ? atoi(crash) : 0};
        if (lb_tbpw_stage(&ta, &store, &menu, &tb_choices, &tb_fixed, &alloc, &alloc_json, &err))
            goto fail;
    }
    /* per-tensor choices: global method, then every matching override (last wins) */
    choices = calloc((size_t)L * LB_LINEAR_COUNT, sizeof *choices);
    per = json_object();
    if (!choices || !per) {
        lb_err_set(&err, LB_ENOMEM, "out of memory");
        goto fail;
    }
    lb_sha256 run;
    lb_sha256_init(&run);
    lb_sha256_update(&run, model_fp, 64);
    lb_sha256_update(&run, calib_fp, 64);
    lb_sha256_update(&run, true_seq ? "ts" : "--", 2);
    char distill_json[512] = "";
    if (dopts.steps > 0) {
        /* only with --distill, so runs without it keep their ids */
        if (lb_distill_opts_json(&dopts, distill_json, sizeof distill_json, &err))
            goto fail;
        lb_sha256_update(&run, distill_json, strlen(distill_json));
    }
    if (!json)
        fprintf(stderr, "lowbit quantize: %s, %d blocks, %lld calibration windows of %lld "
                "tokens, %d threads\n", model_dir, (int)L, (long long)nsamples, (long long)ctx,
                threads);
    for (int32_t b = 0; b < L; b++)
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            char name[LB_JOB_TENSOR_MAX];
            if (lb_model_linear_tensor_name(name, sizeof name, b, (lb_linear)l, &err))
                goto fail;
            const size_t k = (size_t)b * LB_LINEAR_COUNT + (size_t)l;
            if (target > 0) /* the allocation, or the override that fixed it */
                choose(name, tb_choices[k].method, &tb_choices[k].opts, ovr, n_ovr_ok, json,
                       &run, per, &choices[k], "--target-bpw");
            else
                choose(name, method, &opts, ovr, n_ovr_ok, json, &run, per, &choices[k],
                       "--method");
        }
    /* distillation trains the stored parameters in the original basis; a rotated
     * tensor stores them in the rotated one (lb_qparams refuses it later anyway) */
    for (size_t k = 0; dopts.steps > 0 && k < (size_t)L * LB_LINEAR_COUNT; k++)
        if (choices[k].opts.rotate) {
            lb_err_set(&err, LB_EINVAL, "--distill does not support rotated tensors (--rotate "
                       "hadamard); drop one of the two");
            goto fail;
        }
    lb_plan_choice head_choice;
    if (lm_head) {
        /* only with the flag, so runs without it keep their ids */
        lb_sha256_update(&run, "lm_head", 7);
        choose(LB_JOB_LM_HEAD_TENSOR, method, &opts, ovr, n_ovr_ok, json, &run, per,
               &head_choice, "--method");
    } else {
        /* an override aimed at lm_head alone would otherwise be silently ignored */
        for (int k = 0; k < n_ovr_ok; k++)
            if (ovr[k].matched == 0 &&
                regexec(&ovr[k].re, LB_JOB_LM_HEAD_TENSOR, 0, NULL, 0) == 0) {
                lb_err_set(&err, LB_EINVAL, "--override '%s' matches only lm_head.weight, "
                           "which stays as it is without --quantize-lm-head; add the flag or "
                           "drop the override", ovr[k].spec);
                goto fail;
            }
    }
    uint8_t rd[LB_SHA256_DIGEST];
    char run_id[LB_ID_HEX];
    lb_sha256_final(&run, rd);
    lb_sha256_to_hex(rd, run_id);
    if (claim_out_dir(out, run_id, force, &err) || (!store && lb_store_open(out, &store, &err)))
        goto fail;

    json_t *oj = json_pack("{s:i, s:i, s:b, s:s}", "ctx", (int)ctx, "nsamples", (int)nsamples,
                           "true_sequential", true_seq, "calib_sha256", calib_fp);
    if (oj && distill_json[0]) {
        json_error_t jerr;
        json_t *dj = json_loads(distill_json, 0, &jerr);
        if (!dj || json_object_set_new(oj, "distill", dj) != 0) {
            json_decref(oj);
            oj = NULL;
        }
    }
    if (oj && alloc_json) { /* the full table is OUT/allocation.json, this its digest */
        char ah[LB_ID_HEX];
        lb_sha256_hex(alloc_json, strlen(alloc_json), ah);
        json_object_set_new(oj, "target_bpw",
                            json_pack("{s:f, s:s, s:f, s:s, s:s, s:i}", "target", target,
                                      "proxy", proxy ? proxy : LB_TBPW_DEFAULT_PROXY,
                                      "predicted_bpw", (double)alloc.bits / (double)alloc.weights,
                                      "allocation", "allocation.json", "allocation_sha256", ah,
                                      "candidates", (int)menu->n));
    }
    opts_json = oj ? json_dumps(oj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(oj);
    lb_plan_spec spec = {cfg, model_dir, out, model_fp, calib_fp, LB_VERSION, nsamples, ctx,
                         true_seq, choices, method, opts.bits, opts_json,
                         dopts.steps > 0 ? &dopts : NULL, lm_head ? &head_choice : NULL, chunks,
                         NULL, 0, NULL};
    if (lb_plan_new(&spec, &plan, &err))
        goto fail;
    if (!json && chunks > 1 && lb_plan_effective_chunks(&spec) != chunks)
        fprintf(stderr, "lowbit quantize: --collect-chunks %d: using %d (%s)\n", chunks,
                (int)lb_plan_effective_chunks(&spec),
                dopts.steps > 0 ? "--distill needs whole activations"
                                : "at most one per block chunk of the calibration windows");
    /* the calibration windows are the first artifact */
    const char *cid = lb_plan_calib_id(plan);
    if (!lb_store_has(store, cid, "calib")) {
        lb_artifact_tensor t = {"tokens", LB_DTYPE_U32, 2, {nsamples, ctx, 0, 0}, tokens,
                                (size_t)(nsamples * ctx) * sizeof *tokens};
        if (lb_store_put(store, cid, "calib", &t, 1, NULL, 0, &err))
            goto fail;
    }
    int32_t reused = 0;
    for (int32_t i = 0; i < lb_plan_artifact_count(plan); i++)
        if (lb_store_has(store, lb_plan_artifact_id(plan, i), lb_plan_artifact_kind(plan, i))) {
            lb_plan_mark_present(plan, i);
            reused += i > 0;
        }
    lb_plan_start(plan);
    if (!json)
        fprintf(stderr, "lowbit quantize: %d jobs to run (%d artifacts reused from %s)\n",
                (int)lb_plan_needed_count(plan), (int)reused, lb_store_dir(store));

    lb_exec_ctx ectx = {model, model_fp, store, threads};
    lb_runner_opts ro = {threads, 0, on_progress, &ps};
    if (crash && *crash)
        ro.crash_after_jobs = atoi(crash);
    if (dist) { /* distributed: the same plan, fed through Redis to `lowbit worker`s */
        lb_dist_opts d = *dist;
        d.fingerprint = run_id;
        d.method = method;
        d.bits = opts.bits;
        d.model_dir = model_dir;
        d.out_dir = out;
        d.n_blocks = L;
        d.progress = on_progress;
        d.user = &ps;
        d.local = &ectx; /* the merge runs here, where the artifacts are */
        lb_artifact_tensor calib_t = {"tokens", LB_DTYPE_U32, 2, {nsamples, ctx, 0, 0}, tokens,
                                      (size_t)(nsamples * ctx) * sizeof *tokens};
        d.calib = &calib_t;
        if (lb_dist_run(plan, store, &d, &err))
            goto fail;
    } else if (lb_runner_run(plan, &ectx, &ro, &err)) {
        goto fail;
    }

    lb_packed_summary sum;
    if (lb_packed_verify(out, &sum, &err))
        goto fail;
    if (alloc_json && lb_tbpw_finish(out, alloc_json, &alloc, sum.bpw, json, &err))
        goto fail;
    double secs = now_s() - t0;
    long rss = peak_rss_kib();
    if (json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:f, s:I, s:I, s:f, s:f, s:I, s:b}", "event",
                              "done", "out", out, "method", method, "quantized_linears",
                              (json_int_t)sum.n_quantized, "bpw", sum.bpw, "quantized_bytes",
                              (json_int_t)sum.quantized_bytes, "file_bytes",
                              (json_int_t)sum.file_bytes, "seconds", secs, "peak_rss_mib",
                              (double)rss / 1024.0, "threads", (json_int_t)threads,
                              "lm_head_included", sum.lm_head_packed);
        if (o && sum.lm_head_packed)
            json_object_set_new(o, "lm_head_bpw", json_real(sum.lm_head_bpw));
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        char head[64] = "lm_head not quantized, not included";
        if (sum.lm_head_packed)
            snprintf(head, sizeof head, "lm_head included, itself %.4f bpw", sum.lm_head_bpw);
        printf("quantized %lld linears: %.4f bpw (%s; everything stored for them: %llu "
               "bytes), model.safetensors %llu bytes, %.1f s, peak RSS %.1f MiB -> %s\n",
               (long long)sum.n_quantized, sum.bpw, head, (unsigned long long)sum.quantized_bytes,
               (unsigned long long)sum.file_bytes, secs, (double)rss / 1024.0, out);
    }
    status = 0;
fail:
    if (status != 0 && err.msg[0]) {
        fprintf(stderr, "lowbit quantize: %s\n", err.msg);
        if (status == 1 && err.code == LB_EINVAL)
            status = 2;
    }
    for (int k = 0; k < n_ovr_ok; k++)
        lb_override_free(&ovr[k]);
    json_decref(per);
    free(opts_json);
    free(alloc_json);
    lb_tbpw_alloc_free(&alloc);
    free(menu);
    free(tb_choices);
    free(tb_fixed);
    lb_plan_free(&plan);
    lb_store_free(&store);
    free(choices);
    free(tokens);
    lb_model_free(&model);
    return status;
}

int lb_cmd_quantize(int argc, char **argv) { return lb_quantize_main(argc, argv, NULL); }
