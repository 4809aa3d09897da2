/* lb_worker_data: fetch / run / publish around one job on a worker. */
#include "lb_worker_data.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_redis_released.h"
#include "lb_xfer.h"
#include "lb_xfer_store.h"

struct lb_wdata {
    int timeout_ms, retries;
    char endpoint[256];
    lb_xfer_client *client; /* for endpoint; NULL after a failed transfer */
    const lb_xfer_curve *curve;            /* borrowed; NULL: plain TCP */
    char claim[LB_XFER_CLAIM_MAX + 1];     /* "" : none */
    char prune_job[LB_REDIS_NAME_MAX + 1]; /* released list read for this job ... */
    int64_t prune_next;                    /* ... up to here */
};

int lb_wdata_new(int timeout_ms, int retries, lb_wdata **out, lb_err *err)
{
    *out = NULL;
    if (timeout_ms <= 0 || retries < 0)
        return lb_err_set(err, LB_EINVAL, "data plane: timeout must be > 0 ms, retries >= 0");
    lb_wdata *w = calloc(1, sizeof *w);
    if (!w)
        return lb_err_set(err, LB_ENOMEM, "data plane: out of memory");
    w->timeout_ms = timeout_ms;
    w->retries = retries;
    *out = w;
    return 0;
}

void lb_wdata_free(lb_wdata **w)
{
    if (!w || !*w)
        return;
    lb_xfer_client_free(&(*w)->client);
    free(*w);
    *w = NULL;
}

void lb_wdata_set_curve(lb_wdata *w, const lb_xfer_curve *curve)
{
    w->curve = curve;
    lb_xfer_client_free(&w->client); /* the next transfer connects with the keys */
}

void lb_wdata_set_claim(lb_wdata *w, const char *claim)
{
    snprintf(w->claim, sizeof w->claim, "%s", claim ? claim : "");
}

/* A client for endpoint, reused while the endpoint stays the same; a new one
 * only after the server answered a TCP connect. */
static int connect_to(lb_wdata *w, const char *endpoint, lb_err *err)
{
    if (w->client && !strcmp(w->endpoint, endpoint))
        return 0;
    lb_xfer_client_free(&w->client);
    int prc = lb_xfer_probe(endpoint, w->timeout_ms < 3000 ? w->timeout_ms : 3000, err);
    if (prc)
        return prc;
    if (strlen(endpoint) >= sizeof w->endpoint)
        return lb_err_set(err, LB_EINVAL, "artifact server endpoint '%.64s...' is too long",
                          endpoint);
    snprintf(w->endpoint, sizeof w->endpoint, "%s", endpoint);
    int rc = lb_xfer_client_new(endpoint, w->timeout_ms, w->retries, &w->client, err);
    if (!rc && w->curve && w->curve->on)
        rc = lb_xfer_client_set_curve(w->client, w->curve, err);
    if (rc)
        lb_xfer_client_free(&w->client);
    return rc;
}

/* Publishes with the current claim. */
static int publish(lb_wdata *w, const lb_store *store, const lb_job *job, uint64_t *bytes,
                   lb_err *err)
{
    int rc = lb_xfer_client_set_claim(w->client, w->claim[0] ? w->claim : NULL, err);
    return rc ? rc : lb_xfer_publish_outputs(w->client, store, job, bytes, err);
}

int lb_wdata_fetch(lb_wdata *w, const char *endpoint, const lb_store *store, const lb_job *job,
                   uint64_t *bytes, lb_err *err)
{
    int rc = connect_to(w, endpoint, err);
    if (!rc)
        rc = lb_xfer_fetch_inputs(w->client, store, job, bytes, err);
    if (rc == LB_ENET)
        lb_xfer_client_free(&w->client); /* next time: a fresh socket, re-read endpoint */
    return rc;
}

int lb_wdata_publish_to(lb_wdata *w, const char *endpoint, const lb_store *store,
                        const lb_job *job, uint64_t *bytes, lb_err *err)
{
    int rc = connect_to(w, endpoint, err);
    if (!rc)
        rc = publish(w, store, job, bytes, err);
    if (rc == LB_ENET)
        lb_xfer_client_free(&w->client);
    return rc;
}

