#include "lb_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Messages quote names, URLs and keys that came from files or peers: a
 * newline or escape in them must not forge or garble a log line. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

int lb_err_set(lb_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        one_line(err->msg);
    }
    return code;
}

int lb_err_prefix(lb_err *err, const char *fmt, ...)
{
    if (!err)
        return LB_OK;
    char prefix[256];
    char old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Truncation is fine: the message is one line for a human. */
    size_t n = strnlen(prefix, sizeof err->msg - 1);
    memcpy(err->msg, prefix, n);
    size_t room = sizeof err->msg - n;
    snprintf(err->msg + n, room, "%s%s", room > 2 ? ": " : "", old);
    one_line(err->msg);
    return err->code;
}

void lb_err_clear(lb_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *lb_err_name(int code)
{
    switch (code) {
    case LB_OK: return "ok";
    case LB_EIO: return "I/O error";
    case LB_EFORMAT: return "format error";
    case LB_EINVAL: return "invalid argument";
    case LB_ENOMEM: return "out of memory";
    case LB_ENOTFOUND: return "not found";
    case LB_ENUMERIC: return "numerical error";
    case LB_ESTATE: return "state error";
    case LB_ENET: return "network error";
    default: return "unknown error";
    }
}
