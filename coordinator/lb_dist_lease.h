/* lb_dist_lease: lease-checked publish. The coordinator's artifact server
 * (lb_xfer authorize hook) stores a PUT only when the publishing worker holds
 * the lease of the item it claims (Redis XPENDING on the job's queue) and the
 * artifact is one of that item's outputs (the queued job payload). With CURVE
 * the worker is the client key's name (ZAP user id; the lease holder's id
 * must be NAME or NAME@...); without CURVE it is the worker id the claim
 * names, which anyone can claim (docs/distributed.md, threat model). */
#ifndef LB_DIST_LEASE_H
#define LB_DIST_LEASE_H

#include "lb_err.h"
#include "lb_redis.h"

typedef struct {
    const char *redis_url; /* borrowed */
    const char *job_name;  /* borrowed */
    lb_redis *r;           /* connected on first use, in the server thread */
} lb_dist_lease;

/* lb_xfer_authorize_fn; user is an lb_dist_lease. A PUT for a lease that was
 * reclaimed meanwhile is refused (LB_ESTATE): outputs are content-addressed,
 * the item's new holder publishes the same bytes. */
int lb_dist_lease_authorize(void *user, const char *id, const char *peer_key, const char *claim,
                            lb_err *err);

/* Parses a claim "job=NAME entry=ID worker=ID" (fields in any order, single
 * spaces between them; unknown keys and over-long values are ignored). OUT:
 * job (LB_REDIS_NAME_MAX + 1 bytes), entry (48), worker (LB_REDIS_ID_MAX + 1),
 * each NUL-terminated. Returns 0 or LB_EFORMAT when one is missing. Pure:
 * tests/fuzz/fuzz_claim.c fuzzes it. */
int lb_dist_lease_parse_claim(const char *claim, char *job, char *entry, char *worker,
                              lb_err *err);

/* Closes the Redis connection (after the server stopped). NULL-safe. */
void lb_dist_lease_clear(lb_dist_lease *l);

#endif
