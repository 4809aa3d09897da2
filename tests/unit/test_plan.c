/* lb_plan: job graph, dependencies, resume from present artifacts and the
 * bounded deletion of activations, driven as a pure state machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_exec.h"
#include "lb_model.h"
#include "lb_plan.h"
#include "lb_sha256.h"
#include "lb_test_util.h"

typedef struct {
    lb_config cfg;
    lb_plan_choice *choices;
    char model_fp[LB_ID_HEX], calib_fp[LB_ID_HEX];
} fixture;

static void fixture_init(fixture *f, int layers)
{
    memset(f, 0, sizeof *f);
    f->cfg.hidden_size = 64;
    f->cfg.intermediate_size = 172;
    f->cfg.num_hidden_layers = layers;
    f->cfg.num_attention_heads = 8;
    f->cfg.num_key_value_heads = 4;
    f->cfg.head_dim = 8;
    f->cfg.vocab_size = 512;
    f->cfg.max_position_embeddings = 512;
    f->choices = calloc((size_t)layers * LB_LINEAR_COUNT, sizeof *f->choices);
    for (int i = 0; i < layers * LB_LINEAR_COUNT; i++) {
        strcpy(f->choices[i].method, "gptq");
        lb_qopts_init(&f->choices[i].opts);
    }
    lb_sha256_hex("model", 5, f->model_fp);
    lb_sha256_hex("calib", 5, f->calib_fp);
}

static lb_plan *make_plan_d(fixture *f, bool ts, const lb_distill_opts *d)
{
    lb_plan_spec s = {&f->cfg, "/m", "/o", f->model_fp, f->calib_fp, "0.1.0", 8, 128, ts,
                      f->choices, "gptq", 4.0, "{}", d, NULL, 0, NULL, 0, NULL};
    lb_plan *p = NULL;
    lb_err err;
    assert_int_equal(lb_plan_new(&s, &p, &err), 0);
    return p;
}

/* Chunked plan: K chunks, optional true-sequential, lm_head and distill. */
static lb_plan *make_plan_k(fixture *f, bool ts, int32_t K, const lb_plan_choice *head,
                            const lb_distill_opts *d)
{
    lb_plan_spec s = {&f->cfg, "/m", "/o", f->model_fp, f->calib_fp, "0.1.0", 8, 128, ts,
                      f->choices, "gptq", 4.0, "{}", d, head, K, NULL, 0, NULL};
    lb_plan *p = NULL;
    lb_err err;
    assert_int_equal(lb_plan_new(&s, &p, &err), 0);
    return p;
}

static lb_plan *make_plan(fixture *f, bool ts)
{
    lb_plan_spec s = {&f->cfg, "/m", "/o", f->model_fp, f->calib_fp, "0.1.0", 8, 128, ts,
                      f->choices, "gptq", 4.0, "{}", NULL, NULL, 0, NULL, 0, NULL};
    lb_plan *p = NULL;
    lb_err err;
    assert_int_equal(lb_plan_new(&s, &p, &err), 0);
    return p;
}

static int32_t art_index(const lb_plan *p, const char *id)
{
    for (int32_t i = 0; i < lb_plan_artifact_count(p); i++)
        if (!strcmp(lb_plan_artifact_id(p, i), id))
            return i;
    return -1;
}

/* Simulates a run; "present" tracks artifacts on the fake disk. Checks every
 * job's inputs exist when it is handed out, the activation bound, and that
 * merge comes last. Returns the number of jobs run. */
