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

int64_t lb_redis_priv_now_ms(void)
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

char *lb_redis_priv_dup_n(const char *s, size_t n)
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
int lb_redis_priv_map_from_pairs(lb_redis *s, const redisReply *r, lb_redis_map *m, lb_err *err)
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
        m->keys[i] = lb_redis_priv_dup_n(k->str, k->len);
        m->vals[i] = lb_redis_priv_dup_n(v->str, v->len);
        m->n = (int32_t)(i + 1);
        if (!m->keys[i] || !m->vals[i])
            goto oom;
    }
    return 0;
oom:
    lb_redis_map_clear(m);
    return lb_err_set(err, LB_ENOMEM, "out of memory reading a reply from %s", s->peer);
}
