/* lb_redis queue operations: the work stream with its consumer group, leases,
 * reclaim of stale leases, failure counting and the dead-letter stream. */
#include <stdlib.h>
#include <string.h>

#include "lb_redis.h"
#include "lb_redis_priv.h"

/* ---- queue ---- */

void lb_redis_msg_clear(lb_redis_msg *m)
{
    if (!m)
        return;
    free(m->payload);
    memset(m, 0, sizeof *m);
}

int lb_redis_queue_init(lb_redis *s, const char *name, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "XGROUP"), a_str(&a, "CREATE"), a_str(&a, k.s), a_str(&a, LB_REDIS_GROUP);
    a_str(&a, "0"), a_str(&a, "MKSTREAM");
    redisReply *r = RUN(s, &a, true, true, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9))
        rc = lb_err_set(err, LB_ENET, "%s: XGROUP CREATE %s failed: %s", s->peer, k.s, r->str);
    freeReplyObject(r);
    return rc;
}

int lb_redis_enqueue(lb_redis *s, const char *name, const char *id, const void *payload,
                     size_t len, char *entry, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("queue item id", id, err)))
        return rc;
    if ((rc = lb_redis_priv_check_size(s, "the job payload", len, err)))
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "XADD"), a_str(&a, k.s), a_str(&a, "*");
    a_str(&a, "id"), a_str(&a, id), a_str(&a, "payload"), a_bin(&a, payload ? payload : "", len);
    redisReply *r = CHECKED(s, &a, false, REDIS_REPLY_STRING, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (entry)
        snprintf(entry, 48, "%s", r->str);
    freeReplyObject(r);
    return 0;
}

/* Fills msg from a parsed queue entry. */
static int msg_from_entry(lb_redis *s, const char *name, const char *entry, const lb_redis_map *m,
                          lb_redis_msg *msg, lb_err *err)
{
    memset(msg, 0, sizeof *msg);
    const char *id = NULL;
    const char *payload = NULL; /* binary: take_entry copies it with its length */
    for (int32_t i = 0; i < m->n; i++) {
        if (!strcmp(m->keys[i], "id"))
            id = m->vals[i];
        else if (!strcmp(m->keys[i], "payload"))
            payload = m->vals[i];
    }
    if (!id || !payload || strlen(id) > LB_REDIS_ID_MAX)
        return lb_err_set(err, LB_EFORMAT,
                          "%s: queue entry %s of job '%s' lacks its id or payload (written by "
                          "something other than lowbit?)",
                          s->peer, entry, name);
    snprintf(msg->entry, sizeof msg->entry, "%s", entry);
    snprintf(msg->id, sizeof msg->id, "%s", id);
    return 0;
}

/* Parses entry e (from XREADGROUP/XAUTOCLAIM) into msg, payload binary-safe.
 * *deleted = true for an entry deleted while pending. */
int lb_redis_priv_take_entry(lb_redis *s, const char *name, const redisReply *e, lb_redis_msg *msg,
                             bool *deleted, lb_err *err)
{
    char id[48];
    lb_redis_map m;
    *deleted = false;
    int rc = lb_redis_priv_parse_entry(s, e, id, &m, err);
    if (rc)
        return rc;
    if (e->element[1]->type == REDIS_REPLY_NIL) {
        *deleted = true;
        snprintf(msg->entry, sizeof msg->entry, "%s", id);
        return 0;
    }
    rc = msg_from_entry(s, name, id, &m, msg, err);
    lb_redis_map_clear(&m);
    if (rc)
        return rc;
    const redisReply *f = e->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (f->element[i]->len == 7 && !memcmp(f->element[i]->str, "payload", 7)) {
            const redisReply *v = f->element[i + 1];
            msg->payload = malloc(v->len ? v->len : 1);
            if (!msg->payload)
                return lb_err_set(err, LB_ENOMEM, "out of memory");
            memcpy(msg->payload, v->str, v->len);
            msg->len = v->len;
        }
    }
    return 0;
}

