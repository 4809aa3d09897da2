/* lb_qopts_parse: the one command-line vocabulary for every quantization method,
 * shared by `lowbit qmatrix`, `lowbit quantize` and `--override`, generated with
 * the description, JSON and wire forms from one table (lb_qopts_table.h). */
#ifndef LB_QOPTS_PARSE_H
#define LB_QOPTS_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"
#include "lb_quant.h"

typedef enum {
    LB_QK_F64,
    LB_QK_I32,
    LB_QK_BOOL,
    LB_QK_U64,
    LB_QK_GRID,
    LB_QK_CRIT,
    LB_QK_ROT,
    LB_QK_KEEP,
} lb_qopt_kind;

/* One row of lb_qopts_table.h, expanded. */
typedef struct {
    const char *field;   /* lb_qopts member; the name in descriptions */
    const char *cli;     /* "--name", or NULL (set by the row above) */
    lb_qopt_kind kind;
    size_t offset;       /* into lb_qopts */
    double def, lo, hi;
    int64_t wire_max;
    int flags;           /* LB_QOPT_LATE */
    const char *methods, *arg, *help;
} lb_qopt_desc;

/* The rows in table order. OUT: *n. */
const lb_qopt_desc *lb_qopts_table(size_t *n);

/* Integer view of an I32/BOOL/GRID/CRIT/ROT/U64 field, float view of F64/KEEP. */
int64_t lb_qopt_get_int(const lb_qopts *o, const lb_qopt_desc *d);
void lb_qopt_set_int(lb_qopts *o, const lb_qopt_desc *d, int64_t v);
double lb_qopt_get_f64(const lb_qopts *o, const lb_qopt_desc *d);
void lb_qopt_set_f64(lb_qopts *o, const lb_qopt_desc *d, double v);
/* True when the field holds its table default. */
bool lb_qopt_is_default(const lb_qopts *o, const lb_qopt_desc *d);

/* Tries argv[*i] as a quantization option ("--bits 3" or "--bits=3"). Returns 1 when
 * it was one (its value consumed, *i advanced past it), 0 when argv[*i] is not a
 * quantization option (nothing consumed), or LB_EINVAL with a one-line message for a
 * missing or out-of-range value. */
int lb_qopts_parse_arg(lb_qopts *opts, int argc, char **argv, int *i, lb_err *err);

/* Cross-field checks after parsing (e.g. salient bits vs bits). Returns 0 or LB_EINVAL. */
int lb_qopts_validate(const lb_qopts *opts, lb_err *err);

/* Help text listing every option with its range and default (static string). */
const char *lb_qopts_usage(void);

/* "bits=4,group_size=0,...": every field in table order (LATE ones only when
 * not default); hashed into run ids and stored with each packed tensor. */
void lb_qopts_describe(const lb_qopts *o, char *buf, size_t size);

/* {"bits": 4.0, "group_size": 0, ...} keyed by the command-line names with '_'
 * for '-' (KEEP as [TOP, REST]); NULL when out of memory. */
struct json_t *lb_qopts_json(const lb_qopts *o);

#endif
