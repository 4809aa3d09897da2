/* lb_plan: the quantize pipeline as a pure state machine (no I/O, no threads).
 *
 * From the model shape and the options it builds every job up front (ids are
 * content addresses, lb_job.h), in dependency order:
 *   embed (propagate -1): calib -> X_0
 *   per block b: collect-hessian (one job, or 4 true-sequential stages),
 *                7 quantize-linear jobs (q/k/v share the attn_in Hessian,
 *                gate/up the mlp_in one), propagate X_b -> X_{b+1} (not for
 *                the last block: nothing consumes it)
 *   with spec->distill steps > 0, per block after its quantize jobs:
 *                distill X_q(b), X_fp(b), 7 packed -> 7 distilled packed and
 *                X_fp(b+1) (not for the last block); X_fp(0) = X_0. Propagate
 *                and merge then use the distilled linears.
 *   with spec->lm_head (--quantize-lm-head), after the last block:
 *                propagate X_{L-1} -> X_L (the last block too), collect-hessian
 *                stage LM_HEAD (rms(X_L, final norm) -> one (dim, dim) Hessian),
 *                quantize-linear lm_head.weight; block = L for both
 *   merge: all quantized linears (lm_head last) -> checkpoint.
 * Chunked (spec->collect_chunks K > 1, see lb_plan_effective_chunks): the
 * calibration windows split into K contiguous ranges of block chunks
 * (lb_exec_chunk_span). Embed, every collect (stage) and every propagate become
 * K chunk jobs (chunk c reads and writes chunk c of the activations only); each
 * collect (stage) adds one reduce-hessian job summing the K "hpart" partials in
 * chunk order into the same Hessian bits as the unchunked collect. The lm_head
 * collect reads the K chunks of X_L. Quantize, distill and merge are unchanged.
 * The driver tells it which artifacts already exist (lb_plan_mark_present),
 * then alternates lb_plan_poll (get actions: run job i, delete artifact) and
 * lb_plan_feed (job i done / failed). Only jobs whose outputs are missing and
 * needed by a needed job run (merge always runs), so a rerun resumes.
 * Deletion keeps disk bounded: an activation or Hessian artifact is deleted as
 * soon as every job that needs it is done, so X_{b-1} goes only after the
 * propagate that wrote X_{b} finished (at most two block inputs exist). */
#ifndef LB_PLAN_H
#define LB_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"
#include "lb_job.h"

/* Method and options of one linear (after --override resolution). */
typedef struct {
    char method[16];
    lb_qopts opts;
} lb_plan_choice;

typedef struct {
    const lb_config *cfg;            /* shape (borrowed during lb_plan_new) */
    const char *model_dir, *out_dir; /* where things live (not part of ids) */
    const char *model_fp, *calib_fp; /* content fingerprints (64 hex) */
    const char *lowbit_version;
    int64_t n_seq, seq_len;
    bool true_sequential;
    const lb_plan_choice *choices;   /* [num_hidden_layers * 7], (block, linear) order */
    const char *method;              /* model-wide --method and --bits (for the checkpoint) */
    double bits;
    const char *options_json;        /* run settings recorded in quantization_config */
    const lb_distill_opts *distill;  /* NULL or steps == 0: no distillation; else one
                                        DISTILL job per block (see above) */
    const lb_plan_choice *lm_head;   /* NULL: lm_head stays as it is; else quantize
                                        lm_head.weight with this choice */
    int32_t collect_chunks;          /* K (--collect-chunks): 0 or 1: one collect and one
                                        propagate job per block; K > 1: chunked (above) */
    /* --target-bpw measurement plan (docs/target-bpw.md) instead of the above when
     * n_measure > 0: embed, then per block b: collect-hessian (fp X_b, stage ALL),
     * propagate-fp X_b -> X_fp(b+1), and one measure job per (linear, candidate)
     * with inputs X_fp(b), X_fp(b+1), the linear's Hessian; measure jobs in
     * (block, linear, candidate) order; no merge. Unchunked. A linear with
     * measure_fixed[k] set (--override) gets one measure job, of choices[k]. */
    const lb_plan_choice *measure;   /* [n_measure] candidates */
    int32_t n_measure;
    const bool *measure_fixed;       /* [num_hidden_layers * 7] or NULL */
} lb_plan_spec;

typedef enum {
    LB_ACT_RUN = 0,    /* run job `job` */
    LB_ACT_DELETE = 1, /* artifact `artifact` is no longer needed: delete it */
} lb_action_type;

typedef struct {
    lb_action_type type;
    int32_t job;
    char artifact[LB_ID_HEX];
} lb_action;

typedef struct lb_plan lb_plan;

/* The chunk count the plan uses: 1 (unchunked) when collect_chunks <= 1 or with
 * distillation (its job needs whole activations), else min(collect_chunks,
 * lb_exec_chunk_count(n_seq, seq_len), LB_JOB_MAX_CHUNKS). */
int32_t lb_plan_effective_chunks(const lb_plan_spec *spec);

/* Builds the plan. OUT: *out (lb_plan_free). Returns 0, LB_EINVAL, LB_ENOMEM. */
int lb_plan_new(const lb_plan_spec *spec, lb_plan **out, lb_err *err);
void lb_plan_free(lb_plan **p);

/* The calibration artifact id (the driver writes it before starting). */
const char *lb_plan_calib_id(const lb_plan *p);

/* All artifacts the plan references (calib + every job output). */
int32_t lb_plan_artifact_count(const lb_plan *p);
const char *lb_plan_artifact_id(const lb_plan *p, int32_t i);
/* Kind of artifact i: "calib", "activations", "hessian", "qlinear", "hpart"
 * (a chunk's partial Hessian sums, chunked plans only). */
const char *lb_plan_artifact_kind(const lb_plan *p, int32_t i);

/* Before lb_plan_start: artifact i exists and verifies. */
void lb_plan_mark_present(lb_plan *p, int32_t i);

/* Decides what must run. After this, lb_plan_poll gives actions. */
void lb_plan_start(lb_plan *p);

int32_t lb_plan_job_count(const lb_plan *p);
const lb_job *lb_plan_job(const lb_plan *p, int32_t i);
/* Whether job i will run (decided by lb_plan_start). */
bool lb_plan_job_needed(const lb_plan *p, int32_t i);
int32_t lb_plan_needed_count(const lb_plan *p);

/* Fills acts[0..max) with the actions available now (each job is handed out
 * once; deletions once) and returns how many. 0 with lb_plan_done() false
 * means: wait for a running job to finish. */
int lb_plan_poll(lb_plan *p, lb_action *acts, int max);

/* Events: job i finished (its outputs now exist) or failed. After a failure
 * no new job is handed out; lb_plan_failed() becomes true. */
void lb_plan_feed_done(lb_plan *p, int32_t job);
void lb_plan_feed_failed(lb_plan *p, int32_t job);

/* Every needed job done. */
bool lb_plan_done(const lb_plan *p);
bool lb_plan_failed(const lb_plan *p);
/* Jobs handed out and not yet fed back. */
int32_t lb_plan_running(const lb_plan *p);

#endif
