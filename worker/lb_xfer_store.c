/* lb_xfer_store: job artifacts between a local store and the artifact server. */
#include "lb_xfer_store.h"

#include <stdlib.h>
#include <sys/stat.h>

/* Size of the file at path, 0 when it cannot be read. */
static uint64_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && sb.st_size > 0 ? (uint64_t)sb.st_size : 0;
}

int lb_xfer_fetch(lb_xfer_client *c, const lb_store *store, const char *id, uint64_t *bytes,
                  lb_err *err)
{
    if (lb_store_has(store, id, NULL))
        return 0;
    char *path = lb_store_path(store, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "fetch %s: out of memory", id);
    int rc = lb_xfer_get_file(c, id, path, err);
    if (!rc && bytes)
        *bytes += file_size(path);
    if (!rc && !lb_store_has(store, id, NULL)) {
        /* Right bytes per the transfer checksum, wrong artifact: never keep it. */
        lb_err ignored;
        lb_store_remove(store, id, &ignored);
        rc = lb_err_set(err, LB_EFORMAT,
                        "fetch %s: the server sent a file that is not this artifact (id or "
                        "data checksum); check the server's store",
                        id);
    }
    free(path);
    return rc;
}

int lb_xfer_publish(lb_xfer_client *c, const lb_store *store, const char *id, uint64_t *bytes,
                    lb_err *err)
{
    lb_st *st = NULL;
    int rc = lb_store_open_artifact(store, id, NULL, &st, err);
    lb_st_free(&st);
    if (rc)
        return rc;
    /* Same filesystem as the server, or published before: nothing to move. */
    bool present = false;
    if ((rc = lb_xfer_has(c, id, &present, err)))
        return rc;
    if (present)
        return 0;
    char *path = lb_store_path(store, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "publish %s: out of memory", id);
    rc = lb_xfer_put_file(c, id, path, err);
    if (!rc && bytes)
        *bytes += file_size(path);
    free(path);
    return rc;
}

int lb_xfer_fetch_inputs(lb_xfer_client *c, const lb_store *store, const lb_job *job,
                         uint64_t *bytes, lb_err *err)
{
    for (int32_t i = 0; i < job->n_inputs; i++) {
        int rc = lb_xfer_fetch(c, store, job->inputs[i].hex, bytes, err);
        if (rc) {
            lb_err_prefix(err, "job %s input %d", job->id, (int)i);
            return rc;
        }
    }
    return 0;
}

int lb_xfer_publish_outputs(lb_xfer_client *c, const lb_store *store, const lb_job *job,
                            uint64_t *bytes, lb_err *err)
{
    for (int32_t i = 0; i < job->n_outputs; i++) {
        int rc = lb_xfer_publish(c, store, job->outputs[i].hex, bytes, err);
        if (rc) {
            lb_err_prefix(err, "job %s output %d", job->id, (int)i);
            return rc;
        }
    }
    return 0;
}
