/* lb_xfer: ZeroMQ artifact server and client (see lb_xfer.h). */
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

static_assert(LB_XFER_HDR_SIZE == 4 + 2 + 2 + 4 + 4 + 8 + 8 + 32 + LB_XFER_ID_LEN,
              "header layout: magic, version, cmd, status, nframes, seq, size, sha256, id");
static_assert(LB_XFER_FRAME <= ((size_t)1 << 30), "frames stay far below zmq limits");

static const char LB_XFER_MAGIC[4] = {'L', 'B', 'X', 'F'};

/* Checks a zmq call; records where it failed. */
#define ZMQ_CHECK(call, err, what)                                                                 \
    ((call) == -1 ? lb_err_set((err), LB_ENET, "%s: %s failed (%s) [%s:%d]", (what), #call,        \
                               zmq_strerror(zmq_errno()), __FILE__, __LINE__)                      \
                  : 0)

/* ------------------------------------------------------------------ header */

void lb_xfer_hdr_encode(const lb_xfer_hdr *h, uint8_t buf[LB_XFER_HDR_SIZE])
{
    memset(buf, 0, LB_XFER_HDR_SIZE);
    memcpy(buf, LB_XFER_MAGIC, 4);
    buf[4] = (uint8_t)(h->version & 0xff);
    buf[5] = (uint8_t)(h->version >> 8);
    buf[6] = (uint8_t)(h->cmd & 0xff);
    buf[7] = (uint8_t)(h->cmd >> 8);
    lb_io_put_le32(buf + 8, (uint32_t)h->status);
    lb_io_put_le32(buf + 12, h->nframes);
    lb_io_put_le64(buf + 16, h->seq);
    lb_io_put_le64(buf + 24, h->size);
    memcpy(buf + 32, h->sha256, 32);
    memcpy(buf + 64, h->id, strnlen(h->id, LB_XFER_ID_LEN));
}