static int simulate(lb_plan *p, bool *present, int *max_acts)
{
    const int32_t na = lb_plan_artifact_count(p);
    lb_action acts[4096];
    int ran = 0;
    *max_acts = 0;
    int32_t running[4096];
    int nrun = 0;
    uint64_t rng = 7;
    while (!lb_plan_done(p)) {
        int n = lb_plan_poll(p, acts, 4096);
        for (int i = 0; i < n; i++) {
            if (acts[i].type == LB_ACT_DELETE) {
                int32_t a = art_index(p, acts[i].artifact);
                assert_true(a >= 0);
                assert_true(present[a]);
                const char *k = lb_plan_artifact_kind(p, a);
                assert_true(!strcmp(k, "activations") || !strcmp(k, "hessian") ||
                            !strcmp(k, "hpart"));
                present[a] = false;
                continue;
            }
            const lb_job *j = lb_plan_job(p, acts[i].job);
            for (int32_t k = 0; k < j->n_inputs; k++) {
                int32_t a = art_index(p, j->inputs[k].hex);
                assert_true(a >= 0);
                assert_true(present[a]);
            }
            running[nrun++] = acts[i].job;
        }
        int acts_now = 0;
        for (int32_t a = 0; a < na; a++)
            acts_now += present[a] && !strcmp(lb_plan_artifact_kind(p, a), "activations");
        if (acts_now > *max_acts)
            *max_acts = acts_now;
        if (nrun == 0) {
            assert_true(n > 0 || lb_plan_done(p)); /* never stalls */
            continue;
        }
        /* finish a random running job (any completion order must work) */
        int pick = (int)(lb_test_rand_u64(&rng) % (uint64_t)nrun);
        int32_t jid = running[pick];
        running[pick] = running[--nrun];
        const lb_job *j = lb_plan_job(p, jid);
        if (j->type == LB_JOB_MERGE)
            assert_int_equal(nrun, 0);
        for (int32_t o = 0; o < j->n_outputs; o++)
            present[art_index(p, j->outputs[o].hex)] = true;
        lb_plan_feed_done(p, jid);
        ran++;
    }
    return ran;
}

static void test_graph_and_full_run(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 5);
    lb_plan *p = make_plan(&f, false);
    /* embed + per block (collect + 7 quantize) + 4 propagates + merge */
    assert_int_equal(lb_plan_job_count(p), 1 + 5 * 8 + 4 + 1);
    int nq = 0;
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_QUANTIZE_LINEAR) {
            nq++;
            assert_int_equal(j->n_inputs, 1);
            char want[LB_JOB_TENSOR_MAX];
            assert_int_equal(lb_model_linear_tensor_name(want, sizeof want, j->block,
                                                         (lb_linear)j->linear, NULL), 0);
            assert_string_equal(j->tensor, want);
        }
        if (j->type == LB_JOB_PROPAGATE && j->block >= 0)
            assert_int_equal(j->n_inputs, 8);
        if (j->type == LB_JOB_MERGE)
            assert_int_equal(j->n_inputs, 35);
    }
    assert_int_equal(nq, 35);
    /* q/k/v share one Hessian, gate/up another */
    const lb_job *jq = NULL, *jk = NULL, *jo = NULL, *jg = NULL, *ju = NULL;
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type != LB_JOB_QUANTIZE_LINEAR || j->block != 0)
            continue;
        if (j->linear == LB_LINEAR_Q) jq = j;
        if (j->linear == LB_LINEAR_K) jk = j;
        if (j->linear == LB_LINEAR_O) jo = j;
        if (j->linear == LB_LINEAR_GATE) jg = j;
        if (j->linear == LB_LINEAR_UP) ju = j;
    }
    assert_string_equal(jq->inputs[0].hex, jk->inputs[0].hex);
    assert_string_equal(jg->inputs[0].hex, ju->inputs[0].hex);
    assert_string_not_equal(jq->inputs[0].hex, jo->inputs[0].hex);

    bool present[1024] = {false};
    present[0] = true; /* calib */
    lb_plan_mark_present(p, 0);
    lb_plan_mark_present(p, 0); /* the calibration windows */
    lb_plan_start(p);
    assert_int_equal(lb_plan_needed_count(p), lb_plan_job_count(p));
    int max_acts = 0;
    assert_int_equal(simulate(p, present, &max_acts), lb_plan_job_count(p));
    assert_true(max_acts <= 2);
    assert_false(lb_plan_failed(p));
    /* all Hessians and activations were released */
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            assert_true(!strcmp(lb_plan_artifact_kind(p, a), "qlinear") ||
                        !strcmp(lb_plan_artifact_kind(p, a), "calib"));
    lb_plan_free(&p);

    /* same spec -> same ids */
    lb_plan *p1 = make_plan(&f, false), *p2 = make_plan(&f, false);
    for (int32_t i = 0; i < lb_plan_job_count(p1); i++)
        assert_string_equal(lb_plan_job(p1, i)->id, lb_plan_job(p2, i)->id);
    lb_plan_free(&p2);
    /* a different option for one tensor changes that job and everything downstream */
    f.choices[3 * LB_LINEAR_COUNT + LB_LINEAR_O].opts.bits = 2;
    p2 = make_plan(&f, false);
    int changed = 0;
    for (int32_t i = 0; i < lb_plan_job_count(p1); i++) {
        const lb_job *a = lb_plan_job(p1, i), *b = lb_plan_job(p2, i);
        bool diff = strcmp(a->id, b->id) != 0;
        changed += diff;
        if (a->block >= 0 && a->block < 3)
            assert_false(diff);
    }
    /* o_proj 3, propagate 3, block 4 (collect + 7) and merge */
    assert_int_equal(changed, 1 + 1 + 8 + 1);
    lb_plan_free(&p1);
    lb_plan_free(&p2);
    free(f.choices);
}

