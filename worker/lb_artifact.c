/* lb_artifact: content-addressed artifacts (see lb_artifact.h). */
#include "lb_artifact.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_io_util.h"
#include "lb_qpacked_io.h"
#include "lb_sha256.h"

struct lb_store {
    char *dir; /* OUT/.lowbit/artifacts */
};

static int mkdir_p(const char *path, lb_err *err)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            return 0;
    }
    return lb_err_set(err, LB_EIO, "%s: cannot create directory (%s); check the --out path",
                      path, strerror(errno));
}

int lb_store_open(const char *out_dir, lb_store **out, lb_err *err)
{
    *out = NULL;
    lb_store *s = calloc(1, sizeof *s);
    char *hidden = lb_io_path_join(out_dir, ".lowbit");
    int rc = LB_ENOMEM;
    if (!s || !hidden || !(s->dir = lb_io_path_join(hidden, "artifacts"))) {
        lb_err_set(err, LB_ENOMEM, "artifact store: out of memory");
        goto fail;
    }
    if ((rc = mkdir_p(out_dir, err)) || (rc = mkdir_p(hidden, err)) ||
        (rc = mkdir_p(s->dir, err)))
        goto fail;
    free(hidden);
    *out = s;
    return 0;
fail:
    free(hidden);
    lb_store_free(&s);
    return rc;
}

void lb_store_free(lb_store **s)
{
    if (!s || !*s)
        return;
    free((*s)->dir);
    free(*s);
    *s = NULL;
}

const char *lb_store_dir(const lb_store *s)
{
    return s->dir;
}

char *lb_store_path(const lb_store *s, const char *id)
{
    char name[LB_SHA256_HEX + 16];
    snprintf(name, sizeof name, "%s.safetensors", id);
    return lb_io_path_join(s->dir, name);
}

/* SHA-256 over every tensor's bytes in file order. */
static void data_hash(const lb_st *st, char hex[LB_SHA256_HEX])
{
    lb_sha256 h;
    lb_sha256_init(&h);
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        lb_sha256_update(&h, t->data, t->nbytes);
    }
    uint8_t d[LB_SHA256_DIGEST];
    lb_sha256_final(&h, d);
    lb_sha256_to_hex(d, hex);
}

int lb_store_open_artifact(const lb_store *s, const char *id, const char *kind, lb_st **out,
                           lb_err *err)
{
    *out = NULL;
    char *path = lb_store_path(s, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "artifact store: out of memory");
    if (access(path, F_OK) != 0) {
        lb_err_set(err, LB_ENOTFOUND, "%s: artifact not found; its producing job must run first",
                   path);
        free(path);
        return LB_ENOTFOUND;
    }
    lb_st *st = NULL;
    int rc = lb_st_open(&st, path, err);
    if (rc) {
        free(path);
        return rc == LB_ENOMEM ? rc : LB_EFORMAT;
    }
    const char *own = lb_st_metadata_get(st, "lowbit.artifact");
    const char *k = lb_st_metadata_get(st, "lowbit.kind");
    const char *sum = lb_st_metadata_get(st, "lowbit.sha256");
    char hex[LB_SHA256_HEX];
    if (!own || strcmp(own, id) != 0 || !k || (kind && strcmp(k, kind) != 0) || !sum) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: not the %s artifact it is named after; it will be "
                        "recomputed", path, kind ? kind : "expected");
        goto fail;
    }
    data_hash(st, hex);
    if (strcmp(hex, sum) != 0) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: data checksum mismatch (corrupted); it will be "
                        "recomputed", path);
        goto fail;
    }
    free(path);
    *out = st;
    return 0;
fail:
    lb_st_free(&st);
    free(path);
    return rc;
}

bool lb_store_has(const lb_store *s, const char *id, const char *kind)
{
    lb_st *st = NULL;
    lb_err err;
    if (lb_store_open_artifact(s, id, kind, &st, &err) != 0)
        return false;
    lb_st_free(&st);
    return true;
}

int lb_store_remove(const lb_store *s, const char *id, lb_err *err)
{
    char *path = lb_store_path(s, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "artifact store: out of memory");
    int rc = 0;
    if (unlink(path) != 0 && errno != ENOENT)
        rc = lb_err_set(err, LB_EIO, "%s: cannot remove (%s)", path, strerror(errno));
    free(path);
    return rc;
}

