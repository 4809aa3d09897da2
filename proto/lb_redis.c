#include "lb_redis.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#include <hiredis/hiredis.h>

#include "lb_redis_url.h"
#include "lb_redis_priv.h"


/* ---- small helpers ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}


static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}


/* ---- connection ---- */

lb_redis_opts lb_redis_opts_default(void)
{
    lb_redis_opts o = {2000, 10000, 3, 100};
    return o;
}

/* 1 for "-LOADING ...": a server that just restarted and is still reading its
 * AOF/RDB rejects commands without running them, so any command may be retried. */
static bool is_loading(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && r->str && !strncmp(r->str, "LOADING", 7);
}

/* One connection attempt: connect, AUTH, SELECT, PING. Sets s->c on success. */
static int connect_once(lb_redis *s, bool *retryable, lb_err *err)
{
    *retryable = false;
    struct timeval ct = tv_ms(s->o.connect_timeout_ms);
    redisContext *c = s->url.is_unix ? redisConnectUnixWithTimeout(s->url.socket_path, ct)
                                     : redisConnectWithTimeout(s->url.host, s->url.port, ct);
    redisReply *r = NULL;
    int rc = 0;
    if (!c)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory creating the connection", s->peer);
    if (c->err) {
        *retryable = true;
        rc = lb_err_set(err, LB_ENET,
                        "%s: cannot connect (%s); is redis-server running there? start one with "
                        "deploy/local-cluster.sh or pass --redis URL",
                        s->peer, c->errstr);
        goto fail;
    }
    if (redisSetTimeout(c, tv_ms(s->o.command_timeout_ms)) != REDIS_OK) {
        rc = lb_err_set(err, LB_ENET, "%s: cannot set the socket timeout (%s)", s->peer, c->errstr);
        goto fail;
    }
    if (s->url.password[0]) {
        if (s->url.user[0])
            r = redisCommand(c, "AUTH %s %s", s->url.user, s->url.password);
        else
            r = redisCommand(c, "AUTH %s", s->url.password);
        if (!r) {
            *retryable = true;
            rc = lb_err_set(err, LB_ENET, "%s: connection lost during AUTH (%s)", s->peer,
                            c->errstr);
            goto fail;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (!strncmp(r->str, "WRONGPASS", 9) || strstr(r->str, "invalid password") ||
                strstr(r->str, "invalid username"))
                rc = lb_err_set(err, LB_ENET,
                                "%s: authentication failed (%s); check the password in the URL",
                                s->peer, r->str);
            else
                rc = lb_err_set(err, LB_ENET,
                                "%s: AUTH rejected (%s); if the server has no password, remove "
                                "user:password@ from the URL",
                                s->peer, r->str);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    if (s->url.db != 0) {
        r = redisCommand(c, "SELECT %d", s->url.db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            *retryable = !r;
            rc = lb_err_set(err, LB_ENET, "%s: SELECT %d failed (%s); use a database the server has",
                            s->peer, s->url.db, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    r = redisCommand(c, "PING");
    if (!r) {
        *retryable = true;
        rc = lb_err_set(err, LB_ENET, "%s: no answer to PING (%s); is it a Redis server?", s->peer,
                        c->errstr);
        goto fail;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        *retryable = is_loading(r); /* restarted, still reading its AOF/RDB */
        if (!strncmp(r->str, "NOAUTH", 6))
            rc = lb_err_set(err, LB_ENET,
                            "%s: the server requires a password (%s); give it in the URL: "
                            "redis://[user]:PASSWORD@host:port/db",
                            s->peer, r->str);
        else
            rc = lb_err_set(err, LB_ENET, "%s: PING failed (%s)", s->peer, r->str);
        goto fail;
    }
    freeReplyObject(r);
    s->c = c;
    return 0;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* Connects, retrying unreachable servers with exponential backoff. */
static int reconnect(lb_redis *s, lb_err *err)
{
    if (s->c) {
        redisFree(s->c);
        s->c = NULL;
    }
    int backoff = s->o.backoff_ms;
    for (int attempt = 0;; attempt++) {
        bool retryable = false;
        int rc = connect_once(s, &retryable, err);
        s->connects += rc == 0;
        if (rc == 0 || !retryable || attempt >= s->o.retries)
            return rc;
        sleep_ms(backoff);
        backoff = backoff < 5000 ? backoff * 2 : backoff;
    }
}

int lb_redis_connect(const char *url, const lb_redis_opts *opts, lb_redis **out, lb_err *err)
{
    if (!out)
        return lb_err_set(err, LB_EINVAL, "lb_redis_connect: NULL out");
    *out = NULL;
    lb_redis *s = calloc(1, sizeof *s);
    if (!s)
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    int rc = lb_redis_url_parse(url, &s->url, err);
    if (rc)
        goto fail;
    s->o = opts ? *opts : lb_redis_opts_default();
    if (s->o.connect_timeout_ms < 1)
        s->o.connect_timeout_ms = 1;
    if (s->o.command_timeout_ms < 1)
        s->o.command_timeout_ms = 1;
    if (s->o.retries < 0)
        s->o.retries = 0;
    if (s->o.backoff_ms < 1)
        s->o.backoff_ms = 1;
    lb_redis_url_display(&s->url, s->peer, sizeof s->peer);
    rc = reconnect(s, err);
    if (rc)
        goto fail;
    *out = s;
    return 0;
fail:
    lb_redis_free(&s);
    return rc;
}

void lb_redis_free(lb_redis **sp)
{
    if (!sp || !*sp)
        return;
    if ((*sp)->c)
        redisFree((*sp)->c);
    /* the password does not outlive the handle in freed memory */
    memset(&(*sp)->url, 0, sizeof (*sp)->url);
    free(*sp);
    *sp = NULL;
}

const char *lb_redis_peer(const lb_redis *s) { return s ? s->peer : "redis"; }

int64_t lb_redis_connects(const lb_redis *s) { return s ? s->connects : 0; }

/* ---- the checked command path ---- */

/* 1 when the idle connection is already dead: the server closed it (restart,
 * CLIENT KILL, timeout) or sent something unasked. Nothing is sent on such a
 * connection, so even a non-idempotent command may reconnect and go ahead:
 * without this check the first write after a Redis restart fails "connection
 * lost" and a worker's completion (MULTI) was dropped although the server was
 * back, leaving the item leased until --lease-ms expired. */
static bool conn_stale(const redisContext *c)
{
    if (c->err)
        return true;
    if (c->reader && c->reader->len > c->reader->pos)
        return true; /* unread reply bytes: out of step */
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return false; /* nothing to read: healthy (or unknowable yet) */
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
        return true;
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Connected and not known dead, else reconnects (with backoff). A blocking
 * command (s->block_ms > 0) gets a socket timeout that long plus the command
 * timeout; lb_redis_priv_run restores the plain one after it. */
static int ensure_conn(lb_redis *s, lb_err *err)
{
    if (s->c && conn_stale(s->c)) {
        redisFree(s->c);
        s->c = NULL;
    }
    if (!s->c) {
        int rc = reconnect(s, err);
        if (rc)
            return rc;
    }
    if (s->block_ms > 0 &&
        redisSetTimeout(s->c, tv_ms(s->o.command_timeout_ms + s->block_ms)) != REDIS_OK)
        return lb_err_set(err, LB_ENET, "%s: cannot set the socket timeout (%s)", s->peer,
                          s->c->errstr);
    return 0;
}

/* Runs one command. A lost connection is retried (reconnect + backoff) only
 * when idempotent. Error replies become LB_ENET unless allow_error (then the
 * caller inspects them). Returns the reply (caller frees) or NULL with err set. */
redisReply *lb_redis_priv_run(lb_redis *s, const lb_redis_args *a, bool idempotent, bool allow_error,
                             const char *file, int line, lb_err *err)
{
    if (a->n > ARGS_MAX) {
        lb_err_set(err, LB_EINVAL, "%s: too many command arguments [%s:%d]", s->peer,
                   base_name(file), line);
        return NULL;
    }
    const char *cmd = a->n ? a->v[0] : "?";
    for (int attempt = 0;; attempt++) {
        if (ensure_conn(s, err)) {
            lb_err_prefix(err, "%s (reconnecting for %s) [%s:%d]", s->peer, cmd, base_name(file),
                          line);
            return NULL;
        }
        redisReply *r = redisCommandArgv(s->c, a->n, (const char **)a->v, a->l);
        if (r && s->block_ms > 0)
            redisSetTimeout(s->c, tv_ms(s->o.command_timeout_ms));
        if (!r) {
            lb_err_set(err, LB_ENET,
                       "%s: connection lost during %s (%s) [%s:%d]; is redis-server still running?",
                       s->peer, cmd, s->c->errstr[0] ? s->c->errstr : "no reply", base_name(file),
                       line);
            redisFree(s->c);
            s->c = NULL;
            if (!idempotent || attempt >= s->o.retries)
                return NULL;
            sleep_ms(s->o.backoff_ms << (attempt < 6 ? attempt : 6));
            continue;
        }
        if (is_loading(r) && attempt < s->o.retries) {
            freeReplyObject(r); /* not run: safe to repeat even when not idempotent */
            sleep_ms(s->o.backoff_ms << (attempt < 6 ? attempt : 6));
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR && !allow_error) {
            /* a missing ACL grant does not heal by retrying: not LB_ENET */
            if (!strncmp(r->str, "NOPERM", 6))
                lb_err_set(err, LB_EINVAL,
                           "%s: %s refused: %s [%s:%d]; grant it to this Redis user's ACL "
                           "(see deploy/redis.conf)",
                           s->peer, cmd, r->str, base_name(file), line);
            else
                lb_err_set(err, LB_ENET, "%s: %s failed: %s [%s:%d]", s->peer, cmd, r->str,
                           base_name(file), line);
            freeReplyObject(r);
            return NULL;
        }
        return r;
    }
}

static const char *type_name(int t)
{
    switch (t) {
    case REDIS_REPLY_STRING: return "string";
    case REDIS_REPLY_ARRAY: return "array";
    case REDIS_REPLY_INTEGER: return "integer";
    case REDIS_REPLY_NIL: return "nil";
    case REDIS_REPLY_STATUS: return "status";
    case REDIS_REPLY_ERROR: return "error";
    default: return "other";
    }
}

/* Checks the reply type; on mismatch frees r, sets err and returns NULL. */
redisReply *lb_redis_priv_expect(lb_redis *s, redisReply *r, int type, const char *cmd,
                                const char *file, int line, lb_err *err)
{
    if (!r || r->type == type)
        return r;
    lb_err_set(err, LB_EFORMAT, "%s: unexpected %s reply to %s (wanted %s) [%s:%d]", s->peer,
               type_name(r->type), cmd, type_name(type), base_name(file), line);
    freeReplyObject(r);
    return NULL;
}


static int multi_once(lb_redis *s, const lb_redis_args *cmds, int n, const char *file, int line,
                      bool *loading, lb_err *err);

/* Runs cmds[0..n) inside MULTI/EXEC (pipelined). Returns 0 or an error. A server
 * still loading its data set rejects the whole transaction: retried with backoff. */
int lb_redis_priv_multi(lb_redis *s, const lb_redis_args *cmds, int n, const char *file, int line,
                       lb_err *err)
{
    for (int attempt = 0;; attempt++) {
        bool loading = false;
        int rc = multi_once(s, cmds, n, file, line, &loading, err);
        if (!rc || !loading || attempt >= s->o.retries)
            return rc;
        sleep_ms(s->o.backoff_ms << (attempt < 6 ? attempt : 6));
    }
}

static int multi_once(lb_redis *s, const lb_redis_args *cmds, int n, const char *file, int line,
                      bool *loading, lb_err *err)
{
    if (ensure_conn(s, err))
        return lb_err_prefix(err, "%s (reconnecting for MULTI) [%s:%d]", s->peer, base_name(file),
                             line);
    int rc = 0;
    redisReply *r = NULL;
    redisAppendCommand(s->c, "MULTI");
    for (int i = 0; i < n; i++)
        redisAppendCommandArgv(s->c, cmds[i].n, (const char **)cmds[i].v, cmds[i].l);
    redisAppendCommand(s->c, "EXEC");
    for (int i = 0; i < n + 2; i++) {
        void *vr = NULL;
        if (redisGetReply(s->c, &vr) != REDIS_OK) {
            rc = lb_err_set(err, LB_ENET,
                            "%s: connection lost inside MULTI/EXEC (%s) [%s:%d]; nothing was "
                            "applied, retry",
                            s->peer, s->c->errstr, base_name(file), line);
            redisFree(s->c);
            s->c = NULL;
            return rc;
        }
        r = vr;
        *loading = *loading || is_loading(r);
        if (i == n + 1) { /* EXEC */
            if (r->type != REDIS_REPLY_ARRAY)
                rc = lb_err_set(err, LB_ENET, "%s: EXEC failed: %s [%s:%d]", s->peer,
                                r->type == REDIS_REPLY_ERROR ? r->str : type_name(r->type),
                                base_name(file), line);
            else
                for (size_t k = 0; k < r->elements && !rc; k++)
                    if (r->element[k]->type == REDIS_REPLY_ERROR)
                        rc = lb_err_set(err, LB_ENET, "%s: %s in MULTI failed: %s [%s:%d]",
                                        s->peer, k < (size_t)n ? cmds[k].v[0] : "?",
                                        r->element[k]->str, base_name(file), line);
        } else if (r->type == REDIS_REPLY_ERROR && !rc) {
            rc = lb_err_set(err, strncmp(r->str, "NOPERM", 6) ? LB_ENET : LB_EINVAL,
                            "%s: %s failed: %s [%s:%d]", s->peer,
                            i == 0 ? "MULTI" : cmds[i - 1].v[0], r->str, base_name(file), line);
        }
        freeReplyObject(r);
    }
    return rc;
}

/* ---- names and keys ---- */

int lb_redis_check_name(const char *name, lb_err *err)
{
    size_t n = name ? strlen(name) : 0;
    bool ok = n >= 1 && n <= LB_REDIS_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        ok = isalnum(c) || c == '.' || c == '_' || c == '-';
    }
    if (!ok)
        return lb_err_set(err, LB_EINVAL,
                          "bad job name '%.80s': use 1..%d characters from [A-Za-z0-9._-]",
                          name ? name : "(null)", LB_REDIS_NAME_MAX);
    return 0;
}

int lb_redis_priv_check_id(const char *what, const char *id, lb_err *err)
{
    size_t n = id ? strlen(id) : 0;
    bool ok = n >= 1 && n <= LB_REDIS_ID_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = isgraph((unsigned char)id[i]) != 0;
    if (!ok)
        return lb_err_set(err, LB_EINVAL, "bad %s '%.80s': use 1..%d printable characters, no spaces",
                          what, id ? id : "(null)", LB_REDIS_ID_MAX);
    return 0;
}

int lb_redis_priv_check_size(lb_redis *s, const char *what, size_t len, lb_err *err)
{
    if (len > LB_REDIS_MAX_RECORD)
        return lb_err_set(err, LB_EINVAL,
                          "%s: record too large: %s is %zu bytes, the limit is %d (Redis holds "
                          "only small records; put bulk data in the artifact store)",
                          s->peer, what, len, LB_REDIS_MAX_RECORD);
    return 0;
}


lb_redis_key lb_redis_priv_job_key(const char *name, const char *suffix)
{
    lb_redis_key k;
    snprintf(k.s, sizeof k.s, "lowbit:job:%s%s", name, suffix);
    return k;
}

/* ---- maps ---- */

void lb_redis_map_clear(lb_redis_map *m)
{
    if (!m)
        return;
    for (int32_t i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

const char *lb_redis_map_get(const lb_redis_map *m, const char *key)
{
    for (int32_t i = 0; m && i < m->n; i++)
        if (!strcmp(m->keys[i], key))
            return m->vals[i];
    return NULL;
}

/* Fills m from a flat [k1, v1, k2, v2, ...] array of strings. */
static int map_from_pairs(lb_redis *s, const redisReply *r, lb_redis_map *m, lb_err *err)
{
    memset(m, 0, sizeof *m);
    if (r->elements % 2)
        return lb_err_set(err, LB_EFORMAT, "%s: odd field/value list", s->peer);
    size_t n = r->elements / 2;
    if (n == 0)
        return 0;
    m->keys = calloc(n, sizeof *m->keys);
    m->vals = calloc(n, sizeof *m->vals);
    if (!m->keys || !m->vals)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        const redisReply *k = r->element[2 * i], *v = r->element[2 * i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            lb_redis_map_clear(m);
            return lb_err_set(err, LB_EFORMAT, "%s: non-string field in a hash or entry", s->peer);
        }
        m->keys[i] = dup_n(k->str, k->len);
        m->vals[i] = dup_n(v->str, v->len);
        m->n = (int32_t)(i + 1);
        if (!m->keys[i] || !m->vals[i])
            goto oom;
    }
    return 0;
oom:
    lb_redis_map_clear(m);
    return lb_err_set(err, LB_ENOMEM, "out of memory reading a reply from %s", s->peer);
}

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
        int64_t t = now_ms() / 1000;
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
    a_str(&a, "updated"), a_i64(&a, now_ms() / 1000);
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
        rc = map_from_pairs(s, r, out, err);
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
        if (e->type != REDIS_REPLY_STRING || !(v[i] = dup_n(e->str, e->len))) {
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
    a_str(&a, "t"), a_i64(&a, now_ms()), a_str(&a, "msg"), a_str(&a, msg);
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
    return map_from_pairs(s, e->element[1], m, err);
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
        w->info = dup_n(gr->str, gr->len);
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
