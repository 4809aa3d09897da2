/* Staging directory for checkpoint writers: nothing in out_dir changes until
 * every file is complete, and the marker file arrives last. */
#include "lb_packed_stage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_io_util.h"

/* mkdir -p: each missing component of path. Returns 0 or -1 (errno set). */
static int mkdir_parents(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) && errno != EEXIST)
            return -1;
        buf[i] = c;
    }
    return 0;
}

int lb_packed_stage_open(lb_packed_stage *s, const char *out_dir, lb_err *err)
{
    memset(s, 0, sizeof *s);
    if (mkdir_parents(out_dir))
        return lb_err_set(err, LB_EIO, "%s: cannot create output directory: %s", out_dir,
                          strerror(errno));
    struct stat sb;
    if (stat(out_dir, &sb) || !S_ISDIR(sb.st_mode))
        return lb_err_set(err, LB_EIO, "%s: not a directory; pass a directory for --out", out_dir);
    s->out_dir = strdup(out_dir);
    s->tmp = lb_io_path_join(out_dir, ".tmp-XXXXXX");
    if (!s->out_dir || !s->tmp) {
        lb_packed_stage_abort(s);
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", out_dir);
    }
    if (!mkdtemp(s->tmp)) {
        int rc = lb_err_set(err, LB_EIO, "%s: cannot create a staging directory: %s", out_dir,
                            strerror(errno));
        free(s->tmp);
        s->tmp = NULL;
        lb_packed_stage_abort(s);
        return rc;
    }
    return 0;
}

char *lb_packed_stage_file(lb_packed_stage *s, const char *name)
{
    char **grown = realloc(s->names, (size_t)(s->n + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    s->names = grown;
    s->names[s->n] = strdup(name);
    if (!s->names[s->n])
        return NULL;
    s->n++;
    return lb_io_path_join(s->tmp, name);
}

static void stage_free(lb_packed_stage *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->names[i]);
    free(s->names);
    free(s->out_dir);
    free(s->tmp);
    memset(s, 0, sizeof *s);
}

void lb_packed_stage_abort(lb_packed_stage *s)
{
    if (!s)
        return;
    if (s->tmp) {
        for (int i = 0; i < s->n; i++) {
            char *p = lb_io_path_join(s->tmp, s->names[i]);
            size_t len = p ? strlen(p) : 0;
            char *t = p ? malloc(len + 5) : NULL;
            if (p)
                unlink(p);
            if (t) {
                memcpy(t, p, len);
                memcpy(t + len, ".tmp", 5);
                unlink(t);
            }
            free(t);
            free(p);
        }
        rmdir(s->tmp);
    }
    stage_free(s);
}

static int move_in(lb_packed_stage *s, const char *name, lb_err *err)
{
    char *from = lb_io_path_join(s->tmp, name);
    char *to = lb_io_path_join(s->out_dir, name);
    int rc = 0;
    if (!from || !to)
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", s->out_dir);
    else if (rename(from, to))
        rc = lb_err_set(err, LB_EIO, "%s: cannot move %s into place: %s", s->out_dir, name,
                        strerror(errno));
    free(from);
    free(to);
    return rc;
}

int lb_packed_stage_commit(lb_packed_stage *s, const char *last, lb_err *err)
{
    int rc = 0;
    char *marker = lb_io_path_join(s->out_dir, last);
    if (!marker) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", s->out_dir);
        goto done;
    }
    if (unlink(marker) && errno != ENOENT) {
        rc = lb_err_set(err, LB_EIO, "%s: cannot remove the old %s: %s", s->out_dir, last,
                        strerror(errno));
        goto done;
    }
    /* The old marker is gone before any file changes: a crash in between leaves
     * a directory that does not open as complete. */
    if ((rc = lb_io_fsync_parent(marker, err)))
        goto done;
    int has_last = 0;
    for (int i = 0; i < s->n && !rc; i++) {
        if (!strcmp(s->names[i], last))
            has_last = 1;
        else
            rc = move_in(s, s->names[i], err);
    }
    if (!rc && has_last)
        rc = move_in(s, last, err);
    if (!rc)
        rc = lb_io_fsync_parent(marker, err);
done:
    free(marker);
    lb_packed_stage_abort(s); /* removes whatever was not moved, and the temp dir */
    return rc;
}

int lb_packed_stage_copy_if_present(lb_packed_stage *s, const char *src_dir, const char *name,
                                    int *copied, lb_err *err)
{
    *copied = 0;
    char *src = lb_io_path_join(src_dir, name);
    char *text = NULL, *dst = NULL;
    size_t len = 0;
    int rc = 0;
    if (!src)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", src_dir);
    if (access(src, F_OK))
        goto done;
    if ((rc = lb_io_read_file(src, (uint64_t)256 << 20, &text, &len, err)))
        goto done;
    dst = lb_packed_stage_file(s, name);
    if (!dst) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", src_dir);
        goto done;
    }
    if (!(rc = lb_io_write_atomic(dst, text, len, err)))
        *copied = 1;
done:
    free(src);
    free(text);
    free(dst);
    return rc;
}

int lb_packed_stage_finish_export(lb_packed_stage *s, const char *src_dir, lb_err *err)
{
    static const char *const extra_files[] = {
        "tokenizer.json",          "tokenizer.model",        "tokenizer_config.json",
        "special_tokens_map.json", "generation_config.json", NULL,
    };
    char *stale = lb_io_path_join(s->out_dir, "manifest.json");
    int rc = stale ? 0 : lb_err_set(err, LB_ENOMEM, "%s: out of memory", s->out_dir);
    for (int i = 0; !rc && extra_files[i]; i++) {
        int copied;
        rc = lb_packed_stage_copy_if_present(s, src_dir, extra_files[i], &copied, err);
    }
    if (!rc && !(rc = lb_packed_stage_commit(s, "config.json", err)))
        unlink(stale);
    free(stale);
    return rc;
}
