/* lb_xfer_priv: what the data plane's translation units (lb_xfer_frame.c,
 * lb_xfer_server.c, lb_xfer_client.c, lb_xfer_curve.c) share; not an API. */
#ifndef LB_XFER_PRIV_H
#define LB_XFER_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "lb_err.h"
#include "lb_xfer.h"

/* Checks a zmq call; records where it failed. */
#define ZMQ_CHECK(call, err, what)                                                                 \
    ((call) == -1 ? lb_err_set((err), LB_ENET, "%s: %s failed (%s) [%s:%d]", (what), #call,        \
                               zmq_strerror(zmq_errno()), __FILE__, __LINE__)                      \
                  : 0)

/* Bytes CURVE adds to a frame on the wire (MESSAGE command: name, flags,
 * 8-byte nonce, 16-byte MAC; rounded up), allowed on top of ZMQ_MAXMSGSIZE. */
#define LB_XFER_CURVE_SLACK 256

/* One received multipart message. */
typedef struct {
    zmq_msg_t *m;
    size_t n, cap;
    bool overflow; /* more frames arrived than cap allowed; they were dropped */
} lb_xfer_frames;

void lb_xfer_frames_close(lb_xfer_frames *f);

/* Receives one whole multipart message, keeping at most max_frames parts
 * (the rest are drained and dropped, f->overflow set). Returns 0, or -1 with
 * errno (ETERM on shutdown, EAGAIN on timeout). */
int lb_xfer_frames_recv(void *sock, size_t max_frames, lb_xfer_frames *f);

/* lb_xfer_payload_check over zmq messages m[0..n). Returns 0, LB_EFORMAT or LB_ENOMEM. */
int lb_xfer_verify_payload(const lb_xfer_hdr *h, zmq_msg_t *m, size_t n, lb_err *err);

/* Payload frames for size bytes. */
uint32_t lb_xfer_frame_count(uint64_t size);

/* Sends [route][header][claim][payload frames] as one multipart message; route
 * (routing id frame) and claim (a PUT's lease claim: set LB_XFER_F_CLAIM in
 * h->status too) only when non-NULL; data may be NULL when h->size == 0. */
int lb_xfer_send_msg(void *sock, zmq_msg_t *route, const lb_xfer_hdr *h, const char *claim,
                     const void *data, lb_err *err, const char *who);

void lb_xfer_sha(const void *data, size_t n, uint8_t out[32]);

/* Writes frames m[0..n) to path atomically: unique tmp in the same directory,
 * fsync, validate (optional), rename, fsync the directory. */
int lb_xfer_write_atomic(const char *path, zmq_msg_t *m, size_t n, const char *id,
                         lb_xfer_validate_fn validate, void *user, lb_err *err);

/* ZAP (RFC 27): answers one request on sock against c's allowlist; the user
 * id of an admitted client is its key name. OUT: denied = the refused public
 * key (Z85) or "" when admitted. Returns 0, or -1 on a socket error (ETERM). */
int lb_xfer_zap_serve(void *sock, const lb_xfer_curve *c, char *denied, size_t dsize);

#endif
