/* lb_distill_opts: command-line options and JSON of the distillation settings
 * (lb_distill_opts, lb_distill.h). */
#ifndef LB_DISTILL_OPTS_H
#define LB_DISTILL_OPTS_H

#include <stddef.h>

#include "lb_distill.h"
#include "lb_err.h"

/* Command-line options of `lowbit quantize` for distillation, in the style of
 * lb_qopts_parse_arg: tries argv[*i] ("--distill 200" or "--distill=200"):
 *   --distill STEPS (0..1e6), --distill-lr LR (0, 1], --distill-batch N (>= 1),
 *   --distill-seed S (>= 0).
 * Returns 1 when it was one (value consumed, *i advanced), 0 when not a distill
 * option, or LB_EINVAL with a one-line message. */
int lb_distill_parse_arg(lb_distill_opts *o, int argc, char **argv, int *i, lb_err *err);

/* Help text for those options (static string). */
const char *lb_distill_usage(void);

/* The settings as one canonical JSON object for the checkpoint's
 * quantization_config, e.g. {"steps":200,"lr":0.001,...,"inputs":"..."}.
 * Writes at most size bytes (NUL-terminated). Returns 0 or LB_EINVAL when it
 * does not fit. */
int lb_distill_opts_json(const lb_distill_opts *o, char *buf, size_t size, lb_err *err);

#endif