static const lb_job *find_job(const lb_plan *p, lb_job_type t, int32_t block)
{
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == t && j->block == block)
            return j;
    }
    return NULL;
}

/* --quantize-lm-head: the plain plan's jobs keep their ids (same order), then
 * the last block's propagate, the LM_HEAD collect on its output and the
 * lm_head quantize job (the choice's method and options) at block L, whose
 * packed output is the merge's last input. A resume that lacks only the lm_head
 * artifact reruns just the chain that recreates its Hessian. */
static void test_lm_head_graph(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 5);
    lb_plan_choice head;
    strcpy(head.method, "rtn");
    lb_qopts_init(&head.opts);
    head.opts.bits = 8;
    lb_plan_spec s = {&f.cfg, "/m", "/o", f.model_fp, f.calib_fp, "0.1.0", 8, 128, false,
                      f.choices, "gptq", 4.0, "{}", NULL, &head, 0, NULL, 0, NULL};
    lb_plan *p = NULL, *p0 = make_plan(&f, false);
    assert_int_equal(lb_plan_new(&s, &p, NULL), 0);
    const int32_t n0 = lb_plan_job_count(p0);
    assert_int_equal(lb_plan_job_count(p), n0 + 3);
    for (int32_t i = 0; i < n0 - 1; i++)
        assert_string_equal(lb_plan_job(p, i)->id, lb_plan_job(p0, i)->id);
    assert_null(find_job(p0, LB_JOB_PROPAGATE, 4));
    const lb_job *prop = find_job(p, LB_JOB_PROPAGATE, 4);
    const lb_job *col = find_job(p, LB_JOB_COLLECT_HESSIAN, 5);
    const lb_job *q = find_job(p, LB_JOB_QUANTIZE_LINEAR, 5);
    const lb_job *m = find_job(p, LB_JOB_MERGE, -1);
    assert_non_null(prop);
    assert_non_null(col);
    assert_non_null(q);
    assert_int_equal(col->stage, LB_STAGE_LM_HEAD);
    assert_int_equal(col->n_inputs, 1);
    assert_int_equal(col->n_outputs, 1);
    assert_string_equal(col->inputs[0].hex, prop->outputs[0].hex);
    assert_int_equal(q->linear, LB_JOB_LINEAR_LM_HEAD);
    assert_string_equal(q->tensor, "lm_head.weight");
    assert_string_equal(q->method, "rtn");
    assert_true(q->opts.bits == 8.0);
    assert_string_equal(q->inputs[0].hex, col->outputs[0].hex);
    assert_int_equal(m->n_inputs, 36);
    assert_string_equal(m->inputs[35].hex, q->outputs[0].hex);
    assert_string_not_equal(m->id, find_job(p0, LB_JOB_MERGE, -1)->id);

    bool present[1024] = {false};
    present[0] = true;
    lb_plan_mark_present(p, 0);
    lb_plan_start(p);
    int max_acts = 0;
    assert_int_equal(simulate(p, present, &max_acts), n0 + 3);
    assert_true(max_acts <= 2);
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            assert_true(!strcmp(lb_plan_artifact_kind(p, a), "qlinear") ||
                        !strcmp(lb_plan_artifact_kind(p, a), "calib"));
    lb_plan_free(&p);

    /* resume with every packed linear but lm_head's */
    assert_int_equal(lb_plan_new(&s, &p, NULL), 0);
    q = find_job(p, LB_JOB_QUANTIZE_LINEAR, 5);
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (!strcmp(lb_plan_artifact_kind(p, a), "calib") ||
            (!strcmp(lb_plan_artifact_kind(p, a), "qlinear") &&
             strcmp(lb_plan_artifact_id(p, a), q->outputs[0].hex)))
            lb_plan_mark_present(p, a);
    lb_plan_start(p);
    /* embed, 5 propagates, lm_head collect + quantize, merge */
    assert_int_equal(lb_plan_needed_count(p), 1 + 5 + 2 + 1);
    lb_plan_free(&p);
    lb_plan_free(&p0);
    free(f.choices);
}

