/* lb_xfer: the ZeroMQ data plane. Content-addressed artifacts (Hessians, block
 * activations, quantized linears, weights) move between a server that owns a
 * directory of artifacts and clients that GET or PUT them by id.
 *
 * Wire format, version 1 (every integer little-endian):
 *   request  (client DEALER -> server ROUTER):  [header][payload frame]*
 *   reply    (server -> client):                [header][payload frame]*
 *                                          or   [header status<0][one-line message]
 * The header is one 128-byte frame (lb_xfer_hdr, encoded by lb_xfer_hdr_encode):
 *   magic "LBXF", version, command, status, seq (echoed in the reply), nframes,
 *   size (payload bytes), sha256 of the whole payload, id (64 lower-case hex).
 * The payload is split into frames of at most LB_XFER_FRAME bytes (4 MiB), so a
 * multi-GiB tensor never needs one giant zmq message frame. The checksum covers
 * the whole payload and is verified by the receiver before anything is written
 * to the store or returned to the caller.
 *
 * Flags: in a request the header's status field carries flags (replies: the
 * status). LB_XFER_F_CLAIM on a PUT: the frame after the header is the lease
 * claim (lb_xfer_client_set_claim; at most LB_XFER_CLAIM_MAX printable bytes),
 * not part of the payload (nframes, size and sha256 cover the payload only).
 *
 * CURVE (lb_xfer_curve.c, docs/data-plane.md): with a server key the ROUTER is
 * a CURVE server and a ZAP handler on inproc://zeromq.zap.01 (in the server
 * thread) admits only client public keys from the allowlist, setting the ZAP
 * user id to the key's name; clients set the server's public key and their own
 * key pair. libzmq's own CURVE (zmq_has("curve")) does the cryptography.
 *
 * Caveat: zmq delivers a multipart message atomically, so while one transfer is
 * being received its frames sit in the receiver's zmq queue together; lb_xfer
 * itself never copies the payload into one contiguous buffer except where the
 * caller asks for one (lb_xfer_get). */
#ifndef LB_XFER_H
#define LB_XFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"

#define LB_XFER_VERSION 1
#define LB_XFER_HDR_SIZE 128
#define LB_XFER_FRAME ((size_t)4 << 20)
#define LB_XFER_ID_LEN 64
#define LB_XFER_F_CLAIM 1       /* request flag: a claim frame follows the header */
#define LB_XFER_CLAIM_MAX 512   /* bytes of a claim frame */
#define LB_XFER_KEY_LEN 40      /* Z85 text of a 32-byte CURVE key */
#define LB_XFER_KEYNAME_MAX 64  /* [A-Za-z0-9._-]{1,64}: a key's name (its file stem) */

enum lb_xfer_cmd {
    LB_XFER_PING = 1, /* reply: status 0, no payload */
    LB_XFER_GET = 2,  /* id -> reply carries size, sha256 and the payload frames */
    LB_XFER_PUT = 3,  /* id, size, sha256 + payload frames -> reply status */
    LB_XFER_HAS = 4,  /* id -> status 0 (present) or LB_ENOTFOUND */
};

/* One header frame, decoded. */
typedef struct {
    uint16_t version;
    uint16_t cmd;                /* enum lb_xfer_cmd */
    int32_t status;              /* replies: 0 or a negative LB_E* code;
                                    requests: flags (LB_XFER_F_CLAIM) */
    uint64_t seq;                /* request number, echoed by the reply */
    uint32_t nframes;            /* payload frames that follow */
    uint64_t size;               /* payload bytes */
    uint8_t sha256[32];          /* SHA-256 of the whole payload */
    char id[LB_XFER_ID_LEN + 1]; /* NUL-terminated */
} lb_xfer_hdr;

/* Encodes h into buf[LB_XFER_HDR_SIZE] (magic and version set here). */
void lb_xfer_hdr_encode(const lb_xfer_hdr *h, uint8_t buf[LB_XFER_HDR_SIZE]);

/* Decodes a header frame of n bytes. Returns 0, or LB_EFORMAT with a one-line
 * message (short frame, bad magic, unsupported version, id not 64 hex or empty
 * where allowed). The command is not checked here. OUT: *h. */
int lb_xfer_hdr_decode(const void *buf, size_t n, lb_xfer_hdr *h, lb_err *err);

/* One received payload frame. */
typedef struct {
    const void *data;
    size_t len;
} lb_xfer_span;

/* Checks the payload frames[0..n) of a message against its decoded header:
 * frame count, the per-frame bound LB_XFER_FRAME, total size and SHA-256 (the
 * hash only once the sizes agree). Pure (no I/O): both receive paths call it
 * before storing or returning anything, and tests/fuzz/fuzz_xfer_frame.c
 * fuzzes it with lb_xfer_hdr_decode. Returns 0 or LB_EFORMAT (one line). */
int lb_xfer_payload_check(const lb_xfer_hdr *h, const lb_xfer_span *frames, size_t n,
                          lb_err *err);

/* True when id is exactly 64 lower-case hex digits (so it is safe as a file name). */
bool lb_xfer_id_valid(const char *id);

