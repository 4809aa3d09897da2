/* lb_xfer_frame: header and payload frames of the data plane, the atomic
 * writer and the artifact validator (see lb_xfer.h). */
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

static_assert(LB_XFER_HDR_SIZE == 4 + 2 + 2 + 4 + 4 + 8 + 8 + 32 + LB_XFER_ID_LEN,
              "header layout: magic, version, cmd, status, nframes, seq, size, sha256, id");
static_assert(LB_XFER_FRAME <= ((size_t)1 << 30), "frames stay far below zmq limits");

static const char LB_XFER_MAGIC[4] = {'L', 'B', 'X', 'F'};

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

void lb_xfer_frames_close(lb_xfer_frames *f)
{
    for (size_t i = 0; i < f->n; i++)
        zmq_msg_close(&f->m[i]);
    free(f->m);
    memset(f, 0, sizeof *f);
}

/* Receives one whole multipart message, keeping at most max_frames parts
 * (the rest are drained and dropped, f->overflow set). Returns 0, or -1 with
 * errno (ETERM on shutdown, EAGAIN on timeout). */
int lb_xfer_frames_recv(void *sock, size_t max_frames, lb_xfer_frames *f)
{
    memset(f, 0, sizeof *f);
    int more = 1;
    while (more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, 0) == -1) {
            int e = zmq_errno();
            zmq_msg_close(&msg);
            lb_xfer_frames_close(f);
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
int lb_xfer_verify_payload(const lb_xfer_hdr *h, zmq_msg_t *m, size_t n, lb_err *err)
{
    if (n != h->nframes) /* before allocating anything for n */
        return lb_xfer_payload_check(h, NULL, n, err);
    lb_xfer_span one = {0}, *sp = n <= 1 ? &one : malloc(n * sizeof *sp); /* n == 0: unread */
    if (!sp)
        return lb_err_set(err, LB_ENOMEM, "out of memory checking %zu payload frames", n);
    for (size_t i = 0; i < n; i++)
        sp[i] = (lb_xfer_span){zmq_msg_data(&m[i]), zmq_msg_size(&m[i])};
    int rc = lb_xfer_payload_check(h, sp, n, err);
    if (sp != &one)
        free(sp);
    return rc;
}

uint32_t lb_xfer_frame_count(uint64_t size)
{
    return (uint32_t)((size + LB_XFER_FRAME - 1) / LB_XFER_FRAME);
}

/* Sends header + payload (data may be NULL when size == 0) as one multipart
 * message, after `route` (routing id frame) when non-NULL. */
int lb_xfer_send_msg(void *sock, zmq_msg_t *route, const lb_xfer_hdr *h, const char *claim,
                     const void *data, lb_err *err, const char *who)
{
    uint8_t hb[LB_XFER_HDR_SIZE];
    lb_xfer_hdr_encode(h, hb);
    if (route && ZMQ_CHECK(zmq_msg_send(route, sock, ZMQ_SNDMORE), err, who))
        return LB_ENET;
    int more = h->nframes || claim ? ZMQ_SNDMORE : 0;
    if (ZMQ_CHECK(zmq_send(sock, hb, sizeof hb, more), err, who))
        return LB_ENET;
    if (claim && ZMQ_CHECK(zmq_send(sock, claim, strlen(claim), h->nframes ? ZMQ_SNDMORE : 0),
                           err, who))
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

void lb_xfer_sha(const void *data, size_t n, uint8_t out[32])
{
    lb_sha256 s;
    lb_sha256_init(&s);
    lb_sha256_update(&s, data, n);
    lb_sha256_final(&s, out);
}

/* Writes frames m[0..n) to path atomically: unique tmp in the same directory,
 * fsync, validate (optional), rename, fsync the directory. */
int lb_xfer_write_atomic(const char *path, zmq_msg_t *m, size_t n, const char *id,
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
