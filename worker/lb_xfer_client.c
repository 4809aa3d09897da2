/* lb_xfer_client: the artifact client and the TCP probe (see lb_xfer.h). */
#include "lb_xfer.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "lb_io_util.h"
#include "lb_safetensors.h"
#include "lb_sha256.h"
#include "lb_xfer_priv.h"

/* --------------------------------------------------------------- client */

struct lb_xfer_client {
    void *ctx;
    void *sock;
    char *endpoint;
    int timeout_ms;
    int retries;
    uint64_t seq;
    lb_xfer_curve curve; /* curve.on: a CURVE client (no allowlist here) */
    void *mon;           /* CURVE: PAIR reading the socket's handshake events */
    unsigned nmon;       /* monitor endpoints made (each socket gets its own) */
    char *claim;         /* sent with every PUT (NULL: none) */
};

static void client_close_socket(lb_xfer_client *c)
{
    if (c->mon)
        zmq_close(c->mon);
    c->mon = NULL;
    if (c->sock)
        zmq_close(c->sock);
    c->sock = NULL;
}

/* CURVE keys on the fresh socket, and a monitor so a refused handshake fails
 * the request at once instead of after its whole timeout. */
static int client_curve(lb_xfer_client *c, lb_err *err)
{
    int rc = 0;
    if ((rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, c->curve.server_pub,
                                       LB_XFER_KEY_LEN + 1),
                        err, c->endpoint)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->curve.client_pub,
                                       LB_XFER_KEY_LEN + 1),
                        err, c->endpoint)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->curve.client_sec,
                                       LB_XFER_KEY_LEN + 1),
                        err, c->endpoint)))
        return rc;
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://lb-xfer-mon-%p-%u", (void *)c, c->nmon++);
    int linger = 0;
    if (zmq_socket_monitor(c->sock, ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0 ||
        !(c->mon = zmq_socket(c->ctx, ZMQ_PAIR)) ||
        zmq_setsockopt(c->mon, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(c->mon, ep) != 0)
        return lb_err_set(err, LB_ENET, "%s: cannot monitor the CURVE handshake (%s)",
                          c->endpoint, zmq_strerror(zmq_errno()));
    return 0;
}

/* A handshake failure the monitor reported (drains the events). */
static int client_handshake_failed(lb_xfer_client *c, lb_err *err)
{
    uint16_t ev = 0;
    uint32_t val = 0;
    for (;;) {
        lb_xfer_frames f;
        zmq_pollitem_t it = {.socket = c->mon, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 0) <= 0 || lb_xfer_frames_recv(c->mon, 4, &f) != 0)
            break;
        if (f.n >= 1 && zmq_msg_size(&f.m[0]) >= 6) {
            memcpy(&ev, zmq_msg_data(&f.m[0]), 2);
            memcpy(&val, (const char *)zmq_msg_data(&f.m[0]) + 2, 4);
        }
        lb_xfer_frames_close(&f);
    }
    if (!ev)
        return 0;
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return lb_err_set(err, LB_ENET,
                          "%s: CURVE handshake refused (ZAP status %u): this worker's key '%s' "
                          "is not in the coordinator's allowlist (copy %s.pub into its "
                          "clients directory)",
                          c->endpoint, (unsigned)val, c->curve.client_name,
                          c->curve.client_name);
    return lb_err_set(err, LB_ENET,
                      "%s: CURVE handshake failed (event %u); is server.pub the coordinator's "
                      "key, and is the coordinator running with CURVE?",
                      c->endpoint, (unsigned)ev);
}

