/* lb_redis job records, events, cancel and worker liveness: the hashes, lists
 * and keys a `lowbit status` reads (lb_redis.c holds the connection and the
 * checked command path, lb_redis_queue.c the work stream). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "lb_redis.h"
#include "lb_redis_priv.h"

/* ---- job record ---- */

int lb_redis_job_create(lb_redis *s, const char *name, const char *fingerprint, bool *existed,
                        lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if ((rc = lb_redis_priv_check_id("fingerprint", fingerprint, err)))
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, "");
    lb_redis_args a = {0};
    a_str(&a, "HSETNX"), a_str(&a, k.s), a_str(&a, "fingerprint"), a_str(&a, fingerprint);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_INTEGER, err);
    if (!r)
        return err ? err->code : LB_ENET;
    bool created = r->integer == 1;
    freeReplyObject(r);
    if (!created) {
        lb_redis_args g = {0};
        a_str(&g, "HGET"), a_str(&g, k.s), a_str(&g, "fingerprint");
        r = CHECKED(s, &g, true, REDIS_REPLY_STRING, err);
        if (!r)
            return err ? err->code : LB_ENET;
        bool same = r->len == strlen(fingerprint) && !memcmp(r->str, fingerprint, r->len);
        if (!same) {
            rc = lb_err_set(err, LB_ESTATE,
                            "job '%s' on %s already exists with different options (fingerprint "
                            "%.16s... there, %.16s... here); rerun with the original options or "
                            "choose another --job name",
                            name, s->peer, r->str, fingerprint);
            freeReplyObject(r);
            return rc;
        }
        freeReplyObject(r);
    } else {
        lb_redis_args h = {0};
        int64_t t = lb_redis_priv_now_ms() / 1000;
        a_str(&h, "HSET"), a_str(&h, k.s), a_str(&h, "created"), a_i64(&h, t);
        a_str(&h, "updated"), a_i64(&h, t);
        if (!(r = CHECKED(s, &h, true, REDIS_REPLY_INTEGER, err)))
            return err ? err->code : LB_ENET;
        freeReplyObject(r);
    }
    lb_redis_args j = {0};
    a_str(&j, "SADD"), a_str(&j, "lowbit:jobs"), a_str(&j, name);
    if (!(r = CHECKED(s, &j, true, REDIS_REPLY_INTEGER, err)))
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    if (existed)
        *existed = !created;
    return 0;
}

int lb_redis_job_set(lb_redis *s, const char *name, int n, const char *const *fields,
                     const char *const *values, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if (n < 0 || n > 64)
        return lb_err_set(err, LB_EINVAL, "lb_redis_job_set: %d fields (0..64)", n);
    lb_redis_key k = lb_redis_priv_job_key(name, "");
    lb_redis_args a = {0};
    a_str(&a, "HSET"), a_str(&a, k.s);
    for (int i = 0; i < n; i++) {
        if ((rc = lb_redis_priv_check_size(s, fields[i], strlen(values[i]), err)))
            return rc;
        a_str(&a, fields[i]), a_str(&a, values[i]);
    }
    a_str(&a, "updated"), a_i64(&a, lb_redis_priv_now_ms() / 1000);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_INTEGER, err);
    if (!r)
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    return 0;
}

int lb_redis_job_incr(lb_redis *s, const char *name, const char *field, int64_t delta,
                      int64_t *now, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, "");
    lb_redis_args a = {0};
    a_str(&a, "HINCRBY"), a_str(&a, k.s), a_str(&a, field), a_i64(&a, delta);
    redisReply *r = CHECKED(s, &a, false, REDIS_REPLY_INTEGER, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (now)
        *now = r->integer;
    freeReplyObject(r);
    return lb_redis_job_set(s, name, 0, NULL, NULL, err);
}

int lb_redis_job_get(lb_redis *s, const char *name, lb_redis_map *out, lb_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, "");
    lb_redis_args a = {0};
    a_str(&a, "HGETALL"), a_str(&a, k.s);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    if (r->elements == 0)
        rc = lb_err_set(err, LB_ENOTFOUND,
                        "no job '%s' on %s; `lowbit status --redis URL` lists the jobs there", name,
                        s->peer);
    else
        rc = lb_redis_priv_map_from_pairs(s, r, out, err);
    freeReplyObject(r);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int lb_redis_job_list(lb_redis *s, char ***names, int32_t *n, lb_err *err)
{
    *names = NULL;
    *n = 0;
    lb_redis_args a = {0};
    a_str(&a, "SMEMBERS"), a_str(&a, "lowbit:jobs");
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    int rc = 0;
    char **v = calloc(r->elements + 1, sizeof *v);
    if (!v) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !(v[i] = lb_redis_priv_dup_n(e->str, e->len))) {
            for (size_t j = 0; j < i; j++)
                free(v[j]);
            free(v);
            v = NULL;
            rc = lb_err_set(err, LB_EFORMAT, "%s: bad member in lowbit:jobs", s->peer);
            goto done;
        }
    }
    qsort(v, r->elements, sizeof *v, cmp_str);
    *names = v;
    *n = (int32_t)r->elements;