/* Writes a prepared writer's common metadata. */
static int set_meta(lb_st_writer *w, const char *id, const char *kind, const char *sum,
                    const char *const *meta, int nmeta, lb_err *err)
{
    int rc;
    if ((rc = lb_st_writer_set_metadata(w, "lowbit.artifact", id, err)) ||
        (rc = lb_st_writer_set_metadata(w, "lowbit.kind", kind, err)) ||
        (rc = lb_st_writer_set_metadata(w, "lowbit.sha256", sum, err)))
        return rc;
    for (int k = 0; k < nmeta; k++)
        if ((rc = lb_st_writer_set_metadata(w, meta[2 * k], meta[2 * k + 1], err)))
            return rc;
    return 0;
}

int lb_store_put(const lb_store *s, const char *id, const char *kind,
                 const lb_artifact_tensor *t, int nt, const char *const *meta, int nmeta,
                 lb_err *err)
{
    char *path = lb_store_path(s, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "artifact store: out of memory");
    lb_sha256 h;
    lb_sha256_init(&h);
    for (int i = 0; i < nt; i++)
        lb_sha256_update(&h, t[i].data, t[i].nbytes);
    uint8_t d[LB_SHA256_DIGEST];
    char sum[LB_SHA256_HEX];
    lb_sha256_final(&h, d);
    lb_sha256_to_hex(d, sum);
    lb_st_writer *w = NULL;
    int rc = lb_st_writer_new(&w, path, err);
    if (rc)
        goto done;
    for (int i = 0; i < nt && !rc; i++)
        rc = lb_st_writer_add_tensor(w, t[i].name, t[i].dtype, t[i].ndim, t[i].shape, err);
    if (!rc)
        rc = set_meta(w, id, kind, sum, meta, nmeta, err);
    for (int i = 0; i < nt && !rc; i++)
        rc = lb_st_writer_write(w, t[i].name, t[i].data, t[i].nbytes, err);
    if (!rc)
        rc = lb_st_writer_finish(w, err);
done:
    lb_st_writer_free(&w);
    free(path);
    return rc;
}

int lb_store_put_qlinear(const lb_store *s, const char *id, const char *tensor,
                         const char *options, const lb_qpacked *p, lb_err *err)
{
    int rc = lb_qpacked_io_check(p, err);
    if (rc)
        return rc;
    char *path = lb_store_path(s, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "artifact store: out of memory");
    /* lb_qpacked_io writes the fields' bytes in field order: hash them the same way */
    lb_sha256 h;
    lb_sha256_init(&h);
    for (int32_t i = 0; i < p->nfields; i++)
        lb_sha256_update(&h, p->fields[i].data, p->fields[i].nbytes);
    uint8_t d[LB_SHA256_DIGEST];
    char sum[LB_SHA256_HEX], bpw[32];
    lb_sha256_final(&h, d);
    lb_sha256_to_hex(d, sum);
    snprintf(bpw, sizeof bpw, "%.17g", lb_qpacked_bpw(p));
    const char *meta[] = {"lowbit.tensor", tensor, "lowbit.bpw", bpw, "lowbit.options",
                          options ? options : ""};
    lb_st_writer *w = NULL;
    if ((rc = lb_st_writer_new(&w, path, err)) || (rc = lb_qpacked_io_declare(w, "q", p, err)) ||
        (rc = set_meta(w, id, "qlinear", sum, meta, 3, err)) ||
        (rc = lb_qpacked_io_write(w, "q", p, err)) || (rc = lb_st_writer_finish(w, err)))
        goto done;
done:
    lb_st_writer_free(&w);
    free(path);
    return rc;
}

int lb_store_get_qlinear(const lb_store *s, const char *id, lb_qpacked *p, lb_err *err)
{
    memset(p, 0, sizeof *p);
    lb_st *st = NULL;
    int rc = lb_store_open_artifact(s, id, "qlinear", &st, err);
    if (rc)
        return rc;
    rc = lb_qpacked_io_read(st, "q", p, err);
    lb_st_free(&st);
    return rc;
}
