/* lb_xfer_store: job artifacts between a local store and the artifact server. */
#include "lb_xfer_store.h"

#include <stdlib.h>

int lb_xfer_fetch(lb_xfer_client *c, const lb_store *store, const char *id, lb_err *err)
{
    if (lb_store_has(store, id, NULL))
        return 0;
    char *path = lb_store_path(store, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "fetch %s: out of memory", id);
    int rc = lb_xfer_get_file(c, id, path, err);
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

int lb_xfer_publish(lb_xfer_client *c, const lb_store *store, const char *id, lb_err *err)
{
    lb_st *st = NULL;
    int rc = lb_store_open_artifact(store, id, NULL, &st, err);
    lb_st_free(&st);
    if (rc)
        return rc;
    char *path = lb_store_path(store, id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "publish %s: out of memory", id);
    rc = lb_xfer_put_file(c, id, path, err);
    free(path);
    return rc;
}

int lb_xfer_fetch_inputs(lb_xfer_client *c, const lb_store *store, const lb_job *job, lb_err *err)
{
    for (int32_t i = 0; i < job->n_inputs; i++) {
        int rc = lb_xfer_fetch(c, store, job->inputs[i].hex, err);
        if (rc) {
            lb_err_prefix(err, "job %s input %d", job->id, (int)i);
            return rc;
        }
    }
    return 0;
}

int lb_xfer_publish_outputs(lb_xfer_client *c, const lb_store *store, const lb_job *job,
                            lb_err *err)
{
    for (int32_t i = 0; i < job->n_outputs; i++) {
        int rc = lb_xfer_publish(c, store, job->outputs[i].hex, err);
        if (rc) {
            lb_err_prefix(err, "job %s output %d", job->id, (int)i);
            return rc;
        }
    }
    return 0;
}
