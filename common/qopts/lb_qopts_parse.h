/* lb_qopts_parse: the one command-line vocabulary for every quantization method,
 * shared by `lowbit qmatrix` and `lowbit quantize`. */
#ifndef LB_QOPTS_PARSE_H
#define LB_QOPTS_PARSE_H

#include <stddef.h>

#include "lb_err.h"
#include "lb_quant.h"

/* Tries argv[*i] as a quantization option ("--bits 3" or "--bits=3"). Returns 1 when
 * it was one (its value consumed, *i advanced past it), 0 when argv[*i] is not a
 * quantization option (nothing consumed), or LB_EINVAL with a one-line message for a
 * missing or out-of-range value. */
int lb_qopts_parse_arg(lb_qopts *opts, int argc, char **argv, int *i, lb_err *err);

/* Cross-field checks after parsing (e.g. salient bits vs bits). Returns 0 or LB_EINVAL. */
int lb_qopts_validate(const lb_qopts *opts, lb_err *err);

/* Help text listing every option with its range and default (static string). */
const char *lb_qopts_usage(void);

/* Name of a grid / salient criterion as spelled on the command line. */
const char *lb_qgrid_name(lb_qgrid g);
const char *lb_qsalient_name(lb_qsalient s);

#endif
