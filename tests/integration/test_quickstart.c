/* The README's first command, deploy/quickstart.sh, on a fresh copy of the
 * tree (the files git tracks, copied into a temp dir: no build/, no out/)
 * without fixtures (LOWBIT_SHARED=/nonexistent): it must build, synthesize,
 * quantize, evaluate and end with the result table. Label slow (a build). */
#include "lb_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *tmp; /* removed by teardown, also when the test fails */

static int teardown(void **state)
{
    (void)state;
    if (tmp)
        lb_test_rmdir(&tmp);
    return 0;
}

static void test_quickstart_fresh_tree(void **state)
{
    (void)state;
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    assert_non_null(src);
    if (!lb_test_need_that(lb_test_run(NULL, "git -C '%s' rev-parse --git-dir >/dev/null 2>&1",
                                       src) == 0,
                           "%s is not a git checkout: cannot list the tracked files", src))
        skip();
    tmp = lb_test_mkdtemp();
    assert_non_null(tmp);
    char *out = NULL;
    /* tracked files that exist (a file deleted in the work tree is skipped) */
    int rc = lb_test_run(&out,
                         "cd '%s' && git ls-files -z | "
                         "xargs -0 sh -c 'for f; do [ -e \"$f\" ] && printf \"%%s\\0\" \"$f\"; done' sh | "
                         "xargs -0 cp --parents -t '%s'",
                         src, tmp);
    if (rc != 0)
        fail_msg("copying the tracked files failed (%d): %s", rc, out ? out : "");
    free(out);
    rc = lb_test_run(&out, "cd '%s' && env -u LOWBIT_BIN LOWBIT_SHARED=/nonexistent "
                           "bash deploy/quickstart.sh 2>&1", tmp);
    if (rc != 0)
        fail_msg("deploy/quickstart.sh on a fresh tree exited %d:\n%s", rc, out ? out : "");
    assert_non_null(strstr(out, "no fixtures at /nonexistent"));
    const char *row = strstr(out, "| gptq 4-bit packed");
    if (!row || !strstr(out, "| fp (") || !strstr(out, "KL vs fp"))
        fail_msg("no result table in the quickstart output:\n%s", out);
    double ppl = 0, kl = -1, bpw = 0;
    assert_int_equal(sscanf(row, "| gptq 4-bit packed | %lf | %lf | %lf |", &ppl, &kl, &bpw), 3);
    assert_true(ppl > 1.0);
    assert_true(kl >= 0.0);
    assert_true(bpw > 4.0 && bpw < 5.0);
    print_message("quickstart: ppl %.4f, KL %.6f, %.4f bpw\n", ppl, kl, bpw);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quickstart_fresh_tree),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
