/* lb_job: the self-contained description of one unit of pipeline work and of
 * its result, and their versioned msgpack wire format.
 *
 * A job names everything a remote worker needs: the source model (path and
 * content fingerprint), the calibration fingerprint and shape, the method with
 * its full option set, the ids of the input artifacts to fetch and the ids its
 * outputs will carry. Artifact ids are content addresses: the job id is the
 * SHA-256 of the job's canonical encoding (lb_job_compute_id), output i's id is
 * SHA-256("<job id>:<i>"). So the same inputs and options give the same ids on
 * every run, which is what lets a rerun skip finished work.
 *
 * Wire: a msgpack array ["lbjob", version, ...fields] (see lb_job.c for the
 * field order). Decoders accept exactly one well-formed message of the current
 * version covering the whole buffer and reject anything else with one line
 * saying what is wrong. No I/O here. */
#ifndef LB_JOB_H
#define LB_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "lb_distill.h"
#include "lb_err.h"
#include "lb_quant.h"

#define LB_JOB_WIRE_VERSION 4 /* 2: distill job type and options field;
                                 3: lm_head collect stage and quantize target;
                                 4: chunk / n_chunks fields, reduce-hessian type */
#define LB_JOB_MAX_CHUNKS 1024 /* --collect-chunks upper bound */
#define LB_ID_HEX 65          /* 64 hex digits + NUL */
#define LB_JOB_MAX_OUTPUTS 8  /* distill: 7 packed linears + the next fp block input */
#define LB_JOB_MAX_INPUTS 65536
#define LB_JOB_PATH_MAX 1024
#define LB_JOB_TENSOR_MAX 160

typedef enum {
    LB_JOB_COLLECT_HESSIAN = 1, /* X_b -> Hessians of the block's linear inputs */
    LB_JOB_QUANTIZE_LINEAR = 2, /* W (from the model) + H -> packed linear */
    LB_JOB_PROPAGATE = 3,       /* X_b + 7 packed linears -> X_{b+1}; block -1: calib -> X_0 */
    LB_JOB_MERGE = 4,           /* all packed linears + model -> checkpoint in out_dir */
    LB_JOB_DISTILL = 5,         /* X_q(b), X_fp(b), 7 packed -> 7 distilled packed [, X_fp(b+1)] */
    LB_JOB_REDUCE_HESSIAN = 6,  /* n_chunks x (partial sums of each Hessian) -> the Hessians */
    LB_JOB_MEASURE = 7,         /* --target-bpw: X_fp(b), X_fp(b+1), H -> one "measure" record
                                   of (tensor, candidate) (worker/lb_exec_measure.c) */
    LB_JOB_PROPAGATE_FP = 8,    /* --target-bpw: X_fp(b) through the fp block b -> X_fp(b+1) */
} lb_job_type;
#define LB_JOB_TYPE_LAST LB_JOB_PROPAGATE_FP

/* Collect stages. ALL: one pass with fp weights gives the 4 Hessians.
 * True-sequential stages re-run the block with what is already quantized. */
enum {
    LB_STAGE_ALL = -1,
    LB_STAGE_ATTN_IN = 0,  /* q/k/v input (unchanged by quantization inside the block) */
    LB_STAGE_ATTN_OUT = 1, /* o_proj input after q/k/v are quantized */
    LB_STAGE_MLP_IN = 2,   /* gate/up input after attention (q/k/v/o) is quantized */
    LB_STAGE_MLP_ACT = 3,  /* down_proj input after gate/up (and attention) are quantized */
    LB_STAGE_LM_HEAD = 4,  /* lm_head input: rms(X_L, final norm), X_L = output of the last
                              (quantized) block; block = num_hidden_layers */
};

/* quantize-linear `linear` value for lm_head.weight (vocab, dim), block =
 * num_hidden_layers (--quantize-lm-head). Block linears use lb_linear (0..6). */
#define LB_JOB_LINEAR_LM_HEAD 7
#define LB_JOB_LM_HEAD_TENSOR "lm_head.weight"

typedef struct {
    char hex[LB_ID_HEX];
} lb_artifact_id;