bool lb_xfer_id_valid(const char *id)
{
    if (!id || strlen(id) != LB_XFER_ID_LEN)
        return false;
    for (int i = 0; i < LB_XFER_ID_LEN; i++) {
        char ch = id[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

int lb_xfer_hdr_decode(const void *buf, size_t n, lb_xfer_hdr *h, lb_err *err)
{
    memset(h, 0, sizeof *h);
    const uint8_t *b = buf;
    if (n != LB_XFER_HDR_SIZE)
        return lb_err_set(err, LB_EFORMAT,
                          "header frame of %zu bytes, expected %d; is the peer a lowbit "
                          "artifact client/server of the same version?",
                          n, LB_XFER_HDR_SIZE);
    if (memcmp(b, LB_XFER_MAGIC, 4) != 0)
        return lb_err_set(err, LB_EFORMAT, "bad magic in header frame; not a lowbit transfer");
    h->version = lb_io_get_le16(b + 4);
    h->cmd = lb_io_get_le16(b + 6);
    if (h->version != LB_XFER_VERSION)
        return lb_err_set(err, LB_EFORMAT,
                          "transfer protocol version %u, this build speaks %d; upgrade the "
                          "older side",
                          (unsigned)h->version, LB_XFER_VERSION);
    h->status = (int32_t)lb_io_get_le32(b + 8);
    h->nframes = lb_io_get_le32(b + 12);
    h->seq = lb_io_get_le64(b + 16);
    h->size = lb_io_get_le64(b + 24);
    memcpy(h->sha256, b + 32, 32);
    memcpy(h->id, b + 64, LB_XFER_ID_LEN);
    h->id[LB_XFER_ID_LEN] = '\0';
    /* The id is either empty (PING, replies) or a full hex id. */
    if (h->id[0] && !lb_xfer_id_valid(h->id))
        return lb_err_set(err, LB_EFORMAT, "artifact id in header is not 64 lower-case hex digits");
    return 0;
}

/* --------------------------------------------------------------- frames */

typedef struct {
    zmq_msg_t *m;
    size_t n, cap;
    bool overflow; /* more frames arrived than cap allowed; they were dropped */
} frames;

static void frames_close(frames *f)
{
    for (size_t i = 0; i < f->n; i++)
        zmq_msg_close(&f->m[i]);
    free(f->m);
    memset(f, 0, sizeof *f);
}

/* Receives one whole multipart message, keeping at most max_frames parts
 * (the rest are drained and dropped, f->overflow set). Returns 0, or -1 with
 * errno (ETERM on shutdown, EAGAIN on timeout). */
static int frames_recv(void *sock, size_t max_frames, frames *f)
{
    memset(f, 0, sizeof *f);
    int more = 1;
    while (more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, 0) == -1) {
            int e = zmq_errno();
            zmq_msg_close(&msg);
            frames_close(f);
            errno = e;
            return -1;
        }
        more = zmq_msg_more(&msg);
        if (f->n >= max_frames) {
            f->overflow = true;
            zmq_msg_close(&msg);
            continue;
        }
        if (f->n == f->cap) {
            size_t cap = f->cap ? f->cap * 2 : 8;
            zmq_msg_t *m = realloc(f->m, cap * sizeof *m);
            if (!m) { /* treat as overflow: the request gets an error reply */
                f->overflow = true;
                zmq_msg_close(&msg);
                continue;
            }
            f->m = m;
            f->cap = cap;
        }
        zmq_msg_init(&f->m[f->n]);
        zmq_msg_move(&f->m[f->n], &msg);
        zmq_msg_close(&msg);
        f->n++;
    }
    return 0;
}

int lb_xfer_payload_check(const lb_xfer_hdr *h, const lb_xfer_span *fr, size_t n,
                          lb_err *err)
{
    if (n != h->nframes)
        return lb_err_set(err, LB_EFORMAT, "header announces %u payload frames, %zu arrived",
                          (unsigned)h->nframes, n);
    uint64_t total = 0;
    lb_sha256 s;
    lb_sha256_init(&s);
    for (size_t i = 0; i < n; i++) {
        size_t len = fr[i].len;
        if (len > LB_XFER_FRAME)
            return lb_err_set(err, LB_EFORMAT, "payload frame %zu holds %zu bytes, limit %zu", i,
                              len, LB_XFER_FRAME);
        if (lb_io_add_u64(total, len, &total))
            return lb_err_set(err, LB_EFORMAT, "payload size overflows");
        /* checked before hashing: an announced size that cannot match costs nothing */
        if (total > h->size)
            return lb_err_set(err, LB_EFORMAT,
                              "header announces %llu payload bytes, more arrived",
                              (unsigned long long)h->size);
    }
    if (total != h->size)
        return lb_err_set(err, LB_EFORMAT, "header announces %llu payload bytes, %llu arrived",
                          (unsigned long long)h->size, (unsigned long long)total);
    for (size_t i = 0; i < n; i++)
        lb_sha256_update(&s, fr[i].data, fr[i].len);
    uint8_t d[LB_SHA256_DIGEST];
    lb_sha256_final(&s, d);
    if (memcmp(d, h->sha256, LB_SHA256_DIGEST) != 0)
        return lb_err_set(err, LB_EFORMAT,
                          "payload checksum mismatch (sha256 of %llu received bytes differs "
                          "from the header); the data was corrupted in transit",
                          (unsigned long long)total);
    return 0;
}

/* lb_xfer_payload_check over zmq messages m[0..n). Returns 0, LB_EFORMAT or LB_ENOMEM. */
static int verify_payload(const lb_xfer_hdr *h, zmq_msg_t *m, size_t n, lb_err *err)
{
    if (n != h->nframes) /* before allocating anything for n */
        return lb_xfer_payload_check(h, NULL, n, err);
    lb_xfer_span one, *sp = n <= 1 ? &one : malloc(n * sizeof *sp);
    if (!sp)
        return lb_err_set(err, LB_ENOMEM, "out of memory checking %zu payload frames", n);
    for (size_t i = 0; i < n; i++)
        sp[i] = (lb_xfer_span){zmq_msg_data(&m[i]), zmq_msg_size(&m[i])};
    int rc = lb_xfer_payload_check(h, sp, n, err);
    if (sp != &one)
        free(sp);
    return rc;
}

static uint32_t frame_count(uint64_t size)
{
    return (uint32_t)((size + LB_XFER_FRAME - 1) / LB_XFER_FRAME);
}

/* Sends header + payload (data may be NULL when size == 0) as one multipart
 * message, after `route` (routing id frame) when non-NULL. */
static int send_msg(void *sock, zmq_msg_t *route, const lb_xfer_hdr *h, const void *data,
                    lb_err *err, const char *who)
{
    uint8_t hb[LB_XFER_HDR_SIZE];
    lb_xfer_hdr_encode(h, hb);
    if (route && ZMQ_CHECK(zmq_msg_send(route, sock, ZMQ_SNDMORE), err, who))
        return LB_ENET;
    int more = h->nframes ? ZMQ_SNDMORE : 0;
    if (ZMQ_CHECK(zmq_send(sock, hb, sizeof hb, more), err, who))
        return LB_ENET;
    const uint8_t *p = data;
    uint64_t left = h->size;
    for (uint32_t i = 0; i < h->nframes; i++) {
        size_t len = left < LB_XFER_FRAME ? (size_t)left : LB_XFER_FRAME;
        int flag = i + 1 < h->nframes ? ZMQ_SNDMORE : 0;
        if (ZMQ_CHECK(zmq_send(sock, p, len, flag), err, who))
            return LB_ENET;
        p += len;
        left -= len;
    }
    return 0;
}

static void sha_of(const void *data, size_t n, uint8_t out[32])
{
    lb_sha256 s;
    lb_sha256_init(&s);
    lb_sha256_update(&s, data, n);
    lb_sha256_final(&s, out);
}

/* Writes frames m[0..n) to path atomically: unique tmp in the same directory,
 * fsync, validate (optional), rename, fsync the directory. */
static int write_frames_atomic(const char *path, zmq_msg_t *m, size_t n, const char *id,
                               lb_xfer_validate_fn validate, void *user, lb_err *err)
{
    static unsigned counter;
    size_t plen = strlen(path) + 64;
    char *tmp = malloc(plen);
    if (!tmp)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    snprintf(tmp, plen, "%s.%ld.%u.tmp", path, (long)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = lb_err_set(err, LB_EIO, "%s: cannot create (%s); check the artifact directory", tmp,
                        strerror(errno));
        goto done;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        const uint8_t *p = zmq_msg_data(&m[i]);
        size_t left = zmq_msg_size(&m[i]);
        while (left) {
            ssize_t w = write(fd, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = lb_err_set(err, LB_EIO, "%s: write failed (%s); check free disk space", tmp,
                                strerror(errno));
                break;
            }
            p += w;
            left -= (size_t)w;
        }
    }
    if (!rc && fsync(fd) != 0)
        rc = lb_err_set(err, LB_EIO, "%s: fsync failed (%s)", tmp, strerror(errno));
    if (close(fd) != 0 && !rc)
        rc = lb_err_set(err, LB_EIO, "%s: close failed (%s)", tmp, strerror(errno));
    if (!rc && validate)
        rc = validate(tmp, id, user, err);
    if (!rc && rename(tmp, path) != 0)
        rc = lb_err_set(err, LB_EIO, "%s: rename failed (%s)", path, strerror(errno));
    if (!rc)
        rc = lb_io_fsync_parent(path, err);
    if (rc)
        unlink(tmp);
done:
    free(tmp);
    return rc;
}

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
    sha_of(e->msg, len, h.sha256);
    lb_err ignored;
    return send_msg(s->sock, route, &h, e->msg, &ignored, "artifact server");
}