/* --distill: one DISTILL job per block between its quantize jobs and its
 * propagate; the fp stream X_fp(b) chains DISTILL to DISTILL; propagate and
 * merge read the distilled linears; steps == 0 is the plain plan. */
static void test_distill_graph(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 4);
    lb_distill_opts d;
    lb_distill_opts_init(&d);
    lb_plan *plain = make_plan(&f, false), *zero = make_plan_d(&f, false, &d);
    assert_int_equal(lb_plan_job_count(plain), lb_plan_job_count(zero));
    for (int32_t i = 0; i < lb_plan_job_count(plain); i++)
        assert_string_equal(lb_plan_job(plain, i)->id, lb_plan_job(zero, i)->id);
    lb_plan_free(&zero);
    d.steps = 20;
    lb_plan *p = make_plan_d(&f, false, &d);
    assert_int_equal(lb_plan_job_count(p), lb_plan_job_count(plain) + 4);
    const lb_job *embed = find_job(p, LB_JOB_PROPAGATE, -1);
    const lb_job *merge = find_job(p, LB_JOB_MERGE, -1);
    const lb_job *prev = NULL;
    for (int32_t b = 0; b < 4; b++) {
        const lb_job *dj = find_job(p, LB_JOB_DISTILL, b);
        assert_non_null(dj);
        assert_int_equal(dj->distill.steps, 20);
        assert_int_equal(dj->n_inputs, 2 + LB_LINEAR_COUNT);
        assert_int_equal(dj->n_outputs, LB_LINEAR_COUNT + (b < 3 ? 1 : 0));
        /* X_q(b): embed output or the previous propagate's; X_fp(b): X_0 or previous DISTILL's */
        const lb_job *xq = b == 0 ? embed : find_job(p, LB_JOB_PROPAGATE, b - 1);
        assert_string_equal(dj->inputs[0].hex, xq->outputs[0].hex);
        assert_string_equal(dj->inputs[1].hex,
                            b == 0 ? embed->outputs[0].hex : prev->outputs[LB_LINEAR_COUNT].hex);
        for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
            const lb_job *q = lb_plan_job(p, i);
            if (q->type == LB_JOB_QUANTIZE_LINEAR && q->block == b)
                assert_string_equal(dj->inputs[2 + q->linear].hex, q->outputs[0].hex);
        }
        const lb_job *pr = find_job(p, LB_JOB_PROPAGATE, b);
        for (int l = 0; l < LB_LINEAR_COUNT; l++) {
            if (pr)
                assert_string_equal(pr->inputs[1 + l].hex, dj->outputs[l].hex);
            assert_string_equal(merge->inputs[b * LB_LINEAR_COUNT + l].hex, dj->outputs[l].hex);
        }
        if (b < 3)
            assert_string_equal(lb_plan_artifact_kind(p, art_index(p, dj->outputs[7].hex)),
                                "activations");
        prev = dj;
    }
    /* a full run holds at most 4 activations (two per stream) and frees them all */
    bool present[1024] = {false};
    present[0] = true;
    lb_plan_mark_present(p, 0);
    lb_plan_start(p);
    int max_acts = 0;
    assert_int_equal(simulate(p, present, &max_acts), lb_plan_job_count(p));
    assert_true(max_acts <= 4);
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            assert_true(!strcmp(lb_plan_artifact_kind(p, a), "qlinear") ||
                        !strcmp(lb_plan_artifact_kind(p, a), "calib"));
    /* other settings: quantize jobs keep their ids, DISTILL and everything after change */
    d.lr = 2e-3;
    lb_plan *p2 = make_plan_d(&f, false, &d);
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *a = lb_plan_job(p, i), *c = lb_plan_job(p2, i);
        bool same = !strcmp(a->id, c->id);
        if (a->type == LB_JOB_DISTILL || a->type == LB_JOB_MERGE ||
            (a->type == LB_JOB_PROPAGATE && a->block >= 0) || a->block >= 1)
            assert_false(same);
        else
            assert_true(same);
    }
    lb_plan_free(&p2);
    lb_plan_free(&p);
    lb_plan_free(&plain);
    free(f.choices);
}