done:
    freeReplyObject(r);
    return rc;
}

/* ---- events ---- */

int lb_redis_event(lb_redis *s, const char *name, const char *msg, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc || (rc = lb_redis_priv_check_size(s, "event", strlen(msg), err)))
        return rc;
    lb_redis_key k = lb_redis_priv_job_key(name, ":events");
    lb_redis_args a = {0};
    a_str(&a, "XADD"), a_str(&a, k.s), a_str(&a, "MAXLEN"), a_str(&a, "~");
    a_i64(&a, LB_REDIS_EVENTS_MAXLEN), a_str(&a, "*");
    a_str(&a, "t"), a_i64(&a, lb_redis_priv_now_ms()), a_str(&a, "msg"), a_str(&a, msg);
    redisReply *r = CHECKED(s, &a, false, REDIS_REPLY_STRING, err);
    if (!r)
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    return 0;
}

/* Parses a stream entry [id, [f, v, ...]] into its id and a field map. */
int lb_redis_priv_parse_entry(lb_redis *s, const redisReply *e, char id[48], lb_redis_map *m, lb_err *err)
{
    memset(m, 0, sizeof *m);
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= 48)
        return lb_err_set(err, LB_EFORMAT, "%s: malformed stream entry", s->peer);
    memcpy(id, e->element[0]->str, e->element[0]->len);
    id[e->element[0]->len] = 0;
    if (e->element[1]->type == REDIS_REPLY_NIL) /* deleted while pending (Redis 6.2) */
        return 0;
    if (e->element[1]->type != REDIS_REPLY_ARRAY)
        return lb_err_set(err, LB_EFORMAT, "%s: malformed stream entry %s", s->peer, id);
    return lb_redis_priv_map_from_pairs(s, e->element[1], m, err);
}

void lb_redis_events_free(lb_redis_event_rec **events, int32_t n)
{
    if (!events || !*events)
        return;
    for (int32_t i = 0; i < n; i++)
        free((*events)[i].msg);
    free(*events);
    *events = NULL;
}

int lb_redis_events_recent(lb_redis *s, const char *name, int32_t count,
                           lb_redis_event_rec **events, int32_t *n, lb_err *err)
{
    *events = NULL;
    *n = 0;
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if (count < 1)
        return 0;
    lb_redis_key k = lb_redis_priv_job_key(name, ":events");
    lb_redis_args a = {0};
    a_str(&a, "XREVRANGE"), a_str(&a, k.s), a_str(&a, "+"), a_str(&a, "-");
    a_str(&a, "COUNT"), a_i64(&a, count);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    lb_redis_event_rec *ev = calloc(r->elements + 1, sizeof *ev);
    int32_t got = 0;
    if (!ev) {
        rc = lb_err_set(err, LB_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = r->elements; i-- > 0;) { /* newest first -> oldest first */
        lb_redis_map m;
        lb_redis_event_rec *e = &ev[got];
        if ((rc = lb_redis_priv_parse_entry(s, r->element[i], e->id, &m, err)))
            goto done;
        const char *t = lb_redis_map_get(&m, "t"), *msg = lb_redis_map_get(&m, "msg");
        e->t_ms = t ? strtoll(t, NULL, 10) : 0;
        e->msg = strdup(msg ? msg : "");
        lb_redis_map_clear(&m);
        got++;
        if (!e->msg) {
            rc = lb_err_set(err, LB_ENOMEM, "out of memory");
            goto done;
        }
    }
done:
    freeReplyObject(r);
    if (rc)
        lb_redis_events_free(&ev, got);
    else {
        *events = ev;
        *n = got;
    }
    return rc;
}

/* Integer reply of a simple command; a missing key gives 0. */
int lb_redis_priv_int(lb_redis *s, const lb_redis_args *a, int64_t *out, lb_err *err)
{
    redisReply *r = CHECKED(s, a, true, REDIS_REPLY_INTEGER, err);
    if (!r)
        return err ? err->code : LB_ENET;
    *out = r->integer;
    freeReplyObject(r);
    return 0;
}

/* ---- cancel ---- */

int lb_redis_cancel(lb_redis *s, const char *name, lb_err *err)
{
    lb_redis_map m;
    int rc = lb_redis_job_get(s, name, &m, err);
    if (rc)
        return rc;
    const char *state = lb_redis_map_get(&m, "state");
    if (state && !strcmp(state, "done")) {
        rc = lb_err_set(err, LB_ESTATE, "job '%s' on %s already finished (state done); nothing to cancel",
                        name, s->peer);
        lb_redis_map_clear(&m);
        return rc;
    }
    lb_redis_map_clear(&m);
    lb_redis_key c = lb_redis_priv_job_key(name, ":cancel");
    lb_redis_args a = {0};
    a_str(&a, "SET"), a_str(&a, c.s), a_str(&a, "1");
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_STATUS, err);
    if (!r)
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    const char *f[] = {"state"}, *v[] = {"cancelled"};
    if ((rc = lb_redis_job_set(s, name, 1, f, v, err)))
        return rc;
    return lb_redis_event(s, name, "cancel requested; workers drop this job's leases", err);
}

