/* lb_cli_util: the small pieces every subcommand's option parsing shares. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "lb_cli.h"
#include "lb_quant.h"

int lb_cli_bad_value(const char *cmd, const char *opt, const char *val)
{
    fprintf(stderr, "lowbit %s: bad value '%s' for %s; run `lowbit %s --help`\n", cmd,
            val ? val : "(missing)", opt, cmd);
    return 2;
}

int lb_cli_parse_ll(const char *s, long long lo, long long hi, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

void lb_cli_print_methods(FILE *out)
{
    const lb_qmethod *m[64];
    int n = lb_qmethod_list(m, 64);
    for (int i = 0; i < n; i++)
        fprintf(out, " %s", m[i]->name);
}
