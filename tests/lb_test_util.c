#include "lb_test_util.h"

#include <errno.h>
#include <stdarg.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *lb_test_shared_dir(void)
{
    static char dir[4096];
    const char *env = getenv("LOWBIT_SHARED");
    if (env && *env) {
        snprintf(dir, sizeof dir, "%s", env);
        return is_dir(dir) ? dir : NULL;
    }
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/../shared", src && *src ? src : ".");
    return is_dir(dir) ? dir : NULL;
}

static int g_skipped; /* a need was missing: the suite exits LB_TEST_SKIP_CODE */

int lb_test_exit_code(int failed)
{
    return failed ? failed : g_skipped ? LB_TEST_SKIP_CODE : 0;
}

int lb_test_need_that(int present, const char *fmt, ...)
{
    if (present)
        return 1;
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const char *ci = getenv("CI");
    if (ci && !strcmp(ci, "true"))
        fail_msg("%s; CI=true makes this a failure", what);
    print_message("[  SKIP    ] %s; skipping\n", what);
    g_skipped = 1;
    return 0;
}

int lb_test_on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path)
        return 0;
    char *copy = strdup(path);
    int found = 0;
    for (char *save = NULL, *d = copy ? strtok_r(copy, ":", &save) : NULL; d && !found;
         d = strtok_r(NULL, ":", &save)) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", d, prog);
        found = access(p, X_OK) == 0;
    }
    free(copy);
    return found;
}

int lb_test_need(unsigned needs)
{
    if ((needs & LB_NEED_REDIS) &&
        !lb_test_need_that(lb_test_on_path("redis-server"),
                           "redis-server not found on PATH (run deploy/install-deps.sh)"))
        return 0;
    if ((needs & LB_NEED_MPIRUN) &&
        !lb_test_need_that(lb_test_on_path("mpirun"),
                           "mpirun not found on PATH (run deploy/install-deps.sh)"))
        return 0;
    if ((needs & LB_NEED_NODE) &&
        !lb_test_need_that(lb_test_on_path("node"),
                           "node not found on PATH (run deploy/install-deps.sh)"))
        return 0;
    if ((needs & LB_NEED_SHARED) &&
        !lb_test_need_that(lb_test_shared_dir() != NULL,
                           "shared fixtures not found (set LOWBIT_SHARED or put shared/ "
                           "beside the checkout)"))
        return 0;
    return 1;
}

int lb_test_shared_path(char *buf, size_t size, const char *rel)
{
    const char *dir = lb_test_shared_dir();
    int present = 0;
    if (dir) {
        snprintf(buf, size, "%s/%s", dir, rel);
        present = access(buf, R_OK) == 0;
    }
    return lb_test_need_that(present, "shared fixture '%s' is missing (set LOWBIT_SHARED or "
                             "put shared/ beside the checkout)", rel);
}

unsigned char *lb_test_slurp(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    unsigned char *b = n >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc(n > 0 ? (size_t)n : 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b)
        *len = (size_t)n;
    return b;
}

void lb_test_assert_same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    unsigned char *da = lb_test_slurp(a, &la), *db = lb_test_slurp(b, &lb);
    if (!da || !db)
        fail_msg("missing %s or %s", a, b);
    if (la != lb || memcmp(da, db, la))
        fail_msg("%s and %s differ (%zu vs %zu bytes)", a, b, la, lb);
    free(da);
    free(db);
}

char *lb_test_mkdtemp(void)
{
    const char *tmp = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/lowbit-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpl))
        return NULL;
    return strdup(tmpl);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void lb_test_rmdir(char **path)
{
    if (!path || !*path)
        return;
    nftw(*path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(*path);
    *path = NULL;
}

const char *lb_test_lowbit_bin(void)
{
    const char *bin = getenv("LOWBIT_BIN");
    return bin && *bin ? bin : "lowbit";
}

int lb_test_run(char **output, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8300];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p)
        return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf)
        buf[len] = '\0';
    int status = pclose(p);
    if (output)
        *output = buf;
    else
        free(buf);
    if (status == -1)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

uint64_t lb_test_rand_u64(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float lb_test_rand_uniform(uint64_t *s)
{
    return (float)((lb_test_rand_u64(s) >> 40) * (1.0 / 16777216.0));
}

float lb_test_rand_normal(uint64_t *s)
{
    double u1 = ((double)(lb_test_rand_u64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = ((double)(lb_test_rand_u64(s) >> 11)) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
