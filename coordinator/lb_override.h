/* lb_override: the `lowbit quantize --override 'REGEX=METHOD[:opt=val,...]'`
 * spec. A pure parser (no I/O) so it can be fuzzed (tests/fuzz/fuzz_override.c).
 * The regex is anchored ("^(REGEX)$", POSIX extended) and matched against full
 * tensor names; the options use lb_qopts_parse_arg's vocabulary. */
#ifndef LB_OVERRIDE_H
#define LB_OVERRIDE_H

#include <regex.h>

#include "lb_err.h"
#include "lb_quant.h"

/* Longest accepted spec: regcomp's time and memory grow with the pattern (and
 * its repetition counts), so an absurd one is refused before it is compiled. */
#define LB_OVERRIDE_SPEC_MAX 511

typedef struct {
    char *pattern; /* "^(REGEX)$", owned */
    regex_t re;
    char method[16];
    lb_qopts opts;
    char spec[LB_OVERRIDE_SPEC_MAX + 1];
    int matched; /* tensors it applies to (the caller counts) */
} lb_override;

/* Parses spec; options start from *base. OUT: *o (lb_override_free it; left
 * empty on failure). Returns 0, LB_EINVAL (one line quoting the spec) or
 * LB_ENOMEM. */
int lb_override_parse(const char *spec, const lb_qopts *base, lb_override *o, lb_err *err);

/* Frees what lb_override_parse allocated. NULL-safe and idempotent. */
void lb_override_free(lb_override *o);

#endif