int lb_redis_is_cancelled(lb_redis *s, const char *name, bool *cancelled, lb_err *err)
{
    *cancelled = false;
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    lb_redis_key c = lb_redis_priv_job_key(name, ":cancel");
    lb_redis_args a = {0};
    a_str(&a, "EXISTS"), a_str(&a, c.s);
    int64_t n = 0;
    if ((rc = lb_redis_priv_int(s, &a, &n, err)))
        return rc;
    *cancelled = n > 0;
    return 0;
}

/* ---- workers ---- */

int lb_redis_heartbeat(lb_redis *s, const char *worker, const char *info, int ttl_s, lb_err *err)
{
    int rc = lb_redis_priv_check_id("worker id", worker, err);
    if (rc || (rc = lb_redis_priv_check_size(s, "worker info", strlen(info), err)))
        return rc;
    if (ttl_s < 1)
        return lb_err_set(err, LB_EINVAL, "heartbeat TTL must be >= 1 s");
    char key[LB_REDIS_ID_MAX + 32];
    snprintf(key, sizeof key, "lowbit:worker:%s", worker);
    lb_redis_args a = {0}, b = {0};
    a_str(&a, "SET"), a_str(&a, key), a_str(&a, info), a_str(&a, "EX"), a_i64(&a, ttl_s);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_STATUS, err);
    if (!r)
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    a_str(&b, "SADD"), a_str(&b, "lowbit:workers"), a_str(&b, worker);
    int64_t added;
    return lb_redis_priv_int(s, &b, &added, err);
}

int lb_redis_worker_remove(lb_redis *s, const char *worker, lb_err *err)
{
    int rc = lb_redis_priv_check_id("worker id", worker, err);
    if (rc)
        return rc;
    char key[LB_REDIS_ID_MAX + 32];
    snprintf(key, sizeof key, "lowbit:worker:%s", worker);
    lb_redis_args a = {0}, b = {0};
    a_str(&a, "DEL"), a_str(&a, key);
    a_str(&b, "SREM"), a_str(&b, "lowbit:workers"), a_str(&b, worker);
    int64_t n;
    if ((rc = lb_redis_priv_int(s, &a, &n, err)))
        return rc;
    return lb_redis_priv_int(s, &b, &n, err);
}

void lb_redis_workers_free(lb_redis_worker_rec **recs, int32_t n)
{
    if (!recs || !*recs)
        return;
    for (int32_t i = 0; i < n; i++)
        free((*recs)[i].info);
    free(*recs);
    *recs = NULL;
}

static int cmp_worker(const void *a, const void *b)
{
    return strcmp(((const lb_redis_worker_rec *)a)->id, ((const lb_redis_worker_rec *)b)->id);
}

int lb_redis_workers_live(lb_redis *s, lb_redis_worker_rec **recs, int32_t *n, lb_err *err)
{
    *recs = NULL;
    *n = 0;
    int rc = 0;
    lb_redis_args a = {0};
    a_str(&a, "SMEMBERS"), a_str(&a, "lowbit:workers");
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    lb_redis_worker_rec *v = calloc(r->elements + 1, sizeof *v);
    int32_t got = 0;
    if (!v) {
        freeReplyObject(r);
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < r->elements && !rc; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len > LB_REDIS_ID_MAX)
            continue;
        char key[LB_REDIS_ID_MAX + 32];
        snprintf(key, sizeof key, "lowbit:worker:%s", e->str);
        lb_redis_args g = {0}, t = {0};
        a_str(&g, "GET"), a_str(&g, key);
        redisReply *gr = RUN(s, &g, true, false, err);
        if (!gr) {
            rc = err ? err->code : LB_ENET;
            break;
        }
        if (gr->type != REDIS_REPLY_STRING) {
            /* nil: the heartbeat expired; prune the registry entry */
            freeReplyObject(gr);
            lb_redis_args d = {0};
            int64_t k;
            a_str(&d, "SREM"), a_str(&d, "lowbit:workers"), a_str(&d, e->str);
            rc = lb_redis_priv_int(s, &d, &k, err);
            continue;
        }
        a_str(&t, "TTL"), a_str(&t, key);
        int64_t ttl = 0;
        rc = lb_redis_priv_int(s, &t, &ttl, err);
        lb_redis_worker_rec *w = &v[got];
        snprintf(w->id, sizeof w->id, "%s", e->str);
        w->info = lb_redis_priv_dup_n(gr->str, gr->len);
        w->ttl_s = ttl;
        freeReplyObject(gr);
        got++;
        if (!w->info && !rc)
            rc = lb_err_set(err, LB_ENOMEM, "out of memory");
    }
    freeReplyObject(r);
    if (rc) {
        lb_redis_workers_free(&v, got);
        return rc;
    }
    qsort(v, (size_t)got, sizeof *v, cmp_worker);
    *recs = v;
    *n = got;
    return 0;
}