int lb_redis_claim(lb_redis *s, const char *name, const char *consumer, int block_ms,
                   lb_redis_msg *msg, bool *got, lb_err *err)
{
    *got = false;
    memset(msg, 0, sizeof *msg);
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("consumer", consumer, err)))
        return rc;
    if (block_ms < 0)
        return lb_err_set(err, LB_EINVAL, "lb_redis_claim: negative block time");
    lb_redis_key k = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "XREADGROUP"), a_str(&a, "GROUP"), a_str(&a, LB_REDIS_GROUP), a_str(&a, consumer);
    a_str(&a, "COUNT"), a_str(&a, "1");
    if (block_ms > 0)
        a_str(&a, "BLOCK"), a_i64(&a, block_ms);
    a_str(&a, "STREAMS"), a_str(&a, k.s), a_str(&a, ">");
    /* the socket must wait longer than the server blocks, also after a reconnect */
    s->block_ms = block_ms;
    redisReply *r = RUN(s, &a, true, true, err);
    s->block_ms = 0;
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_ERROR) {
        if (!strncmp(r->str, "NOGROUP", 7))
            rc = lb_err_set(err, LB_ENOTFOUND,
                            "%s: job '%s' has no queue yet (no coordinator has planned it); "
                            "start `lowbit coordinator --job %s` first",
                            s->peer, name, name);
        else
            rc = lb_err_set(err, LB_ENET, "%s: XREADGROUP failed: %s", s->peer, r->str);
        goto done;
    }
    if (r->type == REDIS_REPLY_NIL)
        goto done;
    /* [[key, [entry]]] */
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2 ||
        r->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: unexpected XREADGROUP reply", s->peer);
        goto done;
    }
    const redisReply *entries = r->element[0]->element[1];
    if (entries->elements == 0)
        goto done;
    bool deleted = false;
    rc = lb_redis_priv_take_entry(s, name, entries->element[0], msg, &deleted, err);
    if (rc == 0 && !deleted)
        *got = true;
    else if (rc)
        lb_redis_msg_clear(msg);
done:
    freeReplyObject(r);
    return rc;
}

int lb_redis_ack(lb_redis *s, const char *name, const lb_redis_msg *msg, bool del, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, ":queue"), f = lb_redis_priv_job_key(name, ":fails");
    lb_redis_args c[3] = {{0}};
    int n = 0;
    a_str(&c[n], "XACK"), a_str(&c[n], k.s), a_str(&c[n], LB_REDIS_GROUP), a_str(&c[n], msg->entry);
    n++;
    if (del) {
        a_str(&c[n], "XDEL"), a_str(&c[n], k.s), a_str(&c[n], msg->entry);
        n++;
    }
    a_str(&c[n], "HDEL"), a_str(&c[n], f.s), a_str(&c[n], msg->id);
    n++;
    return MULTI(s, c, n, err);
}

/* Moves msg to the dead-letter stream (atomically leaving the queue) and logs it. */
int lb_redis_priv_dead_letter(lb_redis *s, const char *name, const lb_redis_msg *msg, const char *error,
                              int64_t fails, lb_err *err)
{
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue"), d = lb_redis_priv_job_key(name, ":dead");
    char shortened[LB_REDIS_MAX_RECORD / 2];
    snprintf(shortened, sizeof shortened, "%s", error ? error : "");
    lb_redis_key res = lb_redis_priv_job_key(name, ":results");
    lb_redis_args c[4] = {{0}};
    a_str(&c[0], "XADD"), a_str(&c[0], d.s), a_str(&c[0], "*");
    a_str(&c[0], "id"), a_str(&c[0], msg->id), a_str(&c[0], "payload");
    a_bin(&c[0], msg->payload ? (const void *)msg->payload : "", msg->len);
    a_str(&c[0], "error"), a_str(&c[0], shortened), a_str(&c[0], "fails"), a_i64(&c[0], fails);
    a_str(&c[1], "XACK"), a_str(&c[1], q.s), a_str(&c[1], LB_REDIS_GROUP), a_str(&c[1], msg->entry);
    a_str(&c[2], "XDEL"), a_str(&c[2], q.s), a_str(&c[2], msg->entry);
    /* the coordinator learns of the failure from the results stream */
    a_str(&c[3], "XADD"), a_str(&c[3], res.s), a_str(&c[3], "*");
    a_str(&c[3], "id"), a_str(&c[3], msg->id), a_str(&c[3], "error"), a_str(&c[3], shortened);
    int rc = MULTI(s, c, 4, err);
    if (rc)
        return rc;
    char ev[1200];
    snprintf(ev, sizeof ev, "dead-lettered %s after %lld failures: %.900s", msg->id,
             (long long)fails, shortened);
    return lb_redis_event(s, name, ev, err);
}