/* Hash of a whole file (mapped). */
static int file_sha(const char *path, uint8_t d[32], uint64_t *size, lb_err *err)
{
    const void *map = NULL;
    size_t n = 0;
    int rc = lb_io_map(path, &map, &n, err);
    if (rc)
        return rc;
    sha_of(map, n, d);
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
    int rc = verify_payload(h, payload, n, err);
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
    rc = write_frames_atomic(path, payload, n, h->id, s->validate, s->validate_user, err);
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
                         .nframes = frame_count(*n)};
    memcpy(rep->id, req->id, sizeof rep->id);
    sha_of(*map, *n, rep->sha256);
done:
    free(path);
    return rc;
}

/* Handles one request; returns -1 only when the socket is shutting down. */
static int serve_one(lb_xfer_server *s, frames *f)
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
    if (f->n >= 2) {
        const char *pa = zmq_msg_gets(&f->m[1], "Peer-Address");
        if (pa)
            snprintf(peer, sizeof peer, "%s", pa);
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
        rc = handle_put(s, &h, f->m + 2, f->n - 2, &err);
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
        send_msg(s->sock, route, &get_rep, map, &err, "artifact server");
    } else {
        lb_xfer_hdr ok = {.version = LB_XFER_VERSION, .cmd = h.cmd, .seq = h.seq};
        memcpy(ok.id, h.id, sizeof ok.id);
        sha_of(NULL, 0, ok.sha256);
        send_msg(s->sock, route, &ok, NULL, &err, "artifact server");
    }
    if (map)
        lb_io_unmap(map, map_n);
    return 0;
}

