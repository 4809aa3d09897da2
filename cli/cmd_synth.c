/* lowbit synth: write a synthetic LLaMA checkpoint (see common/lb_synth.h). */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_cli.h"
#include "lb_synth.h"

static void synth_usage(FILE *out)
{
    fprintf(out, "usage: lowbit synth --out DIR --preset NAME [--layers N] [--seed S]\n"
                 "                    [--dtype bf16|f32] [--force] [--json]\n\n"
                 "Writes DIR/config.json and DIR/model.safetensors: a LLaMA checkpoint with\n"
                 "random weights shaped like a real LLM's (Student-t tails, per-row scales, a\n"
                 "fixed ~0.75%% of hidden channels that carry 10-100x activations after the\n"
                 "RMSNorms). The bytes depend only on the preset, layers, seed and dtype.\n\n"
                 "options:\n"
                 "  --out DIR      output directory (created; must be empty unless --force)\n"
                 "  --preset NAME  model shape (below)\n"
                 "  --layers N     decoder layers (default: the preset's)\n"
                 "  --seed S       64-bit seed (default 0)\n"
                 "  --dtype T      bf16 (default) or f32\n"
                 "  --force        write into a non-empty DIR, replacing the two files (and\n"
                 "                 deleting a model.safetensors.index.json there)\n"
                 "  --json         print the summary as one JSON line\n\npresets:\n");
    for (int i = 0; i < lb_synth_preset_count(); i++) {
        const lb_synth_preset *p = lb_synth_preset_at(i);
        fprintf(out, "  %-13s %s\n", p->name, p->summary);
    }
}

static void progress(void *ctx, const lb_synth_tensor *t, int64_t index, int64_t count,
                     double seconds)
{
    (void)ctx;
    fprintf(stderr, "[%3lld/%lld] %-52s (%lld, %lld) %.2fs\n", (long long)index + 1,
            (long long)count, t->name, (long long)t->rows, (long long)t->cols, seconds);
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

int lb_cmd_synth(int argc, char **argv)
{
    const char *out = NULL, *preset_name = NULL;
    int64_t layers = 0;
    uint64_t seed = 0;
    lb_synth_write_opts opts = {.dtype = LB_DTYPE_BF16};
    bool json = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            synth_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--force")) {
            opts.force = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--out") || !strcmp(a, "--preset") || !strcmp(a, "--layers") ||
                   !strcmp(a, "--seed") || !strcmp(a, "--dtype")) {
            if (!v) {
                fprintf(stderr, "lowbit synth: %s needs a value; see `lowbit synth --help`\n", a);
                return 2;
            }
            i++;
            if (!strcmp(a, "--out")) {
                out = v;
            } else if (!strcmp(a, "--preset")) {
                preset_name = v;
            } else if (!strcmp(a, "--layers")) {
                if (parse_i64(v, &layers) || layers < 1) {
                    fprintf(stderr, "lowbit synth: --layers '%s' must be a positive integer\n", v);
                    return 2;
                }
            } else if (!strcmp(a, "--seed")) {
                char *end;
                errno = 0;
                unsigned long long sv = strtoull(v, &end, 0);
                if (errno || end == v || *end || *v == '-') {
                    fprintf(stderr, "lowbit synth: --seed '%s' must be an unsigned integer\n", v);
                    return 2;
                }
                seed = (uint64_t)sv;
            } else {
                if (!strcmp(v, "bf16"))
                    opts.dtype = LB_DTYPE_BF16;
                else if (!strcmp(v, "f32"))
                    opts.dtype = LB_DTYPE_F32;
                else {
                    fprintf(stderr, "lowbit synth: --dtype '%s' is not bf16 or f32\n", v);
                    return 2;
                }
            }
        } else {
            fprintf(stderr, "lowbit synth: unknown option '%s'; see `lowbit synth --help`\n", a);
            return 2;
        }
    }
    if (!out || !preset_name) {
        fprintf(stderr, "lowbit synth: --out and --preset are required; see `lowbit synth "
                        "--help`\n");
        return 2;
    }
    const lb_synth_preset *p = lb_synth_preset_find(preset_name);
    if (!p) {
        fprintf(stderr, "lowbit synth: unknown preset '%s'; choose one of:", preset_name);
        for (int i = 0; i < lb_synth_preset_count(); i++)
            fprintf(stderr, " %s", lb_synth_preset_at(i)->name);
        fprintf(stderr, "\n");
        return 2;
    }

    lb_err err = {0};
    lb_synth *s = NULL;
    lb_synth_write_stats st = {0};
    if (lb_synth_new(p, layers, seed, &s, &err)) {
        fprintf(stderr, "lowbit %s\n", err.msg);
        return 2;
    }
    if (isatty(STDERR_FILENO))
        opts.progress = progress;
    int rc = lb_synth_write(s, out, &opts, &st, &err);
    if (rc) {
        fprintf(stderr, "lowbit %s\n", err.msg);
        lb_synth_free(&s);
        return 1;
    }
    int64_t n_out = 0;
    lb_synth_outlier_channels(s, &n_out);
    if (json) {
        /* seed as a string: JSON integers above 2^53 do not survive most readers */
        char seed_txt[32];
        snprintf(seed_txt, sizeof seed_txt, "%" PRIu64, seed);
        json_t *j =
            json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:I, s:I, s:I, s:f}", "command", "synth",
                      "out", out, "preset", p->name, "layers", (json_int_t)lb_synth_n_layers(s),
                      "seed", seed_txt, "dtype", opts.dtype == LB_DTYPE_BF16 ? "bf16" : "f32",
                      "outlier_channels", (json_int_t)n_out, "params", (json_int_t)st.params,
                      "bytes", (json_int_t)st.file_bytes, "seconds", st.seconds);
        char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (txt)
            printf("%s\n", txt);
        free(txt);
        json_decref(j);
    } else {
        printf("synth: wrote %s (preset %s, %lld layers, seed %" PRIu64 ", %s): %lld params, "
               "%lld bytes, %lld outlier channels, %.2f s\n",
               out, p->name, (long long)lb_synth_n_layers(s), seed,
               opts.dtype == LB_DTYPE_BF16 ? "bf16" : "f32", (long long)st.params,
               (long long)st.file_bytes, (long long)n_out, st.seconds);
    }
    lb_synth_free(&s);
    return 0;
}
