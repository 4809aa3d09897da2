/* lb_job wire format: round trips of every job type and of results, rejection
 * of every truncation, trailing bytes, wrong magic/version/types, and random
 * byte flips (must never crash; whatever decodes must re-encode identically).
 * LB_PROTO_WRITE_CORPUS=DIR writes the seed corpus (tests/fuzz/corpus/job/ and result/). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_job.h"
#include "lb_sha256.h"
#include "lb_test_util.h"

static void fake_id(char hex[LB_ID_HEX], int k)
{
    char s[32];
    snprintf(s, sizeof s, "artifact-%d", k);
    lb_sha256_hex(s, strlen(s), hex);
}

static void make_job(lb_job *job, lb_job_type type)
{
    lb_job_init(job);
    job->type = type;
    job->block = type == LB_JOB_MERGE ? -1 : 3;
    job->linear = type == LB_JOB_QUANTIZE_LINEAR ? 5 : -1;
    job->stage = type == LB_JOB_COLLECT_HESSIAN ? LB_STAGE_MLP_IN : -1;
    if (type == LB_JOB_QUANTIZE_LINEAR) {
        strcpy(job->tensor, "model.layers.3.mlp.up_proj.weight");
        strcpy(job->method, "gptq");
        job->opts.bits = 3;
        job->opts.group_size = 32;
        job->opts.act_order = true;
        job->opts.seed = 0xfedcba9876543210ull;
    }
    if (type == LB_JOB_DISTILL) {
        job->distill.steps = 40;
        job->distill.lr = 2.5e-3;
        job->distill.batch_seqs = 4;
        job->distill.seed = 0x0123456789abcdefull;
    }
    strcpy(job->lowbit_version, "0.1.0");
    fake_id(job->model_fp, 100);
    fake_id(job->calib_fp, 101);
    job->n_seq = 8;
    job->seq_len = 128;
    strcpy(job->model_dir, "/models/x");
    if (type == LB_JOB_MERGE) {
        strcpy(job->out_dir, "/out/y");
        strcpy(job->options_json, "{\"method\":\"gptq\"}");
    }
    if (type == LB_JOB_REDUCE_HESSIAN) {
        job->stage = LB_STAGE_ALL;
        job->n_chunks = 2;
    }
    int nin = type == LB_JOB_MERGE ? 35 : type == LB_JOB_PROPAGATE ? 8
              : type == LB_JOB_REDUCE_HESSIAN ? 8
              : type == LB_JOB_DISTILL ? 9 : type == LB_JOB_MEASURE ? 3 : 1;
    lb_artifact_id ids[64];
    for (int i = 0; i < nin; i++)
        fake_id(ids[i].hex, i);
    assert_int_equal(lb_job_set_inputs(job, ids, nin, NULL), 0);
    job->n_outputs = type == LB_JOB_MERGE ? 0
                     : type == LB_JOB_COLLECT_HESSIAN || type == LB_JOB_REDUCE_HESSIAN ? 4
                     : type == LB_JOB_DISTILL ? 8 : 1;
    assert_int_equal(lb_job_compute_id(job, NULL), 0);
}

/* The two --quantize-lm-head jobs: collect stage LM_HEAD and quantize-linear
 * of lm_head.weight, both at block = num_hidden_layers (5 here). */
static void make_lm_head_job(lb_job *job, lb_job_type type)
{
    make_job(job, type);
    job->block = 5;
    if (type == LB_JOB_COLLECT_HESSIAN) {
        job->stage = LB_STAGE_LM_HEAD;
        job->n_outputs = 1;
    } else {
        job->linear = LB_JOB_LINEAR_LM_HEAD;
        strcpy(job->tensor, LB_JOB_LM_HEAD_TENSOR);
    }
    assert_int_equal(lb_job_compute_id(job, NULL), 0);
}

