/* lb_tbpw: --target-bpw measurement plan driver and allocation (lb_tbpw.h). */
#include "lb_tbpw.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_alloc.h"
#include "lb_io_util.h"
#include "lb_sha256.h"
#include "lb_exec_measure.h"
#include "lb_model.h"
#include "lb_override.h"
#include "lb_rotate.h"

/* GPTQ 2/3/4 per row and with groups of 32 and 128, CLAQ, PB-LLM, QBB with 1-3
 * bases (the cheapest, for targets near 2 bpw on narrow layers whose scales
 * cost a lot) and RTN 8 as the top. */
const char *const lb_tbpw_default_candidates =
    "gptq:bits=2;gptq:bits=2,group-size=32;gptq:bits=2,group-size=128;"
    "gptq:bits=3;gptq:bits=3,group-size=32;gptq:bits=3,group-size=128;"
    "gptq:bits=4;gptq:bits=4,group-size=32;gptq:bits=4,group-size=128;"
    "claq:bits=2.1;claq:bits=3.1;pbllm:bits=1,salient=0.1,salient-group=128;"
    "qbb:bits=1,bases=1;qbb:bits=1,bases=2;qbb:bits=1,bases=3;rtn:bits=8";

int lb_tbpw_menu_parse(const char *list, const lb_qopts *base, lb_tbpw_menu *m, lb_err *err)
{
    memset(m, 0, sizeof *m);
    if (!list)
        list = lb_tbpw_default_candidates;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ';');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0) {
            if (m->n == LB_TBPW_MAX_CANDIDATES)
                return lb_err_set(err, LB_EINVAL, "--candidates: more than %d entries",
                                  LB_TBPW_MAX_CANDIDATES);
            if (n >= LB_TBPW_SPEC_MAX - 4)
                return lb_err_set(err, LB_EINVAL, "--candidates: entry '%.40s...' longer than "
                                  "%d characters", p, LB_TBPW_SPEC_MAX - 5);
            char spec[LB_TBPW_SPEC_MAX + 4];
            snprintf(spec, sizeof spec, ".*=%.*s", (int)n, p);
            lb_override o;
            if (lb_override_parse(spec, base, &o, err)) {
                lb_err_prefix(err, "--candidates entry '%.*s'", (int)n, p);
                err->code = LB_EINVAL;
                return LB_EINVAL;
            }
            lb_plan_choice *c = &m->cand[m->n];
            snprintf(c->method, sizeof c->method, "%s", o.method);
            c->opts = o.opts;
            c->opts.rotate = lb_rotate_resolve(c->method, c->opts.rotate);
            lb_override_free(&o);
            if (!lb_qmethod_find(c->method))
                return lb_err_set(err, LB_EINVAL, "--candidates entry '%.*s': unknown method "
                                  "\"%s\"", (int)n, p, c->method);
            snprintf(m->spec[m->n], sizeof m->spec[m->n], "%.*s", (int)n, p);
            m->n++;
        }
        if (!e)
            break;
        p = e + 1;
    }
    if (m->n == 0)
        return lb_err_set(err, LB_EINVAL, "--candidates '%s': no entry (expected "
                          "METHOD[:opt=val,...];...)", list);
    return 0;
}

void lb_tbpw_alloc_free(lb_tbpw_alloc *a)
{
    if (!a)
        return;
    free(a->names);
    free(a->choice);
    free(a->vals);
    free(a->ids);
    memset(a, 0, sizeof *a);
}

