/* lb_override: parsing of --override specs (lb_override.h). */
#include "lb_override.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_qopts_parse.h"

/* glibc's regcomp copies the operand of every "+" (x+ -> xx*) and of every
 * {m,n} (n copies), and nested or stacked ones multiply: "a++++...+" with 100
 * pluses took 68 s and 20 GB (a fuzz finding). Tensor-name patterns need few
 * repetitions, so the product of all copy factors is bounded. */
#define LB_OVERRIDE_REPEAT_MAX 4096
/* ... and so is that product times the pattern length (copies of copies). */
#define LB_OVERRIDE_EXPAND_MAX 16384
/* Quantifiers of any kind: regcomp's epsilon closures grow exponentially with
 * them ("^(x*(a*)*(a*)*...)$" with 22 groups took 5 s, with 26 over 20 s;
 * "x*#" and 70 stacked '*' 0.6 s: fuzz findings). 12 leave room for any
 * tensor-name pattern ("model\.layers\.(1|2)\..*_proj.*" uses 2); a
 * quantifier right after another ("a*+", "a{2}*") means nothing and counts 100. */
#define LB_OVERRIDE_QUANT_MAX 12

/* Product over p[0..n) of 2 per '+' and (largest count + 1) per "{...}",
 * outside bracket expressions and escapes: an upper bound on regcomp's
 * expansion whatever the nesting. Saturates above the limit. Also counts the
 * quantifiers and flags empty groups/alternatives: "(|||...|){16}" took 3 s
 * and 2.3 GB in regcomp, "(()()...){120}" 400 MB (fuzz findings). */
static long repeat_product(const char *p, size_t n, int *quantifiers, bool *empty)
{
    long prod = 1;
    char prev = '(';
    *quantifiers = 0;
    *empty = n == 0 || p[n - 1] == '|';
    for (size_t i = 0; i < n; i++) {
        char atom = p[i]; /* what `prev` becomes: escapes and brackets are plain atoms */
        if ((p[i] == ')' || p[i] == '|') && (prev == '(' || prev == '|'))
            *empty = true;
        bool after_quant = i > 0 && (p[i - 1] == '*' || p[i - 1] == '+' || p[i - 1] == '?' ||
                                     p[i - 1] == '}') && (i < 2 || p[i - 2] != '\\');
        if (after_quant && (p[i] == '*' || p[i] == '+' || p[i] == '?' || p[i] == '{'))
            *quantifiers += 100;
        if (p[i] == '\\') {
            i++;
            atom = 'a';
        } else if (p[i] == '[') {
            atom = 'a'; /* "[]x]" and "[^]x]": a leading ']' is literal */
            size_t j = i + 1;
            if (j < n && p[j] == '^')
                j++;
            if (j < n && p[j] == ']')
                j++;
            while (j < n && p[j] != ']')
                j++;
            i = j;
        } else if (p[i] == '*' || p[i] == '?') {
            ++*quantifiers;
        } else if (p[i] == '+') {
            ++*quantifiers;
            if (prod <= LB_OVERRIDE_REPEAT_MAX)
                prod *= 2;
        } else if (p[i] == '{') {
            ++*quantifiers;
            long best = 0, cur = 0;
            size_t j = i + 1;
            for (; j < n && p[j] != '}'; j++) {
                cur = p[j] >= '0' && p[j] <= '9' ? cur * 10 + (p[j] - '0') : 0;
                if (cur > LB_OVERRIDE_REPEAT_MAX)
                    cur = LB_OVERRIDE_REPEAT_MAX + 1;
                if (cur > best)
                    best = cur;
            }
            if (prod <= LB_OVERRIDE_REPEAT_MAX)
                prod *= best + 1;
            i = j;
        }
        prev = atom;
    }
    return prod > LB_OVERRIDE_REPEAT_MAX ? LB_OVERRIDE_REPEAT_MAX + 1 : prod;
}

/* Parses "k=v,k=v" into opts with the shared vocabulary ("--k=v"). */
static int parse_override_opts(const char *list, lb_qopts *opts, lb_err *err)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char arg[300];
        snprintf(arg, sizeof arg, "--%s", tok);
        for (char *c = arg + 2; *c && *c != '='; c++)
            if (*c == '_')
                *c = '-';
        char *argv[1] = {arg};
        int i = 0;
        int rc = lb_qopts_parse_arg(opts, 1, argv, &i, err);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return lb_err_set(err, LB_EINVAL, "--override: unknown option \"%s\" (see lowbit "
                              "quantize --help)", tok);
    }
    return lb_qopts_validate(opts, err);
}