static void assert_jobs_equal(const lb_job *a, const lb_job *b)
{
    assert_int_equal(a->type, b->type);
    assert_string_equal(a->id, b->id);
    assert_int_equal(a->block, b->block);
    assert_int_equal(a->linear, b->linear);
    assert_int_equal(a->stage, b->stage);
    assert_string_equal(a->tensor, b->tensor);
    assert_string_equal(a->method, b->method);
    assert_memory_equal(&a->opts.bits, &b->opts.bits, sizeof(double));
    assert_int_equal(a->opts.group_size, b->opts.group_size);
    assert_int_equal(a->opts.act_order, b->opts.act_order);
    assert_true(a->opts.seed == b->opts.seed);
    assert_true(a->opts.damp == b->opts.damp);
    assert_int_equal(a->opts.bases, b->opts.bases);
    assert_string_equal(a->model_fp, b->model_fp);
    assert_string_equal(a->calib_fp, b->calib_fp);
    assert_int_equal(a->n_seq, b->n_seq);
    assert_int_equal(a->seq_len, b->seq_len);
    assert_string_equal(a->model_dir, b->model_dir);
    assert_string_equal(a->out_dir, b->out_dir);
    assert_string_equal(a->options_json, b->options_json);
    assert_int_equal(a->distill.steps, b->distill.steps);
    assert_memory_equal(&a->distill.lr, &b->distill.lr, sizeof(double));
    assert_memory_equal(&a->distill.beta1, &b->distill.beta1, sizeof(double));
    assert_memory_equal(&a->distill.beta2, &b->distill.beta2, sizeof(double));
    assert_memory_equal(&a->distill.eps, &b->distill.eps, sizeof(double));
    assert_int_equal(a->distill.batch_seqs, b->distill.batch_seqs);
    assert_true(a->distill.seed == b->distill.seed);
    assert_int_equal(a->chunk, b->chunk);
    assert_int_equal(a->n_chunks, b->n_chunks);
    assert_int_equal(a->n_inputs, b->n_inputs);
    for (int i = 0; i < a->n_inputs; i++)
        assert_string_equal(a->inputs[i].hex, b->inputs[i].hex);
    assert_int_equal(a->n_outputs, b->n_outputs);
    for (int i = 0; i < a->n_outputs; i++)
        assert_string_equal(a->outputs[i].hex, b->outputs[i].hex);
}

static void test_round_trip(void **state)
{
    (void)state;
    for (int t = LB_JOB_COLLECT_HESSIAN; t <= LB_JOB_TYPE_LAST; t++) {
        lb_job job, back;
        make_job(&job, (lb_job_type)t);
        uint8_t *buf = NULL;
        size_t len = 0;
        lb_err err;
        assert_int_equal(lb_job_encode(&job, &buf, &len, &err), 0);
        assert_int_equal(lb_job_decode(buf, len, &back, &err), 0);
        assert_jobs_equal(&job, &back);
        /* the id is recomputable from the decoded description */
        char id[LB_ID_HEX];
        strcpy(id, back.id);
        assert_int_equal(lb_job_compute_id(&back, &err), 0);
        assert_string_equal(id, back.id);
        free(buf);
        lb_job_clear(&job);
        lb_job_clear(&back);
    }
}

static void test_id_depends_on_content_not_location(void **state)
{
    (void)state;
    lb_job a, b;
    make_job(&a, LB_JOB_QUANTIZE_LINEAR);
    make_job(&b, LB_JOB_QUANTIZE_LINEAR);
    strcpy(b.model_dir, "/elsewhere");
    assert_int_equal(lb_job_compute_id(&b, NULL), 0);
    assert_string_equal(a.id, b.id);
    b.opts.bits = 2;
    assert_int_equal(lb_job_compute_id(&b, NULL), 0);
    assert_string_not_equal(a.id, b.id);
    assert_string_not_equal(b.outputs[0].hex, a.outputs[0].hex);
    lb_job_clear(&a);
    lb_job_clear(&b);
    /* distill settings are part of what a DISTILL job is */
    make_job(&a, LB_JOB_DISTILL);
    make_job(&b, LB_JOB_DISTILL);
    assert_string_equal(a.id, b.id);
    b.distill.lr = 3e-3;
    assert_int_equal(lb_job_compute_id(&b, NULL), 0);
    assert_string_not_equal(a.id, b.id);
    for (int o = 0; o < a.n_outputs; o++)
        assert_string_not_equal(a.outputs[o].hex, b.outputs[o].hex);
    lb_job_clear(&b);
    make_job(&b, LB_JOB_DISTILL);
    b.distill.steps = 41;
    assert_int_equal(lb_job_compute_id(&b, NULL), 0);
    assert_string_not_equal(a.id, b.id);
    lb_job_clear(&a);
    lb_job_clear(&b);
}

