/* bench_tokenize: tokens/s of lb_tok_encode on one core.
 * Usage: bench_tokenize TOKENIZER_DIR TEXT_FILE [OUT.u32] [REPEATS]
 * Prints one JSON line (best of REPEATS, default 3; load time excluded) and,
 * with OUT.u32, writes the ids (the tokenizer test compares them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_io_util.h"
#include "lb_tok.h"
#include "lb_tokens.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenize TOKENIZER_DIR TEXT_FILE [OUT.u32|-] [REPEATS]\n");
        return 2;
    }
    lb_err err = {0};
    lb_tok *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    uint32_t *ids = NULL;
    int64_t n = 0;
    int reps = argc > 4 ? atoi(argv[4]) : 3, rc = 1;
    if (lb_tok_load(argv[1], &tok, &err) ||
        lb_io_read_file(argv[2], (uint64_t)1 << 32, &text, &len, &err)) {
        fprintf(stderr, "bench_tokenize: %s\n", err.msg);
        goto done;
    }
    double best = 1e30;
    for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
        free(ids);
        ids = NULL;
        double t0 = now_s();
        if (lb_tok_encode(tok, text, len, 1, &ids, &n, &err)) {
            fprintf(stderr, "bench_tokenize: %s\n", err.msg);
            goto done;
        }
        double dt = now_s() - t0;
        if (dt < best)
            best = dt;
    }
    if (argc > 3 && strcmp(argv[3], "-") && lb_tokens_write_u32(argv[3], ids, n, &err)) {
        fprintf(stderr, "bench_tokenize: %s\n", err.msg);
        goto done;
    }
    const char *d = argv[1], *s = strrchr(d, '/');
    const char *s2 = s;
    if (s)
        for (s2 = s - 1; s2 > d && *s2 != '/'; s2--)
            ;
    printf("{\"bench\":\"tokenize\",\"impl\":\"lowbit\",\"tokenizer\":\"%s\",\"bytes\":%zu,"
           "\"tokens\":%lld,\"seconds\":%.4f,\"tokens_per_s\":%.0f,\"threads\":1}\n",
           s2 && s2 > d ? s2 + 1 : d, len, (long long)n, best, (double)n / best);
    rc = 0;
done:
    free(ids);
    free(text);
    lb_tok_free(&tok);
    return rc;
}