static int client_open_socket(lb_xfer_client *c, lb_err *err)
{
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        return lb_err_set(err, LB_ENET, "%s: zmq_socket failed (%s)", c->endpoint,
                          zmq_strerror(zmq_errno()));
    int linger = 0;
    int64_t maxmsg = (int64_t)LB_XFER_FRAME + (c->curve.on ? LB_XFER_CURVE_SLACK : 0);
    int rc = 0;
    if ((rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger), err,
                        c->endpoint)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &c->timeout_ms, sizeof c->timeout_ms),
                        err, c->endpoint)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg), err,
                        c->endpoint)))
        goto fail;
    if (c->curve.on && (rc = client_curve(c, err)))
        goto fail;
    if (zmq_connect(c->sock, c->endpoint) != 0) {
        rc = lb_err_set(err, LB_EINVAL, "%s: cannot connect (%s); expected tcp://host:port",
                        c->endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    return 0;
fail:
    client_close_socket(c);
    return rc;
}

int lb_xfer_client_new(const char *endpoint, int timeout_ms, int retries, lb_xfer_client **out,
                       lb_err *err)
{
    *out = NULL;
    if (!endpoint || !*endpoint || timeout_ms <= 0 || retries < 0)
        return lb_err_set(err, LB_EINVAL,
                          "artifact client: need an endpoint, a timeout > 0 and retries >= 0");
    lb_xfer_client *c = calloc(1, sizeof *c);
    if (!c || !(c->endpoint = strdup(endpoint))) {
        free(c);
        return lb_err_set(err, LB_ENOMEM, "artifact client: out of memory");
    }
    c->timeout_ms = timeout_ms;
    c->retries = retries;
    c->ctx = zmq_ctx_new();
    int rc = 0;
    if (!c->ctx) {
        rc = lb_err_set(err, LB_ENET, "%s: zmq_ctx_new failed (%s)", endpoint,
                        zmq_strerror(zmq_errno()));
        goto fail;
    }
    if ((rc = client_open_socket(c, err)))
        goto fail;
    *out = c;
    return 0;
fail:
    lb_xfer_client_free(&c);
    return rc;
}

void lb_xfer_client_free(lb_xfer_client **cp)
{
    if (!cp || !*cp)
        return;
    lb_xfer_client *c = *cp;
    client_close_socket(c);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    free(c->endpoint);
    free(c->claim);
    lb_xfer_curve_clear(&c->curve);
    free(c);
    *cp = NULL;
}

int lb_xfer_client_set_curve(lb_xfer_client *c, const lb_xfer_curve *k, lb_err *err)
{
    int rc = k && k->on ? lb_xfer_curve_check(err) : 0;
    if (rc)
        return rc;
    lb_xfer_curve_clear(&c->curve);
    if (k && k->on) {
        c->curve = *k;
        c->curve.clients = NULL; /* a client has no allowlist */
        c->curve.nclients = 0;
        memset(c->curve.server_sec, 0, sizeof c->curve.server_sec);
    }
    client_close_socket(c);
    return client_open_socket(c, err);
}

int lb_xfer_client_set_claim(lb_xfer_client *c, const char *claim, lb_err *err)
{
    free(c->claim);
    c->claim = NULL;
    if (!claim)
        return 0;
    size_t n = strlen(claim);
    for (size_t i = 0; i < n; i++)
        if (claim[i] < 32 || claim[i] > 126)
            return lb_err_set(err, LB_EINVAL, "artifact claim must be printable text");
    if (n > LB_XFER_CLAIM_MAX)
        return lb_err_set(err, LB_EINVAL, "artifact claim over %d bytes", LB_XFER_CLAIM_MAX);
    if (!(c->claim = strdup(claim)))
        return lb_err_set(err, LB_ENOMEM, "artifact client: out of memory");
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One TCP connect to a tcp://HOST:PORT endpoint, bounded by timeout_ms: a
 * refused or unreachable server fails here at once, where a ZeroMQ request
 * would wait for its whole reply timeout. Other transports pass. Returns 0 or
 * LB_ENET. */
int lb_xfer_probe(const char *endpoint, int timeout_ms, lb_err *err)
{
    if (strncmp(endpoint, "tcp://", 6))
        return 0;
    char host[256];
    snprintf(host, sizeof host, "%s", endpoint + 6);
    char *colon = strrchr(host, ':');
    if (!colon)
        return 0; /* let ZeroMQ report the malformed endpoint */
    *colon = 0;
    const char *port = colon + 1;
    if (host[0] == '[' && colon > host + 1 && colon[-1] == ']') { /* [v6]:port */
        colon[-1] = 0;
        memmove(host, host + 1, strlen(host));
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g)
        return lb_err_set(err, LB_ENET,
                          "artifact server %s: cannot resolve '%s' (%s); check the "
                          "coordinator's --artifact-endpoint",
                          endpoint, host, gai_strerror(g));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = LB_ENET, why = ETIMEDOUT;
    for (struct addrinfo *a = ai; a && rc; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        a->ai_protocol);
        if (fd < 0) {
            why = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            rc = 0;
        } else if (errno == EINPROGRESS) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int e = 0;
            socklen_t el = sizeof e;
            if (poll(&pf, 1, timeout_ms) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
                rc = 0;
            else
                why = e ? e : ETIMEDOUT;
        } else {
            why = errno;
        }
        close(fd);
    }
    freeaddrinfo(ai);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (rc)
        return lb_err_set(err, LB_ENET,
                          "%s: no answer in %.3g s (%s); is the coordinator's artifact "
                          "server running?",
                          endpoint, el, strerror(why));
    return 0;
}

/* Sends request h (+ payload) and waits for the reply with the same seq, with
 * timeout and retries on a fresh socket (lazy pirate). OUT: reply lb_xfer_frames f
 * (header first) and decoded header *rh. Returns 0 (reply status may be < 0),
 * LB_ENET (no answer), LB_EFORMAT (malformed reply). */
static int request(lb_xfer_client *c, lb_xfer_hdr *h, const void *payload, lb_xfer_frames *f,
                   lb_xfer_hdr *rh, lb_err *err)
{
    memset(f, 0, sizeof *f);
    h->version = LB_XFER_VERSION;
    for (int attempt = 0; attempt <= c->retries; attempt++) {
        int rc;
        if (!c->sock && (rc = client_open_socket(c, err)))
            return rc;
        h->seq = ++c->seq;
        const char *claim = h->cmd == LB_XFER_PUT ? c->claim : NULL;
        h->status = claim ? LB_XFER_F_CLAIM : 0; /* request flags */
        if (lb_xfer_send_msg(c->sock, NULL, h, claim, payload, err, c->endpoint) != 0) {
            client_close_socket(c); /* EAGAIN: peer not taking data */
            continue;
        }
        /* The server hashes, fsyncs and validates before answering: allow 1 s
         * more per 64 MiB moved, so a big transfer is not cut short. */
        int64_t deadline = now_ms() + c->timeout_ms + (int64_t)(h->size >> 26) * 1000;
        for (;;) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                break;
            /* ZeroMQ reconnects silently to a dead server: look every 2 s, so a
             * killed coordinator fails the request at once (the caller re-reads
             * the job's endpoint) instead of after the whole timeout */
            zmq_pollitem_t it[2] = {{.socket = c->sock, .events = ZMQ_POLLIN},
                                    {.socket = c->mon, .events = ZMQ_POLLIN}};
            int n = zmq_poll(it, c->mon ? 2 : 1, (long)(left < 2000 ? left : 2000));
            if (n < 0 && zmq_errno() == EINTR)
                continue;
            if (n > 0 && c->mon && (it[1].revents & ZMQ_POLLIN) &&
                (rc = client_handshake_failed(c, err))) {
                client_close_socket(c);
                return rc;
            }
            if (n > 0 && !(it[0].revents & ZMQ_POLLIN))
                continue;
            if (n == 0 && left > 2000) {
                if (lb_xfer_probe(c->endpoint, 1000, err)) {
                    client_close_socket(c);
                    lb_err_prefix(err, "artifact server went away during a request");
                    return LB_ENET;
                }
                continue;
            }
            if (n <= 0)
                break;
            size_t max_frames = (size_t)((UINT64_C(64) << 30) / LB_XFER_FRAME) + 2;
            if (lb_xfer_frames_recv(c->sock, max_frames, f) != 0)
                break;
            if (f->n < 1 || f->overflow) {
                lb_xfer_frames_close(f);
                return lb_err_set(err, LB_EFORMAT,
                                  "%s: malformed reply (no header or too many "
                                  "frames)",
                                  c->endpoint);
            }
            if ((rc =
                     lb_xfer_hdr_decode(zmq_msg_data(&f->m[0]), zmq_msg_size(&f->m[0]), rh, err))) {
                lb_xfer_frames_close(f);
                {
                    lb_err_prefix(err, "%s: malformed reply", c->endpoint);
                    return rc;
                }
            }
            if (rh->seq != h->seq) { /* a late answer to an earlier attempt */
                lb_xfer_frames_close(f);
                continue;
            }
            return 0;
        }
        client_close_socket(c); /* drop queued requests and stale replies */
    }
    return lb_err_set(err, LB_ENET,
                      "%s: no answer in %g s; is the coordinator's artifact "
                      "server running?%s",
                      c->endpoint, (double)c->timeout_ms / 1000.0,
                      c->curve.on ? " (CURVE: is server.pub its key?)" : "");
}

