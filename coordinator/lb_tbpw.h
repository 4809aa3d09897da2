/* lb_tbpw: `--target-bpw B` (docs/target-bpw.md). The measurement stage is an
 * lb_plan of ordinary jobs (lb_plan_spec.measure: fp Hessians and block
 * inputs, one measure job per (tensor, candidate)), run by the embedded runner
 * or through Redis like any plan, so it spreads over workers and resumes; its
 * "measure" artifacts are content-addressed (model, calibration, candidate,
 * LB_MEASURE_PROXY_VERSION) and kept, so another target reuses them. The
 * allocation (lb_alloc_solve) then picks one candidate per tensor minimizing
 * the summed proxy subject to stored bits <= B * weights; --override tensors
 * are fixed and their measured bits come off the budget. */
#ifndef LB_TBPW_H
#define LB_TBPW_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_artifact.h"
#include "lb_dist.h"
#include "lb_override.h"
#include "lb_plan.h"
#include "lb_runner.h"

#define LB_TBPW_MAX_CANDIDATES 64
#define LB_TBPW_SPEC_MAX 128
#define LB_TBPW_DEFAULT_PROXY "kl"

/* The default --candidates list ("METHOD[:opt=val,...];..."). */
extern const char *const lb_tbpw_default_candidates;

typedef struct {
    int32_t n;
    lb_plan_choice cand[LB_TBPW_MAX_CANDIDATES];
    char spec[LB_TBPW_MAX_CANDIDATES][LB_TBPW_SPEC_MAX]; /* as given */
} lb_tbpw_menu;

/* Parses list (NULL: the default) of ';'-separated METHOD[:opt=val,...] entries,
 * options starting from *base (the command line's), rotation resolved per
 * method as for --method. Returns 0 or LB_EINVAL quoting the bad entry. */
int lb_tbpw_menu_parse(const char *list, const lb_qopts *base, lb_tbpw_menu *m, lb_err *err);

typedef struct {
    int32_t n_tensors;
    char (*names)[LB_JOB_TENSOR_MAX]; /* [n_tensors] */
    int32_t *choice;     /* [n_tensors] menu index; -1: fixed by --override */
    double *vals;        /* [n_tensors][menu n][LB_MEAS_COUNT]; fixed: only [k][0] */
    char (*ids)[LB_ID_HEX]; /* [n_tensors][menu n] measure artifact ids */
    int32_t n_cand;
    int proxy;           /* LB_MEAS_* index */
    double target;
    uint64_t weights, budget, bits, fixed_bits;
    double loss;
} lb_tbpw_alloc;

void lb_tbpw_alloc_free(lb_tbpw_alloc *a);

/* Runs the measurement plan of *spec (measure fields set) on store: embedded
 * through lb_runner_run(ro) or, dist != NULL, lb_dist_run (job name
 * "<name>.measure"). OUT: *plan (lb_plan_free), *ran (measure jobs that ran).
 * Returns 0 or LB_E*. */
int lb_tbpw_measure(const lb_plan_spec *spec, const lb_store *store, const lb_exec_ctx *ectx,
                    const lb_runner_opts *ro, const lb_dist_opts *dist, lb_plan **plan,
                    int32_t *measure_ran, int32_t *measure_total, lb_err *err);

/* Reads the measurements of plan and solves. choices[k] (in: the override
 * choice of fixed tensors) gets the chosen candidate for the others.
 * Returns 0, LB_ENOTFOUND (target below the cheapest menu: names the minimum), LB_E*. */
int lb_tbpw_allocate(const lb_plan *plan, const lb_plan_spec *spec, const lb_store *store,
                     const lb_tbpw_menu *menu, double target, const char *proxy,
                     lb_plan_choice *choices, lb_tbpw_alloc *a, lb_err *err);

/* The allocation as JSON (per tensor: method, options, bits, bpw, every proxy,
 * chosen by allocation or override; totals). Caller frees. NULL on OOM. */
char *lb_tbpw_alloc_json(const lb_tbpw_alloc *a, const lb_tbpw_menu *menu,
                         const lb_plan_choice *choices);
/* Every measurement (all candidates) as JSON: OUT/.lowbit/measurement.json. */
char *lb_tbpw_measurement_json(const lb_tbpw_alloc *a, const lb_tbpw_menu *menu,
                               const lb_plan_choice *choices);

/* Everything the measurement stage of `lowbit quantize --target-bpw` needs. */
typedef struct {
    const lb_config *cfg;
    const lb_model *model;
    const char *model_dir, *out, *model_fp, *calib_fp;
    int64_t n_seq, seq_len;
    int threads;
    bool json;
    double target;
    const char *candidates, *proxy; /* NULL: defaults */
    const lb_qopts *base;           /* command-line options (candidates start from them) */
    lb_override *ovr;               /* --override (their tensors are fixed) */
    int n_ovr;
    const lb_dist_opts *dist;       /* NULL: embedded */
    const uint32_t *tokens;         /* n_seq * seq_len calibration ids */
    lb_runner_progress_fn progress;
    void *user;
    int crash_after_jobs;           /* test hook, as lb_runner_opts */
} lb_tbpw_args;

/* The whole stage: menu, override-fixed tensors, the measurement plan run on
 * OUT's store (opened here: *store), the allocation, its table, and
 * OUT/.lowbit/measurement.json. OUT: *menu, *choices and *fixed ([L * 7]),
 * *alloc, *alloc_json (lb_tbpw_alloc_json), all freed by the caller.
 * Returns 0 or LB_E*. */
int lb_tbpw_stage(const lb_tbpw_args *a, lb_store **store, lb_tbpw_menu **menu,
                  lb_plan_choice **choices, bool **fixed, lb_tbpw_alloc *alloc,
                  char **alloc_json, lb_err *err);

/* After the run: writes OUT/allocation.json and checks the manifest's honest
 * bpw against the allocation's prediction (a mismatch is reported, not fatal). */
int lb_tbpw_finish(const char *out, const char *alloc_json, const lb_tbpw_alloc *alloc,
                   double realized_bpw, bool json, lb_err *err);

/* Prints the per-tensor table (stderr) or, json, one "allocation" event per
 * tensor and a summary line (stdout). */
void lb_tbpw_print(const lb_tbpw_alloc *a, const lb_tbpw_menu *menu,
                   const lb_plan_choice *choices, bool json);

#endif