/* --rotate travels as a 24th options value, only when set: it round-trips, changes
 * the job id and the output ids, and an unrotated job keeps its encoding (23 values) */
/* --grid q2_k|q3_k|q4_k (values 2..4) travel to workers; 5 is refused */
static void test_kquant_grid_option(void **state)
{
    (void)state;
    for (int g = LB_GRID_Q2_K; g <= LB_GRID_Q4_K + 1; g++) {
        lb_job a, back;
        make_job(&a, LB_JOB_QUANTIZE_LINEAR);
        a.opts.grid = (lb_qgrid)g;
        assert_int_equal(lb_job_compute_id(&a, NULL), 0);
        uint8_t *ba = NULL;
        size_t la = 0;
        lb_err err;
        assert_int_equal(lb_job_encode(&a, &ba, &la, &err), 0);
        int rc = lb_job_decode(ba, la, &back, &err);
        if (g <= LB_GRID_Q4_K) {
            assert_int_equal(rc, 0);
            assert_int_equal(back.opts.grid, g);
        } else {
            assert_int_equal(rc, LB_EFORMAT);
        }
        lb_job_clear(&back);
        free(ba);
        lb_job_clear(&a);
    }
}

static void test_rotate_option(void **state)
{
    (void)state;
    lb_job a, b, back;
    make_job(&a, LB_JOB_QUANTIZE_LINEAR);
    make_job(&b, LB_JOB_QUANTIZE_LINEAR);
    b.opts.rotate = 1;
    assert_int_equal(lb_job_compute_id(&b, NULL), 0);
    assert_string_not_equal(a.id, b.id);
    assert_string_not_equal(a.outputs[0].hex, b.outputs[0].hex);
    uint8_t *ba = NULL, *bb = NULL;
    size_t la = 0, lbb = 0;
    lb_err err;
    assert_int_equal(lb_job_encode(&a, &ba, &la, &err), 0);
    assert_int_equal(lb_job_encode(&b, &bb, &lbb, &err), 0);
    assert_true(lbb == la + 1); /* one positive fixint more */
    assert_int_equal(lb_job_decode(bb, lbb, &back, &err), 0);
    assert_int_equal(back.opts.rotate, 1);
    assert_jobs_equal(&b, &back);
    lb_job_clear(&back);
    assert_int_equal(lb_job_decode(ba, la, &back, &err), 0);
    assert_int_equal(back.opts.rotate, 0);
    lb_job_clear(&back);
    /* an unknown rotation kind is refused */
    int found = 0;
    for (size_t i = 0; i + 10 < lbb && !found; i++)
        if (bb[i] == 0xcf && bb[i + 1] == 0xfe && bb[i + 2] == 0xdc && bb[i + 9] == 0x01) {
            bb[i + 9] = 0x02; /* uint64 seed 0xfedc..., then rotate */
            found = 1;
        }
    assert_true(found);
    assert_int_equal(lb_job_decode(bb, lbb, &back, &err), LB_EFORMAT);
    lb_job_clear(&back);
    free(ba);
    free(bb);
    lb_job_clear(&a);
    lb_job_clear(&b);
}