/* Turns an error reply into the caller's lb_err. */
static int reply_status(lb_xfer_client *c, const lb_xfer_hdr *rh, lb_xfer_frames *f, lb_err *err)
{
    if (rh->status == 0)
        return 0;
    int code = rh->status < 0 && rh->status >= LB_ENET ? rh->status : LB_ENET;
    char msg[256] = "(no message)";
    if (f->n >= 2) {
        size_t len = zmq_msg_size(&f->m[1]);
        if (len >= sizeof msg)
            len = sizeof msg - 1;
        memcpy(msg, zmq_msg_data(&f->m[1]), len);
        msg[len] = '\0';
        for (size_t i = 0; i < len; i++) /* one line, printable */
            if (msg[i] < 32 || msg[i] > 126)
                msg[i] = '?';
    }
    return lb_err_set(err, code, "%s: server: %s", c->endpoint, msg);
}

int lb_xfer_ping(lb_xfer_client *c, lb_err *err)
{
    lb_xfer_hdr h = {.cmd = LB_XFER_PING};
    lb_xfer_hdr rh;
    lb_xfer_frames f;
    int rc = request(c, &h, NULL, &f, &rh, err);
    if (!rc)
        rc = reply_status(c, &rh, &f, err);
    lb_xfer_frames_close(&f);
    return rc;
}

