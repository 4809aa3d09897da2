/* libFuzzer target: model.safetensors.index.json (the sharded-model index).
 * Two valid shards sit beside it (written once), so a weight_map naming them
 * reaches the cross-shard checks. Corpus: tests/fuzz/corpus/st_index/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_safetensors.h"

static void write_shard(const char *name, const char *tensor, const char *meta)
{
    char *p = lb_fuzz_path(name);
    lb_st_writer *w = NULL;
    lb_err err;
    const int64_t shape[2] = {2, 3};
    const float v[6] = {1, 2, 3, 4, 5, 6};
    if (lb_st_writer_new(&w, p, &err) || lb_st_writer_add_tensor(w, tensor, LB_DTYPE_F32, 2, shape, &err) ||
        lb_st_writer_set_metadata(w, "format", meta, &err) ||
        lb_st_writer_write_f32(w, tensor, v, 6, &err) || lb_st_writer_finish(w, &err))
        abort();
    lb_st_writer_free(&w);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *path;
    if (!path) {
        path = lb_fuzz_path("model.safetensors.index.json");
        write_shard("model-00001-of-00002.safetensors", "a.weight", "pt");
        write_shard("model-00002-of-00002.safetensors", "b.weight", "np");
    }
    lb_fuzz_write("model.safetensors.index.json", data, size);
    lb_st *st = NULL;
    lb_err err;
    if (lb_st_open(&st, path, &err) != 0) {
        if (st || !err.msg[0])
            abort();
        return 0;
    }
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        float dst[6];
        if (!t || lb_st_find(st, t->name) != t || t->numel > 6)
            abort();
        lb_st_read_f32(st, t->name, dst, t->numel, &err);
    }
    for (int64_t i = 0; i < lb_st_metadata_count(st); i++) {
        const char *k = NULL, *v = NULL;
        if (lb_st_metadata_at(st, i, &k, &v) != 0)
            abort();
        (void)lb_st_metadata_get(st, k);
    }
    lb_st_free(&st);
    return 0;
}
