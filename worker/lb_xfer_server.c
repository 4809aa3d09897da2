/* lb_xfer_server: the artifact server thread (see lb_xfer.h). */
#include "lb_xfer.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "lb_io_util.h"
#include "lb_safetensors.h"
#include "lb_sha256.h"
#include "lb_xfer_priv.h"

/* --------------------------------------------------------------- server */

struct lb_xfer_server {
    void *ctx;
    void *sock;
    pthread_t thread;
    bool running;
    char *dir;
    char *suffix;
    char endpoint[256];
    uint64_t max_bytes;
    bool content_ids;
    lb_xfer_validate_fn validate;
    void *validate_user;
    void (*log)(void *user, const char *line);
    void *log_user;
    lb_xfer_curve curve;  /* copy; curve.on: CURVE server with a ZAP handler */
    void *zap;            /* REP on inproc://zeromq.zap.01 (CURVE only) */
    lb_xfer_authorize_fn authorize;
    void *authorize_user;
    pthread_mutex_t mu;
    lb_xfer_stats stats;
};

static char *artifact_path(const lb_xfer_server *s, const char *id)
{
    size_t n = strlen(s->dir) + 1 + strlen(id) + strlen(s->suffix) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s%s", s->dir, id, s->suffix);
    return p;
}

static void record(lb_xfer_server *s, int status, const char *peer, const char *msg, uint64_t in,
                   uint64_t out)
{
    pthread_mutex_lock(&s->mu);
    s->stats.requests++;
    if (status == 0) {
        s->stats.ok++;
    } else {
        s->stats.errors++;
        snprintf(s->stats.last_error, sizeof s->stats.last_error, "peer %.40s: %.200s", peer, msg);
    }
    s->stats.bytes_in += in;
    s->stats.bytes_out += out;
    pthread_mutex_unlock(&s->mu);
    if (status != 0 && s->log) {
        char line[400];
        snprintf(line, sizeof line, "%.100s: peer %.40s: %.250s", s->endpoint, peer, msg);
        s->log(s->log_user, line);
    }
}

/* Sends [route][hdr status][message] (an error reply). */
static int reply_error(lb_xfer_server *s, zmq_msg_t *route, uint64_t seq, const lb_err *e)
{
    lb_xfer_hdr h = {.version = LB_XFER_VERSION,
                     .status = e->code ? e->code : LB_EFORMAT,
                     .seq = seq,
                     .nframes = 1};
    size_t len = strnlen(e->msg, sizeof e->msg);
    h.size = len;
    lb_xfer_sha(e->msg, len, h.sha256);
    lb_err ignored;
    return lb_xfer_send_msg(s->sock, route, &h, NULL, e->msg, &ignored, "artifact server");
}

/* Hash of a whole file (mapped). */
static int file_sha(const char *path, uint8_t d[32], uint64_t *size, lb_err *err)
{
    const void *map = NULL;
    size_t n = 0;
    int rc = lb_io_map(path, &map, &n, err);
    if (rc)
        return rc;
    lb_xfer_sha(map, n, d);
    *size = n;
    lb_io_unmap(map, n);
    return 0;
}

static int handle_put(lb_xfer_server *s, const lb_xfer_hdr *h, zmq_msg_t *payload, size_t n,
                      lb_err *err)
{
    if (!h->id[0])
        return lb_err_set(err, LB_EFORMAT, "PUT without an artifact id");
    if (h->size > s->max_bytes)
        return lb_err_set(err, LB_EINVAL, "PUT %s: %llu bytes exceed the server limit %llu", h->id,
                          (unsigned long long)h->size, (unsigned long long)s->max_bytes);
    int rc = lb_xfer_verify_payload(h, payload, n, err);
    if (rc) {
        lb_err_prefix(err, "PUT %s", h->id);
        return rc;
    }
    if (s->content_ids) {
        char hex[LB_SHA256_HEX];
        lb_sha256_to_hex(h->sha256, hex);
        if (strcmp(hex, h->id) != 0)
            return lb_err_set(err, LB_EFORMAT,
                              "PUT %s: this store is content-addressed and the payload hashes "
                              "to %s",
                              h->id, hex);
    }
    char *path = artifact_path(s, h->id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "PUT %s: out of memory", h->id);
    struct stat st;
    if (stat(path, &st) == 0) {
        /* Already stored: fine when it is the same bytes; a corrupt or torn copy
         * is replaced; two different valid payloads for one id are a conflict. */
        uint8_t d[32];
        uint64_t size = 0;
        lb_err e2;
        bool same =
            file_sha(path, d, &size, &e2) == 0 && size == h->size && !memcmp(d, h->sha256, 32);
        if (same) {
            free(path);
            return 0;
        }
        if (!s->validate || s->validate(path, h->id, s->validate_user, &e2) == 0) {
            free(path);
            return lb_err_set(err, LB_ESTATE,
                              "PUT %s: the store already holds different bytes under this id; "
                              "ids must name one content",
                              h->id);
        }
        /* The stored copy fails validation (corrupt at rest): replace it. */
    }
    rc = lb_xfer_write_atomic(path, payload, n, h->id, s->validate, s->validate_user, err);
    if (rc)
        lb_err_prefix(err, "PUT %s", h->id);
    free(path);
    return rc;
}