int lb_xfer_has(lb_xfer_client *c, const char *id, bool *present, lb_err *err)
{
    *present = false;
    if (!lb_xfer_id_valid(id))
        return lb_err_set(err, LB_EINVAL, "artifact id '%s' is not 64 lower-case hex digits",
                          id ? id : "(null)");
    lb_xfer_hdr h = {.cmd = LB_XFER_HAS};
    memcpy(h.id, id, LB_XFER_ID_LEN + 1);
    lb_xfer_hdr rh;
    lb_xfer_frames f;
    int rc = request(c, &h, NULL, &f, &rh, err);
    if (!rc) {
        if (rh.status == LB_ENOTFOUND)
            rc = 0;
        else if (!(rc = reply_status(c, &rh, &f, err)))
            *present = true;
    }
    lb_xfer_frames_close(&f);
    return rc;
}

int lb_xfer_put(lb_xfer_client *c, const char *id, const void *data, size_t n, lb_err *err)
{
    if (!lb_xfer_id_valid(id))
        return lb_err_set(err, LB_EINVAL, "artifact id '%s' is not 64 lower-case hex digits",
                          id ? id : "(null)");
    if (n && !data)
        return lb_err_set(err, LB_EINVAL, "PUT %s: no data", id);
    lb_xfer_hdr h = {.cmd = LB_XFER_PUT, .size = n, .nframes = lb_xfer_frame_count(n)};
    memcpy(h.id, id, LB_XFER_ID_LEN + 1);
    lb_xfer_sha(data, n, h.sha256);
    lb_xfer_hdr rh;
    lb_xfer_frames f;
    int rc = request(c, &h, data, &f, &rh, err);
    if (!rc)
        rc = reply_status(c, &rh, &f, err);
    lb_xfer_frames_close(&f);
    return rc;
}

