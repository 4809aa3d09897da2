#include "lb_qopts_parse.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lb_rotate.h"

#define LB_QOPT_ROW(field, kind, cli, def, lo, hi, wire_max, flags, methods, arg, help)          \
    {#field, cli, LB_QK_##kind, offsetof(lb_qopts, field), (double)(def), lo, hi, wire_max,    \
     flags, methods, arg, help},
static const lb_qopt_desc rows[] = {LB_QOPTS_TABLE(LB_QOPT_ROW)};
#undef LB_QOPT_ROW
#define N_ROWS (sizeof rows / sizeof rows[0])
/* KEEP writes its REST into the next field */
_Static_assert(offsetof(lb_qopts, outlier_keep_rest) ==
               offsetof(lb_qopts, outlier_keep_top) + sizeof(double), "KEEP pair not adjacent");

const lb_qopt_desc *lb_qopts_table(size_t *n)
{
    *n = N_ROWS;
    return rows;
}

int64_t lb_qopt_get_int(const lb_qopts *o, const lb_qopt_desc *d)
{
    const char *p = (const char *)o + d->offset;
    switch (d->kind) {
    case LB_QK_I32:
    case LB_QK_ROT: return *(const int32_t *)p;
    case LB_QK_BOOL: return *(const bool *)p;
    case LB_QK_U64: return (int64_t)*(const uint64_t *)p;
    case LB_QK_GRID: return (int64_t)*(const lb_qgrid *)p;
    case LB_QK_CRIT: return (int64_t)*(const lb_qsalient *)p;
    default: return 0;
    }
}

void lb_qopt_set_int(lb_qopts *o, const lb_qopt_desc *d, int64_t v)
{
    char *p = (char *)o + d->offset;
    switch (d->kind) {
    case LB_QK_I32:
    case LB_QK_ROT: *(int32_t *)p = (int32_t)v; break;
    case LB_QK_BOOL: *(bool *)p = v != 0; break;
    case LB_QK_U64: *(uint64_t *)p = (uint64_t)v; break;
    case LB_QK_GRID: *(lb_qgrid *)p = (lb_qgrid)v; break;
    case LB_QK_CRIT: *(lb_qsalient *)p = (lb_qsalient)v; break;
    default: break;
    }
}

double lb_qopt_get_f64(const lb_qopts *o, const lb_qopt_desc *d)
{
    return *(const double *)((const char *)o + d->offset);
}

void lb_qopt_set_f64(lb_qopts *o, const lb_qopt_desc *d, double v)
{
    *(double *)((char *)o + d->offset) = v;
}

bool lb_qopt_is_default(const lb_qopts *o, const lb_qopt_desc *d)
{
    if (d->kind == LB_QK_F64 || d->kind == LB_QK_KEEP)
        return lb_qopt_get_f64(o, d) == d->def;
    return lb_qopt_get_int(o, d) == (int64_t)d->def;
}

/* the spelling of enum value v in "a|b|c" (ROT: none|hadamard|auto = 0, 1, -1) */
static const char *enum_name(const lb_qopt_desc *d, int64_t v)
{
    if (d->kind == LB_QK_GRID)
        return lb_qgrid_name((lb_qgrid)v);
    if (d->kind == LB_QK_CRIT)
        return lb_qsalient_name((lb_qsalient)v);
    return lb_rotate_name((int32_t)v);
}

static char usage_buf[4096];
static pthread_once_t usage_once = PTHREAD_ONCE_INIT;

/* appends " text" to usage_buf at len, wrapped at 79 columns under column 27 */
static size_t wrap(const char *text, size_t len, size_t cap)
{
    size_t col = 26;
    while (*text && len < cap) {
        size_t w = strcspn(text, " ");
        if (col + 1 + w > 79 && col > 26) {
            len += (size_t)snprintf(usage_buf + len, cap - len, "\n%26s", "");
            col = 26;
        }
        len += (size_t)snprintf(usage_buf + len, cap - len, " %.*s", (int)w, text);
        col += 1 + w;
        text += w;
        text += strspn(text, " ");
    }
    if (len < cap)
        len += (size_t)snprintf(usage_buf + len, cap - len, "\n");
    return len;
}

