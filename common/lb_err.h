/* lb_err: error codes and the caller-owned error record.
 * Every fallible function returns 0 or a negative LB_E* code and, on failure,
 * fills the caller's lb_err with one line naming the file or peer and the fix. */
#ifndef LB_ERR_H
#define LB_ERR_H

#include <stddef.h>

enum {
    LB_OK = 0,
    LB_EIO = -1,       /* open/read/write/mmap failed */
    LB_EFORMAT = -2,   /* malformed file or message */
    LB_EINVAL = -3,    /* bad argument or option */
    LB_ENOMEM = -4,    /* allocation failed */
    LB_ENOTFOUND = -5, /* missing tensor, key or file */
    LB_ENUMERIC = -6,  /* NaN/Inf, singular matrix */
    LB_ESTATE = -7,    /* wrong state (e.g. output dir holds another job) */
    LB_ENET = -8,      /* network peer or server error */
};

typedef struct lb_err {
    int code;
    char msg[256];
} lb_err;

/* Sets err (if non-NULL) from a printf format; returns code so callers can
 * write `return lb_err_set(err, LB_EINVAL, "...")`. The message is always one
 * line: control characters (from quoted input) become '?'. */
int lb_err_set(lb_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the existing message with "prefix: " (keeps the code; one line). */
int lb_err_prefix(lb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void lb_err_clear(lb_err *err);

/* Name of a code, e.g. "format error". Never NULL. */
const char *lb_err_name(int code);

#endif
