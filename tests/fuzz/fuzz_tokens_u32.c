/* libFuzzer target: .u32 token files (lb_tokens_load_rows). The ids a file
 * yields never exceed what its bytes can hold. Corpus: tests/fuzz/corpus/tokens_u32/.
 * fuzz_tokens_npy.c builds the same target for .npy files (the loader picks the
 * format by extension). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_tokens.h"

#ifndef LB_FUZZ_TOKENS_FILE
#define LB_FUZZ_TOKENS_FILE "tokens.u32"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *path;
    if (!path)
        path = lb_fuzz_path(LB_FUZZ_TOKENS_FILE);
    lb_fuzz_write(LB_FUZZ_TOKENS_FILE, data, size);
    uint32_t *ids = NULL;
    int64_t n = -1, rows = -1;
    lb_err err;
    if (lb_tokens_load_rows(path, &ids, &n, &rows, &err) == 0) {
        /* every id takes at least 2 bytes ('<u2') in any accepted file */
        if (n < 0 || (uint64_t)n > size / 2 || rows < 0 || (n > 0 && !ids))
            abort();
        (void)lb_tokens_check_vocab(ids, n, 512, path, &err);
        free(ids);
    } else {
        free(ids); /* documented to stay NULL, but a leak would show either way */
        if (!err.msg[0] || strchr(err.msg, '\n'))
            abort();
    }
    return 0;
}
