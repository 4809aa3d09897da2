/* lb_session: one quantize run, whatever drives it. `lowbit quantize` and
 * `lowbit coordinator` fill an lb_quantize_spec from their options and call
 *
 *   lb_session_prepare      load the model and calibration windows, resolve the
 *                           per-tensor choices, derive the run id, claim the
 *                           output directory, seed the calibration artifact,
 *                           build the plan and mark the artifacts already present
 *   lb_session_run_embedded    the in-process pool (lb_runner), or
 *   lb_session_run_distributed Redis + `lowbit worker`s (lb_dist)
 *   lb_session_finish       verify the checkpoint, print the summary
 *   lb_session_free
 *
 * The session prints its report (choices, progress, summary) to stderr, or
 * one JSON line per event to stdout with spec.json. */
#ifndef LB_SESSION_H
#define LB_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "lb_distill.h"
#include "lb_err.h"
#include "lb_quant.h"

#define LB_SESSION_MAX_OVERRIDES 64
/* --collect-chunks default of `lowbit coordinator` (docs/distributed.md, "Chunked
 * collection"): two workers share each block's forward; embedded runs use 1 */
#define LB_SESSION_DIST_CHUNKS 2

struct lb_dist_opts;

typedef struct lb_quantize_spec {
    const char *model_dir;
    const char *calib, *calib_text; /* exactly one */
    const char *out;
    const char *method;             /* a registered lb_qmethod name */
    lb_qopts opts;                  /* the global quantizer options */
    lb_distill_opts distill;        /* steps == 0: off */
    const char *overrides[LB_SESSION_MAX_OVERRIDES]; /* 'REGEX=METHOD[:o]' (lb_override) */
    int n_overrides;
    int64_t ctx, nsamples;          /* 0: derived from the model / all windows */
    int threads;                    /* <= 0: all cores */
    int collect_chunks;             /* >= 1 */
    bool json, true_sequential, force, lm_head;
    int crash_after_jobs;           /* TEST HOOK for lb_runner (0 = off) */
    double target_bpw;              /* > 0: --target-bpw (lb_tbpw): method per tensor */
    const char *candidates, *proxy; /* --target-bpw's menu and proxy (NULL: defaults) */
    const struct lb_dist_opts *dist; /* where --target-bpw's measurement runs: through
                                       Redis like the run (NULL: in process) */
} lb_quantize_spec;

/* Defaults: global options from lb_qopts_init, collect_chunks 1 (distributed:
 * LB_SESSION_DIST_CHUNKS). */
void lb_quantize_spec_init(lb_quantize_spec *spec, bool distributed);

typedef struct lb_session lb_session;

/* Everything up to a started plan. The spec's strings must outlive the
 * session. OUT: *out. Returns 0 or a negative LB_E* (LB_EINVAL: bad options or
 * calibration for this model). */
int lb_session_prepare(const lb_quantize_spec *spec, lb_session **out, lb_err *err);

/* Runs the plan's needed jobs in this process. */
int lb_session_run_embedded(lb_session *s, lb_err *err);

/* Runs them through Redis: dist carries the Redis URL, job name and artifact
 * endpoints; the session fills the rest (run id, model, progress, merge). */
int lb_session_run_distributed(lb_session *s, const struct lb_dist_opts *dist, lb_err *err);

/* Verifies OUT and prints the summary line. */
int lb_session_finish(lb_session *s, lb_err *err);

/* NULL-safe; sets *s to NULL. */
void lb_session_free(lb_session **s);

#endif
