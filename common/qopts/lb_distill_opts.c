/* lb_distill_opts: the command-line and JSON spelling of lb_distill_opts (argv
 * parsing stays out of the kernel library). */
#include "lb_distill_opts.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *lb_distill_usage(void)
{
    return "  --distill STEPS          Adam steps of scale distillation per block, 0 = off (0)\n"
           "  --distill-lr LR          peak relative learning rate, (0, 1] (0.001)\n"
           "  --distill-batch N        sequences per step (8)\n"
           "  --distill-seed S         minibatch order (0)\n";
}

int lb_distill_parse_arg(lb_distill_opts *o, int argc, char **argv, int *i, lb_err *err)
{
    static const char *const names[] = {"--distill", "--distill-lr", "--distill-batch",
                                        "--distill-seed"};
    const char *a = argv[*i], *val = NULL;
    int which = -1;
    for (int k = 0; k < 4 && which < 0; k++) {
        const size_t n = strlen(names[k]);
        if (!strcmp(a, names[k])) {
            which = k;
            val = *i + 1 < argc ? argv[*i + 1] : NULL;
        } else if (!strncmp(a, names[k], n) && a[n] == '=') {
            which = k;
            val = a + n + 1;
        }
    }
    if (which < 0)
        return 0;
    char *end = NULL;
    errno = 0;
    const double v = val ? strtod(val, &end) : (double)NAN;
    const bool num_ok = val && end != val && !*end && !errno && isfinite(v);
    const bool integral = num_ok && v == floor(v);
    switch (which) {
    case 0:
        if (!integral || v < 0 || v > 1e6)
            return lb_err_set(err, LB_EINVAL, "--distill: '%s' is not a step count 0..1000000",
                              val ? val : "(missing)");
        o->steps = (int32_t)v;
        break;
    case 1:
        if (!num_ok || !(v > 0.0 && v <= 1.0))
            return lb_err_set(err, LB_EINVAL, "--distill-lr: '%s' is not in (0, 1]",
                              val ? val : "(missing)");
        o->lr = v;
        break;
    case 2:
        if (!integral || v < 1 || v > 1e9)
            return lb_err_set(err, LB_EINVAL, "--distill-batch: '%s' is not a count >= 1",
                              val ? val : "(missing)");
        o->batch_seqs = (int64_t)v;
        break;
    default:
        if (!integral || v < 0 || v > 9007199254740992.0)
            return lb_err_set(err, LB_EINVAL, "--distill-seed: '%s' is not an integer >= 0",
                              val ? val : "(missing)");
        o->seed = (uint64_t)v;
        break;
    }
    *i += strchr(a, '=') ? 1 : 2;
    return 1;
}

int lb_distill_opts_json(const lb_distill_opts *o, char *buf, size_t size, lb_err *err)
{
    int n = snprintf(buf, size,
                     "{\"steps\":%d,\"lr\":%.17g,\"beta1\":%.17g,\"beta2\":%.17g,\"eps\":%.17g,"
                     "\"batch_seqs\":%lld,\"seed\":%llu,\"schedule\":\"cosine\","
                     "\"loss\":\"block output MSE\","
                     "\"inputs\":\"student: quantized-path block input; teacher: fp block on fp "
                     "input\"}",
                     (int)o->steps, o->lr, o->beta1, o->beta2, o->eps, (long long)o->batch_seqs,
                     (unsigned long long)o->seed);
    if (n < 0 || (size_t)n >= size)
        return lb_err_set(err, LB_EINVAL, "distill: settings JSON needs %d bytes, buffer has %zu",
                          n, size);
    return LB_OK;
}