/* Serves GET: on success the reply is sent here (returns 0, *sent_bytes set). */
/* Prepares a GET reply: on success *map and *n hold the mapped artifact (unmap
 * with lb_io_unmap) and *rep its header; the caller sends it. */
static int handle_get(lb_xfer_server *s, const lb_xfer_hdr *req, const void **map, size_t *n,
                      lb_xfer_hdr *rep, lb_err *err)
{
    *map = NULL;
    *n = 0;
    if (!req->id[0])
        return lb_err_set(err, LB_EFORMAT, "GET without an artifact id");
    char *path = artifact_path(s, req->id);
    if (!path)
        return lb_err_set(err, LB_ENOMEM, "GET %s: out of memory", req->id);
    int rc = 0;
    if (access(path, F_OK) != 0) {
        rc = lb_err_set(err, LB_ENOTFOUND,
                        "GET %s: not in the store; its producing job must run first", req->id);
        goto done;
    }
    if (s->validate && (rc = s->validate(path, req->id, s->validate_user, err))) {
        lb_err_prefix(err, "GET %s: stored copy fails validation", req->id);
        goto done;
    }
    if ((rc = lb_io_map(path, map, n, err)))
        goto done;
    *rep = (lb_xfer_hdr){.version = LB_XFER_VERSION,
                         .cmd = LB_XFER_GET,
                         .seq = req->seq,
                         .size = *n,
                         .nframes = lb_xfer_frame_count(*n)};
    memcpy(rep->id, req->id, sizeof rep->id);
    lb_xfer_sha(*map, *n, rep->sha256);
done:
    free(path);
    return rc;
}

/* PUT after the authorize hook: [route][hdr][claim if LB_XFER_F_CLAIM][payload]. */
static int put_checked(lb_xfer_server *s, const lb_xfer_hdr *h, lb_xfer_frames *f,
                       const char *user, lb_err *err)
{
    size_t first = 2; /* first payload frame */
    char claim[LB_XFER_CLAIM_MAX + 1] = "";
    bool has_claim = (h->status & LB_XFER_F_CLAIM) != 0;
    if (has_claim) {
        size_t len = f->n > 2 ? zmq_msg_size(&f->m[2]) : 0;
        if (f->n <= 2 || len > LB_XFER_CLAIM_MAX)
            return lb_err_set(err, LB_EFORMAT, "PUT %s: claim frame missing or over %d bytes",
                              h->id, LB_XFER_CLAIM_MAX);
        memcpy(claim, zmq_msg_data(&f->m[2]), len);
        claim[len] = 0;
        for (size_t i = 0; i < len; i++)
            if (claim[i] < 32 || claim[i] > 126)
                return lb_err_set(err, LB_EFORMAT, "PUT %s: claim frame is not printable text",
                                  h->id);
        first = 3;
    }
    if (s->authorize && h->id[0]) {
        /* before the payload is even hashed: a refused PUT costs nothing */
        int rc = s->authorize(s->authorize_user, h->id, user && *user ? user : NULL,
                              has_claim ? claim : NULL, err);
        if (rc) {
            pthread_mutex_lock(&s->mu);
            s->stats.refused++;
            pthread_mutex_unlock(&s->mu);
            lb_err_prefix(err, "PUT %s refused", h->id);
            return rc;
        }
    }
    return handle_put(s, h, f->m + first, f->n - first, err);
}