int lb_redis_priv_count_failure(lb_redis *s, const char *name, const char *id, int64_t *fails, lb_err *err)
{
    lb_redis_key f = lb_redis_priv_job_key(name, ":fails");
    lb_redis_args a = {0};
    a_str(&a, "HINCRBY"), a_str(&a, f.s), a_str(&a, id), a_str(&a, "1");
    redisReply *r = CHECKED(s, &a, false, REDIS_REPLY_INTEGER, err);
    if (!r)
        return err ? err->code : LB_ENET;
    *fails = r->integer;
    freeReplyObject(r);
    return 0;
}

int lb_redis_fail(lb_redis *s, const char *name, const lb_redis_msg *msg, const char *error,
                  int max_failures, bool *dead, int64_t *failures, lb_err *err)
{
    if (dead)
        *dead = false;
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if (max_failures < 1)
        return lb_err_set(err, LB_EINVAL, "max failures must be >= 1");
    int64_t n = 0;
    if ((rc = lb_redis_priv_count_failure(s, name, msg->id, &n, err)))
        return rc;
    if (failures)
        *failures = n;
    if (n >= max_failures) {
        if (dead)
            *dead = true;
        return lb_redis_priv_dead_letter(s, name, msg, error, n, err);
    }
    /* re-queue at the tail, then release the lease, atomically */
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args c[3] = {{0}};
    a_str(&c[0], "XADD"), a_str(&c[0], q.s), a_str(&c[0], "*");
    a_str(&c[0], "id"), a_str(&c[0], msg->id), a_str(&c[0], "payload");
    a_bin(&c[0], msg->payload ? (const void *)msg->payload : "", msg->len);
    a_str(&c[1], "XACK"), a_str(&c[1], q.s), a_str(&c[1], LB_REDIS_GROUP), a_str(&c[1], msg->entry);
    a_str(&c[2], "XDEL"), a_str(&c[2], q.s), a_str(&c[2], msg->entry);
    if ((rc = MULTI(s, c, 3, err)))
        return rc;
    char ev[1200];
    snprintf(ev, sizeof ev, "%s failed (%lld of %d): %.900s; re-queued", msg->id, (long long)n,
             max_failures, error ? error : "");
    return lb_redis_event(s, name, ev, err);
}