static void test_resume(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 3);
    lb_plan *p = make_plan(&f, false);
    bool present[1024] = {false};
    present[0] = true;
    lb_plan_mark_present(p, 0);
    lb_plan_start(p);
    int max_acts;
    simulate(p, present, &max_acts);
    lb_plan_free(&p);

    /* everything quantized: only the merge runs */
    p = make_plan(&f, false);
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            lb_plan_mark_present(p, a);
    lb_plan_start(p);
    assert_int_equal(lb_plan_needed_count(p), 1);
    bool pres2[1024];
    memcpy(pres2, present, sizeof pres2);
    assert_int_equal(simulate(p, pres2, &max_acts), 1);
    lb_plan_free(&p);

    /* block 2's down_proj lost: the chain to recompute it is X_0.. -> collect 2 -> it */
    p = make_plan(&f, false);
    int32_t lost = -1;
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_QUANTIZE_LINEAR && j->block == 2 && j->linear == LB_LINEAR_DOWN)
            lost = art_index(p, j->outputs[0].hex);
    }
    present[lost] = false;
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            lb_plan_mark_present(p, a);
    lb_plan_start(p);
    /* embed, propagate 0, propagate 1, collect 2, quantize down 2, merge */
    assert_int_equal(lb_plan_needed_count(p), 6);
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_QUANTIZE_LINEAR)
            assert_int_equal(lb_plan_job_needed(p, i), j->block == 2 &&
                                                           j->linear == LB_LINEAR_DOWN);
    }
    assert_int_equal(simulate(p, present, &max_acts), 6);
    lb_plan_free(&p);
    free(f.choices);
}

static void test_true_sequential_and_failure(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 2);
    lb_plan *p = make_plan(&f, true);
    /* embed + per block (4 collects + 7 quantize) + 1 propagate + merge */
    assert_int_equal(lb_plan_job_count(p), 1 + 2 * 11 + 1 + 1);
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_COLLECT_HESSIAN) {
            int want = j->stage == 0 ? 1 : j->stage == 1 ? 4 : j->stage == 2 ? 5 : 7;
            assert_int_equal(j->n_inputs, want);
            assert_int_equal(j->n_outputs, 1);
        }
    }
    lb_plan_mark_present(p, 0);
    lb_plan_start(p);
    lb_action acts[64];
    int n = lb_plan_poll(p, acts, 64);
    assert_int_equal(n, 1); /* only the embedding is ready */
    assert_int_equal(lb_plan_job(p, acts[0].job)->type, LB_JOB_PROPAGATE);
    assert_int_equal(lb_plan_poll(p, acts, 64), 0);
    lb_plan_feed_failed(p, acts[0].job);
    assert_true(lb_plan_failed(p));
    assert_int_equal(lb_plan_poll(p, acts, 64), 0);
    assert_false(lb_plan_done(p));
    lb_plan_free(&p);
    free(f.choices);
}

/* Index of the job whose output is artifact id (-1: none). */
static int32_t producer(const lb_plan *p, const char *id)
{
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        for (int32_t o = 0; o < j->n_outputs; o++)
            if (!strcmp(j->outputs[o].hex, id))
                return i;
    }
    return -1;
}

/* --collect-chunks K: embed, collect and propagate become K chunk jobs each
 * (chunk c reads only chunk c of the block input), one reduce-hessian per
 * collect takes the K partials in chunk order; quantize reads the reduce's
 * Hessians. A full run in any completion order holds at most 2K activation
 * chunks (two block inputs) and releases every partial. */
