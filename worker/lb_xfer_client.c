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
};

static void client_close_socket(lb_xfer_client *c)
{
    if (c->sock)
        zmq_close(c->sock);
    c->sock = NULL;
}

static int client_open_socket(lb_xfer_client *c, lb_err *err)
{
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        return lb_err_set(err, LB_ENET, "%s: zmq_socket failed (%s)", c->endpoint,
                          zmq_strerror(zmq_errno()));
    int linger = 0;
    int64_t maxmsg = (int64_t)LB_XFER_FRAME;
    int rc = 0;
    if ((rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger), err,
                        c->endpoint)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &c->timeout_ms, sizeof c->timeout_ms),
                        err, c->endpoint)) ||
        (rc = ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg), err,
                        c->endpoint)))
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
    free(c);
    *cp = NULL;
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
        if (lb_xfer_send_msg(c->sock, NULL, h, payload, err, c->endpoint) != 0) {
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
            zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
            int n = zmq_poll(&it, 1, (long)(left < 2000 ? left : 2000));
            if (n < 0 && zmq_errno() == EINTR)
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
                      "server running?",
                      c->endpoint, (double)c->timeout_ms / 1000.0);
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
