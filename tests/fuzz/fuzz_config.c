/* libFuzzer target: config.json (lb_config_parse). A config that parses must
 * validate; one that does not gets a one-line message. Corpus:
 * tests/fuzz/corpus/config/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = lb_fuzz_cstr(data, size);
    lb_config cfg;
    lb_err err;
    if (lb_config_parse(&cfg, text, "fuzz/config.json", &err) == 0) {
        if (lb_config_validate(&cfg, &err) != 0)
            abort();
        (void)lb_config_q_dim(&cfg);
        (void)lb_config_kv_dim(&cfg);
        (void)lb_config_architecture(cfg.arch);
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort();
    }
    free(text);
    return 0;
}