/* ---- CURVE keys (lb_xfer_curve.c) ---- */

/* One authorized client: the name is the ZAP user id the server sees. */
typedef struct {
    char name[LB_XFER_KEYNAME_MAX + 1];
    char pub[LB_XFER_KEY_LEN + 1];
} lb_xfer_peer_key;

/* One side's CURVE settings (on == false: plain TCP). Secret keys live only
 * here and in the zmq socket; lb_xfer_curve_clear wipes them. */
typedef struct {
    bool on;
    char server_pub[LB_XFER_KEY_LEN + 1];
    char server_sec[LB_XFER_KEY_LEN + 1];          /* server side only */
    char client_name[LB_XFER_KEYNAME_MAX + 1];     /* client side only */
    char client_pub[LB_XFER_KEY_LEN + 1], client_sec[LB_XFER_KEY_LEN + 1];
    lb_xfer_peer_key *clients;                     /* server side: the allowlist */
    size_t nclients;
} lb_xfer_curve;

/* 0 when this libzmq has CURVE (zmq_has("curve")); else LB_EINVAL with one
 * line saying so and what to do. */
int lb_xfer_curve_check(lb_err *err);

/* Writes DIR/NAME.pub (mode 0644) and DIR/NAME.key (mode 0600, the secret) as
 * Z85 text made by zmq_curve_keypair. Refuses (LB_ESTATE) when either exists;
 * LB_EINVAL for a bad name or no CURVE; LB_EIO. Messages never hold a key. */
int lb_xfer_keygen(const char *dir, const char *name, lb_err *err);

/* Reads one Z85 key file (40 characters, optional trailing newline). A secret
 * key file must not be readable by group or others. OUT: out. Returns 0,
 * LB_EIO, LB_EFORMAT, LB_EINVAL (mode). Messages name the file, never its bytes. */
int lb_xfer_key_read(const char *path, bool secret, char out[LB_XFER_KEY_LEN + 1], lb_err *err);

/* Server side: the secret key file (NULL: DIR/server.key) and the allowlist
 * directory of NAME.pub files (NULL: DIR/clients). dir may be NULL when both
 * are given. OUT: *out (lb_xfer_curve_clear). */
int lb_xfer_curve_load_server(const char *dir, const char *server_key, const char *clients_dir,
                              lb_xfer_curve *out, lb_err *err);

/* Client side: the server's public key file (NULL: DIR/server.pub) and this
 * client's secret key file (NULL: DIR/NAME.key, NAME default "worker"); the
 * key's name is the file stem. OUT: *out (lb_xfer_curve_clear). */
int lb_xfer_curve_load_client(const char *dir, const char *server_pub, const char *client_key,
                              const char *name, lb_xfer_curve *out, lb_err *err);

/* Frees the allowlist and wipes the secrets. NULL-safe. */
void lb_xfer_curve_clear(lb_xfer_curve *c);

/* True for endpoints only this host can reach: tcp://127.x.x.x, tcp://[::1],
 * tcp://localhost, ipc://, inproc://. The wildcard host (tcp, *) and 0.0.0.0 are not. */
bool lb_xfer_endpoint_loopback(const char *endpoint);

/* ---- server ---- */

/* Decides whether a PUT of artifact id may be stored, before anything is
 * written: peer_key is the client's CURVE key name (ZAP user id; NULL without
 * CURVE), claim the request's claim frame (NULL when it carried none).
 * Returns 0 or an LB_E* code with a one-line message (sent to the client). */
typedef int (*lb_xfer_authorize_fn)(void *user, const char *id, const char *peer_key,
                                    const char *claim, lb_err *err);

/* Checks a received artifact (already written to tmp_path, checksum verified)
 * before it is renamed into the store, and a stored one before it is served.
 * Returns 0 or an LB_E* code with a one-line message. */
typedef int (*lb_xfer_validate_fn)(const char *path, const char *id, void *user, lb_err *err);

typedef struct {
    const char *dir;              /* artifact directory (must exist) */
    const char *bind;             /* NULL: "tcp://127.0.0.1:*" (loopback, ephemeral port) */
    const char *suffix;           /* file name = <id><suffix>; NULL: ".safetensors" */
    uint64_t max_bytes;           /* largest accepted PUT payload; 0: 64 GiB */
    bool content_ids;             /* PUT requires id == sha256(payload) (pure content store) */
    lb_xfer_validate_fn validate; /* optional */
    void *validate_user;
    /* Optional: called from the server thread with one line per rejected
     * request, "<endpoint>: peer <address>: <problem>" (e.g. print it to stderr). */
    void (*log)(void *user, const char *line);
    void *log_user;
    /* CURVE server (curve->on: server_sec and the allowlist are used); NULL
     * or off: plain TCP, which a non-loopback bind refuses unless insecure. */
    const lb_xfer_curve *curve;
    bool insecure;
    lb_xfer_authorize_fn authorize; /* optional: every PUT is asked first */
    void *authorize_user;
} lb_xfer_server_opts;

typedef struct lb_xfer_server lb_xfer_server;