int lb_tbpw_measure(const lb_plan_spec *spec, const lb_store *store, const lb_exec_ctx *ectx,
                    const lb_runner_opts *ro, const lb_dist_opts *dist, lb_plan **plan,
                    int32_t *measure_ran, int32_t *measure_total, lb_err *err)
{
    int rc = lb_plan_new(spec, plan, err);
    if (rc)
        return rc;
    lb_plan *p = *plan;
    for (int32_t i = 0; i < lb_plan_artifact_count(p); i++)
        if (lb_store_has(store, lb_plan_artifact_id(p, i), lb_plan_artifact_kind(p, i)))
            lb_plan_mark_present(p, i);
    lb_plan_start(p);
    int32_t ran = 0, total = 0;
    for (int32_t j = 0; j < lb_plan_job_count(p); j++)
        if (lb_plan_job(p, j)->type == LB_JOB_MEASURE) {
            total++;
            ran += lb_plan_job_needed(p, j);
        }
    *measure_ran = ran;
    *measure_total = total;
    if (lb_plan_needed_count(p) == 0)
        return 0;
    if (dist) {
        lb_dist_opts d = *dist;
        char name[96];
        snprintf(name, sizeof name, "%s.measure", dist->job_name);
        d.job_name = name;
        return lb_dist_run(p, store, &d, err);
    }
    return lb_runner_run(p, ectx, ro, err);
}

int lb_tbpw_allocate(const lb_plan *plan, const lb_plan_spec *spec, const lb_store *store,
                     const lb_tbpw_menu *menu, double target, const char *proxy,
                     lb_plan_choice *choices, lb_tbpw_alloc *a, lb_err *err)
{
    memset(a, 0, sizeof *a);
    const int32_t n = spec->cfg->num_hidden_layers * LB_LINEAR_COUNT, C = menu->n;
    int rc = 0;
    lb_alloc_menu *menus = NULL;
    lb_alloc_cand *cands = NULL;
    int32_t *free_idx = NULL, *pick = NULL, *seen = NULL;
    a->proxy = lb_measure_proxy_index(proxy ? proxy : LB_TBPW_DEFAULT_PROXY);
    if (a->proxy < 0)
        return lb_err_set(err, LB_EINVAL, "--proxy %s: one of rel_err, out_err, out_abs, "
                          "block_err, block_abs, kl", proxy);
    a->n_tensors = n;
    a->n_cand = C;
    a->target = target;
    a->names = calloc((size_t)n, sizeof *a->names);
    a->choice = calloc((size_t)n, sizeof *a->choice);
    a->vals = calloc((size_t)n * (size_t)C * LB_MEAS_COUNT, sizeof *a->vals);
    a->ids = calloc((size_t)n * (size_t)C, sizeof *a->ids);
    menus = calloc((size_t)n, sizeof *menus);
    cands = calloc((size_t)n * (size_t)C, sizeof *cands);
    free_idx = calloc((size_t)n, sizeof *free_idx);
    pick = calloc((size_t)n, sizeof *pick);
    seen = calloc((size_t)n, sizeof *seen);
    if (!a->names || !a->choice || !a->vals || !a->ids || !menus || !cands || !free_idx ||
        !pick || !seen) {
        rc = lb_err_set(err, LB_ENOMEM, "--target-bpw: out of memory");
        goto done;
    }
    for (int32_t j = 0; j < lb_plan_job_count(plan); j++) {
        const lb_job *job = lb_plan_job(plan, j);
        if (job->type != LB_JOB_MEASURE)
            continue;
        int32_t k = job->block * LB_LINEAR_COUNT + job->linear;
        if (k < 0 || k >= n || seen[k] >= C) {
            rc = lb_err_set(err, LB_ESTATE, "--target-bpw: measure plan out of order at %s",
                            job->tensor);
            goto done;
        }
        int32_t c = seen[k]++;
        snprintf(a->names[k], sizeof a->names[k], "%s", job->tensor);
        memcpy(a->ids[(size_t)k * C + c], job->outputs[0].hex, LB_ID_HEX);
        if ((rc = lb_measure_read(store, job->outputs[0].hex,
                                  &a->vals[((size_t)k * C + c) * LB_MEAS_COUNT], err)))
            goto done;
    }
    int32_t nfree = 0;
    for (int32_t k = 0; k < n; k++) {
        const double *v = &a->vals[(size_t)k * C * LB_MEAS_COUNT];
        a->weights += (uint64_t)v[LB_MEAS_WEIGHTS];
        if (spec->measure_fixed && spec->measure_fixed[k]) {
            a->choice[k] = -1;
            a->fixed_bits += (uint64_t)v[LB_MEAS_BITS];
            a->loss += v[a->proxy];
            continue;
        }
        for (int32_t c = 0; c < C; c++) {
            cands[(size_t)nfree * C + c].bits = (uint64_t)v[c * LB_MEAS_COUNT + LB_MEAS_BITS];
            cands[(size_t)nfree * C + c].loss = v[c * LB_MEAS_COUNT + a->proxy];
        }
        menus[nfree].n = C;
        menus[nfree].cand = &cands[(size_t)nfree * C];
        free_idx[nfree++] = k;
    }
    a->budget = (uint64_t)floor(target * (double)a->weights);
    if (a->fixed_bits > a->budget) {
        rc = lb_err_set(err, LB_ENOTFOUND, "--target-bpw %g: the --override tensors alone store "
                        "%.4f bpw of the whole; raise the target or loosen the overrides",
                        target, (double)a->fixed_bits / (double)a->weights);
        goto done;
    }
    a->bits = a->fixed_bits;
    if (nfree > 0) {
        /* exact (gcd granule) unless the table would be too big: then a granule that
         * fits, which rounds costs up and so still respects the budget */
        uint64_t fb = a->budget - a->fixed_bits, gran = 0;
        uint64_t max_states = (uint64_t)(LB_ALLOC_MAX_TABLE / nfree) - 1;
        if (fb / 8 > max_states)
            gran = fb / max_states + 1;
        lb_alloc_result r;
        if ((rc = lb_alloc_solve(menus, nfree, fb, gran, pick, &r, err))) {
            if (rc == LB_ENOTFOUND)
                lb_err_prefix(err, "--target-bpw %g with these candidates (the cheapest menu "
                              "entry per tensor is the floor)", target);
            goto done;
        }
        for (int32_t i = 0; i < nfree; i++) {
            int32_t k = free_idx[i];
            a->choice[k] = pick[i];
            choices[k] = menu->cand[pick[i]];
        }
        a->bits += r.bits;
        a->loss += r.loss;
    }
done:
    free(menus);
    free(cands);
    free(free_idx);
    free(pick);
    free(seen);
    if (rc)
        lb_tbpw_alloc_free(a);
    return rc;
}

