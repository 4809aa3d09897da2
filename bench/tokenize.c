/* bench_tokenize: tokens/s of lb_tok_encode on one core.
 * Usage: bench_tokenize TOKENIZER_DIR TEXT_FILE [OUT.u32|-] [REPEATS] [lines]
 * Prints one JSON line (best of REPEATS, default 3; load time excluded):
 * wall seconds and CPU seconds of this thread; tokens_per_cpu_s is the
 * per-core figure, fair on a shared machine. "lines" encodes each line on
 * its own without special tokens (as tests/tokenizer-ref/ref.mjs --lines).
 * With OUT.u32 the ids are written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_io_util.h"
#include "lb_tok.h"
#include "lb_tokens.h"

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
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
    int lines = argc > 5 && !strcmp(argv[5], "lines");
    if (lb_tok_load(argv[1], &tok, &err) ||
        lb_io_read_file(argv[2], (uint64_t)1 << 32, &text, &len, &err)) {
        fprintf(stderr, "bench_tokenize: %s\n", err.msg);
        goto done;
    }
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
        free(ids);
        ids = NULL;
        n = 0;
        double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
        for (size_t st = 0; st < len || (st == 0 && len == 0);) {
            size_t en = len;
            if (lines) {
                const char *nl = memchr(text + st, '\n', len - st);
                en = nl ? (size_t)(nl - text) + 1 : len;
            }
            uint32_t *part = NULL;
            int64_t np = 0;
            if (lb_tok_encode(tok, text + st, en - st, !lines, &part, &np, &err)) {
                fprintf(stderr, "bench_tokenize: %s\n", err.msg);
                goto done;
            }
            uint32_t *grown = realloc(ids, (size_t)(n + np + 1) * sizeof *ids);
            if (!grown) {
                free(part);
                fprintf(stderr, "bench_tokenize: out of memory\n");
                goto done;
            }
            ids = grown;
            if (np)
                memcpy(ids + n, part, (size_t)np * sizeof *ids);
            n += np;
            free(part);
            st = en;
            if (len == 0)
                break;
        }
        double dt = clock_s(CLOCK_MONOTONIC) - t0, dc = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
        if (dt < best)
            best = dt;
        if (dc < best_cpu)
            best_cpu = dc;
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
    printf("{\"bench\":\"tokenize\",\"impl\":\"lowbit\",\"tokenizer\":\"%s\",\"mode\":\"%s\","
           "\"bytes\":%zu,\"tokens\":%lld,\"seconds\":%.4f,\"cpu_seconds\":%.4f,"
           "\"tokens_per_s\":%.0f,\"tokens_per_cpu_s\":%.0f,\"threads\":1}\n",
           s2 && s2 > d ? s2 + 1 : d, lines ? "lines" : "whole", len, (long long)n, best, best_cpu,
           (double)n / best, (double)n / best_cpu);
    rc = 0;
done:
    free(ids);
    free(text);
    lb_tok_free(&tok);
    return rc;
}
