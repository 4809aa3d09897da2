#include "lb_qopts_parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *lb_qgrid_name(lb_qgrid g)
{
    return g == LB_GRID_MSE ? "mse" : "minmax";
}

const char *lb_qsalient_name(lb_qsalient s)
{
    return s == LB_SALIENT_MAGNITUDE ? "magnitude" : "hessian";
}

const char *lb_qopts_usage(void)
{
    return "quantization options (every method reads the ones it uses):\n"
           "  --bits B                 bits per weight, 1..16 (fractional for claq), default 4\n"
           "  --group-size G           columns per group, 0 = per row (default 0)\n"
           "  --act-order              gptq: columns by descending diag(H)\n"
           "  --static-groups          gptq: group grids fixed before the loop\n"
           "  --sym                    symmetric grid\n"
           "  --grid minmax|mse        grid search (default minmax)\n"
           "  --damp D                 relative damping, 0..1 (default 0.01)\n"
           "  --block-size N           lazy-batch block, 1..65536 (default 128)\n"
           "  --salient F              pbllm: salient fraction, 0..1 (default 0.1)\n"
           "  --salient-bits B         pbllm: bits of salient weights, 1..16 (default 8)\n"
           "  --salient-criterion hessian|magnitude   (default hessian)\n"
           "  --salient-group N        pbllm: columns per salient threshold, 0 = matrix\n"
           "  --bases N                qbb: binary bases, 1..4 (default 2)\n"
           "  --refine-iters N         qbb: refinement rounds, 0..10000 (default 10)\n"
           "  --hessian-weighted       qbb: H-weighted least-squares scales\n"
           "  --gptq-init              qbb: start from a 4-bit GPTQ reconstruction\n"
           "  --outlier-threshold T    claq: |w| >= T * mean|W| is an outlier, > 0 (13)\n"
           "  --outlier-keep TOP,REST  claq: fp16 keep ratios, 0..1 (0.014,0.004)\n"
           "  --outlier-top-frac F     claq: fraction of top columns, 0..1 (0.10)\n"
           "  --outlier-hessian-score  claq: rank columns by a Hessian-weighted score\n"
           "  --centroids-with-outliers  claq: fit K-means including kept values\n"
           "  --seed N                 random seed (default 0)\n"
           "  --rotate none|hadamard|auto  every method: random signs + block Hadamard on\n"
           "                           both sides, seed and kind stored (default none; auto:\n"
           "                           hadamard for rtn, gptq, claq, billm, qbb, none for pbllm)\n";
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

typedef enum { FLAG, DBL, INT, GRID, CRIT, KEEP, ROT } opt_kind;

typedef struct {
    const char *name;
    opt_kind kind;
    double lo, hi;
    size_t offset; /* into lb_qopts */
} opt_spec;

#define OFF(field) offsetof(lb_qopts, field)
static const opt_spec specs[] = {
    {"--bits", DBL, 1, 16, OFF(bits)},
    {"--group-size", INT, 0, 1 << 30, OFF(group_size)},
    {"--act-order", FLAG, 0, 0, OFF(act_order)},
    {"--static-groups", FLAG, 0, 0, OFF(static_groups)},
    {"--sym", FLAG, 0, 0, OFF(sym)},
    {"--grid", GRID, 0, 0, OFF(grid)},
    {"--damp", DBL, 0, 1, OFF(damp)},
    {"--block-size", INT, 1, 65536, OFF(block_size)},
    {"--salient", DBL, 0, 1, OFF(salient_frac)},
    {"--salient-bits", INT, 1, 16, OFF(salient_bits)},
    {"--salient-criterion", CRIT, 0, 0, OFF(salient_criterion)},
    {"--salient-group", INT, 0, 1 << 30, OFF(salient_group)},
    {"--bases", INT, 1, 4, OFF(bases)},
    {"--refine-iters", INT, 0, 10000, OFF(refine_iters)},
    {"--hessian-weighted", FLAG, 0, 0, OFF(hessian_weighted)},
    {"--gptq-init", FLAG, 0, 0, OFF(gptq_init)},
    {"--outlier-threshold", DBL, 1e-9, 1e9, OFF(outlier_threshold)},
    {"--outlier-keep", KEEP, 0, 1, OFF(outlier_keep_top)},
    {"--outlier-top-frac", DBL, 0, 1, OFF(outlier_top_frac)},
    {"--outlier-hessian-score", FLAG, 0, 0, OFF(outlier_hessian_score)},
    {"--centroids-with-outliers", FLAG, 0, 0, OFF(centroids_with_outliers)},
    {"--seed", INT, 0, (double)INT64_MAX, OFF(seed)},
    {"--rotate", ROT, 0, 0, OFF(rotate)},
};

int lb_qopts_parse_arg(lb_qopts *opts, int argc, char **argv, int *i, lb_err *err)
{
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
    const opt_spec *sp = NULL;
    for (size_t k = 0; k < sizeof specs / sizeof specs[0]; k++)
        if (strlen(specs[k].name) == nlen && !strncmp(specs[k].name, arg, nlen))
            sp = &specs[k];
    if (!sp)
        return 0;
    char *base = (char *)opts + sp->offset;
    if (sp->kind == FLAG) {
        if (eq)
            return lb_err_set(err, LB_EINVAL, "%s takes no value", sp->name);
        *(bool *)base = true;
        *i += 1;
        return 1;
    }
    const char *val = eq ? eq + 1 : (*i + 1 < argc ? argv[*i + 1] : NULL);
    int used = eq ? 1 : 2;
    int rc = LB_OK;
    double d = 0.0;
    long long ll = 0;
    switch (sp->kind) {
    case DBL:
        rc = parse_double(sp->name, val, sp->lo, sp->hi, &d, err);
        if (!rc)
            *(double *)base = d;
        break;
    case INT:
        rc = parse_int(sp->name, val, (long long)sp->lo,
                       sp->hi >= (double)INT64_MAX ? INT64_MAX : (long long)sp->hi, &ll, err);
        if (!rc && sp->offset == OFF(seed))
            opts->seed = (uint64_t)ll;
        else if (!rc)
            *(int32_t *)base = (int32_t)ll;
        break;
    case GRID:
        if (val && !strcmp(val, "minmax"))
            opts->grid = LB_GRID_MINMAX;
        else if (val && !strcmp(val, "mse"))
            opts->grid = LB_GRID_MSE;
        else
            rc = lb_err_set(err, LB_EINVAL, "--grid: '%s' is not minmax or mse",
                            val ? val : "(missing)");
        break;
    case CRIT:
        if (val && !strcmp(val, "hessian"))
            opts->salient_criterion = LB_SALIENT_HESSIAN;
        else if (val && !strcmp(val, "magnitude"))
            opts->salient_criterion = LB_SALIENT_MAGNITUDE;
        else
            rc = lb_err_set(err, LB_EINVAL,
                            "--salient-criterion: '%s' is not hessian or magnitude",
                            val ? val : "(missing)");
        break;
    case ROT:
        if (val && !strcmp(val, "none"))
            opts->rotate = 0;
        else if (val && !strcmp(val, "hadamard"))
            opts->rotate = 1;
        else if (val && !strcmp(val, "auto"))
            opts->rotate = -1; /* resolved per method when the tensor is planned */
        else
            rc = lb_err_set(err, LB_EINVAL, "--rotate: '%s' is not none, hadamard or auto",
                            val ? val : "(missing)");
        break;
    case KEEP: {
        const char *comma = val ? strchr(val, ',') : NULL;
        char top[64];
        if (!comma || (size_t)(comma - val) >= sizeof top) {
            rc = lb_err_set(err, LB_EINVAL, "--outlier-keep: '%s' is not TOP,REST",
                            val ? val : "(missing)");
            break;
        }
        memcpy(top, val, (size_t)(comma - val));
        top[comma - val] = '\0';
        double t, r;
        rc = parse_double("--outlier-keep TOP", top, 0, 1, &t, err);
        if (!rc)
            rc = parse_double("--outlier-keep REST", comma + 1, 0, 1, &r, err);
        if (!rc) {
            opts->outlier_keep_top = t;
            opts->outlier_keep_rest = r;
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
