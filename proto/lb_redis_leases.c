/* lb_redis liveness: the leases (pending entries) of the work stream, which
 * of them dead workers hold, and taking them back (reclaim, re-queue, release).
 * The stream itself and its failure counting live in lb_redis_queue.c. */
#include <stdlib.h>
#include <string.h>

#include "lb_redis.h"
#include "lb_redis_priv.h"

/* ---- liveness: leases held by dead workers ---- */

/* 1 when lowbit:worker:ID exists (the worker's heartbeat is alive). */
static int worker_alive(lb_redis *s, const char *worker, bool *alive, lb_err *err)
{
    char key[LB_REDIS_ID_MAX + 32];
    snprintf(key, sizeof key, "lowbit:worker:%s", worker);
    lb_redis_args a = {0};
    a_str(&a, "EXISTS"), a_str(&a, key);
    int64_t v = 0;
    int rc = lb_redis_priv_int(s, &a, &v, err);
    *alive = v > 0;
    return rc;
}

/* The item id of queue entry `entry` ("" when it was deleted). */
static int entry_item_id(lb_redis *s, const char *name, const char *entry, char *id,
                         size_t size, lb_err *err)
{
    id[0] = 0;
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "XRANGE"), a_str(&a, q.s), a_str(&a, entry), a_str(&a, entry);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    int rc = 0;
    if (r->elements >= 1) {
        char eid[48];
        lb_redis_map m;
        if (!(rc = lb_redis_priv_parse_entry(s, r->element[0], eid, &m, err))) {
            const char *v = lb_redis_map_get(&m, "id");
            snprintf(id, size, "%s", v ? v : "");
            lb_redis_map_clear(&m);
        }
    }
    freeReplyObject(r);
    return rc;
}

int lb_redis_leases(lb_redis *s, const char *name, int32_t count, lb_redis_lease_rec **recs,
                    int32_t *n, int32_t *n_dead, lb_err *err)
{
    *recs = NULL;
    *n = 0;
    if (n_dead)
        *n_dead = 0;
    int rc = lb_redis_check_name(name, err);
    if (rc || count < 1)
        return rc;
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "XPENDING"), a_str(&a, q.s), a_str(&a, LB_REDIS_GROUP);
    a_str(&a, "-"), a_str(&a, "+"), a_i64(&a, count);
    redisReply *r = RUN(s, &a, true, true, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = strncmp(r->str, "NOGROUP", 7)
                 ? lb_err_set(err, LB_ENET, "%s: XPENDING %s failed: %s", s->peer, q.s, r->str)
                 : 0; /* no queue yet: no leases */
        freeReplyObject(r);
        return rc;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return lb_err_set(err, LB_EFORMAT, "%s: unexpected XPENDING reply", s->peer);
    }
    lb_redis_lease_rec *v = calloc(r->elements + 1, sizeof *v);
    int32_t got = 0, dead = 0;
    if (!v) {
        freeReplyObject(r);
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    }
    /* [[entry, consumer, idle ms, deliveries], ...] */
    for (size_t i = 0; i < r->elements && !rc; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= 48 ||
            e->element[1]->type != REDIS_REPLY_STRING ||
            e->element[1]->len > LB_REDIS_ID_MAX || e->element[2]->type != REDIS_REPLY_INTEGER) {
            rc = lb_err_set(err, LB_EFORMAT, "%s: malformed XPENDING entry", s->peer);
            break;
        }
        lb_redis_lease_rec *x = &v[got++];
        snprintf(x->entry, sizeof x->entry, "%.*s", (int)e->element[0]->len, e->element[0]->str);
        snprintf(x->consumer, sizeof x->consumer, "%.*s", (int)e->element[1]->len,
                 e->element[1]->str);
        x->idle_ms = e->element[2]->integer;
    }
    freeReplyObject(r);
    /* one EXISTS per distinct holder; a holder without heartbeat whose lease
     * was touched lately is not dead yet (a Redis restart can drop a live
     * worker's heartbeat for a moment) */
    bool *gone = calloc((size_t)got + 1, sizeof *gone);
    if (!gone && !rc)
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
    for (int32_t i = 0; i < got && !rc; i++) {
        bool alive = true, seen = false;
        for (int32_t j = 0; j < i && !seen; j++)
            if (!strcmp(v[j].consumer, v[i].consumer)) {
                seen = true;
                alive = !gone[j];
            }
        if (!seen && (rc = worker_alive(s, v[i].consumer, &alive, err)))
            break;
        gone[i] = !alive;
        v[i].dead = !alive && v[i].idle_ms >= LB_REDIS_DEAD_MIN_IDLE_MS;
    }
    free(gone);
    for (int32_t i = 0; i < got && !rc; i++) {
        if (v[i].dead) {
            dead++;
            rc = entry_item_id(s, name, v[i].entry, v[i].id, sizeof v[i].id, err);
        }
    }
    if (rc) {
        free(v);
        return rc;
    }
    *recs = v;
    *n = got;
    if (n_dead)
        *n_dead = dead;
    return 0;
}

/* XCLAIM of one entry for consumer, only if still idle >= the dead minimum
 * (another rescuer's claim resets the idle time). OUT: *got, *msg. */