static void build_usage(void)
{
    size_t len = 0, cap = sizeof usage_buf;
    len += (size_t)snprintf(usage_buf, cap, "quantization options (every method reads the ones "
                            "it uses):\n");
    for (size_t k = 0; k < N_ROWS && len < cap; k++) {
        const lb_qopt_desc *d = &rows[k];
        if (!d->cli)
            continue;
        char head[64], def[48];
        snprintf(head, sizeof head, "%s%s%s", d->cli, d->arg[0] ? " " : "", d->arg);
        if (d->kind == LB_QK_BOOL)
            def[0] = '\0';
        else if (d->kind == LB_QK_KEEP)
            snprintf(def, sizeof def, " (default %g,%g)", d->def, rows[k + 1].def);
        else if (d->kind == LB_QK_GRID || d->kind == LB_QK_CRIT || d->kind == LB_QK_ROT)
            snprintf(def, sizeof def, " (default %s)", enum_name(d, (int64_t)d->def));
        else
            snprintf(def, sizeof def, " (default %g)", d->def);
        const char *m = strcmp(d->methods, "all") ? d->methods : NULL;
        char text[512];
        snprintf(text, sizeof text, "%s%s%s%s", m ? m : "", m ? ": " : "", d->help, def);
        len += (size_t)snprintf(usage_buf + len, cap - len, "  %-24s", head);
        if (strlen(head) > 24 && len < cap) /* the text starts on the next line */
            len += (size_t)snprintf(usage_buf + len, cap - len, "\n%26s", "");
        len = wrap(text, len, cap);
    }
}

const char *lb_qopts_usage(void)
{
    pthread_once(&usage_once, build_usage);
    return usage_buf;
}

void lb_qopts_describe(const lb_qopts *o, char *buf, size_t size)
{
    size_t len = 0;
    if (size)
        buf[0] = '\0';
    for (size_t k = 0; k < N_ROWS && len < size; k++) {
        const lb_qopt_desc *d = &rows[k];
        if ((d->flags & LB_QOPT_LATE) && lb_qopt_is_default(o, d))
            continue;
        const char *sep = len ? "," : "";
        int n;
        switch (d->kind) {
        case LB_QK_F64:
        case LB_QK_KEEP:
            n = snprintf(buf + len, size - len, "%s%s=%g", sep, d->field, lb_qopt_get_f64(o, d));
            break;
        case LB_QK_U64:
            n = snprintf(buf + len, size - len, "%s%s=%llu", sep, d->field,
                         (unsigned long long)lb_qopt_get_int(o, d));
            break;
        case LB_QK_GRID:
        case LB_QK_CRIT:
        case LB_QK_ROT:
            n = snprintf(buf + len, size - len, "%s%s=%s", sep, d->field,
                         enum_name(d, lb_qopt_get_int(o, d)));
            break;
        default:
            n = snprintf(buf + len, size - len, "%s%s=%d", sep, d->field,
                         (int)lb_qopt_get_int(o, d));
            break;
        }
        len += n > 0 ? (size_t)n : 0;
    }
}

json_t *lb_qopts_json(const lb_qopts *o)
{
    json_t *j = json_object();
    for (size_t k = 0; j && k < N_ROWS; k++) {
        const lb_qopt_desc *d = &rows[k];
        if (!d->cli)
            continue;
        char key[48];
        snprintf(key, sizeof key, "%s", d->cli + 2);
        for (char *c = key; *c; c++)
            if (*c == '-')
                *c = '_';
        json_t *v;
        switch (d->kind) {
        case LB_QK_F64: v = json_real(lb_qopt_get_f64(o, d)); break;
        case LB_QK_KEEP:
            v = json_pack("[f,f]", lb_qopt_get_f64(o, d), lb_qopt_get_f64(o, &rows[k + 1]));
            break;
        case LB_QK_BOOL: v = json_boolean(lb_qopt_get_int(o, d)); break;
        case LB_QK_GRID:
        case LB_QK_CRIT:
        case LB_QK_ROT: v = json_string(enum_name(d, lb_qopt_get_int(o, d))); break;
        default: v = json_integer((json_int_t)lb_qopt_get_int(o, d)); break;
        }
        if (!v || json_object_set_new(j, key, v) != 0) {
            json_decref(j);
            j = NULL;
        }
    }
    return j;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out,
                        lb_err *err)
{
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : (double)NAN;
    if (!s || end == s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return lb_err_set(err, LB_EINVAL, "%s: value '%s' is not a number in [%g, %g]", opt,
                          s ? s : "(missing)", lo, hi);
    *out = v;
    return LB_OK;
}

static int parse_int(const char *opt, const char *s, long long lo, long long hi,
                     long long *out, lb_err *err)
{
    char *end = NULL;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || end == s || *end || errno || v < lo || v > hi)
        return lb_err_set(err, LB_EINVAL, "%s: value '%s' is not an integer in [%lld, %lld]",
                          opt, s ? s : "(missing)", lo, hi);
    *out = v;
    return LB_OK;
}

