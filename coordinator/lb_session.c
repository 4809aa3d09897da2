/* lb_session: one quantize run (lb_session.h). The run id hashes the model,
 * the calibration windows and every per-tensor choice, so OUT/.lowbit/job.json
 * tells a resume from another job. */
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

#include "lb_dist.h"
#include "lb_distill.h"
#include "lb_distill_opts.h"
#include "lb_exec.h"
#include "lb_io_util.h"
#include "lb_override.h"
#include "lb_packed.h"
#include "lb_plan.h"
#include "lb_rotate.h"
#include "lb_runner.h"
#include "lb_session.h"
#include "lb_tbpw.h"
#include "lb_sha256.h"
#include "lb_time.h"
#include "lb_tok_text.h"
#include "lb_tokens.h"

typedef struct {
    bool json, tty;
    double t0;
    const lb_config *cfg;
} progress_state;

struct lb_session {
    const lb_quantize_spec *spec;
    int threads;
    double t0;
    lb_model *model;
    const lb_config *cfg;
    uint32_t *tokens;
    int64_t ctx, nsamples;
    const char *calib;        /* the file the windows came from */
    char model_fp[LB_ID_HEX], calib_fp[LB_ID_HEX], run_id[LB_ID_HEX];
    lb_override ovr[LB_SESSION_MAX_OVERRIDES];
    int n_ovr;
    lb_plan_choice *choices;  /* [L * LB_LINEAR_COUNT] */
    lb_plan_choice head_choice;
    char distill_json[512];
    json_t *per;
    char *opts_json;
    lb_store *store;
    lb_plan *plan;
    lb_exec_ctx ectx;
    progress_state ps;
    /* --target-bpw: the menu, the chosen (or override-fixed) setting per tensor */
    lb_tbpw_menu *menu;
    lb_plan_choice *tb_choices;
    bool *tb_fixed;
    lb_tbpw_alloc alloc;
    char *alloc_json;
};

void lb_quantize_spec_init(lb_quantize_spec *spec, bool distributed)
{
    memset(spec, 0, sizeof *spec);
    lb_qopts_init(&spec->opts);
    lb_distill_opts_init(&spec->distill);
    spec->collect_chunks = distributed ? LB_SESSION_DIST_CHUNKS : 1;
}

/* a callee's code, for the few that return nonzero with err unset */
static int failed(const lb_err *err) { return err->code ? err->code : LB_EIO; }