typedef struct {
    lb_job_type type;
    char id[LB_ID_HEX];             /* lb_job_compute_id */
    int32_t block;                  /* layer; -1: embedding (propagate) or merge;
                                       num_hidden_layers: the lm_head jobs */
    int32_t linear;                 /* quantize-linear: lb_linear or LB_JOB_LINEAR_LM_HEAD, else -1 */
    int32_t stage;                  /* collect: LB_STAGE_*; else -1 */
    char tensor[LB_JOB_TENSOR_MAX]; /* quantize: full tensor name, else "" */
    char method[16];                /* quantize: registry name, else "" */
    lb_qopts opts;                  /* quantize: full option set (else defaults) */
    char lowbit_version[16];        /* LB_VERSION of the planner */
    char model_fp[LB_ID_HEX];       /* SHA-256 over config + tensors of the source model */
    char calib_fp[LB_ID_HEX];       /* SHA-256 of the calibration ids as used */
    int64_t n_seq, seq_len;         /* calibration windows */
    char model_dir[LB_JOB_PATH_MAX]; /* where the source model lives (not part of the id) */
    char out_dir[LB_JOB_PATH_MAX];   /* merge: checkpoint directory (not part of the id) */
    char options_json[1024];        /* merge: run-wide settings recorded in the checkpoint */
    lb_distill_opts distill;        /* distill: optimizer settings (else lb_distill_opts_init) */
    int32_t chunk;                  /* chunk job (collect, propagate, embed): which of n_chunks
                                       calibration window ranges; -1: all windows */
    int32_t n_chunks;               /* 0: unchunked; else the plan's chunk count K (chunk jobs,
                                       reduce-hessian, and the lm_head collect reading K
                                       activation chunks) */
    int32_t n_inputs;
    lb_artifact_id *inputs;         /* owned (lb_job_clear) */
    int32_t n_outputs;
    lb_artifact_id outputs[LB_JOB_MAX_OUTPUTS];
} lb_job;

typedef enum { LB_JOB_OK = 0, LB_JOB_FAILED = 1 } lb_job_status;

typedef struct {
    char job_id[LB_ID_HEX];
    lb_job_status status;
    int32_t err_code;               /* LB_E* when failed */
    int32_t n_outputs;
    lb_artifact_id outputs[LB_JOB_MAX_OUTPUTS];
    double bpw;                     /* quantize: bits per weight stored; else 0 */
    double seconds;
    int32_t cached;                 /* 1 when the outputs already existed (nothing ran) */
    char error[256];                /* one line, "" when ok */
} lb_job_result;

/* Zeroes *job and sets defaults (block/linear/stage -1, lb_qopts_init,
 * lb_distill_opts_init). */
void lb_job_init(lb_job *job);
/* Frees job->inputs and re-initializes. Accepts NULL. */
void lb_job_clear(lb_job *job);
/* Deep copy. OUT: *dst (initialized here; lb_job_clear it). Returns 0 or LB_ENOMEM. */
int lb_job_copy(lb_job *dst, const lb_job *src, lb_err *err);
/* Replaces the inputs with a copy of ids[0..n). Returns 0, LB_EINVAL or LB_ENOMEM. */
int lb_job_set_inputs(lb_job *job, const lb_artifact_id *ids, int32_t n, lb_err *err);

/* Name of a job type ("collect-hessian", ...), "?" for invalid values. */
const char *lb_job_type_name(lb_job_type t);

/* Canonical id: SHA-256 of the encoding with id, outputs, model_dir and out_dir
 * blanked (where things live does not change what they are). Sets job->id and
 * job->outputs[i] = SHA-256("<id>:<i>") for i < n_outputs. Returns 0 or LB_ENOMEM. */
int lb_job_compute_id(lb_job *job, lb_err *err);

/* Encodes job. OUT: *buf (malloc'd, caller frees), *len. Returns 0, LB_EINVAL
 * (invalid job), LB_ENOMEM. */
int lb_job_encode(const lb_job *job, uint8_t **buf, size_t *len, lb_err *err);

/* Decodes exactly buf[0..len). OUT: *job (initialized here; lb_job_clear it;
 * left initialized and empty on failure). Returns 0 or LB_EFORMAT naming the
 * problem (truncated, trailing bytes, wrong magic/version, bad field type or
 * range, invalid options). */
int lb_job_decode(const uint8_t *buf, size_t len, lb_job *job, lb_err *err);

/* Same for results. */
int lb_job_result_encode(const lb_job_result *res, uint8_t **buf, size_t *len, lb_err *err);
int lb_job_result_decode(const uint8_t *buf, size_t len, lb_job_result *res, lb_err *err);

/* True when s is 64 lower-case hex digits. */
int lb_id_valid(const char *s);

#endif