/* Binds and starts the server thread. OUT: *out (stop with lb_xfer_server_stop).
 * Returns 0, LB_EINVAL (bad options, no CURVE in this libzmq, or a non-loopback
 * bind without CURVE and without insecure), LB_ENET (bind failed, names the
 * endpoint), LB_ENOMEM. */
int lb_xfer_server_start(const lb_xfer_server_opts *opts, lb_xfer_server **out, lb_err *err);

/* The endpoint clients connect to, e.g. "tcp://127.0.0.1:41234" (borrowed). */
const char *lb_xfer_server_endpoint(const lb_xfer_server *s);

typedef struct {
    uint64_t requests;    /* messages handled */
    uint64_t ok;          /* requests answered with status 0 */
    uint64_t errors;      /* requests answered with an error */
    uint64_t bytes_in;    /* payload bytes stored */
    uint64_t bytes_out;   /* payload bytes served */
    uint64_t denied;      /* CURVE handshakes refused (key not in the allowlist) */
    uint64_t refused;     /* PUTs refused by the authorize hook */
    char last_error[256]; /* last error reply, prefixed with the peer address */
} lb_xfer_stats;

/* Snapshot of the counters (thread-safe). */
void lb_xfer_server_stats(lb_xfer_server *s, lb_xfer_stats *out);

/* Stops the thread (zmq context shutdown), joins it, closes the socket and
 * terminates the context, so no port or thread outlives the call. NULL-safe;
 * sets *s = NULL. */
void lb_xfer_server_stop(lb_xfer_server **s);

/* Validator for lb_artifact stores: the file must open as safetensors, name its
 * own id in "lowbit.artifact" and its data must hash to "lowbit.sha256". */
int lb_xfer_validate_artifact(const char *path, const char *id, void *user, lb_err *err);

/* ---- client ---- */

typedef struct lb_xfer_client lb_xfer_client;

/* One TCP connect to a tcp://HOST:PORT endpoint, bounded by timeout_ms: a
 * refused or unreachable server fails here at once, where a ZeroMQ request
 * would wait for its whole reply timeout. Other transports pass. Returns 0 or
 * LB_ENET ("<endpoint>: no answer in N s (reason); ..."). */
int lb_xfer_probe(const char *endpoint, int timeout_ms, lb_err *err);

/* A client of the server at endpoint. timeout_ms (> 0) bounds the wait for each
 * reply (plus 1 s per 64 MiB of PUT payload, which the server must hash and
 * fsync first); a request without an answer is re-sent on a fresh socket up to
 * `retries` more times. OUT: *out (lb_xfer_client_free). Returns 0, LB_EINVAL,
 * LB_ENET, LB_ENOMEM. */
int lb_xfer_client_new(const char *endpoint, int timeout_ms, int retries, lb_xfer_client **out,
                       lb_err *err);
void lb_xfer_client_free(lb_xfer_client **c);

/* Talks CURVE from now on (k->on: server_pub and the client key pair; the
 * socket is reopened). Returns 0, LB_EINVAL (no CURVE in this libzmq), LB_ENET. */
int lb_xfer_client_set_curve(lb_xfer_client *c, const lb_xfer_curve *k, lb_err *err);

/* Sends claim (printable, <= LB_XFER_CLAIM_MAX bytes; NULL: none) with every
 * later PUT, e.g. "job=NAME entry=ID worker=ID" for a lease check. Returns 0,
 * LB_EINVAL, LB_ENOMEM. */
int lb_xfer_client_set_claim(lb_xfer_client *c, const char *claim, lb_err *err);

/* Round trip without payload. Returns 0 or LB_ENET ("<endpoint>: no answer in N s; ..."). */
int lb_xfer_ping(lb_xfer_client *c, lb_err *err);

/* Uploads data[0..n) as artifact id. Returns 0 (stored, or already present with
 * the same bytes), LB_ENET (no answer), or the server's error code with its
 * message prefixed by the endpoint (LB_EFORMAT checksum/validation, ...). */
int lb_xfer_put(lb_xfer_client *c, const char *id, const void *data, size_t n, lb_err *err);

/* Uploads the file at path (mapped, not copied). Same returns as lb_xfer_put. */
int lb_xfer_put_file(lb_xfer_client *c, const char *id, const char *path, lb_err *err);

/* Downloads artifact id; its checksum is verified before return. OUT: *data
 * (malloc'd, caller frees; NULL when *n == 0), *n. Returns 0, LB_ENOTFOUND
 * (server has no such artifact), LB_EFORMAT (checksum mismatch, malformed
 * reply), LB_ENET, LB_ENOMEM. */
int lb_xfer_get(lb_xfer_client *c, const char *id, void **data, size_t *n, lb_err *err);

/* Downloads artifact id into path, atomically (tmp + fsync + rename) and only
 * after the checksum verified. Same returns as lb_xfer_get, plus LB_EIO. */
int lb_xfer_get_file(lb_xfer_client *c, const char *id, const char *path, lb_err *err);

/* Asks whether the server holds artifact id. OUT: *present. Returns 0 or LB_ENET. */
int lb_xfer_has(lb_xfer_client *c, const char *id, bool *present, lb_err *err);

#endif
