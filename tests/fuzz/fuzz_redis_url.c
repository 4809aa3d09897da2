/* libFuzzer target: Redis URLs (lb_redis_url_parse). A parsed URL has its
 * fields in range, and its display form (for logs) is one line and does not
 * depend on the password. Corpus: tests/fuzz/corpus/redis_url/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_redis_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = lb_fuzz_cstr(data, size);
    lb_redis_url u;
    lb_err err;
    if (lb_redis_url_parse(url, &u, &err) == 0) {
        char shown[1024];
        lb_redis_url_display(&u, shown, sizeof shown);
        if ((!u.is_unix && (u.port < 1 || u.port > 65535)) || u.db < 0 ||
            strnlen(shown, sizeof shown) == sizeof shown)
            abort();
        for (const char *c = shown; *c; c++) /* it goes to logs: one line */
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                abort();
        /* the display form does not depend on the password at all */
        lb_redis_url blank = u;
        char shown2[1024];
        memset(blank.password, 0, sizeof blank.password);
        if (strcmp(lb_redis_url_display(&blank, shown2, sizeof shown2), shown) != 0)
            abort();
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort();
    }
    free(url);
    return 0;
}