/* Handles one request; returns -1 only when the socket is shutting down. */
static int serve_one(lb_xfer_server *s, lb_xfer_frames *f)
{
    char peer[64] = "unknown";
    lb_err err = {0};
    lb_xfer_hdr h = {0};
    int rc = 0;
    uint64_t in = 0, out = 0;
    const void *map = NULL; /* GET: the artifact being served */
    size_t map_n = 0;
    lb_xfer_hdr get_rep = {0};
    if (f->n < 1)
        return 0; /* no routing id: nothing to answer */
    zmq_msg_t *route = &f->m[0];
    const char *user = NULL; /* CURVE: the client's key name (ZAP user id) */
    if (f->n >= 2) {
        const char *pa = zmq_msg_gets(&f->m[1], "Peer-Address");
        if (pa)
            snprintf(peer, sizeof peer, "%s", pa);
        user = s->curve.on ? zmq_msg_gets(&f->m[1], "User-Id") : NULL;
        if (user && *user) /* logs say which key: "10.0.0.5 (key w1)" */
            snprintf(peer + strlen(peer), sizeof peer - strlen(peer), " (key %.20s)", user);
    }
    if (f->overflow) {
        rc = lb_err_set(&err, LB_EINVAL, "message has more frames than the %llu-byte limit allows",
                        (unsigned long long)s->max_bytes);
        goto reply;
    }
    if (f->n < 2) {
        rc = lb_err_set(&err, LB_EFORMAT, "empty message (no header frame)");
        goto reply;
    }
    if ((rc = lb_xfer_hdr_decode(zmq_msg_data(&f->m[1]), zmq_msg_size(&f->m[1]), &h, &err)))
        goto reply;
    switch (h.cmd) {
    case LB_XFER_PING:
        break;
    case LB_XFER_HAS: {
        char *path = h.id[0] ? artifact_path(s, h.id) : NULL;
        if (!h.id[0])
            rc = lb_err_set(&err, LB_EFORMAT, "HAS without an artifact id");
        else if (!path)
            rc = lb_err_set(&err, LB_ENOMEM, "HAS: out of memory");
        else if (access(path, F_OK) != 0 ||
                 (s->validate && s->validate(path, h.id, s->validate_user, &err)))
            rc = lb_err_set(&err, LB_ENOTFOUND, "HAS %s: not in the store", h.id);
        free(path);
        break;
    }
    case LB_XFER_PUT:
        rc = put_checked(s, &h, f, user, &err);
        if (!rc)
            in = h.size;
        break;
    case LB_XFER_GET:
        rc = handle_get(s, &h, &map, &map_n, &get_rep, &err);
        if (!rc)
            out = map_n;
        break;
    default:
        rc = lb_err_set(&err, LB_EINVAL,
                        "unknown command %u (this server knows PING, GET, PUT, HAS)",
                        (unsigned)h.cmd);
    }
reply:
    /* Counters and log first, so a client that has its reply sees them. */
    /* "absent" is HAS's normal answer, not a failed request */
    record(s, h.cmd == LB_XFER_HAS && rc == LB_ENOTFOUND ? 0 : rc, peer, err.msg, in, out);
    if (rc) {
        reply_error(s, route, h.seq, &err);
    } else if (h.cmd == LB_XFER_GET) {
        lb_xfer_send_msg(s->sock, route, &get_rep, NULL, map, &err, "artifact server");
    } else {
        lb_xfer_hdr ok = {.version = LB_XFER_VERSION, .cmd = h.cmd, .seq = h.seq};
        memcpy(ok.id, h.id, sizeof ok.id);
        lb_xfer_sha(NULL, 0, ok.sha256);
        lb_xfer_send_msg(s->sock, route, &ok, NULL, NULL, &err, "artifact server");
    }
    if (map)
        lb_io_unmap(map, map_n);
    return 0;
}

/* One ZAP request; a refused key is counted and logged (public keys only). */
static int serve_zap(lb_xfer_server *s)
{
    char denied[LB_XFER_KEY_LEN + 32];
    if (lb_xfer_zap_serve(s->zap, &s->curve, denied, sizeof denied) != 0)
        return -1;
    if (denied[0]) {
        pthread_mutex_lock(&s->mu);
        s->stats.denied++;
        snprintf(s->stats.last_error, sizeof s->stats.last_error,
                 "CURVE handshake refused: client key %s is not in the allowlist", denied);
        pthread_mutex_unlock(&s->mu);
        if (s->log) {
            char line[400];
            snprintf(line, sizeof line,
                     "%.100s: CURVE handshake refused: client public key %s is not in the "
                     "allowlist (add its NAME.pub to the clients directory)",
                     s->endpoint, denied);
            s->log(s->log_user, line);
        }
    }
    return 0;
}