int lb_redis_reclaim(lb_redis *s, const char *name, const char *consumer, int64_t min_idle_ms,
                     int max_failures, lb_redis_msg *msg, bool *got, lb_err *err)
{
    *got = false;
    memset(msg, 0, sizeof *msg);
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("consumer", consumer, err)))
        return rc;
    if (max_failures < 1 || min_idle_ms < 0)
        return lb_err_set(err, LB_EINVAL, "lb_redis_reclaim: bad min idle or max failures");
    lb_redis_key k = lb_redis_priv_job_key(name, ":queue");
    char cursor[48] = "0-0";
    for (int rounds = 0; rounds < 100000; rounds++) {
        lb_redis_args a = {0};
        a_str(&a, "XAUTOCLAIM"), a_str(&a, k.s), a_str(&a, LB_REDIS_GROUP), a_str(&a, consumer);
        a_i64(&a, min_idle_ms), a_str(&a, cursor), a_str(&a, "COUNT"), a_str(&a, "1");
        redisReply *r = RUN(s, &a, false, true, err);
        if (!r)
            return err ? err->code : LB_ENET;
        if (r->type == REDIS_REPLY_ERROR) {
            rc = strncmp(r->str, "NOGROUP", 7)
                     ? lb_err_set(err, LB_ENET, "%s: XAUTOCLAIM failed: %s", s->peer, r->str)
                     : 0; /* no queue yet: nothing to reclaim */
            freeReplyObject(r);
            return rc;
        }
        /* [next cursor, [entries], (Redis 7: [deleted ids])] */
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof cursor ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            return lb_err_set(err, LB_EFORMAT, "%s: unexpected XAUTOCLAIM reply", s->peer);
        }
        snprintf(cursor, sizeof cursor, "%.*s", (int)r->element[0]->len, r->element[0]->str);
        const redisReply *entries = r->element[1];
        bool found = false;
        for (size_t i = 0; i < entries->elements && !found && !rc; i++) {
            bool deleted = false;
            if (entries->element[i]->type == REDIS_REPLY_NIL)
                continue;
            rc = lb_redis_priv_take_entry(s, name, entries->element[i], msg, &deleted, err);
            if (rc || deleted) {
                lb_redis_msg_clear(msg);
                continue;
            }
            int64_t fails = 0;
            char why[160];
            snprintf(why, sizeof why,
                     "lease expired: no ack within %lld ms (worker crashed or stalled)",
                     (long long)min_idle_ms);
            rc = lb_redis_priv_count_failure(s, name, msg->id, &fails, err);
            if (!rc && fails >= max_failures) {
                rc = lb_redis_priv_dead_letter(s, name, msg, why, fails, err);
                lb_redis_msg_clear(msg);
                continue;
            }
            if (!rc) {
                char ev[400];
                snprintf(ev, sizeof ev, "%s: %s; re-run by %s (failure %lld of %d)", msg->id, why,
                         consumer, (long long)fails, max_failures);
                rc = lb_redis_event(s, name, ev, err);
            }
            found = !rc;
        }
        freeReplyObject(r);
        if (rc) {
            lb_redis_msg_clear(msg);
            return rc;
        }
        if (found) {
            *got = true;
            return 0;
        }
        if (!strcmp(cursor, "0-0"))
            return 0;
    }
    return 0;
}

int lb_redis_queue_stats(lb_redis *s, const char *name, lb_redis_queue_counts *out, lb_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue"), d = lb_redis_priv_job_key(name, ":dead");
    lb_redis_args a = {0}, b = {0};
    a_str(&a, "XLEN"), a_str(&a, q.s);
    a_str(&b, "XLEN"), a_str(&b, d.s);
    if ((rc = lb_redis_priv_int(s, &a, &out->length, err)) || (rc = lb_redis_priv_int(s, &b, &out->dead, err)))
        return rc;
    /* XPENDING summary: [count, min id, max id, [[consumer, count], ...]] */
    lb_redis_args p = {0};
    a_str(&p, "XPENDING"), a_str(&p, q.s), a_str(&p, LB_REDIS_GROUP);
    redisReply *r = RUN(s, &p, true, true, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        out->pending = r->element[0]->integer;
    else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7))
        rc = lb_err_set(err, LB_ENET, "%s: XPENDING failed: %s", s->peer, r->str);
    freeReplyObject(r);
    if (rc)
        return rc;
    lb_redis_args x = {0};
    a_str(&x, "XINFO"), a_str(&x, "GROUPS"), a_str(&x, q.s);
    if (!(r = RUN(s, &x, true, true, err)))
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t g = 0; g < r->elements; g++) {
            const redisReply *e = r->element[g];
            if (e->type != REDIS_REPLY_ARRAY)
                continue;
            bool ours = false;
            int64_t consumers = 0;
            for (size_t i = 0; i + 1 < e->elements; i += 2) {
                const redisReply *f = e->element[i], *v = e->element[i + 1];
                if (f->type != REDIS_REPLY_STRING)
                    continue;
                if (!strcmp(f->str, "name") && v->type == REDIS_REPLY_STRING)
                    ours = !strcmp(v->str, LB_REDIS_GROUP);
                else if (!strcmp(f->str, "consumers") && v->type == REDIS_REPLY_INTEGER)
                    consumers = v->integer;
            }
            if (ours)
                out->consumers = consumers;
        }
    }
    freeReplyObject(r);
    return 0;
}

