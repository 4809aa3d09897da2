/* lowbit: command-line entry point, dispatching to subcommands. */
#include <stdio.h>
#include <string.h>

#include "lb_cli.h"
#include "lb_packed.h"

static int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("lowbit %s\n", LB_VERSION);
    return 0;
}

typedef struct {
    const char *name;
    lb_cli_fn fn;
    const char *summary;
} lb_cli_command;

static const lb_cli_command commands[] = {
    /* one line per subcommand, in the order `lowbit --help` lists them */
    {"quantize", lb_cmd_quantize, "quantize a whole model block by block (packed checkpoint)"},
    {"eval", lb_cmd_eval, "perplexity / KL of a model on token ids"},
    {"export", lb_cmd_export, "packed checkpoint -> plain HF checkpoint (f32/f16/bf16)"},
    {"verify", lb_cmd_verify, "check a packed checkpoint's manifest checksums"},
    {"qmatrix", lb_cmd_qmatrix, "quantize one weight matrix with its Hessian"},
    {"tokenize", lb_cmd_tokenize, "text -> token ids (.u32) with the model's tokenizer.json"},
    {"gen-calib", lb_cmd_gen_calib, "sample calibration tokens from the model (data-free)"},
    {"synth", lb_cmd_synth, "write a synthetic LLaMA checkpoint with real outlier structure"},
    {"status", lb_cmd_status, "progress of a distributed job (Redis)"},
    {"cancel", lb_cmd_cancel, "cancel a distributed job (Redis)"},
    {"keygen", lb_cmd_keygen, "make CURVE key pairs for the artifact data plane"},
    {"coordinator", lb_cmd_coordinator, "plan a quantize run as a distributed job (Redis)"},
    {"worker", lb_cmd_worker, "run distributed jobs from Redis"},
    {"version", cmd_version, "print the version"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: lowbit <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nRun `lowbit <command> --help` for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version"))
        return cmd_version(argc, argv);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "lowbit: unknown command '%s'; run `lowbit --help` for the list\n", argv[1]);
    return 2;
}