static int claim_entry(lb_redis *s, const char *name, const char *consumer, const char *entry,
                       lb_redis_msg *msg, bool *got, lb_err *err)
{
    *got = false;
    memset(msg, 0, sizeof *msg);
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "XCLAIM"), a_str(&a, q.s), a_str(&a, LB_REDIS_GROUP), a_str(&a, consumer);
    a_i64(&a, LB_REDIS_DEAD_MIN_IDLE_MS), a_str(&a, entry);
    redisReply *r = CHECKED(s, &a, false, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    int rc = 0;
    if (r->elements >= 1 && r->element[0]->type == REDIS_REPLY_ARRAY) {
        bool deleted = false;
        rc = lb_redis_priv_take_entry(s, name, r->element[0], msg, &deleted, err);
        if (rc || deleted)
            lb_redis_msg_clear(msg);
        else
            *got = true;
    }
    freeReplyObject(r);
    return rc;
}

/* Counts the failure of a dead worker's item now held by `by`; dead-letters
 * it at max_failures (*dead). */
static int dead_holder_failure(lb_redis *s, const char *name, const lb_redis_lease_rec *l,
                               const char *by, const lb_redis_msg *msg, int max_failures,
                               bool *dead, lb_err *err)
{
    int64_t fails = 0;
    char why[400];
    snprintf(why, sizeof why,
             "lease expired: worker %s is dead (heartbeat gone, lease idle %.1f s)", l->consumer,
             (double)l->idle_ms / 1000.0);
    int rc = lb_redis_priv_count_failure(s, name, msg->id, &fails, err);
    *dead = !rc && fails >= max_failures;
    if (*dead)
        return lb_redis_priv_dead_letter(s, name, msg, why, fails, err);
    if (rc)
        return rc;
    char ev[700];
    snprintf(ev, sizeof ev, "%s: %s; re-run by %s (failure %lld of %d)", msg->id, why, by,
             (long long)fails, max_failures);
    return lb_redis_event(s, name, ev, err);
}

int lb_redis_reclaim_dead(lb_redis *s, const char *name, const char *consumer, int max_failures,
                          lb_redis_msg *msg, bool *got, lb_err *err)
{
    *got = false;
    memset(msg, 0, sizeof *msg);
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("consumer", consumer, err)))
        return rc;
    if (max_failures < 1)
        return lb_err_set(err, LB_EINVAL, "lb_redis_reclaim_dead: max failures must be >= 1");
    lb_redis_lease_rec *l = NULL;
    int32_t n = 0, n_dead = 0;
    if ((rc = lb_redis_leases(s, name, 1000, &l, &n, &n_dead, err)) || n_dead == 0) {
        free(l);
        return rc;
    }
    for (int32_t i = 0; i < n && !rc && !*got; i++) {
        if (!l[i].dead)
            continue;
        bool claimed = false, dead = false;
        if ((rc = claim_entry(s, name, consumer, l[i].entry, msg, &claimed, err)) || !claimed)
            continue;
        rc = dead_holder_failure(s, name, &l[i], consumer, msg, max_failures, &dead, err);
        if (rc || dead)
            lb_redis_msg_clear(msg);
        else
            *got = true;
    }
    free(l);
    return rc;
}

/* Re-queues msg at the tail and releases its lease, atomically. */
static int requeue(lb_redis *s, const char *name, const lb_redis_msg *msg, lb_err *err)
{
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args c[3] = {{0}};
    a_str(&c[0], "XADD"), a_str(&c[0], q.s), a_str(&c[0], "*");
    a_str(&c[0], "id"), a_str(&c[0], msg->id), a_str(&c[0], "payload");
    a_bin(&c[0], msg->payload ? (const void *)msg->payload : "", msg->len);
    a_str(&c[1], "XACK"), a_str(&c[1], q.s), a_str(&c[1], LB_REDIS_GROUP), a_str(&c[1], msg->entry);
    a_str(&c[2], "XDEL"), a_str(&c[2], q.s), a_str(&c[2], msg->entry);
    return MULTI(s, c, 3, err);
}

int lb_redis_requeue_dead(lb_redis *s, const char *name, const char *reaper, int max_failures,
                          int32_t *requeued, lb_err *err)
{
    if (requeued)
        *requeued = 0;
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("consumer", reaper, err)))
        return rc;
    if (max_failures < 1)
        return lb_err_set(err, LB_EINVAL, "lb_redis_requeue_dead: max failures must be >= 1");
    lb_redis_lease_rec *l = NULL;
    int32_t n = 0, n_dead = 0;
    if ((rc = lb_redis_leases(s, name, 1000, &l, &n, &n_dead, err)) || n_dead == 0) {
        free(l);
        return rc;
    }
    for (int32_t i = 0; i < n && !rc; i++) {
        if (!l[i].dead)
            continue;
        lb_redis_msg msg;
        bool claimed = false, dead = false;
        if ((rc = claim_entry(s, name, reaper, l[i].entry, &msg, &claimed, err)) || !claimed)
            continue;
        rc = dead_holder_failure(s, name, &l[i], reaper, &msg, max_failures, &dead, err);
        if (!rc && !dead && !(rc = requeue(s, name, &msg, err)) && requeued)
            (*requeued)++;
        lb_redis_msg_clear(&msg);
    }
    free(l);
    return rc;
}

int lb_redis_release(lb_redis *s, const char *name, const lb_redis_msg *msg, const char *why,
                     lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = requeue(s, name, msg, err)))
        return rc;
    char ev[700];
    snprintf(ev, sizeof ev, "%s given back (%.500s); re-queued, not counted as a failure",
             msg->id, why ? why : "worker stopping");
    return lb_redis_event(s, name, ev, err);
}