static void test_every_truncation_rejected(void **state)
{
    (void)state;
    for (int t = LB_JOB_COLLECT_HESSIAN; t <= LB_JOB_TYPE_LAST; t++) {
        lb_job job, back;
        make_job(&job, (lb_job_type)t);
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(lb_job_encode(&job, &buf, &len, NULL), 0);
        for (size_t n = 0; n < len; n++) {
            lb_err err;
            assert_int_equal(lb_job_decode(buf, n, &back, &err), LB_EFORMAT);
            assert_true(strlen(err.msg) > 0);
            assert_null(back.inputs);
        }
        /* trailing bytes */
        uint8_t *longer = malloc(len + 1);
        memcpy(longer, buf, len);
        longer[len] = 0xc0;
        lb_err err;
        assert_int_equal(lb_job_decode(longer, len + 1, &back, &err), LB_EFORMAT);
        assert_non_null(strstr(err.msg, "trailing"));
        free(longer);
        free(buf);
        lb_job_clear(&job);
    }
}

static void test_wrong_version_and_magic(void **state)
{
    (void)state;
    lb_job job, back;
    make_job(&job, LB_JOB_PROPAGATE);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(lb_job_encode(&job, &buf, &len, NULL), 0);
    /* layout: fixarray(0xdc 00 14), fixstr "lbjob" (6 bytes), version fixint */
    assert_int_equal(buf[0], 0xdc);
    assert_int_equal(buf[9], LB_JOB_WIRE_VERSION);
    lb_err err;
    buf[9] = LB_JOB_WIRE_VERSION + 1;
    assert_int_equal(lb_job_decode(buf, len, &back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "wire version"));
    buf[9] = LB_JOB_WIRE_VERSION;
    buf[4] = 'X';
    assert_int_equal(lb_job_decode(buf, len, &back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "magic"));
    buf[4] = 'l';
    /* a result is not a job and vice versa */
    lb_job_result res;
    assert_int_equal(lb_job_result_decode(buf, len, &res, &err), LB_EFORMAT);
    free(buf);
    lb_job_clear(&job);
    /* a header declaring 2^32-1 elements is rejected before anything is allocated */
    const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xa5, 'l', 'b', 'j', 'o', 'b'};
    assert_int_equal(lb_job_decode(huge, sizeof huge, &back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "truncated"));
    const uint8_t bigstr[] = {0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
    assert_int_equal(lb_job_decode(bigstr, sizeof bigstr, &back, &err), LB_EFORMAT);
    const uint8_t never[] = {0xc1};
    assert_int_equal(lb_job_decode(never, sizeof never, &back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "not valid msgpack"));
}

/* distill options outside what lb_distill accepts are refused at decode */
static void test_distill_options_range(void **state)
{
    (void)state;
    for (int k = 0; k < 5; k++) {
        lb_job job, back;
        make_job(&job, LB_JOB_DISTILL);
        if (k == 0) job.distill.lr = 5.0;
        if (k == 1) job.distill.lr = -1e-3;
        if (k == 2) job.distill.beta1 = 1.0;
        if (k == 3) job.distill.eps = 0.0;
        if (k == 4) job.distill.steps = -1;
        uint8_t *buf = NULL;
        size_t len = 0;
        lb_err err;
        assert_int_equal(lb_job_encode(&job, &buf, &len, &err), 0);
        assert_int_equal(lb_job_decode(buf, len, &back, &err), LB_EFORMAT);
        assert_non_null(strstr(err.msg, "job"));
        assert_null(back.inputs);
        free(buf);
        lb_job_clear(&job);
    }
}

static void test_result_round_trip(void **state)
{
    (void)state;
    lb_job_result r, back;
    memset(&r, 0, sizeof r);
    fake_id(r.job_id, 7);
    r.status = LB_JOB_FAILED;
    r.err_code = LB_ENUMERIC;
    r.n_outputs = 2;
    fake_id(r.outputs[0].hex, 8);
    fake_id(r.outputs[1].hex, 9);
    r.bpw = 2.125;
    r.seconds = 0.5;
    r.cached = 1;
    strcpy(r.error, "Hessian not positive definite");
    uint8_t *buf = NULL;
    size_t len = 0;
    lb_err err;
    assert_int_equal(lb_job_result_encode(&r, &buf, &len, &err), 0);
    assert_int_equal(lb_job_result_decode(buf, len, &back, &err), 0);
    assert_memory_equal(&r, &back, sizeof r);
    for (size_t n = 0; n < len; n++)
        assert_int_equal(lb_job_result_decode(buf, n, &back, &err), LB_EFORMAT);
    lb_job job;
    assert_int_equal(lb_job_decode(buf, len, &job, &err), LB_EFORMAT);
    free(buf);
}