static void test_chunked_graph(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 5);
    lb_plan_spec s = {&f.cfg, "/m", "/o", f.model_fp, f.calib_fp, "0.1.0", 8, 128, false,
                      f.choices, "gptq", 4.0, "{}", NULL, NULL, 3, NULL, 0, NULL};
    assert_int_equal(lb_plan_effective_chunks(&s), 3);
    s.collect_chunks = 100; /* capped at the 8 block chunks of 8 windows */
    assert_int_equal(lb_plan_effective_chunks(&s), 8);
    s.collect_chunks = 1;
    assert_int_equal(lb_plan_effective_chunks(&s), 1);
    lb_distill_opts d;
    lb_distill_opts_init(&d);
    d.steps = 2;
    s.collect_chunks = 4;
    s.distill = &d; /* distill needs whole activations: unchunked */
    assert_int_equal(lb_plan_effective_chunks(&s), 1);
    lb_plan *pd = make_plan_k(&f, false, 4, NULL, &d), *p0 = make_plan_d(&f, false, &d);
    assert_int_equal(lb_plan_job_count(pd), lb_plan_job_count(p0));
    for (int32_t i = 0; i < lb_plan_job_count(pd); i++)
        assert_string_equal(lb_plan_job(pd, i)->id, lb_plan_job(p0, i)->id);
    lb_plan_free(&pd);
    lb_plan_free(&p0);

    /* the 3 window ranges are contiguous and cover the 8 windows */
    int64_t next = 0;
    for (int32_t c = 0; c < 3; c++) {
        int64_t e0, ne, t0, nt;
        assert_int_equal(lb_exec_chunk_span(8, 128, 3, c, &e0, &ne, &t0, &nt), 0);
        assert_int_equal(t0, next);
        assert_true(ne >= 2 && ne <= 3);
        next = t0 + nt;
    }
    assert_int_equal(next, 8 * 128);
    int64_t e0, ne, t0, nt;
    assert_int_equal(lb_exec_chunk_span(8, 128, 9, 0, &e0, &ne, &t0, &nt), LB_EINVAL);

    const int K = 3;
    lb_plan *p = make_plan_k(&f, false, K, NULL, NULL);
    /* K embeds + per block (K collects + reduce + 7 quantize) + 4 x K propagates + merge */
    assert_int_equal(lb_plan_job_count(p), K + 5 * (K + 1 + 7) + 4 * K + 1);
    int nred = 0;
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_COLLECT_HESSIAN || (j->type == LB_JOB_PROPAGATE)) {
            assert_int_equal(j->n_chunks, K);
            assert_true(j->chunk >= 0 && j->chunk < K);
            if (j->type == LB_JOB_COLLECT_HESSIAN) {
                assert_int_equal(j->n_outputs, 4);
                for (int o = 0; o < 4; o++)
                    assert_string_equal(lb_plan_artifact_kind(p, art_index(p, j->outputs[o].hex)),
                                        "hpart");
            }
            if (j->block >= 0) { /* X chunk c comes from chunk c of the previous step */
                const lb_job *src = lb_plan_job(p, producer(p, j->inputs[0].hex));
                assert_int_equal(src->type, LB_JOB_PROPAGATE);
                assert_int_equal(src->block, j->block - 1);
                assert_int_equal(src->chunk, j->chunk);
            }
        }
        if (j->type == LB_JOB_REDUCE_HESSIAN) {
            nred++;
            assert_int_equal(j->n_chunks, K);
            assert_int_equal(j->chunk, -1);
            assert_int_equal(j->stage, LB_STAGE_ALL);
            assert_int_equal(j->n_inputs, 4 * K);
            assert_int_equal(j->n_outputs, 4);
            for (int c = 0; c < K; c++)
                for (int k = 0; k < 4; k++) { /* partial k of chunk c, in chunk order */
                    const lb_job *src = lb_plan_job(p, producer(p, j->inputs[c * 4 + k].hex));
                    assert_int_equal(src->type, LB_JOB_COLLECT_HESSIAN);
                    assert_int_equal(src->block, j->block);
                    assert_int_equal(src->chunk, c);
                    assert_string_equal(src->outputs[k].hex, j->inputs[c * 4 + k].hex);
                }
        }
        if (j->type == LB_JOB_QUANTIZE_LINEAR)
            assert_int_equal(lb_plan_job(p, producer(p, j->inputs[0].hex))->type,
                             LB_JOB_REDUCE_HESSIAN);
    }
    assert_int_equal(nred, 5);
    bool present[1024] = {false};
    present[0] = true;
    lb_plan_mark_present(p, 0);
    lb_plan_start(p);
    int max_acts = 0;
    assert_int_equal(simulate(p, present, &max_acts), lb_plan_job_count(p));
    assert_true(max_acts <= 2 * K);
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            assert_true(!strcmp(lb_plan_artifact_kind(p, a), "qlinear") ||
                        !strcmp(lb_plan_artifact_kind(p, a), "calib"));
    lb_plan_free(&p);
    free(f.choices);
}

/* Chunked with --true-sequential and --quantize-lm-head: every stage has K
 * collects and one reduce of its single Hessian; the lm_head collect reads the
 * K chunks of X_L in chunk order. */
