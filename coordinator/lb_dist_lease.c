/* lb_dist_lease: the artifact server's lease check (lb_dist_lease.h). Runs in
 * the server thread with its own Redis connection (hiredis handles are not
 * shared between threads). */
#include "lb_dist_lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_job.h"
#include "lb_redis.h"

int lb_dist_lease_parse_claim(const char *claim, char *job, char *entry, char *worker,
                              lb_err *err)
{
    job[0] = entry[0] = worker[0] = 0;
    const char *p = claim;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *eq = strchr(p, '='), *end = strchr(p, ' ');
        if (!end)
            end = p + strlen(p);
        if (!eq || eq > end)
            break;
        size_t kl = (size_t)(eq - p), vl = (size_t)(end - eq - 1);
        char *dst = kl == 3 && !strncmp(p, "job", 3)      ? job
                    : kl == 5 && !strncmp(p, "entry", 5)  ? entry
                    : kl == 6 && !strncmp(p, "worker", 6) ? worker
                                                          : NULL;
        size_t cap = dst == job ? LB_REDIS_NAME_MAX : dst == entry ? 47 : LB_REDIS_ID_MAX;
        if (dst && vl <= cap) {
            memcpy(dst, eq + 1, vl);
            dst[vl] = 0;
        }
        p = end;
    }
    if (!job[0] || !entry[0] || !worker[0])
        return lb_err_set(err, LB_EFORMAT,
                          "lease claim must read \"job=NAME entry=ID worker=ID\"");
    return 0;
}

/* The lease holder's worker id belongs to CURVE key `key`: it is the key name,
 * or the key name followed by '@' (several workers sharing one key). */
static bool holder_is_key(const char *holder, const char *key)
{
    size_t n = strlen(key);
    return !strncmp(holder, key, n) && (holder[n] == 0 || holder[n] == '@');
}

/* Is id one of the outputs of the leased item? */
static int check_output(const lb_redis_msg *m, const char *id, lb_err *err)
{
    lb_job job;
    int rc = lb_job_decode(m->payload, m->len, &job, err);
    if (rc)
        return lb_err_set(err, LB_EFORMAT, "item %.16s: queue payload does not decode", m->id);
    bool found = false;
    for (int32_t i = 0; i < job.n_outputs && !found; i++)
        found = !strcmp(job.outputs[i].hex, id);
    lb_job_clear(&job);
    if (!found)
        return lb_err_set(err, LB_EINVAL, "artifact is not an output of the leased item %.16s",
                          m->id);
    return 0;
}

int lb_dist_lease_authorize(void *user, const char *id, const char *peer_key, const char *claim,
                            lb_err *err)
{
    lb_dist_lease *l = user;
    char job[LB_REDIS_NAME_MAX + 1], entry[48], worker[LB_REDIS_ID_MAX + 1];
    char holder[LB_REDIS_ID_MAX + 1];
    lb_redis_msg m = {0};
    if (!claim)
        return lb_err_set(err, LB_EINVAL,
                          "no lease claim; this server stores only outputs of items the "
                          "publishing worker holds (is the worker older than the coordinator?)");
    int rc = lb_dist_lease_parse_claim(claim, job, entry, worker, err);
    if (rc)
        return rc;
    if (strcmp(job, l->job_name))
        return lb_err_set(err, LB_EINVAL, "claim names job '%s'; this server serves '%s'", job,
                          l->job_name);
    if (!l->r) {
        lb_redis_opts ro = lb_redis_opts_default();
        ro.retries = 1;
        if ((rc = lb_redis_connect(l->redis_url, &ro, &l->r, err)))
            return rc;
    }
    if ((rc = lb_redis_lease_get(l->r, job, entry, holder, &m, err)))
        goto done;
    const char *who = peer_key ? peer_key : worker; /* CURVE: the key, not the claim */
    if (!holder[0]) {
        rc = lb_err_set(err, LB_ESTATE,
                        "lease %s is not held (acked, reclaimed or re-queued); the item's "
                        "next holder publishes",
                        entry);
    } else if (peer_key ? !holder_is_key(holder, peer_key) : strcmp(holder, worker) != 0) {
        rc = lb_err_set(err, LB_ESTATE, "lease %s of item %.16s is held by %s, not by %s %s",
                        entry, m.id, holder, peer_key ? "key" : "worker", who);
    } else {
        rc = check_output(&m, id, err);
    }
done:
    lb_redis_msg_clear(&m);
    return rc;
}

void lb_dist_lease_clear(lb_dist_lease *l)
{
    if (l)
        lb_redis_free(&l->r);
}
