/* lb_redis_url: what the fuzzer found (tests/fuzz/corpus/redis_url/finding-*)
 * and the rule behind it: parsed URLs and their errors are one line, and
 * neither the display form nor an error message carries the password. The
 * full URL grammar is tested in tests/integration/test_redis.c. */
#include "lb_test_util.h"

#include <string.h>

#include "lb_redis_url.h"

static void test_control_characters_rejected(void **state)
{
    (void)state;
    const char *bad[] = {"unix://user:pw@/tmp/r.soc\r\r\rk", "redis://us%0Aer:pw@host/0",
                         "redis://work\ner:sred3cris", "unix:///tmp/a\x1b[2J.sock"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lb_redis_url u;
        lb_err err = {0};
        assert_int_equal(lb_redis_url_parse(bad[i], &u, &err), LB_EINVAL);
        for (const char *c = err.msg; *c; c++)
            assert_true((unsigned char)*c >= 0x20 && *c != 0x7f);
    }
}

static void test_password_never_shown(void **state)
{
    (void)state;
    const char *secret = "Pa55w0rd-XYZZY";
    const char *urls[] = {"redis://worker:Pa55w0rd-XYZZY@redis.example:6380/2",
                          "redis://:Pa55w0rd-XYZZY@[::1]:6379",
                          "unix://worker:Pa55w0rd-XYZZY@/run/redis.sock?db=1",
                          /* rejected ones: the error quotes the URL masked */
                          "redis://worker:Pa55w0rd-XYZZY@bad host/0",
                          "redis://worker:Pa55w0rd-XYZZY@host:99999/0",
                          "unix://worker:Pa55w0rd-XYZZY@relative.sock"};
    for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
        lb_redis_url u;
        lb_err err = {0};
        char shown[512] = "";
        if (lb_redis_url_parse(urls[i], &u, &err) == 0) {
            assert_string_equal(u.password, secret);
            lb_redis_url_display(&u, shown, sizeof shown);
        }
        if (strstr(shown, secret) || strstr(err.msg, secret))
            fail_msg("password leaked: '%s' / '%s'", shown, err.msg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_control_characters_rejected),
                                       cmocka_unit_test(test_password_never_shown)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
