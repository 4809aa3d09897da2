/* libFuzzer target: Redis URLs (lb_redis_url_parse). A parsed URL has its
 * fields in range and NUL-terminated, and its display form never carries the
 * password. Corpus: tests/fuzz/corpus/redis_url/. */
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
        /* a password of a few characters may also spell part of the host */
        if (strlen(u.password) >= 6 && strstr(shown, u.password) && !strstr(u.host, u.password) &&
            !strstr(u.socket_path, u.password) && !strstr(u.user, u.password))
            abort();
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort();
    }
    free(url);
    return 0;
}
