/* libFuzzer target: the `quantize --override 'REGEX=METHOD[:opt=val,...]'`
 * spec (lb_override_parse). An accepted spec has a known method and valid
 * options; its regex is then matched against real tensor names (regcomp and
 * regexec stay fast: repetition counts are bounded). Corpus:
 * tests/fuzz/corpus/override/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_override.h"
#include "lb_qopts_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[] = {"model.layers.0.self_attn.q_proj.weight",
                                  "model.layers.4.mlp.down_proj.weight", "lm_head.weight", ""};
    char *spec = lb_fuzz_cstr(data, size);
    lb_qopts base;
    lb_qopts_init(&base);
    lb_override o;
    lb_err err;
    if (lb_override_parse(spec, &base, &o, &err) == 0) {
        if (!o.method[0] || !lb_qmethod_find(o.method) || lb_qopts_validate(&o.opts, &err) != 0)
            abort();
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            (void)regexec(&o.re, names[i], 0, NULL, 0);
        lb_override_free(&o);
        lb_override_free(&o);
    } else if (!err.msg[0] || o.pattern) {
        abort();
    }
    free(spec);
    return 0;
}
