/* lowbit gen-calib: data-free calibration tokens sampled from the model itself. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "lb_cli.h"
#include "lb_model.h"
#include "lb_packed.h"
#include "lb_sample.h"
#include "lb_tokens.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit gen-calib --model DIR --out FILE --n N --len L --seed S\n"
            "                        [--temperature T] [--top-p P] [--batch B] [--threads N]\n"
            "\n"
            "Samples N sequences of L tokens from the model: each starts at a token drawn\n"
            "uniformly from the vocabulary, the rest are sampled autoregressively. Writes\n"
            "raw little-endian uint32 (.u32), N*L ids, usable as --calib.\n"
            "The output depends only on (model, N, L, S, T, P), not on --batch/--threads.\n"
            "\n"
            "  --temperature T  softmax temperature, 0 = greedy (default 1)\n"
            "  --top-p P        nucleus sampling mass in (0, 1] (default 1 = off)\n"
            "  --batch B        sequences decoded together (default 64)\n");
}

static int bad(const char *opt, const char *val)
{
    return lb_cli_bad_value("gen-calib", opt, val);
}


static int parse_dbl(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static void on_progress(void *user, int64_t done, int64_t total)
{
    (void)user;
    fprintf(stderr, "gen-calib: %lld/%lld sequences\n", (long long)done, (long long)total);
}

int lb_cmd_gen_calib(int argc, char **argv)
{
    const char *model = NULL, *out = NULL;
    long long n = 0, len = 0, seed = -1, batch = 64, threads = 0;
    lb_sample_opts so;
    lb_sample_opts_init(&so);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v)
            return bad(a, NULL);
        i++;
        if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--n")) {
            if (lb_cli_parse_ll(v, 1, 1LL << 32, &n))
                return bad(a, v);
        } else if (!strcmp(a, "--len")) {
            if (lb_cli_parse_ll(v, 1, 1LL << 24, &len))
                return bad(a, v);
        } else if (!strcmp(a, "--seed")) {
            if (lb_cli_parse_ll(v, 0, INT64_MAX, &seed))
                return bad(a, v);
        } else if (!strcmp(a, "--batch")) {
            if (lb_cli_parse_ll(v, 1, 1 << 20, &batch))
                return bad(a, v);
        } else if (!strcmp(a, "--threads")) {
            if (lb_cli_parse_ll(v, 1, 4096, &threads))
                return bad(a, v);
        } else if (!strcmp(a, "--temperature")) {
            if (parse_dbl(v, &so.temperature) || so.temperature < 0.0)
                return bad(a, v);
        } else if (!strcmp(a, "--top-p")) {
            if (parse_dbl(v, &so.top_p) || !(so.top_p > 0.0 && so.top_p <= 1.0))
                return bad(a, v);
        } else {
            fprintf(stderr, "lowbit gen-calib: unknown option '%s'; run `lowbit gen-calib "
                            "--help`\n", a);
            return 2;
        }
    }
    if (!model || !out || !n || !len || seed < 0) {
        fprintf(stderr, "lowbit gen-calib: --model, --out, --n, --len and --seed are required; "
                        "run `lowbit gen-calib --help`\n");
        return 2;
    }
    if (threads)
        omp_set_num_threads((int)threads);
    lb_err err = {0};
    lb_model *m = NULL;
    uint32_t *tokens = NULL;
    int rc = lb_packed_model_open(&m, model, &err);
    if (!rc && (uint64_t)n * (uint64_t)len > SIZE_MAX / sizeof *tokens / 2)
        rc = lb_err_set(&err, LB_EINVAL, "gen-calib: --n x --len is too large");
    if (!rc && !(tokens = malloc((size_t)(n * len) * sizeof *tokens)))
        rc = lb_err_set(&err, LB_ENOMEM, "gen-calib: out of memory for %lld tokens",
                        n * len);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!rc)
        rc = lb_gen_calib(m, n, len, (uint64_t)seed, &so, batch, tokens, on_progress, NULL, &err);
    if (!rc)
        rc = lb_tokens_write_u32(out, tokens, n * len, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!rc)
        fprintf(stderr, "gen-calib: wrote %lld x %lld tokens to %s in %.2f s\n", n, len, out,
                (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    else
        fprintf(stderr, "lowbit gen-calib: %s\n", err.msg);
    free(tokens);
    lb_model_free(&m);
    return rc ? 1 : 0;
}
