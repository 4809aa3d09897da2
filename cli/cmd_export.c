/* lowbit export / lowbit verify: packed checkpoint -> plain HF checkpoint, and
 * the manifest checksum check. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lb_cli.h"
#include "lb_export.h"
#include "lb_packed.h"

static void export_usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit export --model PACKED --out DIR [--dtype f16|bf16|f32]\n"
            "                     [--format dense|gguf|gptq|compressed-tensors] [--direct]\n"
            "\n"
            "--format dense (default): a plain Hugging Face checkpoint (config.json\n"
            "  without quantization_config, model.safetensors) with every quantized\n"
            "  linear dequantized, one tensor at a time. With --dtype f32 (the default)\n"
            "  the weights are exactly those `lowbit eval --model PACKED` uses.\n"
            "--format gguf: --out is a .gguf file for llama.cpp (llama architecture,\n"
            "  tokenizer.json carried over or a placeholder vocabulary), tensors in\n"
            "  --dtype from the dequantized weights. --direct: RTN/GPTQ linears with\n"
            "  group size 32 keep their codes as Q4_0 (4-bit sym), Q4_1 (4-bit asym)\n"
            "  or Q8_0 (8-bit sym) instead.\n"
            "--format gptq | compressed-tensors: RTN/GPTQ at 2, 4 or 8 bits only, in\n"
            "  the GPTQ safetensors layout (AutoGPTQ/GPTQModel/transformers) or\n"
            "  compressed-tensors pack-quantized (vLLM); other tensors in --dtype\n"
            "  (f16 default, or bf16). CLAQ, PB-LLM, BiLLM and QBB have no runtime\n"
            "  format: export them dense or GGUF.\n"
            "See docs/export.md.\n");
}

int lb_cmd_export(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *dtype_s = NULL, *format = "dense";
    bool direct = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            export_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--direct")) {
            direct = true;
            continue;
        }
        const char **dst = !strcmp(a, "--model")    ? &model
                           : !strcmp(a, "--out")    ? &out
                           : !strcmp(a, "--dtype")  ? &dtype_s
                           : !strcmp(a, "--format") ? &format
                                                    : NULL;
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
    bool gptq = !strcmp(format, "gptq"), ct = !strcmp(format, "compressed-tensors");
    if (strcmp(format, "dense") && strcmp(format, "gguf") && !gptq && !ct) {
        fprintf(stderr, "lowbit export: --format '%s' unknown; use dense, gguf, gptq or "
                        "compressed-tensors\n", format);
        return 2;
    }
    if (direct && strcmp(format, "gguf")) {
        fprintf(stderr, "lowbit export: --direct applies to --format gguf only\n");
        return 2;
    }
    if (!dtype_s)
        dtype_s = gptq || ct ? "f16" : "f32";
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
    if (!strcmp(format, "gguf")) {
        lb_gguf_opts o = {.dtype = dtype, .direct = direct};
        lb_gguf_summary s;
        if (lb_gguf_export(model, out, &o, &s, &err)) {
            fprintf(stderr, "lowbit export: %s\n", err.msg);
            return 1;
        }
        printf("exported %s -> %s (gguf, %s): %lld tensors, %lld linears as ggml block codes, "
               "%lld dense, %llu bytes", model, out, dtype_s, (long long)s.tensors,
               (long long)s.direct, (long long)s.dense, (unsigned long long)s.file_bytes);
        if (s.q4_1_m_inexact)
            printf("; %lld Q4_1 blocks store min = -scale*zero rounded to f16",
                   (long long)s.q4_1_m_inexact);
        printf("\n");
        return 0;
    }
    if (gptq || ct) {
        if (lb_gptq_export(model, out, ct, dtype, &err)) {
            fprintf(stderr, "lowbit export: %s\n", err.msg);
            return 1;
        }
        printf("exported %s -> %s (%s)\n", model, out, format);
        return 0;
    }
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