static json_t *vals_json(const double *v)
{
    json_t *o = json_object();
    for (int k = 0; o && k < LB_MEAS_COUNT; k++)
        json_object_set_new(o, lb_measure_value_name(k),
                            k <= LB_MEAS_WEIGHTS ? json_integer((json_int_t)v[k]) : json_real(v[k]));
    if (o)
        json_object_set_new(o, "bpw", json_real(v[LB_MEAS_BITS] / v[LB_MEAS_WEIGHTS]));
    return o;
}

static void opts_desc(const lb_plan_choice *c, char *buf, size_t size)
{
    lb_exec_describe_opts(&c->opts, buf, size);
}

char *lb_tbpw_alloc_json(const lb_tbpw_alloc *a, const lb_tbpw_menu *menu,
                         const lb_plan_choice *choices)
{
    json_t *root = json_object(), *per = json_object();
    if (!root || !per) {
        json_decref(root);
        json_decref(per);
        return NULL;
    }
    for (int32_t k = 0; k < a->n_tensors; k++) {
        int32_t c = a->choice[k] < 0 ? 0 : a->choice[k];
        const double *v = &a->vals[((size_t)k * a->n_cand + c) * LB_MEAS_COUNT];
        char desc[512];
        opts_desc(&choices[k], desc, sizeof desc);
        json_t *t = vals_json(v);
        json_object_set_new(t, "method", json_string(choices[k].method));
        json_object_set_new(t, "options", json_string(desc));
        json_object_set_new(t, "by", json_string(a->choice[k] < 0 ? "--override"
                                                                  : menu->spec[c]));
        json_object_set_new(t, "proxy_loss", json_real(v[a->proxy]));
        json_object_set_new(per, a->names[k], t);
    }
    json_object_set_new(root, "target_bpw", json_real(a->target));
    json_object_set_new(root, "proxy", json_string(lb_measure_value_name(a->proxy)));
    json_object_set_new(root, "proxy_version", json_string(LB_MEASURE_PROXY_VERSION));
    json_object_set_new(root, "weights", json_integer((json_int_t)a->weights));
    json_object_set_new(root, "budget_bits", json_integer((json_int_t)a->budget));
    json_object_set_new(root, "bits", json_integer((json_int_t)a->bits));
    json_object_set_new(root, "predicted_bpw",
                        json_real((double)a->bits / (double)a->weights));
    json_object_set_new(root, "loss", json_real(a->loss));
    json_object_set_new(root, "tensors", per);
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    return s;
}