static void *server_main(void *arg)
{
    lb_xfer_server *s = arg;
    /* Enough frames for the largest accepted payload, plus route, header, claim. */
    size_t max_frames = (size_t)(s->max_bytes / LB_XFER_FRAME) + 4;
    for (;;) {
        zmq_pollitem_t it[2] = {{.socket = s->sock, .events = ZMQ_POLLIN},
                                {.socket = s->zap, .events = ZMQ_POLLIN}};
        int n = zmq_poll(it, s->zap ? 2 : 1, -1);
        if (n < 0) {
            if (zmq_errno() == ETERM)
                break;
            continue; /* EINTR */
        }
        if (s->zap && (it[1].revents & ZMQ_POLLIN) && serve_zap(s) != 0 && errno == ETERM)
            break;
        if (!(it[0].revents & ZMQ_POLLIN))
            continue;
        lb_xfer_frames f;
        if (lb_xfer_frames_recv(s->sock, max_frames, &f) != 0) {
            if (errno == ETERM)
                break;
            continue; /* EINTR and the like */
        }
        serve_one(s, &f);
        lb_xfer_frames_close(&f);
    }
    if (s->zap)
        zmq_close(s->zap);
    s->zap = NULL;
    zmq_close(s->sock);
    s->sock = NULL;
    return NULL;
}

static void server_free(lb_xfer_server *s)
{
    if (s->zap)
        zmq_close(s->zap);
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx)
        zmq_ctx_term(s->ctx);
    pthread_mutex_destroy(&s->mu);
    free(s->dir);
    free(s->suffix);
    lb_xfer_curve_clear(&s->curve);
    free(s);
}

/* CURVE: copies the keys, binds the ZAP handler (before the server socket
 * binds, so no handshake goes unchecked) and makes s->sock a CURVE server. */
static int curve_setup(lb_xfer_server *s, const lb_xfer_curve *k, const char *bind, lb_err *err)
{
    s->curve = *k;
    s->curve.clients = NULL;
    s->curve.nclients = 0;
    if (k->nclients) {
        s->curve.clients = malloc(k->nclients * sizeof *k->clients);
        if (!s->curve.clients)
            return lb_err_set(err, LB_ENOMEM, "artifact server: out of memory");
        memcpy(s->curve.clients, k->clients, k->nclients * sizeof *k->clients);
        s->curve.nclients = k->nclients;
    }
    int linger = 0, one = 1, rc = 0;
    s->zap = zmq_socket(s->ctx, ZMQ_REP);
    if (!s->zap || (rc = ZMQ_CHECK(zmq_setsockopt(s->zap, ZMQ_LINGER, &linger, sizeof linger),
                                   err, "ZAP handler")))
        return rc ? rc : lb_err_set(err, LB_ENET, "artifact server: zmq_socket failed (%s)",
                                    zmq_strerror(zmq_errno()));
    if (zmq_bind(s->zap, "inproc://zeromq.zap.01") != 0)
        return lb_err_set(err, LB_ENET,
                          "artifact server: cannot bind the ZAP handler inproc://zeromq.zap.01 "
                          "(%s)",
                          zmq_strerror(zmq_errno()));
    s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
    if (!s->sock)
        return lb_err_set(err, LB_ENET, "artifact server: zmq_socket failed (%s)",
                          zmq_strerror(zmq_errno()));
    /* "lowbit": a domain makes libzmq ask the ZAP handler for every handshake */
    if ((rc = ZMQ_CHECK(zmq_setsockopt(s->sock, ZMQ_CURVE_SERVER, &one, sizeof one), err,
                        bind)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(s->sock, ZMQ_CURVE_SECRETKEY, s->curve.server_sec,
                                       LB_XFER_KEY_LEN + 1),
                        err, bind)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(s->sock, ZMQ_ZAP_DOMAIN, "lowbit", 6), err, bind)))
        return rc;
    return 0;
}