static void test_chunked_true_sequential_lm_head(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 2);
    lb_plan_choice head;
    strcpy(head.method, "rtn");
    lb_qopts_init(&head.opts);
    const int K = 2;
    lb_plan *p = make_plan_k(&f, true, K, &head, NULL);
    /* K embeds + per block (4 stages x (K + 1) + 7 quantize + K propagates) + lm_head
     * collect + lm_head quantize + merge */
    assert_int_equal(lb_plan_job_count(p), K + 2 * (4 * (K + 1) + 7 + K) + 3);
    const lb_job *col = find_job(p, LB_JOB_COLLECT_HESSIAN, 2);
    assert_non_null(col);
    assert_int_equal(col->stage, LB_STAGE_LM_HEAD);
    assert_int_equal(col->n_chunks, K);
    assert_int_equal(col->chunk, -1);
    assert_int_equal(col->n_inputs, K);
    for (int c = 0; c < K; c++) {
        const lb_job *src = lb_plan_job(p, producer(p, col->inputs[c].hex));
        assert_int_equal(src->type, LB_JOB_PROPAGATE);
        assert_int_equal(src->block, 1);
        assert_int_equal(src->chunk, c);
    }
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_REDUCE_HESSIAN) {
            assert_int_equal(j->n_inputs, K);
            assert_int_equal(j->n_outputs, 1);
            assert_true(j->stage >= 0 && j->stage <= 3);
        }
        if (j->type == LB_JOB_COLLECT_HESSIAN && j->stage == LB_STAGE_MLP_ACT)
            assert_int_equal(j->n_inputs, 1 + 6); /* its X chunk + q/k/v/o/gate/up */
    }
    bool present[1024] = {false};
    present[0] = true;
    lb_plan_mark_present(p, 0);
    lb_plan_start(p);
    int max_acts = 0;
    assert_int_equal(simulate(p, present, &max_acts), lb_plan_job_count(p));
    assert_true(max_acts <= 2 * K);
    lb_plan_free(&p);
    free(f.choices);
}

/* Resume of a chunked plan is per chunk: with block 0 quantized and X_1 chunk 0
 * present but chunk 1 lost, only embed chunk 1 and propagate 0 chunk 1 rerun
 * before block 1; a present partial skips its collect chunk. */
static void test_chunked_resume(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 3);
    const int K = 2;
    lb_plan *p = make_plan_k(&f, false, K, NULL, NULL);
    int32_t x1[2] = {-1, -1}, part_b1c0 = -1;
    bool present[1024] = {false};
    present[0] = true;
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        if (j->type == LB_JOB_QUANTIZE_LINEAR && j->block == 0)
            present[art_index(p, j->outputs[0].hex)] = true;
        if (j->type == LB_JOB_PROPAGATE && j->block == 0)
            x1[j->chunk] = art_index(p, j->outputs[0].hex);
        if (j->type == LB_JOB_COLLECT_HESSIAN && j->block == 1 && j->chunk == 0)
            part_b1c0 = i;
    }
    present[x1[0]] = present[x1[1]] = true;
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            lb_plan_mark_present(p, a);
    lb_plan_start(p);
    /* block 1: K collects + reduce + 7 + K propagates; block 2: K + 1 + 7; merge */
    assert_int_equal(lb_plan_needed_count(p), (K + 1 + 7 + K) + (K + 1 + 7) + 1);
    int max_acts;
    bool pres2[1024];
    memcpy(pres2, present, sizeof pres2);
    assert_int_equal(simulate(p, pres2, &max_acts), lb_plan_needed_count(p));
    lb_plan_free(&p);

    /* X_1 chunk 1 lost, block 1 chunk 0's partials kept */
    p = make_plan_k(&f, false, K, NULL, NULL);
    present[x1[1]] = false;
    const lb_job *pc = lb_plan_job(p, part_b1c0);
    for (int o = 0; o < pc->n_outputs; o++)
        present[art_index(p, pc->outputs[o].hex)] = true;
    for (int32_t a = 0; a < lb_plan_artifact_count(p); a++)
        if (present[a])
            lb_plan_mark_present(p, a);
    lb_plan_start(p);
    for (int32_t i = 0; i < lb_plan_job_count(p); i++) {
        const lb_job *j = lb_plan_job(p, i);
        bool want = j->block >= 1 || j->type == LB_JOB_MERGE ||
                    (j->type == LB_JOB_PROPAGATE && j->chunk == 1);
        if (i == part_b1c0)
            want = false;
        assert_int_equal(lb_plan_job_needed(p, i), want);
    }
    assert_int_equal(lb_plan_needed_count(p), 2 + (K + 1 + 7 + K) - 1 + (K + 1 + 7) + 1);
    memcpy(pres2, present, sizeof pres2);
    assert_int_equal(simulate(p, pres2, &max_acts), lb_plan_needed_count(p));
    lb_plan_free(&p);
    free(f.choices);
}

