/* lowbit tokenize: text -> token ids (.u32) with the model's tokenizer.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_cli.h"
#include "lb_tok_text.h"
#include "lb_tokens.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit tokenize --model DIR --text FILE --out FILE.u32 [--ctx N [--n N]]\n"
            "\n"
            "Tokenizes FILE as one document with DIR/tokenizer.json (+ tokenizer_config.json:\n"
            "BOS/EOS as the model's tokenizer adds them) and writes raw little-endian uint32\n"
            "ids, usable as --calib / --tokens. Invalid UTF-8 is read as U+FFFD.\n"
            "\n"
            "  --ctx N   cut into windows of N tokens: every whole window, or with --n\n"
            "  --n N     N windows spread evenly over the text (deterministic)\n");
}

static int bad(const char *opt, const char *val)
{
    return lb_cli_bad_value("tokenize", opt, val);
}


int lb_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *out = NULL;
    long long ctx = 0, n = 0;
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
        else if (!strcmp(a, "--text"))
            text = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--ctx")) {
            if (lb_cli_parse_ll(v, 1, 1 << 24, &ctx))
                return bad(a, v);
        } else if (!strcmp(a, "--n")) {
            if (lb_cli_parse_ll(v, 1, 1LL << 32, &n))
                return bad(a, v);
        } else {
            fprintf(stderr, "lowbit tokenize: unknown option '%s'; run `lowbit tokenize --help`\n", a);
            return 2;
        }
    }
    if (!model || !text || !out || (n && !ctx)) {
        fprintf(stderr, "lowbit tokenize: --model, --text and --out are required (--n needs --ctx)\n");
        usage(stderr);
        return 2;
    }
    lb_err err = {0};
    uint32_t *ids = NULL;
    int64_t nids = 0, ntext = 0;
    if (lb_tok_text_file(model, text, ctx, n, 0, &ids, &nids, &ntext, &err) ||
        lb_tokens_write_u32(out, ids, nids, &err)) {
        fprintf(stderr, "lowbit tokenize: %s\n", err.msg);
        free(ids);
        return 1;
    }
    fprintf(stderr, "tokenize: %s: %lld tokens; wrote %lld ids to %s\n", text, (long long)ntext,
            (long long)nids, out);
    free(ids);
    return 0;
}