int lb_xfer_server_start(const lb_xfer_server_opts *opts, lb_xfer_server **out, lb_err *err)
{
    *out = NULL;
    if (!opts || !opts->dir)
        return lb_err_set(err, LB_EINVAL, "artifact server: no artifact directory given");
    struct stat st;
    if (stat(opts->dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return lb_err_set(err, LB_EINVAL, "%s: not a directory; create the artifact store first",
                          opts->dir);
    const char *bind = opts->bind ? opts->bind : "tcp://127.0.0.1:*";
    bool curve = opts->curve && opts->curve->on;
    int rc = curve ? lb_xfer_curve_check(err) : 0;
    if (rc)
        return rc;
    if (!curve && !opts->insecure && !lb_xfer_endpoint_loopback(bind))
        return lb_err_set(err, LB_EINVAL,
                          "--artifact-bind %s is not loopback and CURVE is off: anyone who "
                          "reaches the port could read and offer artifacts; give --curve-dir "
                          "DIR (keys from `lowbit keygen`), or --insecure on a trusted network",
                          bind);
    lb_xfer_server *s = calloc(1, sizeof *s);
    if (!s)
        return lb_err_set(err, LB_ENOMEM, "artifact server: out of memory");
    pthread_mutex_init(&s->mu, NULL);
    s->dir = strdup(opts->dir);
    s->suffix = strdup(opts->suffix ? opts->suffix : ".safetensors");
    s->max_bytes = opts->max_bytes ? opts->max_bytes : ((uint64_t)64 << 30);
    s->content_ids = opts->content_ids;
    s->validate = opts->validate;
    s->validate_user = opts->validate_user;
    s->log = opts->log;
    s->log_user = opts->log_user;
    s->authorize = opts->authorize;
    s->authorize_user = opts->authorize_user;
    if (!s->dir || !s->suffix) {
        rc = lb_err_set(err, LB_ENOMEM, "artifact server: out of memory");
        goto fail;
    }
    if (strchr(s->suffix, '/')) {
        rc = lb_err_set(err, LB_EINVAL, "artifact server: suffix '%s' must not contain '/'",
                        s->suffix);
        goto fail;
    }
    s->ctx = zmq_ctx_new();
    if (!s->ctx) {
        rc = lb_err_set(err, LB_ENET, "artifact server: zmq_ctx_new failed (%s)",
                        zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (curve && (rc = curve_setup(s, opts->curve, bind, err)))
        goto fail;
    if (!s->sock)
        s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
    int linger = 0;
    /* CURVE wraps each frame in a MESSAGE command (flags, nonce, MAC), which
     * libzmq counts against ZMQ_MAXMSGSIZE; the payload bound stays exact
     * (lb_xfer_payload_check) */
    int64_t maxmsg = (int64_t)LB_XFER_FRAME + (curve ? LB_XFER_CURVE_SLACK : 0);
    if (!s->sock ||
        (rc = ZMQ_CHECK(zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger), err, bind)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg), err,
                        bind))) {
        if (!rc)
            rc = lb_err_set(err, LB_ENET, "artifact server: zmq_socket failed (%s)",
                            zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_bind(s->sock, bind) != 0) {
        rc = lb_err_set(err, LB_ENET,
                        "%s: cannot bind the artifact server (%s); pick another "
                        "endpoint or free the port",
                        bind, zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t elen = sizeof s->endpoint;
    if ((rc = ZMQ_CHECK(zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &elen), err, bind)))
        goto fail;
    if (pthread_create(&s->thread, NULL, server_main, s) != 0) {
        rc = lb_err_set(err, LB_ENOMEM, "artifact server: cannot start its thread");
        goto fail;
    }
    s->running = true;
    *out = s;
    return 0;
fail:
    server_free(s);
    return rc;
}

const char *lb_xfer_server_endpoint(const lb_xfer_server *s)
{
    return s->endpoint;
}

void lb_xfer_server_stats(lb_xfer_server *s, lb_xfer_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}

void lb_xfer_server_stop(lb_xfer_server **sp)
{
    if (!sp || !*sp)
        return;
    lb_xfer_server *s = *sp;
    if (s->running) {
        /* Blocking calls in the server thread return ETERM; it closes its socket. */
        zmq_ctx_shutdown(s->ctx);
        pthread_join(s->thread, NULL);
    }
    server_free(s);
    *sp = NULL;
}