char *lb_tbpw_measurement_json(const lb_tbpw_alloc *a, const lb_tbpw_menu *menu,
                               const lb_plan_choice *choices)
{
    json_t *root = json_object(), *per = json_object();
    if (!root || !per) {
        json_decref(root);
        json_decref(per);
        return NULL;
    }
    for (int32_t k = 0; k < a->n_tensors; k++) {
        json_t *arr = json_array();
        int32_t nc = a->choice[k] < 0 ? 1 : a->n_cand;
        for (int32_t c = 0; c < nc; c++) {
            const lb_plan_choice *ch = a->choice[k] < 0 ? &choices[k] : &menu->cand[c];
            char desc[512];
            opts_desc(ch, desc, sizeof desc);
            json_t *t = vals_json(&a->vals[((size_t)k * a->n_cand + c) * LB_MEAS_COUNT]);
            json_object_set_new(t, "candidate", json_string(a->choice[k] < 0 ? "--override"
                                                                             : menu->spec[c]));
            json_object_set_new(t, "method", json_string(ch->method));
            json_object_set_new(t, "options", json_string(desc));
            json_object_set_new(t, "artifact", json_string(a->ids[(size_t)k * a->n_cand + c]));
            json_array_append_new(arr, t);
        }
        json_object_set_new(per, a->names[k], arr);
    }
    json_object_set_new(root, "proxy_version", json_string(LB_MEASURE_PROXY_VERSION));
    json_object_set_new(root, "tensors", per);
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    return s;
}

void lb_tbpw_print(const lb_tbpw_alloc *a, const lb_tbpw_menu *menu,
                   const lb_plan_choice *choices, bool json)
{
    for (int32_t k = 0; k < a->n_tensors; k++) {
        int32_t c = a->choice[k] < 0 ? 0 : a->choice[k];
        const double *v = &a->vals[((size_t)k * a->n_cand + c) * LB_MEAS_COUNT];
        const char *by = a->choice[k] < 0 ? "--override" : menu->spec[c];
        double bpw = v[LB_MEAS_BITS] / v[LB_MEAS_WEIGHTS];
        if (json) {
            char desc[512];
            opts_desc(&choices[k], desc, sizeof desc);
            json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:f, s:s, s:f}", "event",
                                  "allocation", "tensor", a->names[k], "method",
                                  choices[k].method, "options", desc, "by", by, "bits",
                                  (json_int_t)v[LB_MEAS_BITS], "bpw", bpw, "proxy",
                                  lb_measure_value_name(a->proxy), "proxy_loss", v[a->proxy]);
            char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
            if (s)
                printf("%s\n", s);
            free(s);
            json_decref(o);
        } else {
            fprintf(stderr, "  %-40s %-34s %8.0f bits %7.4f bpw  %s %.4g\n", a->names[k], by,
                    v[LB_MEAS_BITS], bpw, lb_measure_value_name(a->proxy), v[a->proxy]);
        }
    }
    double pred = (double)a->bits / (double)a->weights;
    if (json) {
        json_t *o = json_pack("{s:s, s:f, s:f, s:I, s:I, s:s, s:f}", "event", "allocation_done",
                              "target_bpw", a->target, "predicted_bpw", pred, "bits",
                              (json_int_t)a->bits, "budget_bits", (json_int_t)a->budget,
                              "proxy", lb_measure_value_name(a->proxy), "loss", a->loss);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(o);
        fflush(stdout);
    } else {
        fprintf(stderr, "  allocation: %.4f bpw predicted (target %g, %llu of %llu budget bits), "
                "summed %s %.6g\n", pred, a->target, (unsigned long long)a->bits,
                (unsigned long long)a->budget, lb_measure_value_name(a->proxy), a->loss);
    }
}