/* --target-bpw measurement plan: per block one collect, one propagate-fp and a
 * measure job per (linear, candidate) (one for a fixed linear); measure jobs
 * are the roots, their "measure" artifacts are never deleted, and with them
 * present nothing runs; the ids do not depend on the output directory. */
static void test_measure_plan(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 3);
    lb_plan_choice menu[3];
    for (int c = 0; c < 3; c++) {
        strcpy(menu[c].method, "gptq");
        lb_qopts_init(&menu[c].opts);
        menu[c].opts.bits = 2 + c;
    }
    bool fixed[3 * LB_LINEAR_COUNT] = {false};
    fixed[4] = true; /* block 0 gate_proj: --override */
    lb_plan_spec s = {&f.cfg, "/m", "/o", f.model_fp, f.calib_fp, "0.1.0", 8, 128, false,
                      f.choices, "measure", 0, NULL, NULL, NULL, 1, menu, 3, fixed};
    lb_plan *p = NULL, *q = NULL;
    lb_err err;
    assert_int_equal(lb_plan_new(&s, &p, &err), 0);
    s.out_dir = "/elsewhere";
    assert_int_equal(lb_plan_new(&s, &q, &err), 0);
    int n[9] = {0};
    for (int32_t j = 0; j < lb_plan_job_count(p); j++) {
        const lb_job *job = lb_plan_job(p, j);
        n[job->type]++;
        assert_string_equal(job->id, lb_plan_job(q, j)->id);
        if (job->type == LB_JOB_MEASURE) {
            assert_int_equal(job->n_inputs, 3);
            if (job->block == 0 && job->linear == 4)
                assert_true(job->opts.bits == 4.0); /* the fixture's choice */
        }
    }
    assert_int_equal(n[LB_JOB_PROPAGATE], 1);
    assert_int_equal(n[LB_JOB_COLLECT_HESSIAN], 3);
    assert_int_equal(n[LB_JOB_PROPAGATE_FP], 3);
    assert_int_equal(n[LB_JOB_MEASURE], 3 * LB_LINEAR_COUNT * 3 - 2);
    assert_int_equal(n[LB_JOB_MERGE] + n[LB_JOB_QUANTIZE_LINEAR], 0);
    lb_plan_mark_present(p, 0); /* the calibration windows */
    lb_plan_start(p);
    assert_int_equal(lb_plan_needed_count(p), lb_plan_job_count(p));
    /* run everything in order; only non-measure artifacts get deleted */
    lb_action acts[256];
    while (!lb_plan_done(p)) {
        int k = lb_plan_poll(p, acts, 256);
        assert_true(k > 0);
        for (int i = 0; i < k; i++) {
            if (acts[i].type == LB_ACT_RUN) {
                lb_plan_feed_done(p, acts[i].job);
            } else {
                int32_t a = art_index(p, acts[i].artifact);
                assert_string_not_equal(lb_plan_artifact_kind(p, a), "measure");
            }
        }
    }
    /* a rerun with every measurement present runs nothing */
    lb_plan_free(&q);
    assert_int_equal(lb_plan_new(&s, &q, &err), 0);
    for (int32_t i = 0; i < lb_plan_artifact_count(q); i++)
        if (!strcmp(lb_plan_artifact_kind(q, i), "measure"))
            lb_plan_mark_present(q, i);
    lb_plan_start(q);
    assert_int_equal(lb_plan_needed_count(q), 0);
    assert_true(lb_plan_done(q));
    lb_plan_free(&p);
    lb_plan_free(&q);
    free(f.choices);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_graph_and_full_run),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_distill_graph),
        cmocka_unit_test(test_lm_head_graph),
        cmocka_unit_test(test_true_sequential_and_failure),
        cmocka_unit_test(test_chunked_graph),
        cmocka_unit_test(test_chunked_true_sequential_lm_head),
        cmocka_unit_test(test_chunked_resume),
        cmocka_unit_test(test_measure_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