static void *server_main(void *arg)
{
    lb_xfer_server *s = arg;
    /* Enough frames for the largest accepted payload, plus route and header. */
    size_t max_frames = (size_t)(s->max_bytes / LB_XFER_FRAME) + 3;
    for (;;) {
        frames f;
        if (frames_recv(s->sock, max_frames, &f) != 0) {
            if (errno == ETERM)
                break;
            continue; /* EINTR and the like */
        }
        serve_one(s, &f);
        frames_close(&f);
    }
    zmq_close(s->sock);
    s->sock = NULL;
    return NULL;
}

static void server_free(lb_xfer_server *s)
{
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx)
        zmq_ctx_term(s->ctx);
    pthread_mutex_destroy(&s->mu);
    free(s->dir);
    free(s->suffix);
    free(s);
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
    int rc = 0;
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
    s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
    int linger = 0;
    int64_t maxmsg = (int64_t)LB_XFER_FRAME;
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

/* ------------------------------------------------------------ validator */

int lb_xfer_validate_artifact(const char *path, const char *id, void *user, lb_err *err)
{
    (void)user; /* messages name no path: the caller prefixes the artifact id */
    lb_st *st = NULL;
    int rc = lb_st_open(&st, path, err);
    if (rc)
        return rc == LB_ENOMEM ? rc : LB_EFORMAT;
    const char *own = lb_st_metadata_get(st, "lowbit.artifact");
    const char *sum = lb_st_metadata_get(st, "lowbit.sha256");
    if (!own || strcmp(own, id) != 0 || !sum) {
        rc = lb_err_set(err, LB_EFORMAT, "content names another artifact (lowbit.artifact)");
        goto done;
    }
    lb_sha256 h;
    lb_sha256_init(&h);
    for (int64_t i = 0; i < lb_st_count(st); i++) {
        const lb_st_tensor *t = lb_st_at(st, i);
        lb_sha256_update(&h, t->data, t->nbytes);
    }
    uint8_t d[LB_SHA256_DIGEST];
    char hex[LB_SHA256_HEX];
    lb_sha256_final(&h, d);
    lb_sha256_to_hex(d, hex);
    if (strcmp(hex, sum) != 0)
        rc = lb_err_set(err, LB_EFORMAT, "tensor data checksum mismatch (lowbit.sha256)");
done:
    lb_st_free(&st);
    return rc;
}

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
 * timeout and retries on a fresh socket (lazy pirate). OUT: reply frames f
 * (header first) and decoded header *rh. Returns 0 (reply status may be < 0),
 * LB_ENET (no answer), LB_EFORMAT (malformed reply). */