int lb_wdata_publish(lb_wdata *w, const lb_store *store, const lb_job *job, uint64_t *bytes,
                     lb_err *err)
{
    int rc = w->client ? 0 : connect_to(w, w->endpoint, err);
    if (!rc && !w->endpoint[0])
        rc = lb_err_set(err, LB_ESTATE, "publish before any fetch: no artifact server known");
    if (!rc)
        rc = publish(w, store, job, bytes, err);
    if (rc == LB_ENET)
        lb_xfer_client_free(&w->client);
    return rc;
}

int lb_wdata_prune(lb_wdata *w, lb_redis *r, const char *job, const char *cache_dir,
                   int64_t *removed, lb_err *err)
{
    if (strcmp(w->prune_job, job)) {
        snprintf(w->prune_job, sizeof w->prune_job, "%s", job);
        w->prune_next = 0;
    }
    lb_store *store = NULL;
    int rc = 0;
    for (;;) {
        lb_redis_released_id *ids = NULL;
        int32_t n = 0;
        int64_t next = 0;
        if ((rc = lb_redis_released_range(r, job, w->prune_next, 1000, &ids, &n, &next, err)))
            break;
        if (next == w->prune_next) {
            free(ids);
            break;
        }
        if (!store && (rc = lb_store_open(cache_dir, &store, err))) {
            free(ids);
            break;
        }
        for (int32_t i = 0; i < n && !rc; i++) {
            char *path = lb_store_path(store, ids[i].id);
            bool there = path && access(path, F_OK) == 0;
            free(path);
            if (there && (rc = lb_store_remove(store, ids[i].id, err)) == 0 && removed)
                (*removed)++;
        }
        free(ids);
        if (rc)
            break;
        w->prune_next = next;
    }
    lb_store_free(&store);
    return rc;
}

bool lb_wdata_input_lost(int rc) { return rc == LB_ENOTFOUND || rc == LB_EFORMAT; }

int lb_wdata_default_cache(const char *worker_id, char *buf, size_t size, lb_err *err)
{
    if (!worker_id[0] || strchr(worker_id, '/') || !strcmp(worker_id, ".") ||
        !strcmp(worker_id, ".."))
        return lb_err_set(err, LB_EINVAL,
                          "worker id '%s' cannot name a cache directory; give --cache DIR",
                          worker_id);
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0])
        tmp = "/tmp";
    char parent[768];
    int n = snprintf(parent, sizeof parent, "%s/lowbit-%ld", tmp, (long)getuid());
    if (n < 0 || (size_t)n >= sizeof parent)
        return lb_err_set(err, LB_EINVAL, "TMPDIR is too long for a cache path; give --cache DIR");
    if (mkdir(parent, 0700) != 0 && errno != EEXIST)
        return lb_err_set(err, LB_EIO, "cannot create %s (%s); give --cache DIR", parent,
                          strerror(errno));
    n = snprintf(buf, size, "%s/%s", parent, worker_id);
    if (n < 0 || (size_t)n >= size)
        return lb_err_set(err, LB_EINVAL, "cache path for worker '%s' is too long", worker_id);
    return 0;
}

/* True for "<64 hex>.safetensors" and its ".tmp..." leftovers: what a store holds. */
static bool is_artifact_name(const char *name)
{
    for (int i = 0; i < 64; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return false;
    return !strncmp(name + 64, ".safetensors", 12);
}

int lb_wdata_remove_cache(const char *dir, lb_err *err)
{
    char hidden[1100], arts[1200];
    int n1 = snprintf(hidden, sizeof hidden, "%s/.lowbit", dir);
    int n2 = snprintf(arts, sizeof arts, "%s/.lowbit/artifacts", dir);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof hidden || (size_t)n2 >= sizeof arts)
        return lb_err_set(err, LB_EINVAL, "cache path '%.64s...' is too long", dir);
    DIR *d = opendir(arts);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!is_artifact_name(e->d_name))
                continue;
            char p[1600];
            int n = snprintf(p, sizeof p, "%s/%s", arts, e->d_name);
            if (n > 0 && (size_t)n < sizeof p)
                unlink(p);
        }
        closedir(d);
    }
    if ((rmdir(arts) != 0 && errno != ENOENT) || (rmdir(hidden) != 0 && errno != ENOENT) ||
        (rmdir(dir) != 0 && errno != ENOENT))
        return lb_err_set(err, LB_EIO, "cache %s: not removed (%s: other files in it?)", dir,
                          strerror(errno));
    return 0;
}
