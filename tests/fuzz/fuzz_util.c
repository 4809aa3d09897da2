/* Temp-file plumbing for the fuzz targets (fuzz_util.h). */
#include "fuzz_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *g_dir;

/* Removes the directory's files (one level: targets never make subdirectories). */
static void cleanup(void)
{
    if (!g_dir)
        return;
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char *p = lb_fuzz_path(e->d_name);
            unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(g_dir);
    free(g_dir);
    g_dir = NULL;
}

const char *lb_fuzz_dir(void)
{
    if (g_dir)
        return g_dir;
    /* tmpfs: on a disk-backed /tmp, writing the input is most of the time per run */
    const char *tmp = getenv("LB_FUZZ_TMPDIR");
    if (!tmp || !*tmp)
        tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    size_t n = strlen(tmp) + 32;
    g_dir = malloc(n);
    if (!g_dir)
        abort();
    snprintf(g_dir, n, "%s/lowbit-fuzz-XXXXXX", tmp);
    if (!mkdtemp(g_dir)) {
        perror("lowbit fuzz: mkdtemp");
        abort();
    }
    atexit(cleanup);
    return g_dir;
}

char *lb_fuzz_path(const char *name)
{
    const char *dir = lb_fuzz_dir();
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p)
        abort();
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void lb_fuzz_write(const char *name, const void *data, size_t size)
{
    char *p = lb_fuzz_path(name);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(p);
        abort();
    }
    free(p);
}

char *lb_fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}
