/* libFuzzer target: a single .safetensors file (header JSON, offsets, shapes,
 * dtypes, metadata). Every tensor the reader exposes must lie inside the file,
 * and every float tensor converts to f32 without touching anything else.
 * Corpus: tests/fuzz/corpus/st_header/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *path;
    if (!path)
        path = lb_fuzz_path("model.safetensors");
    lb_fuzz_write("model.safetensors", data, size);
    lb_st *st = NULL;
    lb_err err;
    if (lb_st_open(&st, path, &err) != 0) {
        if (st || !err.msg[0])
            abort();
        return 0;
    }
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        if (!t || lb_st_find(st, t->name) != t || t->nbytes > size)
            abort();
        float *dst = malloc((size_t)t->numel * sizeof *dst + 1);
        if (!dst)
            abort();
        lb_st_read_f32(st, t->name, dst, t->numel, &err);
        if (t->ndim == 2 && t->shape[0] > 0)
            lb_st_read_f32_rows(st, t->name, t->shape[0] - 1, 1, dst, &err);
        free(dst);
    }
    for (int64_t i = 0; i < lb_st_metadata_count(st); i++) {
        const char *k = NULL, *v = NULL;
        if (lb_st_metadata_at(st, i, &k, &v) != 0 || lb_st_metadata_get(st, k) == NULL)
            abort();
    }
    lb_st_free(&st);
    return 0;
}