static void test_random_flips(void **state)
{
    (void)state;
    uint64_t rng = 12345;
    int decoded = 0, rejected = 0;
    for (int t = LB_JOB_COLLECT_HESSIAN; t <= LB_JOB_TYPE_LAST; t++) {
        lb_job job;
        make_job(&job, (lb_job_type)t);
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(lb_job_encode(&job, &buf, &len, NULL), 0);
        uint8_t *m = malloc(len);
        for (int round = 0; round < 2000; round++) {
            memcpy(m, buf, len);
            int nflip = 1 + (int)(lb_test_rand_u64(&rng) % 3);
            for (int f = 0; f < nflip; f++)
                m[lb_test_rand_u64(&rng) % len] ^= (uint8_t)(1u << (lb_test_rand_u64(&rng) % 8));
            lb_job back;
            lb_err err;
            int rc = lb_job_decode(m, len, &back, &err);
            if (rc == 0) {
                decoded++;
                uint8_t *b2 = NULL;
                size_t l2 = 0;
                assert_int_equal(lb_job_encode(&back, &b2, &l2, &err), 0);
                lb_job again;
                assert_int_equal(lb_job_decode(b2, l2, &again, &err), 0);
                assert_jobs_equal(&back, &again);
                free(b2);
                lb_job_clear(&again);
                lb_job_clear(&back);
            } else {
                rejected++;
                assert_int_equal(rc, LB_EFORMAT);
                assert_true(err.msg[0] != '\0');
            }
        }
        free(m);
        free(buf);
        lb_job_clear(&job);
    }
    /* flips inside strings decode (different content); structure flips must not */
    assert_true(rejected > 1000);
    assert_true(decoded > 0);
}

/* lm_head jobs round-trip; their ids differ from the block jobs they are
 * built from; a stage past LM_HEAD is rejected. */
static void test_lm_head_jobs(void **state)
{
    (void)state;
    const lb_job_type types[] = {LB_JOB_COLLECT_HESSIAN, LB_JOB_QUANTIZE_LINEAR};
    for (int k = 0; k < 2; k++) {
        lb_job job, back, plain;
        make_lm_head_job(&job, types[k]);
        make_job(&plain, types[k]);
        assert_string_not_equal(job.id, plain.id);
        uint8_t *buf = NULL;
        size_t len = 0;
        lb_err err;
        assert_int_equal(lb_job_encode(&job, &buf, &len, &err), 0);
        assert_int_equal(lb_job_decode(buf, len, &back, &err), 0);
        assert_jobs_equal(&job, &back);
        char id[LB_ID_HEX];
        strcpy(id, back.id);
        assert_int_equal(lb_job_compute_id(&back, &err), 0);
        assert_string_equal(id, back.id);
        free(buf);
        lb_job_clear(&back);
        if (types[k] == LB_JOB_COLLECT_HESSIAN) {
            job.stage = LB_STAGE_LM_HEAD + 1;
            assert_int_equal(lb_job_encode(&job, &buf, &len, &err), 0);
            assert_int_equal(lb_job_decode(buf, len, &back, &err), LB_EFORMAT);
            assert_non_null(strstr(err.msg, "out of range"));
            free(buf);
        }
        lb_job_clear(&job);
        lb_job_clear(&plain);
    }
}

static void write_job_file(const char *dir, const char *name, const lb_job *job)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(lb_job_encode(job, &buf, &len, NULL), 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);
}

