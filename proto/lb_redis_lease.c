/* lb_redis_lease: who holds one lease, for the artifact server's
 * lease-checked publish (lb_redis.h: lb_redis_lease_get). */
#include <stdlib.h>
#include <string.h>

#include "lb_redis.h"
#include "lb_redis_priv.h"

/* XPENDING queue workers entry entry 1: the consumer holding entry, "" if none. */
static int holder_of(lb_redis *s, const char *q, const char *entry, char *holder, lb_err *err)
{
    holder[0] = 0;
    lb_redis_args a = {0};
    a_str(&a, "XPENDING"), a_str(&a, q), a_str(&a, LB_REDIS_GROUP);
    a_str(&a, entry), a_str(&a, entry), a_str(&a, "1");
    redisReply *r = RUN(s, &a, true, true, err);
    if (!r)
        return err ? err->code : LB_ENET;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = strncmp(r->str, "NOGROUP", 7)
                 ? lb_err_set(err, LB_ENET, "%s: XPENDING %s failed: %s", s->peer, q, r->str)
                 : 0;
    } else if (r->type != REDIS_REPLY_ARRAY) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: unexpected XPENDING reply", s->peer);
    } else if (r->elements >= 1) {
        const redisReply *e = r->element[0];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
            e->element[1]->type != REDIS_REPLY_STRING || e->element[1]->len > LB_REDIS_ID_MAX)
            rc = lb_err_set(err, LB_EFORMAT, "%s: malformed XPENDING entry", s->peer);
        else
            memcpy(holder, e->element[1]->str, e->element[1]->len + 1);
    }
    freeReplyObject(r);
    return rc;
}

int lb_redis_lease_get(lb_redis *s, const char *name, const char *entry, char *holder,
                       lb_redis_msg *msg, lb_err *err)
{
    holder[0] = 0;
    memset(msg, 0, sizeof *msg);
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    size_t el = strlen(entry);
    if (el < 3 || el >= sizeof msg->entry || strspn(entry, "0123456789-") != el)
        return lb_err_set(err, LB_EINVAL, "lease entry '%.60s' is not a stream entry id", entry);
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    if ((rc = holder_of(s, q.s, entry, holder, err)) || !holder[0])
        return rc;
    lb_redis_args a = {0};
    a_str(&a, "XRANGE"), a_str(&a, q.s), a_str(&a, entry), a_str(&a, entry);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->elements >= 1) {
        const redisReply *e = r->element[0];
        const redisReply *f = e->type == REDIS_REPLY_ARRAY && e->elements >= 2 ? e->element[1]
                                                                                : NULL;
        for (size_t i = 0; f && f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
            const redisReply *k = f->element[i], *v = f->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (k->len == 2 && !memcmp(k->str, "id", 2) && v->len <= LB_REDIS_ID_MAX) {
                memcpy(msg->id, v->str, v->len);
                msg->id[v->len] = 0;
            } else if (k->len == 7 && !memcmp(k->str, "payload", 7) && !msg->payload) {
                if (!(msg->payload = malloc(v->len ? v->len : 1))) {
                    rc = lb_err_set(err, LB_ENOMEM, "out of memory");
                    break;
                }
                memcpy(msg->payload, v->str, v->len);
                msg->len = v->len;
            }
        }
    }
    freeReplyObject(r);
    if (!rc)
        snprintf(msg->entry, sizeof msg->entry, "%s", entry);
    else
        lb_redis_msg_clear(msg);
    return rc;
}