void lb_redis_dead_free(lb_redis_dead_rec **recs, int32_t n)
{
    if (!recs || !*recs)
        return;
    for (int32_t i = 0; i < n; i++)
        free((*recs)[i].error);
    free(*recs);
    *recs = NULL;
}

int lb_redis_dead_list(lb_redis *s, const char *name, int32_t count, lb_redis_dead_rec **recs,
                       int32_t *n, lb_err *err)
{
    *recs = NULL;
    *n = 0;
    int rc = lb_redis_check_name(name, err);
    if (rc || count < 1)
        return rc;
    lb_redis_key d = lb_redis_priv_job_key(name, ":dead");
    lb_redis_args a = {0};
    a_str(&a, "XRANGE"), a_str(&a, d.s), a_str(&a, "-"), a_str(&a, "+");
    a_str(&a, "COUNT"), a_i64(&a, count);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    lb_redis_dead_rec *v = calloc(r->elements + 1, sizeof *v);
    int32_t got = 0;
    if (!v) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < r->elements; i++) {
        lb_redis_map m;
        lb_redis_dead_rec *e = &v[got];
        if ((rc = lb_redis_priv_parse_entry(s, r->element[i], e->entry, &m, err)))
            goto done;
        const char *id = lb_redis_map_get(&m, "id"), *er = lb_redis_map_get(&m, "error");
        const char *fl = lb_redis_map_get(&m, "fails");
        snprintf(e->id, sizeof e->id, "%s", id ? id : "?");
        e->error = strdup(er ? er : "");
        e->fails = fl ? strtoll(fl, NULL, 10) : 0;
        lb_redis_map_clear(&m);
        got++;
        if (!e->error) {
            rc = lb_err_set(err, LB_ENOMEM, "out of memory");
            goto done;
        }
    }
done:
    freeReplyObject(r);
    if (rc)
        lb_redis_dead_free(&v, got);
    else {
        *recs = v;
        *n = got;
    }
    return rc;
}


/* SADD gate + XADD in one server-side step: atomic, so retrying it after a lost
 * connection can neither lose nor duplicate the item. */
static const char enqueue_once_lua[] =
    "if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then "
    "return redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'payload', ARGV[2]) "
    "else return 0 end";

int lb_redis_enqueue_once(lb_redis *s, const char *name, const char *id, const void *payload,
                          size_t len, bool *added, lb_err *err)
{
    *added = false;
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("queue item id", id, err)))
        return rc;
    if ((rc = lb_redis_priv_check_size(s, "the job payload", len, err)))
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, ":enqueued"), q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    a_str(&a, "EVAL"), a_str(&a, enqueue_once_lua), a_str(&a, "2"), a_str(&a, k.s), a_str(&a, q.s);
    a_str(&a, id), a_bin(&a, payload ? payload : "", len);
    redisReply *r = RUN(s, &a, true, false, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_STRING)
        *added = true; /* the new entry id; an integer 0 means queued before */
    else if (r->type != REDIS_REPLY_INTEGER)
        rc = lb_err_set(err, LB_EFORMAT, "%s: unexpected reply to the enqueue script", s->peer);
    freeReplyObject(r);
    return rc;
}

int lb_redis_complete(lb_redis *s, const char *name, const lb_redis_msg *msg, const void *result,
                      size_t len, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_size(s, "the job result", len, err)))
        return rc;
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue"), f = lb_redis_priv_job_key(name, ":fails");
    lb_redis_key res = lb_redis_priv_job_key(name, ":results");
    lb_redis_args c[4] = {{0}};
    a_str(&c[0], "XADD"), a_str(&c[0], res.s), a_str(&c[0], "*");
    a_str(&c[0], "id"), a_str(&c[0], msg->id), a_str(&c[0], "result");
    a_bin(&c[0], result ? result : "", len);
    a_str(&c[1], "XACK"), a_str(&c[1], q.s), a_str(&c[1], LB_REDIS_GROUP), a_str(&c[1], msg->entry);
    a_str(&c[2], "XDEL"), a_str(&c[2], q.s), a_str(&c[2], msg->entry);
    a_str(&c[3], "HDEL"), a_str(&c[3], f.s), a_str(&c[3], msg->id);
    return MULTI(s, c, 4, err);
}