int lb_override_parse(const char *spec, const lb_qopts *base, lb_override *o, lb_err *err)
{
    memset(o, 0, sizeof *o);
    if (strlen(spec) > LB_OVERRIDE_SPEC_MAX)
        return lb_err_set(err, LB_EINVAL, "--override '%.40s...': longer than %d characters",
                          spec, LB_OVERRIDE_SPEC_MAX);
    snprintf(o->spec, sizeof o->spec, "%s", spec);
    const char *eq = strrchr(spec, '=');
    /* the method part holds no '=' unless options follow ':' */
    const char *colon = NULL;
    for (const char *c = spec; *c; c++)
        if (*c == '=') {
            const char *after = c + 1;
            const char *col = strchr(after, ':');
            const char *e2 = strchr(after, '=');
            if (!e2 || (col && col < e2)) {
                eq = c;
                colon = col;
                break;
            }
        }
    if (!eq || eq == spec)
        return lb_err_set(err, LB_EINVAL, "--override '%s': expected REGEX=METHOD[:options]",
                          spec);
    size_t plen = (size_t)(eq - spec);
    int quantifiers = 0;
    bool empty = false;
    long copies = repeat_product(spec, plen, &quantifiers, &empty);
    if (empty)
        return lb_err_set(err, LB_EINVAL,
                          "--override '%s': the regex has an empty group or alternative (\"()\", "
                          "\"||\", \"(|\", \"|)\" or a '|' at either end); write it without",
                          spec);
    if (quantifiers > LB_OVERRIDE_QUANT_MAX)
        return lb_err_set(err, LB_EINVAL,
                          "--override '%s': the regex has %d quantifiers (* + ? {}), the limit "
                          "is %d; write a simpler pattern",
                          spec, quantifiers, LB_OVERRIDE_QUANT_MAX);
    if (copies > LB_OVERRIDE_REPEAT_MAX || copies * (long)(plen + 1) > LB_OVERRIDE_EXPAND_MAX)
        return lb_err_set(err, LB_EINVAL,
                          "--override '%s': the regex's '+' and {m,n} repetitions multiply to "
                          "more than %d copies or %d pattern characters; write a simpler "
                          "pattern",
                          spec, LB_OVERRIDE_REPEAT_MAX, LB_OVERRIDE_EXPAND_MAX);
    o->pattern = malloc(plen + 5);
    if (!o->pattern)
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    snprintf(o->pattern, plen + 5, "^(%.*s)$", (int)plen, spec);
    int rrc = regcomp(&o->re, o->pattern, REG_EXTENDED | REG_NOSUB);
    if (rrc) {
        char msg[128];
        regerror(rrc, &o->re, msg, sizeof msg);
        free(o->pattern);
        o->pattern = NULL;
        return lb_err_set(err, LB_EINVAL, "--override '%s': bad regular expression (%s)", spec,
                          msg);
    }
    size_t mlen = colon ? (size_t)(colon - eq - 1) : strlen(eq + 1);
    if (mlen == 0 || mlen >= sizeof o->method) {
        regfree(&o->re);
        free(o->pattern);
        o->pattern = NULL;
        return lb_err_set(err, LB_EINVAL, "--override '%s': missing or too long method", spec);
    }
    memcpy(o->method, eq + 1, mlen);
    o->method[mlen] = '\0';
    int rc = 0;
    if (!lb_qmethod_find(o->method))
        rc = lb_err_set(err, LB_EINVAL, "--override '%s': unknown method \"%s\" (lowbit "
                        "quantize --help lists them)", spec, o->method);
    o->opts = *base;
    if (!rc && colon)
        rc = parse_override_opts(colon + 1, &o->opts, err);
    if (rc) {
        regfree(&o->re);
        free(o->pattern);
        o->pattern = NULL;
        if (err->msg[0] && !strstr(err->msg, "--override"))
            lb_err_prefix(err, "--override '%s'", spec);
    }
    return rc;
}

void lb_override_free(lb_override *o)
{
    if (!o || !o->pattern)
        return;
    regfree(&o->re);
    free(o->pattern);
    o->pattern = NULL;
}