/* the enum value spelled val ("a|b|c" in d->arg; ROT: auto = -1), or -2 */
static int64_t enum_value(const lb_qopt_desc *d, const char *val)
{
    const char *p = d->arg;
    size_t vl = val ? strlen(val) : 0;
    for (int64_t k = 0; val && *p; k++) {
        size_t n = strcspn(p, "|");
        if (n == vl && !strncmp(p, val, n))
            return d->kind == LB_QK_ROT && k == 2 ? -1 : k; /* auto: resolved per method */
        p += n + (p[n] == '|');
    }
    return -2;
}

int lb_qopts_parse_arg(lb_qopts *opts, int argc, char **argv, int *i, lb_err *err)
{
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
    const lb_qopt_desc *sp = NULL;
    for (size_t k = 0; k < N_ROWS; k++)
        if (rows[k].cli && strlen(rows[k].cli) == nlen && !strncmp(rows[k].cli, arg, nlen))
            sp = &rows[k];
    if (!sp)
        return 0;
    if (sp->kind == LB_QK_BOOL) {
        if (eq)
            return lb_err_set(err, LB_EINVAL, "%s takes no value", sp->cli);
        lb_qopt_set_int(opts, sp, 1);
        *i += 1;
        return 1;
    }
    const char *val = eq ? eq + 1 : (*i + 1 < argc ? argv[*i + 1] : NULL);
    int used = eq ? 1 : 2;
    int rc = LB_OK;
    double d = 0.0;
    long long ll = 0;
    switch (sp->kind) {
    case LB_QK_F64:
        rc = parse_double(sp->cli, val, sp->lo, sp->hi, &d, err);
        if (!rc)
            lb_qopt_set_f64(opts, sp, d);
        break;
    case LB_QK_I32:
    case LB_QK_U64:
        rc = parse_int(sp->cli, val, (long long)sp->lo,
                       sp->hi >= (double)INT64_MAX ? INT64_MAX : (long long)sp->hi, &ll, err);
        if (!rc)
            lb_qopt_set_int(opts, sp, ll);
        break;
    case LB_QK_GRID:
    case LB_QK_CRIT:
    case LB_QK_ROT: {
        int64_t v = enum_value(sp, val);
        if (v == -2) { /* "'x' is not a, b or c" */
            char alts[96] = "";
            const char *p = sp->arg;
            for (size_t len = 0; *p && len < sizeof alts;) {
                size_t n = strcspn(p, "|");
                const char *sep = p == sp->arg ? "" : p[n] ? ", " : " or ";
                int w = snprintf(alts + len, sizeof alts - len, "%s%.*s", sep, (int)n, p);
                len += w > 0 ? (size_t)w : 0;
                p += n + (p[n] == '|');
            }
            rc = lb_err_set(err, LB_EINVAL, "%s: '%s' is not %s", sp->cli,
                            val ? val : "(missing)", alts);
            break;
        }
        lb_qopt_set_int(opts, sp, v);
        break;
    }
    case LB_QK_KEEP: {
        const char *comma = val ? strchr(val, ',') : NULL;
        char top[64], what[80];
        if (!comma || (size_t)(comma - val) >= sizeof top) {
            rc = lb_err_set(err, LB_EINVAL, "%s: '%s' is not TOP,REST", sp->cli,
                            val ? val : "(missing)");
            break;
        }
        memcpy(top, val, (size_t)(comma - val));
        top[comma - val] = '\0';
        double t, r;
        snprintf(what, sizeof what, "%s TOP", sp->cli);
        rc = parse_double(what, top, sp->lo, sp->hi, &t, err);
        snprintf(what, sizeof what, "%s REST", sp->cli);
        if (!rc)
            rc = parse_double(what, comma + 1, sp[1].lo, sp[1].hi, &r, err);
        if (!rc) {
            lb_qopt_set_f64(opts, sp, t);
            lb_qopt_set_f64(opts, sp + 1, r);
        }
        break;
    }
    default:
        break;
    }
    if (rc)
        return rc;
    *i += used;
    return 1;
}

int lb_qopts_validate(const lb_qopts *opts, lb_err *err)
{
    if (opts->static_groups && opts->group_size == 0)
        return lb_err_set(err, LB_EINVAL, "--static-groups needs --group-size > 0");
    if (opts->salient_bits < 1 || opts->salient_bits > 16)
        return lb_err_set(err, LB_EINVAL, "--salient-bits %d out of 1..16", opts->salient_bits);
    if (opts->block_size < 1)
        return lb_err_set(err, LB_EINVAL, "--block-size %d must be >= 1", opts->block_size);
    return LB_OK;
}
