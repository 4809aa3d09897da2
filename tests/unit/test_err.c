#include "lb_test_util.h"

#include <string.h>

#include "lb_err.h"

static void test_set_and_prefix(void **state)
{
    (void)state;
    lb_err err = {0};
    assert_int_equal(lb_err_set(&err, LB_EFORMAT, "bad %d", 7), LB_EFORMAT);
    assert_string_equal(err.msg, "bad 7");
    lb_err_prefix(&err, "file %s", "x.safetensors");
    assert_string_equal(err.msg, "file x.safetensors: bad 7");
    assert_int_equal(err.code, LB_EFORMAT);
    assert_int_equal(lb_err_set(NULL, LB_EIO, "ignored"), LB_EIO);
    assert_string_equal(lb_err_name(LB_ENUMERIC), "numerical error");
}

/* fuzz finding (redis_url): a URL with a newline made a two-line error */
static void test_one_line(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_err_set(&err, LB_EINVAL, "redis URL '%s': bad", "redis://work\ner\r\x1b[2J\x7f\xc3\xa9");
    assert_string_equal(err.msg, "redis URL 'redis://work?er??[2J?\xc3\xa9': bad");
    lb_err_prefix(&err, "peer %s", "a\tb");
    assert_null(strchr(err.msg, '\t'));
    assert_int_equal(strncmp(err.msg, "peer a?b: redis", 15), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_set_and_prefix),
                                       cmocka_unit_test(test_one_line)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