int lb_xfer_put_file(lb_xfer_client *c, const char *id, const char *path, lb_err *err)
{
    const void *map = NULL;
    size_t n = 0;
    int rc = lb_io_map(path, &map, &n, err);
    if (rc)
        return rc;
    rc = lb_xfer_put(c, id, map, n, err);
    lb_io_unmap(map, n);
    return rc;
}

/* GET round trip; on success f holds [hdr][payload...] verified against rh. */
static int get_frames(lb_xfer_client *c, const char *id, lb_xfer_frames *f, lb_xfer_hdr *rh, lb_err *err)
{
    memset(f, 0, sizeof *f);
    if (!lb_xfer_id_valid(id))
        return lb_err_set(err, LB_EINVAL, "artifact id '%s' is not 64 lower-case hex digits",
                          id ? id : "(null)");
    lb_xfer_hdr h = {.cmd = LB_XFER_GET};
    memcpy(h.id, id, LB_XFER_ID_LEN + 1);
    int rc = request(c, &h, NULL, f, rh, err);
    if (rc)
        return rc;
    if ((rc = reply_status(c, rh, f, err)))
        goto fail;
    if (strcmp(rh->id, id) != 0) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: GET %s answered for another id", c->endpoint, id);
        goto fail;
    }
    if ((rc = lb_xfer_verify_payload(rh, f->m + 1, f->n - 1, err))) {
        lb_err_prefix(err, "%s: GET %s", c->endpoint, id);
        goto fail;
    }
    return 0;
fail:
    lb_xfer_frames_close(f);
    return rc;
}

int lb_xfer_get(lb_xfer_client *c, const char *id, void **data, size_t *n, lb_err *err)
{
    *data = NULL;
    *n = 0;
    lb_xfer_frames f;
    lb_xfer_hdr rh;
    int rc = get_frames(c, id, &f, &rh, err);
    if (rc)
        return rc;
    if (rh.size > SIZE_MAX) {
        lb_xfer_frames_close(&f);
        return lb_err_set(err, LB_ENOMEM, "%s: GET %s: too large for this host", c->endpoint, id);
    }
    uint8_t *buf = NULL;
    if (rh.size) {
        buf = malloc((size_t)rh.size);
        if (!buf) {
            lb_xfer_frames_close(&f);
            return lb_err_set(err, LB_ENOMEM, "%s: GET %s: out of memory for %llu bytes",
                              c->endpoint, id, (unsigned long long)rh.size);
        }
        size_t off = 0;
        for (size_t i = 1; i < f.n; i++) {
            memcpy(buf + off, zmq_msg_data(&f.m[i]), zmq_msg_size(&f.m[i]));
            off += zmq_msg_size(&f.m[i]);
        }
    }
    lb_xfer_frames_close(&f);
    *data = buf;
    *n = (size_t)rh.size;
    return 0;
}

int lb_xfer_get_file(lb_xfer_client *c, const char *id, const char *path, lb_err *err)
{
    lb_xfer_frames f;
    lb_xfer_hdr rh;
    int rc = get_frames(c, id, &f, &rh, err);
    if (rc)
        return rc;
    rc = lb_xfer_write_atomic(path, f.m + 1, f.n - 1, id, NULL, NULL, err);
    lb_xfer_frames_close(&f);
    return rc;
}
