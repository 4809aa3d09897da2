/* Test helper: CURVE keys for the distributed tests (lb_test_curve.h). */
#include "lb_test_curve.h"

#include <dirent.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lb_test_util.h"
#include "lb_xfer.h"

static char *g_dir;

bool lb_test_curve_on(void)
{
    const char *v = getenv("LB_TEST_CURVE");
    return v && !strcmp(v, "1");
}

static int copy_file(const char *from, const char *to)
{
    char buf[256];
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    size_t n = a && b ? fread(buf, 1, sizeof buf, a) : 0;
    int rc = a && b && n > 0 && fwrite(buf, 1, n, b) == n ? 0 : -1;
    if (a)
        fclose(a);
    if (b && fclose(b) != 0)
        rc = -1;
    return rc;
}

int lb_test_curve_keys(const char *dir, const char *const *names, int n, int n_allowed)
{
    lb_err err = {0};
    char a[4096], b[4096];
    if (lb_xfer_keygen(dir, "server", &err)) {
        fprintf(stderr, "lb_test_curve_keys: %s\n", err.msg);
        return -1;
    }
    snprintf(a, sizeof a, "%s/clients", dir);
    if (mkdir(a, 0700) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        if (lb_xfer_keygen(dir, names[i], &err)) {
            fprintf(stderr, "lb_test_curve_keys: %s\n", err.msg);
            return -1;
        }
        snprintf(a, sizeof a, "%s/%s.pub", dir, names[i]);
        snprintf(b, sizeof b, "%s/clients/%s.pub", dir, names[i]);
        if (i < n_allowed && copy_file(a, b) != 0)
            return -1;
    }
    return 0;
}

int lb_test_curve_setup(void)
{
    if (!lb_test_curve_on() || g_dir)
        return 0;
    g_dir = lb_test_mkdtemp();
    const char *names[] = {"worker"};
    if (!g_dir || lb_test_curve_keys(g_dir, names, 1, 1) != 0)
        return -1;
    return setenv("LOWBIT_CURVE_DIR", g_dir, 1);
}

void lb_test_curve_teardown(void)
{
    if (!g_dir)
        return;
    unsetenv("LOWBIT_CURVE_DIR");
    lb_test_rmdir(&g_dir);
}

const char *lb_test_curve_dir(void)
{
    return g_dir;
}

void lb_test_curve_assert_no_secret(const char *dir, const char *text, const char *what)
{
    if (!dir || !text)
        return;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".key"))
            continue;
        char path[4096], key[LB_XFER_KEY_LEN + 1];
        lb_err err = {0};
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        assert_int_equal(lb_xfer_key_read(path, true, key, &err), 0);
        if (strstr(text, key)) {
            closedir(d);
            fail_msg("%s holds the secret key %s", what, e->d_name);
        }
    }
    closedir(d);
}
