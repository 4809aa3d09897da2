/* lowbit export / lowbit verify: packed checkpoint -> plain HF checkpoint, and
 * the manifest checksum check. */
#include <stdio.h>
#include <string.h>

#include "lb_cli.h"
#include "lb_packed.h"

static void export_usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit export --model PACKED --out DIR [--dtype f16|bf16|f32]\n"
            "\n"
            "Writes a plain Hugging Face checkpoint (config.json without\n"
            "quantization_config, model.safetensors) with every quantized linear\n"
            "dequantized, one tensor at a time. With --dtype f32 (the default) the\n"
            "weights are exactly those `lowbit eval --model PACKED` uses.\n");
}

int lb_cmd_export(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *dtype_s = "f32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            export_usage(stdout);
            return 0;
        }
        const char **dst = !strcmp(a, "--model") ? &model
                           : !strcmp(a, "--out") ? &out
                           : !strcmp(a, "--dtype") ? &dtype_s : NULL;
        if (!dst) {
            fprintf(stderr, "lowbit export: unknown option '%s'; run `lowbit export --help`\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lowbit export: %s needs a value; run `lowbit export --help`\n", a);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!model || !out) {
        fprintf(stderr, "lowbit export: --model and --out are required; run `lowbit export --help`\n");
        return 2;
    }
    lb_dtype dtype;
    if (!strcmp(dtype_s, "f32"))
        dtype = LB_DTYPE_F32;
    else if (!strcmp(dtype_s, "f16"))
        dtype = LB_DTYPE_F16;
    else if (!strcmp(dtype_s, "bf16"))
        dtype = LB_DTYPE_BF16;
    else {
        fprintf(stderr, "lowbit export: --dtype '%s' unknown; use f16, bf16 or f32\n", dtype_s);
        return 2;
    }
    lb_err err = {0};
    if (lb_packed_export(model, out, dtype, &err)) {
        fprintf(stderr, "lowbit export: %s\n", err.msg);
        return 1;
    }
    printf("exported %s -> %s (%s)\n", model, out, dtype_s);
    return 0;
}

int lb_cmd_verify(int argc, char **argv)
{
    const char *model = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: lowbit verify --model PACKED [--json]\n\nRecomputes the sha256 of "
                   "every file and stored tensor listed in manifest.json and the bpw figures.\n");
            return 0;
        } else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            fprintf(stderr, "lowbit verify: bad option '%s'; run `lowbit verify --help`\n",
                    argv[i]);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "lowbit verify: --model is required; run `lowbit verify --help`\n");
        return 2;
    }
    lb_err err = {0};
    lb_packed_summary s;
    if (lb_packed_verify(model, &s, &err)) {
        if (json)
            printf("{\"model\":\"%s\",\"ok\":false}\n", model);
        fprintf(stderr, "lowbit verify: %s\n", err.msg);
        return 1;
    }
    if (json)
        printf("{\"ok\":true,\"linears\":%lld,\"weights\":%lld,\"bytes\":%llu,\"bpw\":%.6f,"
               "\"file_bytes\":%llu}\n", (long long)s.n_quantized,
               (long long)s.quantized_weights, (unsigned long long)s.quantized_bytes, s.bpw,
               (unsigned long long)s.file_bytes);
    else
        printf("%s: OK: %lld quantized linears, %lld weights, %llu bytes, %.4f bpw; "
               "model.safetensors %llu bytes\n", model, (long long)s.n_quantized,
               (long long)s.quantized_weights, (unsigned long long)s.quantized_bytes, s.bpw,
               (unsigned long long)s.file_bytes);
    return 0;
}