static void write_corpus(const char *dir)
{
    lb_job head;
    make_lm_head_job(&head, LB_JOB_COLLECT_HESSIAN);
    write_job_file(dir, "job-collect-lm-head.msgpack", &head);
    lb_job_clear(&head);
    make_lm_head_job(&head, LB_JOB_QUANTIZE_LINEAR);
    write_job_file(dir, "job-quantize-lm-head.msgpack", &head);
    lb_job_clear(&head);
    for (int t = LB_JOB_COLLECT_HESSIAN; t <= LB_JOB_TYPE_LAST; t++) {
        lb_job job;
        make_job(&job, (lb_job_type)t);
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(lb_job_encode(&job, &buf, &len, NULL), 0);
        char path[4096];
        snprintf(path, sizeof path, "%s/job-%s.msgpack", dir, lb_job_type_name(job.type));
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fwrite(buf, 1, len, f);
        snprintf(path, sizeof path, "%s/job-%s-truncated.msgpack", dir,
                 lb_job_type_name(job.type));
        fclose(f);
        f = fopen(path, "wb");
        fwrite(buf, 1, len / 2, f);
        fclose(f);
        free(buf);
        lb_job_clear(&job);
    }
    lb_job_result r;
    memset(&r, 0, sizeof r);
    fake_id(r.job_id, 1);
    r.n_outputs = 1;
    fake_id(r.outputs[0].hex, 2);
    r.bpw = 3.25;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(lb_job_result_encode(&r, &buf, &len, NULL), 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/result-ok.msgpack", dir);
    FILE *f = fopen(path, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);
}

/* Wire v4: chunk jobs (chunk c of n_chunks) and reduce-hessian round-trip; the
 * chunk is part of the id; an out-of-range chunk is refused both ways. */
static void test_chunk_fields(void **state)
{
    (void)state;
    lb_job job, back, other;
    make_job(&job, LB_JOB_COLLECT_HESSIAN);
    job.stage = LB_STAGE_ALL;
    job.n_chunks = 3;
    job.chunk = 2;
    assert_int_equal(lb_job_compute_id(&job, NULL), 0);
    make_job(&other, LB_JOB_COLLECT_HESSIAN);
    other.stage = LB_STAGE_ALL;
    other.n_chunks = 3;
    other.chunk = 1;
    assert_int_equal(lb_job_compute_id(&other, NULL), 0);
    assert_string_not_equal(job.id, other.id);
    uint8_t *buf = NULL;
    size_t len = 0;
    lb_err err;
    assert_int_equal(lb_job_encode(&job, &buf, &len, &err), 0);
    assert_int_equal(lb_job_decode(buf, len, &back, &err), 0);
    assert_jobs_equal(&job, &back);
    lb_job_clear(&back);
    /* the last two fields are chunk (2) and n_chunks (3), positive fixints */
    assert_int_equal(buf[len - 2], 2);
    assert_int_equal(buf[len - 1], 3);
    buf[len - 1] = 2; /* chunk 2 of 2 */
    assert_int_equal(lb_job_decode(buf, len, &back, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "field 21"));
    free(buf);
    other.chunk = 3; /* chunk 3 of 3: not encoded */
    assert_int_equal(lb_job_encode(&other, &buf, &len, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "chunk 3 of 3"));
    lb_job_clear(&job);
    lb_job_clear(&other);
    assert_string_equal(lb_job_type_name(LB_JOB_REDUCE_HESSIAN), "reduce-hessian");
    assert_string_equal(lb_job_type_name(LB_JOB_MEASURE), "measure");
    assert_string_equal(lb_job_type_name(LB_JOB_PROPAGATE_FP), "propagate-fp");
}

/* The options array is generated from lb_qopts_table.h: its bytes must stay
 * those of the hand-written encoder it replaced (sha256 of the whole message
 * taken from that encoder), with every option off its default, then rotated. */
static void test_opts_wire_golden(void **state)
{
    (void)state;
    lb_job j;
    lb_job_init(&j);
    j.type = LB_JOB_QUANTIZE_LINEAR;
    j.block = 2;
    j.linear = 3;
    j.stage = -1;
    strcpy(j.tensor, "model.layers.2.mlp.up_proj.weight");
    strcpy(j.method, "gptq");
    strcpy(j.lowbit_version, "0.1.0");
    const char *seeds[4] = {"id-1", "id-2", "id-3", "id-4"};
    lb_sha256_hex(seeds[0], 4, j.model_fp);
    lb_sha256_hex(seeds[1], 4, j.calib_fp);
    j.n_seq = 4;
    j.seq_len = 64;
    strcpy(j.model_dir, "/m");
    lb_artifact_id in;
    lb_sha256_hex(seeds[2], 4, in.hex);
    assert_int_equal(lb_job_set_inputs(&j, &in, 1, NULL), 0);
    j.n_outputs = 1;
    lb_qopts *o = &j.opts;
    o->bits = 2.5, o->group_size = 64, o->act_order = o->static_groups = o->sym = true;
    o->grid = LB_GRID_MSE, o->damp = 0.1, o->block_size = 64, o->outlier_threshold = 7;
    o->outlier_hessian_score = true, o->outlier_keep_top = 0.02, o->outlier_keep_rest = 0.01;
    o->outlier_top_frac = 0.2, o->centroids_with_outliers = true, o->salient_frac = 0.3;
    o->salient_bits = 4, o->salient_criterion = LB_SALIENT_MAGNITUDE, o->salient_group = 128;
    o->bases = 3, o->refine_iters = 77, o->hessian_weighted = o->gptq_init = true;
    o->seed = 0xfedcba9876543210ull;
    const char *want[2] = {"e250c5bfdfa974850a89b8f4425f295403edf2fdcc485888bd86574e8d12dea4",
                           "c23efe19bc81d964735de28b41bc2685ac9658e1f3a36c8ca13be366712cf6bd"};
    for (int r = 0; r < 2; r++) {
        o->rotate = r;
        uint8_t *b = NULL;
        size_t n = 0;
        lb_err err;
        assert_int_equal(lb_job_compute_id(&j, &err), 0);
        assert_int_equal(lb_job_encode(&j, &b, &n, &err), 0);
        char h[LB_ID_HEX];
        lb_sha256_hex(b, n, h);
        assert_string_equal(h, want[r]);
        lb_job back;
        assert_int_equal(lb_job_decode(b, n, &back, &err), 0);
        assert_jobs_equal(&j, &back);
        lb_job_clear(&back);
        free(b);
    }
    /* a LATE option set after an unset one: the unset one travels as its default */
    o->rotate = 0;
    o->damp_auto = true;
    uint8_t *b = NULL;
    size_t n = 0;
    lb_err err;
    lb_job back;
    assert_int_equal(lb_job_compute_id(&j, &err), 0);
    assert_int_equal(lb_job_encode(&j, &b, &n, &err), 0);
    assert_int_equal(lb_job_decode(b, n, &back, &err), 0);
    assert_true(back.opts.damp_auto && back.opts.rotate == 0);
    assert_jobs_equal(&j, &back);
    lb_job_clear(&back);
    free(b);
    lb_job_clear(&j);
}

int main(void)
{
    const char *corpus = getenv("LB_PROTO_WRITE_CORPUS");
    if (corpus) {
        write_corpus(corpus);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_id_depends_on_content_not_location),
        cmocka_unit_test(test_rotate_option), cmocka_unit_test(test_kquant_grid_option),
        cmocka_unit_test(test_every_truncation_rejected),
        cmocka_unit_test(test_wrong_version_and_magic),
        cmocka_unit_test(test_distill_options_range),
        cmocka_unit_test(test_result_round_trip),
        cmocka_unit_test(test_random_flips),
        cmocka_unit_test(test_lm_head_jobs),
        cmocka_unit_test(test_chunk_fields),
        cmocka_unit_test(test_opts_wire_golden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