static int write_text(const char *dir, const char *sub, const char *name, const char *text,
                      lb_err *err)
{
    char *d = sub ? lb_io_path_join(dir, sub) : strdup(dir);
    char *path = d ? lb_io_path_join(d, name) : NULL;
    int rc = path ? lb_io_write_atomic(path, text, strlen(text), err)
                  : lb_err_set(err, LB_ENOMEM, "out of memory");
    free(path);
    free(d);
    return rc;
}

int lb_tbpw_stage(const lb_tbpw_args *a, lb_store **store, lb_tbpw_menu **menu,
                  lb_plan_choice **choices, bool **fixed, lb_tbpw_alloc *alloc,
                  char **alloc_json, lb_err *err)
{
    const int32_t L = a->cfg->num_hidden_layers, n = L * LB_LINEAR_COUNT;
    lb_plan *plan = NULL;
    char *mjson = NULL;
    int rc = 0;
    *menu = malloc(sizeof **menu);
    *choices = calloc((size_t)n, sizeof **choices);
    *fixed = calloc((size_t)n, sizeof **fixed);
    if (!*menu || !*choices || !*fixed)
        return lb_err_set(err, LB_ENOMEM, "--target-bpw: out of memory");
    if ((rc = lb_tbpw_menu_parse(a->candidates, a->base, *menu, err)))
        return rc;
    for (int32_t k = 0; k < n; k++) { /* an override fixes its tensors (the last match wins) */
        char name[LB_JOB_TENSOR_MAX];
        if ((rc = lb_model_linear_tensor_name(name, sizeof name, k / LB_LINEAR_COUNT,
                                              (lb_linear)(k % LB_LINEAR_COUNT), err)))
            return rc;
        for (int o = 0; o < a->n_ovr; o++)
            if (regexec(&a->ovr[o].re, name, 0, NULL, 0) == 0) {
                (*fixed)[k] = true;
                snprintf((*choices)[k].method, sizeof (*choices)[k].method, "%s",
                         a->ovr[o].method);
                (*choices)[k].opts = a->ovr[o].opts;
                (*choices)[k].opts.rotate =
                    lb_rotate_resolve(a->ovr[o].method, a->ovr[o].opts.rotate);
            }
    }
    if ((rc = lb_io_mkdir_p(a->out, err)) || (rc = lb_store_open(a->out, store, err)))
        return rc;
    lb_plan_spec spec = {a->cfg, a->model_dir, a->out, a->model_fp, a->calib_fp, LB_VERSION,
                         a->n_seq, a->seq_len, false, *choices, "measure", 0, NULL, NULL, NULL,
                         1, (*menu)->cand, (*menu)->n, *fixed};
    if ((rc = lb_plan_new(&spec, &plan, err)))
        return rc;
    const char *cid = lb_plan_calib_id(plan);
    lb_artifact_tensor calib_t = {"tokens", LB_DTYPE_U32, 2, {a->n_seq, a->seq_len, 0, 0},
                                  a->tokens, (size_t)(a->n_seq * a->seq_len) * sizeof(uint32_t)};
    if (!lb_store_has(*store, cid, "calib") &&
        (rc = lb_store_put(*store, cid, "calib", &calib_t, 1, NULL, 0, err)))
        goto done;
    for (int32_t i = 0; i < lb_plan_artifact_count(plan); i++)
        if (lb_store_has(*store, lb_plan_artifact_id(plan, i), lb_plan_artifact_kind(plan, i)))
            lb_plan_mark_present(plan, i);
    lb_plan_start(plan);
    int32_t ran = 0, total = 0;
    lb_sha256 fh; /* the measurement's run id: every measure job id */
    lb_sha256_init(&fh);
    lb_sha256_update(&fh, "measure", 7);
    for (int32_t j = 0; j < lb_plan_job_count(plan); j++) {
        const lb_job *job = lb_plan_job(plan, j);
        if (job->type != LB_JOB_MEASURE)
            continue;
        total++;
        ran += lb_plan_job_needed(plan, j);
        lb_sha256_update(&fh, job->id, 64);
    }
    uint8_t fd[LB_SHA256_DIGEST];
    char fp[LB_ID_HEX];
    lb_sha256_final(&fh, fd);
    lb_sha256_to_hex(fd, fp);
    if (a->json)
        printf("{\"event\":\"measurement\",\"measure_jobs_run\":%d,\"measure_jobs_total\":%d,"
               "\"jobs\":%d,\"candidates\":%d}\n", (int)ran, (int)total,
               (int)lb_plan_needed_count(plan), (int)(*menu)->n);
    else
        fprintf(stderr, "lowbit quantize: --target-bpw %g: measurement: %d of %d measure jobs to "
                "run (%d jobs in all, %d candidates; the rest reused from %s)\n", a->target,
                (int)ran, (int)total, (int)lb_plan_needed_count(plan), (int)(*menu)->n,
                lb_store_dir(*store));
    fflush(stdout);
    if (lb_plan_needed_count(plan) > 0) {
        lb_exec_ctx ectx = {a->model, a->model_fp, *store, a->threads};
        if (a->dist) {
            lb_dist_opts d = *a->dist;
            char name[96];
            snprintf(name, sizeof name, "%s.measure", a->dist->job_name);
            d.job_name = name;
            d.fingerprint = fp;
            d.method = "measure";
            d.bits = 0;
            d.model_dir = a->model_dir;
            d.out_dir = a->out;
            d.n_blocks = L;
            d.progress = a->progress;
            d.user = a->user;
            d.local = &ectx;
            d.calib = &calib_t;
            rc = lb_dist_run(plan, *store, &d, err);
        } else {
            lb_runner_opts ro = {a->threads, a->crash_after_jobs, a->progress, a->user};
            rc = lb_runner_run(plan, &ectx, &ro, err);
        }
        if (rc)
            goto done;
    }
    if ((rc = lb_tbpw_allocate(plan, &spec, *store, *menu, a->target, a->proxy, *choices, alloc,
                               err)))
        goto done;
    lb_tbpw_print(alloc, *menu, *choices, a->json);
    mjson = lb_tbpw_measurement_json(alloc, *menu, *choices);
    *alloc_json = lb_tbpw_alloc_json(alloc, *menu, *choices);
    if (!mjson || !*alloc_json) {
        rc = lb_err_set(err, LB_ENOMEM, "--target-bpw: out of memory");
        goto done;
    }
    rc = write_text(a->out, ".lowbit", "measurement.json", mjson, err);
done:
    free(mjson);
    lb_plan_free(&plan);
    return rc;
}

int lb_tbpw_finish(const char *out, const char *alloc_json, const lb_tbpw_alloc *alloc,
                   double realized_bpw, bool json, lb_err *err)
{
    int rc = write_text(out, NULL, "allocation.json", alloc_json, err);
    if (rc)
        return rc;
    double pred = (double)alloc->bits / (double)alloc->weights;
    bool same = fabs(pred - realized_bpw) <= 1e-9;
    if (json)
        printf("{\"event\":\"target_bpw\",\"target\":%.17g,\"predicted_bpw\":%.17g,"
               "\"realized_bpw\":%.17g,\"realized_matches_measured\":%s}\n", alloc->target,
               pred, realized_bpw, same ? "true" : "false");
    else
        fprintf(stderr, "lowbit quantize: --target-bpw %g: realized %.6f bpw (manifest), "
                "measured %.6f%s\n", alloc->target, realized_bpw, pred,
                same ? "" : " - MISMATCH: a method stored another size than when measured");
    fflush(stdout);
    return 0;
}
