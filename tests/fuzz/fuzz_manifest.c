/* libFuzzer target: the packed checkpoint's manifest.json (lb_packed_verify).
 * A tiny checkpoint directory (config.json + model.safetensors with two plain
 * tensors) is written once; the input is its manifest. LB_FUZZ_MANIFEST_SEED=FILE
 * writes the manifest that verifies (the corpus seed) and exits.
 * Corpus: tests/fuzz/corpus/manifest/. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_packed.h"
#include "lb_safetensors.h"
#include "lb_sha256.h"

static const char config_json[] = "{\"model_type\": \"llama\"}\n";

static void file_entry(char *buf, size_t size, const char *name)
{
    char *p = lb_fuzz_path(name);
    char hex[LB_SHA256_HEX];
    lb_err err;
    FILE *f = fopen(p, "rb");
    if (!f || fseek(f, 0, SEEK_END) || lb_sha256_file(p, hex, &err))
        abort();
    snprintf(buf, size, "\"%s\": {\"bytes\": %ld, \"sha256\": \"%s\"}", name, ftell(f), hex);
    fclose(f);
    free(p);
}

static void setup(void)
{
    lb_fuzz_write("config.json", config_json, strlen(config_json));
    char *p = lb_fuzz_path("model.safetensors");
    lb_st_writer *w = NULL;
    lb_err err;
    const int64_t s1[2] = {2, 2}, s2[1] = {3};
    const float a[4] = {1, 2, 3, 4}, b[3] = {5, 6, 7};
    if (lb_st_writer_new(&w, p, &err) ||
        lb_st_writer_add_tensor(w, "a.weight", LB_DTYPE_F32, 2, s1, &err) ||
        lb_st_writer_add_tensor(w, "norm.weight", LB_DTYPE_F32, 1, s2, &err) ||
        lb_st_writer_write_f32(w, "a.weight", a, 4, &err) ||
        lb_st_writer_write_f32(w, "norm.weight", b, 3, &err) || lb_st_writer_finish(w, &err))
        abort();
    lb_st_writer_free(&w);
    free(p);
    const char *seed = getenv("LB_FUZZ_MANIFEST_SEED");
    if (seed) {
        char fm[256], fc[256], ha[LB_SHA256_HEX], hb[LB_SHA256_HEX];
        file_entry(fm, sizeof fm, "model.safetensors");
        file_entry(fc, sizeof fc, "config.json");
        lb_sha256_hex(a, sizeof a, ha);
        lb_sha256_hex(b, sizeof b, hb);
        FILE *f = fopen(seed, "w");
        if (!f)
            abort();
        fprintf(f,
                "{\"lowbit_format\": %d, \"files\": {%s, %s}, \"tensors\": {\"a.weight\": "
                "{\"stored\": \"plain\", \"sha256\": \"%s\"}, \"norm.weight\": {\"stored\": "
                "\"plain\", \"sha256\": \"%s\"}}, \"quantized\": {\"bytes\": 0, \"weights\": 0, "
                "\"lm_head_included\": false}}\n",
                LB_PACKED_FORMAT_VERSION, fm, fc, ha, hb);
        fclose(f);
        exit(0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    lb_fuzz_write("manifest.json", data, size);
    lb_packed_summary sum;
    lb_err err;
    if (lb_packed_verify(lb_fuzz_dir(), &sum, &err) != 0 && (!err.msg[0] || strchr(err.msg, '\n')))
        abort();
    return 0;
}