static void print_json(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

static void on_progress(void *user, const lb_plan *plan, int32_t j, const lb_job_result *res,
                        int32_t done, int32_t total)
{
    progress_state *ps = user;
    const lb_job *job = lb_plan_job(plan, j);
    double el = lb_now_s() - ps->t0;
    double eta = done > 0 ? el / done * (total - done) : 0;
    const char *what = job->tensor[0] ? job->tensor : "";
    if (ps->json) {
        print_json(json_pack("{s:s, s:s, s:i, s:s, s:s, s:i, s:i, s:f, s:f, s:f, s:s}",
                             "event", "job", "type", lb_job_type_name(job->type), "block",
                             (int)job->block, "tensor", what, "method", job->method, "done",
                             (int)done, "total", (int)total, "seconds", res->seconds,
                             "elapsed", el, "bpw", res->bpw, "status",
                             res->status == LB_JOB_OK ? "ok" : "failed"));
        fflush(stdout);
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
static void choose(lb_session *s, const char *name, const char *method, const lb_qopts *opts,
                   const char *by, lb_sha256 *run, lb_plan_choice *c)
{
    const lb_quantize_spec *sp = s->spec;
    snprintf(c->method, sizeof c->method, "%s", method);
    c->opts = *opts;
    for (int k = 0; k < s->n_ovr; k++)
        if (regexec(&s->ovr[k].re, name, 0, NULL, 0) == 0) {
            snprintf(c->method, sizeof c->method, "%s", s->ovr[k].method);
            c->opts = s->ovr[k].opts;
            by = s->ovr[k].spec;
            s->ovr[k].matched++;
        }
    c->opts.rotate = lb_rotate_resolve(c->method, c->opts.rotate);
    char desc[512];
    lb_exec_describe_opts(&c->opts, desc, sizeof desc);
    lb_sha256_update(run, c->method, strlen(c->method));
    lb_sha256_update(run, desc, strlen(desc));
    json_object_set_new(s->per, name, json_pack("{s:s, s:f}", "method", c->method, "bits",
                                                c->opts.bits));
    if (!sp->json) {
        fprintf(stderr, "  %-44s %-6s bits=%g group=%d%s (%s)\n", name, c->method, c->opts.bits,
                (int)c->opts.group_size, c->opts.rotate ? " rotate=hadamard" : "", by);
        return;
    }
    print_json(json_pack("{s:s, s:s, s:s, s:s, s:s}", "event", "choice", "tensor", name,
                         "method", c->method, "options", desc, "by", by));
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


/* Opens the model and loads the calibration windows (s->tokens, ctx, nsamples). */
static int load_calib(lb_session *s, lb_err *err)
{
    const lb_quantize_spec *sp = s->spec;
    if (lb_packed_model_open(&s->model, sp->model_dir, err))
        return failed(err);
    const lb_config *cfg = s->cfg = lb_model_config(s->model);
    int64_t n_tok = 0, ctx = sp->ctx, nsamples = sp->nsamples;
    s->calib = sp->calib;
    if (sp->calib_text) {
        /* text: tokenized here into ready windows; the calib fingerprint below
         * hashes these ids, so other text or another tokenizer is another job */
        if (ctx == 0)
            ctx = cfg->max_position_embeddings < 2048 ? cfg->max_position_embeddings : 2048;
        if (ctx <= cfg->max_position_embeddings &&
            lb_tok_text_file(sp->model_dir, sp->calib_text, ctx, nsamples, cfg->vocab_size,
                             &s->tokens, &n_tok, NULL, err))
            return failed(err);
        s->calib = sp->calib_text;
    } else if (lb_tokens_load(sp->calib, &s->tokens, &n_tok, err) ||
               lb_tokens_check_vocab(s->tokens, n_tok, cfg->vocab_size, sp->calib, err)) {
        return failed(err);
    }
    if (ctx == 0)
        ctx = cfg->max_position_embeddings < 2048 ? cfg->max_position_embeddings : 2048;
    if (ctx > cfg->max_position_embeddings)
        return lb_err_set(err, LB_EINVAL, "--ctx %lld exceeds the model's "
                          "max_position_embeddings %d", (long long)ctx,
                          (int)cfg->max_position_embeddings);
    if (n_tok == 0 || n_tok % ctx != 0)
        return lb_err_set(err, LB_EINVAL, "%s: %lld tokens is not a multiple of --ctx %lld "
                          "(%lld windows + %lld tokens); pass a --ctx that divides it, or "
                          "trim the file", s->calib, (long long)n_tok, (long long)ctx,
                          (long long)(n_tok / ctx), (long long)(n_tok % ctx));
    int64_t windows = n_tok / ctx;
    if (nsamples == 0)
        nsamples = windows;
    if (nsamples > windows)
        return lb_err_set(err, LB_EINVAL, "--nsamples %lld but %s holds only %lld windows of "
                          "%lld tokens; lower --nsamples or --ctx", (long long)nsamples,
                          s->calib, (long long)windows, (long long)ctx);
    s->ctx = ctx;
    s->nsamples = nsamples;
    return 0;
}

/* fingerprints: the model's content, the calibration windows used */
static int fingerprints(lb_session *s, lb_err *err)
{
    if (lb_exec_model_fingerprint(s->model, s->model_fp, err))
        return failed(err);
    lb_sha256 h;
    lb_sha256_init(&h);
    char head[64];
    int n = snprintf(head, sizeof head, "calib|%lld|%lld|", (long long)s->nsamples,
                     (long long)s->ctx);
    lb_sha256_update(&h, head, (size_t)n);
    lb_sha256_update(&h, s->tokens, (size_t)(s->nsamples * s->ctx) * sizeof *s->tokens);
    uint8_t d[LB_SHA256_DIGEST];
    lb_sha256_final(&h, d);
    lb_sha256_to_hex(d, s->calib_fp);
    return 0;
}

/* Per-tensor choices (global method, then every matching override: the last
 * wins) and the run id that hashes them. */
static int resolve_choices(lb_session *s, lb_err *err)
{
    const lb_quantize_spec *sp = s->spec;
    const int32_t L = s->cfg->num_hidden_layers;
    s->choices = calloc((size_t)L * LB_LINEAR_COUNT, sizeof *s->choices);
    s->per = json_object();
    if (!s->choices || !s->per)
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    lb_sha256 run;
    lb_sha256_init(&run);
    lb_sha256_update(&run, s->model_fp, 64);
    lb_sha256_update(&run, s->calib_fp, 64);
    lb_sha256_update(&run, sp->true_sequential ? "ts" : "--", 2);
    if (sp->distill.steps > 0) {
        /* only with --distill, so runs without it keep their ids */
        if (lb_distill_opts_json(&sp->distill, s->distill_json, sizeof s->distill_json, err))
            return failed(err);
        lb_sha256_update(&run, s->distill_json, strlen(s->distill_json));
    }
    if (!sp->json)
        fprintf(stderr, "lowbit quantize: %s, %d blocks, %lld calibration windows of %lld "
                "tokens, %d threads\n", sp->model_dir, (int)L, (long long)s->nsamples,
                (long long)s->ctx, s->threads);
    for (int32_t b = 0; b < L; b++)
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            char name[LB_JOB_TENSOR_MAX];
            if (lb_model_linear_tensor_name(name, sizeof name, b, (lb_linear)l, err))
                return failed(err);
            const size_t k = (size_t)b * LB_LINEAR_COUNT + (size_t)l;
            if (sp->target_bpw > 0) /* the allocation, or the override that fixed it */
                choose(s, name, s->tb_choices[k].method, &s->tb_choices[k].opts,
                       "--target-bpw", &run, &s->choices[k]);
            else
                choose(s, name, sp->method, &sp->opts, "--method", &run, &s->choices[k]);
        }
    /* distillation trains the stored parameters in the original basis; a rotated
     * tensor stores them in the rotated one (lb_qparams refuses it later anyway) */
    for (size_t k = 0; sp->distill.steps > 0 && k < (size_t)L * LB_LINEAR_COUNT; k++)
        if (s->choices[k].opts.rotate)
            return lb_err_set(err, LB_EINVAL, "--distill does not support rotated tensors "
                              "(--rotate hadamard); drop one of the two");
    if (sp->lm_head) {
        /* only with the flag, so runs without it keep their ids */
        lb_sha256_update(&run, "lm_head", 7);
        choose(s, LB_JOB_LM_HEAD_TENSOR, sp->method, &sp->opts, "--method", &run,
               &s->head_choice);
    } else {
        /* an override aimed at lm_head alone would otherwise be silently ignored */
        for (int k = 0; k < s->n_ovr; k++)
            if (s->ovr[k].matched == 0 &&
                regexec(&s->ovr[k].re, LB_JOB_LM_HEAD_TENSOR, 0, NULL, 0) == 0)
                return lb_err_set(err, LB_EINVAL, "--override '%s' matches only "
                                  "lm_head.weight, which stays as it is without "
                                  "--quantize-lm-head; add the flag or drop the override",
                                  s->ovr[k].spec);
    }
    uint8_t rd[LB_SHA256_DIGEST];
    lb_sha256_final(&run, rd);
    lb_sha256_to_hex(rd, s->run_id);
    return 0;
}

/* The plan over the claimed output directory, the calibration windows as its
 * first artifact, every artifact already present marked; started. */
static int build_plan(lb_session *s, lb_err *err)
{
    const lb_quantize_spec *sp = s->spec;
    if (claim_out_dir(sp->out, s->run_id, sp->force, err) ||
        (!s->store && lb_store_open(sp->out, &s->store, err)))
        return failed(err);
    json_t *oj = json_pack("{s:i, s:i, s:b, s:s}", "ctx", (int)s->ctx, "nsamples",
                           (int)s->nsamples, "true_sequential", sp->true_sequential,
                           "calib_sha256", s->calib_fp);
    if (oj && s->distill_json[0]) {
        json_error_t jerr;
        json_t *dj = json_loads(s->distill_json, 0, &jerr);
        if (!dj || json_object_set_new(oj, "distill", dj) != 0) {
            json_decref(oj);
            oj = NULL;
        }
    }
    if (oj && s->alloc_json) { /* the full table is OUT/allocation.json, this its digest */
        char ah[LB_ID_HEX];
        lb_sha256_hex(s->alloc_json, strlen(s->alloc_json), ah);
        json_object_set_new(oj, "target_bpw",
                            json_pack("{s:f, s:s, s:f, s:s, s:s, s:i}", "target", sp->target_bpw,
                                      "proxy", sp->proxy ? sp->proxy : LB_TBPW_DEFAULT_PROXY,
                                      "predicted_bpw",
                                      (double)s->alloc.bits / (double)s->alloc.weights,
                                      "allocation", "allocation.json", "allocation_sha256", ah,
                                      "candidates", (int)s->menu->n));
    }
    s->opts_json = oj ? json_dumps(oj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(oj);
    bool distill = sp->distill.steps > 0;
    lb_plan_spec spec = {s->cfg, sp->model_dir, sp->out, s->model_fp, s->calib_fp, LB_VERSION,
                         s->nsamples, s->ctx, sp->true_sequential, s->choices, sp->method,
                         sp->opts.bits, s->opts_json, distill ? &sp->distill : NULL,
                         sp->lm_head ? &s->head_choice : NULL, sp->collect_chunks,
                         NULL, 0, NULL};
    if (lb_plan_new(&spec, &s->plan, err))
        return failed(err);
    int chunks = sp->collect_chunks;
    if (!sp->json && chunks > 1 && lb_plan_effective_chunks(&spec) != chunks)
        fprintf(stderr, "lowbit quantize: --collect-chunks %d: using %d (%s)\n", chunks,
                (int)lb_plan_effective_chunks(&spec),
                distill ? "--distill needs whole activations"
                        : "at most one per block chunk of the calibration windows");
    const char *cid = lb_plan_calib_id(s->plan);
    if (!lb_store_has(s->store, cid, "calib")) {
        lb_artifact_tensor t = {"tokens", LB_DTYPE_U32, 2, {s->nsamples, s->ctx, 0, 0},
                                s->tokens, (size_t)(s->nsamples * s->ctx) * sizeof *s->tokens};
        if (lb_store_put(s->store, cid, "calib", &t, 1, NULL, 0, err))
            return failed(err);
    }
    int32_t reused = 0;
    for (int32_t i = 0; i < lb_plan_artifact_count(s->plan); i++)
        if (lb_store_has(s->store, lb_plan_artifact_id(s->plan, i),
                         lb_plan_artifact_kind(s->plan, i))) {
            lb_plan_mark_present(s->plan, i);
            reused += i > 0;
        }
    lb_plan_start(s->plan);
    if (!sp->json)
        fprintf(stderr, "lowbit quantize: %d jobs to run (%d artifacts reused from %s)\n",
                (int)lb_plan_needed_count(s->plan), (int)reused, lb_store_dir(s->store));
    return 0;
}

/* --target-bpw: the measurement (embedded or through Redis, like the run) and the
 * allocation, before the per-tensor choices (lb_tbpw_stage). */
static int target_stage(lb_session *s, lb_err *err)
{
    const lb_quantize_spec *sp = s->spec;
    if (sp->target_bpw <= 0)
        return 0;
    s->ps = (progress_state){sp->json, isatty(2) != 0, lb_now_s(), s->cfg};
    lb_tbpw_args ta = {s->cfg, s->model, sp->model_dir, sp->out, s->model_fp, s->calib_fp,
                       s->nsamples, s->ctx, s->threads, sp->json, sp->target_bpw,
                       sp->candidates, sp->proxy, &sp->opts, s->ovr, s->n_ovr, sp->dist,
                       s->tokens, on_progress, &s->ps, sp->crash_after_jobs};
    if (lb_tbpw_stage(&ta, &s->store, &s->menu, &s->tb_choices, &s->tb_fixed, &s->alloc,
                      &s->alloc_json, err))
        return failed(err);
    return 0;
}

int lb_session_prepare(const lb_quantize_spec *spec, lb_session **out, lb_err *err)
{
    *out = NULL;
    lb_session *s = calloc(1, sizeof *s);
    if (!s)
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    s->spec = spec;
    s->t0 = lb_now_s();
    s->threads = spec->threads;
    if (s->threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        s->threads = nc > 0 ? (int)nc : 1;
    }
    int rc = 0;
    for (; s->n_ovr < spec->n_overrides; s->n_ovr++)
        if ((rc = lb_override_parse(spec->overrides[s->n_ovr], &spec->opts, &s->ovr[s->n_ovr],
                                    err)))
            goto fail;
    if ((rc = load_calib(s, err)) || (rc = fingerprints(s, err)) ||
        (rc = target_stage(s, err)) || (rc = resolve_choices(s, err)) ||
        (rc = build_plan(s, err)))
        goto fail;
    s->ectx = (lb_exec_ctx){s->model, s->model_fp, s->store, s->threads};
    *out = s;
    return 0;
fail:
    lb_session_free(&s);
    return rc ? rc : LB_EINVAL;
}

int lb_session_run_embedded(lb_session *s, lb_err *err)
{
    s->ps = (progress_state){s->spec->json, isatty(2) != 0, lb_now_s(), s->cfg};
    lb_runner_opts ro = {s->threads, s->spec->crash_after_jobs, on_progress, &s->ps};
    return lb_runner_run(s->plan, &s->ectx, &ro, err);
}

int lb_session_run_distributed(lb_session *s, const lb_dist_opts *dist, lb_err *err)
{
    const lb_quantize_spec *sp = s->spec;
    s->ps = (progress_state){sp->json, isatty(2) != 0, lb_now_s(), s->cfg};
    lb_dist_opts d = *dist;
    d.fingerprint = s->run_id;
    d.method = sp->method;
    d.bits = sp->opts.bits;
    d.model_dir = sp->model_dir;
    d.out_dir = sp->out;
    d.n_blocks = s->cfg->num_hidden_layers;
    d.progress = on_progress;
    d.user = &s->ps;
    d.local = &s->ectx; /* the merge runs here, where the artifacts are */
    lb_artifact_tensor calib_t = {"tokens", LB_DTYPE_U32, 2, {s->nsamples, s->ctx, 0, 0},
                                  s->tokens,
                                  (size_t)(s->nsamples * s->ctx) * sizeof *s->tokens};
    d.calib = &calib_t;
    return lb_dist_run(s->plan, s->store, &d, err);
}

int lb_session_finish(lb_session *s, lb_err *err)
{
    const lb_quantize_spec *sp = s->spec;
    lb_packed_summary sum;
    if (lb_packed_verify(sp->out, &sum, err))
        return failed(err);
    if (s->alloc_json &&
        lb_tbpw_finish(sp->out, s->alloc_json, &s->alloc, sum.bpw, sp->json, err))
        return failed(err);
    double secs = lb_now_s() - s->t0;
    long rss = peak_rss_kib();
    if (sp->json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:f, s:I, s:I, s:f, s:f, s:I, s:b}", "event",
                              "done", "out", sp->out, "method", sp->method, "quantized_linears",
                              (json_int_t)sum.n_quantized, "bpw", sum.bpw, "quantized_bytes",
                              (json_int_t)sum.quantized_bytes, "file_bytes",
                              (json_int_t)sum.file_bytes, "seconds", secs, "peak_rss_mib",
                              (double)rss / 1024.0, "threads", (json_int_t)s->threads,
                              "lm_head_included", sum.lm_head_packed);
        if (o && sum.lm_head_packed)
            json_object_set_new(o, "lm_head_bpw", json_real(sum.lm_head_bpw));
        print_json(o);
        return 0;
    }
    char head[64] = "lm_head not quantized, not included";
    if (sum.lm_head_packed)
        snprintf(head, sizeof head, "lm_head included, itself %.4f bpw", sum.lm_head_bpw);
    printf("quantized %lld linears: %.4f bpw (%s; everything stored for them: %llu "
           "bytes), model.safetensors %llu bytes, %.1f s, peak RSS %.1f MiB -> %s\n",
           (long long)sum.n_quantized, sum.bpw, head, (unsigned long long)sum.quantized_bytes,
           (unsigned long long)sum.file_bytes, secs, (double)rss / 1024.0, sp->out);
    return 0;
}

void lb_session_free(lb_session **sp)
{
    lb_session *s = sp ? *sp : NULL;
    if (!s)
        return;
    for (int k = 0; k < s->n_ovr; k++)
        lb_override_free(&s->ovr[k]);
    json_decref(s->per);
    free(s->opts_json);
    free(s->alloc_json);
    lb_tbpw_alloc_free(&s->alloc);
    free(s->menu);
    free(s->tb_choices);
    free(s->tb_fixed);
    lb_plan_free(&s->plan);
    lb_store_free(&s->store);
    free(s->choices);
    free(s->tokens);
    lb_model_free(&s->model);
    free(s);
    *sp = NULL;
}