static int request(lb_xfer_client *c, lb_xfer_hdr *h, const void *payload, frames *f,
                   lb_xfer_hdr *rh, lb_err *err)
{
    memset(f, 0, sizeof *f);
    h->version = LB_XFER_VERSION;
    for (int attempt = 0; attempt <= c->retries; attempt++) {
        int rc;
        if (!c->sock && (rc = client_open_socket(c, err)))
            return rc;
        h->seq = ++c->seq;
        if (send_msg(c->sock, NULL, h, payload, err, c->endpoint) != 0) {
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
            if (frames_recv(c->sock, max_frames, f) != 0)
                break;
            if (f->n < 1 || f->overflow) {
                frames_close(f);
                return lb_err_set(err, LB_EFORMAT,
                                  "%s: malformed reply (no header or too many "
                                  "frames)",
                                  c->endpoint);
            }
            if ((rc =
                     lb_xfer_hdr_decode(zmq_msg_data(&f->m[0]), zmq_msg_size(&f->m[0]), rh, err))) {
                frames_close(f);
                {
                    lb_err_prefix(err, "%s: malformed reply", c->endpoint);
                    return rc;
                }
            }
            if (rh->seq != h->seq) { /* a late answer to an earlier attempt */
                frames_close(f);
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
static int reply_status(lb_xfer_client *c, const lb_xfer_hdr *rh, frames *f, lb_err *err)
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
    frames f;
    int rc = request(c, &h, NULL, &f, &rh, err);
    if (!rc)
        rc = reply_status(c, &rh, &f, err);
    frames_close(&f);
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
    frames f;
    int rc = request(c, &h, NULL, &f, &rh, err);
    if (!rc) {
        if (rh.status == LB_ENOTFOUND)
            rc = 0;
        else if (!(rc = reply_status(c, &rh, &f, err)))
            *present = true;
    }
    frames_close(&f);
    return rc;
}

int lb_xfer_put(lb_xfer_client *c, const char *id, const void *data, size_t n, lb_err *err)
{
    if (!lb_xfer_id_valid(id))
        return lb_err_set(err, LB_EINVAL, "artifact id '%s' is not 64 lower-case hex digits",
                          id ? id : "(null)");
    if (n && !data)
        return lb_err_set(err, LB_EINVAL, "PUT %s: no data", id);
    lb_xfer_hdr h = {.cmd = LB_XFER_PUT, .size = n, .nframes = frame_count(n)};
    memcpy(h.id, id, LB_XFER_ID_LEN + 1);
    sha_of(data, n, h.sha256);
    lb_xfer_hdr rh;
    frames f;
    int rc = request(c, &h, data, &f, &rh, err);
    if (!rc)
        rc = reply_status(c, &rh, &f, err);
    frames_close(&f);
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
static int get_frames(lb_xfer_client *c, const char *id, frames *f, lb_xfer_hdr *rh, lb_err *err)
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
    if ((rc = verify_payload(rh, f->m + 1, f->n - 1, err))) {
        lb_err_prefix(err, "%s: GET %s", c->endpoint, id);
        goto fail;
    }
    return 0;
fail:
    frames_close(f);
    return rc;
}

int lb_xfer_get(lb_xfer_client *c, const char *id, void **data, size_t *n, lb_err *err)
{
    *data = NULL;
    *n = 0;
    frames f;
    lb_xfer_hdr rh;
    int rc = get_frames(c, id, &f, &rh, err);
    if (rc)
        return rc;
    if (rh.size > SIZE_MAX) {
        frames_close(&f);
        return lb_err_set(err, LB_ENOMEM, "%s: GET %s: too large for this host", c->endpoint, id);
    }
    uint8_t *buf = NULL;
    if (rh.size) {
        buf = malloc((size_t)rh.size);
        if (!buf) {
            frames_close(&f);
            return lb_err_set(err, LB_ENOMEM, "%s: GET %s: out of memory for %llu bytes",
                              c->endpoint, id, (unsigned long long)rh.size);
        }
        size_t off = 0;
        for (size_t i = 1; i < f.n; i++) {
            memcpy(buf + off, zmq_msg_data(&f.m[i]), zmq_msg_size(&f.m[i]));
            off += zmq_msg_size(&f.m[i]);
        }
    }
    frames_close(&f);
    *data = buf;
    *n = (size_t)rh.size;
    return 0;
}

int lb_xfer_get_file(lb_xfer_client *c, const char *id, const char *path, lb_err *err)
{
    frames f;
    lb_xfer_hdr rh;
    int rc = get_frames(c, id, &f, &rh, err);
    if (rc)
        return rc;
    rc = write_frames_atomic(path, f.m + 1, f.n - 1, id, NULL, NULL, err);
    frames_close(&f);
    return rc;
}