void lb_redis_results_free(lb_redis_result **res, int32_t n)
{
    if (!res || !*res)
        return;
    for (int32_t i = 0; i < n; i++) {
        free((*res)[i].result);
        free((*res)[i].error);
    }
    free(*res);
    *res = NULL;
}

int lb_redis_results_read(lb_redis *s, const char *name, char cursor[48], int32_t count,
                          int block_ms, lb_redis_result **out, int32_t *n, lb_err *err)
{
    *out = NULL;
    *n = 0;
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if (count < 1 || block_ms < 0)
        return lb_err_set(err, LB_EINVAL, "lb_redis_results_read: bad count or block time");
    lb_redis_key k = lb_redis_priv_job_key(name, ":results");
    lb_redis_args a = {0};
    a_str(&a, "XREAD"), a_str(&a, "COUNT"), a_i64(&a, count);
    if (block_ms > 0)
        a_str(&a, "BLOCK"), a_i64(&a, block_ms);
    a_str(&a, "STREAMS"), a_str(&a, k.s), a_str(&a, cursor);
    s->block_ms = block_ms; /* the socket waits longer than the server blocks */
    redisReply *r = RUN(s, &a, true, false, err);
    s->block_ms = 0;
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->type == REDIS_REPLY_NIL)
        goto done;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2 ||
        r->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: unexpected XREAD reply", s->peer);
        goto done;
    }
    const redisReply *entries = r->element[0]->element[1];
    lb_redis_result *v = calloc(entries->elements + 1, sizeof *v);
    if (!v) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    int32_t got = 0;
    for (size_t i = 0; i < entries->elements && !rc; i++) {
        const redisReply *e = entries->element[i];
        lb_redis_map m;
        char entry[48];
        if ((rc = lb_redis_priv_parse_entry(s, e, entry, &m, err)))
            break;
        snprintf(cursor, 48, "%s", entry);
        const char *id = lb_redis_map_get(&m, "id"), *er = lb_redis_map_get(&m, "error");
        lb_redis_result *x = &v[got];
        snprintf(x->id, sizeof x->id, "%s", id ? id : "");
        if (er && !(x->error = strdup(er)))
            rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        lb_redis_map_clear(&m);
        /* the result is binary: copy it with its length from the reply */
        const redisReply *f = e->element[1];
        for (size_t j = 0; !rc && f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2)
            if (f->element[j]->len == 6 && !memcmp(f->element[j]->str, "result", 6)) {
                const redisReply *val = f->element[j + 1];
                x->result = malloc(val->len ? val->len : 1);
                if (!x->result)
                    rc = lb_err_set(err, LB_ENOMEM, "out of memory");
                else {
                    memcpy(x->result, val->str, val->len);
                    x->len = val->len;
                }
            }
        got++;
    }
    if (rc)
        lb_redis_results_free(&v, got);
    else {
        *out = v;
        *n = got;
    }
done:
    freeReplyObject(r);
    return rc;
}

int lb_redis_lease_touch(lb_redis *s, const char *name, const char *consumer,
                         const lb_redis_msg *msg, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_id("consumer", consumer, err)))
        return rc;
    lb_redis_key q = lb_redis_priv_job_key(name, ":queue");
    lb_redis_args a = {0};
    /* XCLAIM to the same consumer with min-idle 0 resets the idle time */
    a_str(&a, "XCLAIM"), a_str(&a, q.s), a_str(&a, LB_REDIS_GROUP), a_str(&a, consumer);
    a_str(&a, "0"), a_str(&a, msg->entry), a_str(&a, "JUSTID");
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    return 0;
}
