/* lb_xfer over loopback: round trips (small, 20 MiB multi-frame, files),
 * corrupted payloads and malformed frames sent by hand on a raw socket (error
 * reply, nothing stored, server keeps serving), a client facing a lying server
 * (nothing returned or written), a dead server (error within the timeout),
 * content-id and artifact validation, concurrent clients. Every test starts and
 * stops its own server on tcp://127.0.0.1:* and removes its directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <zmq.h>

#include "lb_artifact.h"
#include "lb_io_util.h"
#include "lb_sha256.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"
#include "lb_xfer.h"
#include "lb_xfer_store.h"
#include "lb_time.h"

typedef struct {
    char *dir; /* artifact directory */
    lb_xfer_server *srv;
    lb_xfer_client *cli;
} fixture;

/* Server log lines (written by the server thread, read after a reply). */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_last[400];
static int log_count;

static void log_line(void *user, const char *line)
{
    (void)user;
    pthread_mutex_lock(&log_mu);
    snprintf(log_last, sizeof log_last, "%s", line);
    log_count++;
    pthread_mutex_unlock(&log_mu);
}

static int setup_opts(void **state, bool content_ids, lb_xfer_validate_fn validate)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->dir = lb_test_mkdtemp();
    lb_xfer_server_opts o = {
        .dir = f->dir, .content_ids = content_ids, .validate = validate, .log = log_line};
    pthread_mutex_lock(&log_mu);
    log_last[0] = '\0';
    log_count = 0;
    pthread_mutex_unlock(&log_mu);
    lb_err err = {0};
    if (lb_xfer_server_start(&o, &f->srv, &err))
        fail_msg("server: %s", err.msg);
    assert_int_equal(strncmp(lb_xfer_server_endpoint(f->srv), "tcp://127.0.0.1:", 16), 0);
    if (lb_xfer_client_new(lb_xfer_server_endpoint(f->srv), 5000, 1, &f->cli, &err))
        fail_msg("client: %s", err.msg);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_opts(state, false, NULL);
}

static int setup_content(void **state)
{
    return setup_opts(state, true, NULL);
}

static int setup_validate(void **state)
{
    return setup_opts(state, false, lb_xfer_validate_artifact);
}

static int teardown(void **state)
{
    fixture *f = *state;
    lb_xfer_client_free(&f->cli);
    lb_xfer_server_stop(&f->srv);
    assert_null(f->srv);
    lb_test_rmdir(&f->dir);
    free(f);
    return 0;
}

static void make_id(const char *label, char id[LB_SHA256_HEX])
{
    lb_sha256_hex(label, strlen(label), id);
}

static uint8_t *random_bytes(size_t n, uint64_t seed)
{
    uint8_t *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(lb_test_rand_u64(&seed) >> 56);
    return b;
}

/* Number of entries in dir other than . and .. (stored files and leftovers). */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static char *stored_path(const fixture *f, const char *id)
{
    char name[128];
    snprintf(name, sizeof name, "%s.safetensors", id);
    return lb_io_path_join(f->dir, name);
}

static void roundtrip(fixture *f, size_t n, uint64_t seed)
{
    char id[LB_SHA256_HEX], label[64];
    snprintf(label, sizeof label, "artifact-%zu-%llu", n, (unsigned long long)seed);
    make_id(label, id);
    uint8_t *data = random_bytes(n, seed);
    lb_err err = {0};
    bool present = true;
    assert_int_equal(lb_xfer_has(f->cli, id, &present, &err), 0);
    assert_false(present);
    if (lb_xfer_put(f->cli, id, data, n, &err))
        fail_msg("put: %s", err.msg);
    assert_int_equal(lb_xfer_has(f->cli, id, &present, &err), 0);
    assert_true(present);
    /* Stored bytes are exactly the payload. */
    char *path = stored_path(f, id);
    char *disk = NULL;
    size_t disk_n = 0;
    assert_int_equal(lb_io_read_file(path, UINT64_MAX, &disk, &disk_n, &err), 0);
    assert_int_equal(disk_n, n);
    assert_memory_equal(disk, data, n);
    free(disk);
    free(path);
    void *got = NULL;
    size_t got_n = 0;
    if (lb_xfer_get(f->cli, id, &got, &got_n, &err))
        fail_msg("get: %s", err.msg);
    assert_int_equal(got_n, n);
    assert_memory_equal(got, data, n);
    free(got);
    free(data);
}

static void test_roundtrip_small(void **state)
{
    fixture *f = *state;
    roundtrip(f, 1, 1);
    roundtrip(f, 1000, 2);
    roundtrip(f, 0, 3); /* empty payload: no frames */
    lb_err err = {0};
    assert_int_equal(lb_xfer_ping(f->cli, &err), 0);
    lb_xfer_stats st;
    lb_xfer_server_stats(f->srv, &st);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.bytes_in, 1001);
    assert_int_equal(st.bytes_out, 1001);
}

static void test_roundtrip_multiframe(void **state)
{
    fixture *f = *state;
    /* 5 full 4 MiB frames and a short one. */
    roundtrip(f, ((size_t)20 << 20) + 123, 4);
    lb_xfer_stats st;
    lb_xfer_server_stats(f->srv, &st);
    assert_int_equal(st.bytes_in, ((size_t)20 << 20) + 123);
}

static void test_files_and_put_again(void **state)
{
    fixture *f = *state;
    char id[LB_SHA256_HEX];
    make_id("file", id);
    size_t n = 5u << 20;
    uint8_t *data = random_bytes(n, 9);
    lb_err err = {0};
    char *src = lb_io_path_join(f->dir, "src.bin"), *dst = lb_io_path_join(f->dir, "dst.bin");
    assert_int_equal(lb_io_write_atomic(src, data, n, &err), 0);
    if (lb_xfer_put_file(f->cli, id, src, &err))
        fail_msg("put_file: %s", err.msg);
    if (lb_xfer_get_file(f->cli, id, dst, &err))
        fail_msg("get_file: %s", err.msg);
    char *back = NULL;
    size_t back_n = 0;
    assert_int_equal(lb_io_read_file(dst, UINT64_MAX, &back, &back_n, &err), 0);
    assert_int_equal(back_n, n);
    assert_memory_equal(back, data, n);
    free(back);
    /* Same id, same bytes: fine. Same id, other bytes: refused, old copy kept. */
    assert_int_equal(lb_xfer_put(f->cli, id, data, n, &err), 0);
    data[7] ^= 1;
    assert_int_equal(lb_xfer_put(f->cli, id, data, n, &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "already holds different bytes"));
    assert_non_null(strstr(err.msg, lb_xfer_server_endpoint(f->srv)));
    data[7] ^= 1;
    void *got = NULL;
    size_t got_n = 0;
    assert_int_equal(lb_xfer_get(f->cli, id, &got, &got_n, &err), 0);
    assert_memory_equal(got, data, n);
    free(got);
    /* Missing artifact. */
    char other[LB_SHA256_HEX];
    make_id("missing", other);
    assert_int_equal(lb_xfer_get(f->cli, other, &got, &got_n, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "not in the store"));
    assert_null(got);
    /* Invalid ids never reach the server (path safety). */
    assert_int_equal(lb_xfer_put(f->cli, "../../etc/passwd", data, 4, &err), LB_EINVAL);
    assert_int_equal(lb_xfer_get(f->cli, "ABC", &got, &got_n, &err), LB_EINVAL);
    free(src);
    free(dst);
    free(data);
}

/* ---- raw peer: hand-made messages on a DEALER socket ---- */

typedef struct {
    void *ctx, *sock;
} raw_peer;

static void raw_open(raw_peer *p, const char *endpoint)
{
    p->ctx = zmq_ctx_new();
    p->sock = zmq_socket(p->ctx, ZMQ_DEALER);
    int linger = 0, tmo = 5000;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(p->sock, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(p->sock, endpoint), 0);
}

static void raw_close(raw_peer *p)
{
    zmq_close(p->sock);
    zmq_ctx_term(p->ctx);
}

/* Sends frames[0..n) as one multipart message. */
static void raw_send(raw_peer *p, const void *const *frames, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        assert_true(zmq_send(p->sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

/* Receives a reply; returns its status, copies the message frame (if any). */
static int32_t raw_reply(raw_peer *p, char *msg, size_t cap)
{
    uint8_t hb[LB_XFER_HDR_SIZE + 8];
    int n = zmq_recv(p->sock, hb, sizeof hb, 0);
    if (n < 0)
        fail_msg("no reply from the server (%s)", zmq_strerror(zmq_errno()));
    lb_xfer_hdr h;
    lb_err err = {0};
    assert_int_equal(lb_xfer_hdr_decode(hb, (size_t)n, &h, &err), 0);
    msg[0] = '\0';
    int more = 0;
    size_t ml = sizeof more;
    zmq_getsockopt(p->sock, ZMQ_RCVMORE, &more, &ml);
    while (more) {
        int k = zmq_recv(p->sock, msg, cap - 1, 0);
        assert_true(k >= 0);
        msg[(size_t)k < cap - 1 ? (size_t)k : cap - 1] = '\0';
        zmq_getsockopt(p->sock, ZMQ_RCVMORE, &more, &ml);
    }
    return h.status;
}

static void put_header(lb_xfer_hdr *h, const char *id, const void *data, size_t n)
{
    memset(h, 0, sizeof *h);
    h->version = LB_XFER_VERSION;
    h->cmd = LB_XFER_PUT;
    h->seq = 77;
    h->size = n;
    h->nframes = 1;
    memcpy(h->id, id, LB_XFER_ID_LEN + 1);
    lb_sha256 s;
    lb_sha256_init(&s);
    lb_sha256_update(&s, data, n);
    lb_sha256_final(&s, h->sha256);
}

static void test_corrupted_payload_rejected(void **state)
{
    fixture *f = *state;
    char id[LB_SHA256_HEX];
    make_id("corrupt", id);
    size_t n = 4096;
    uint8_t *data = random_bytes(n, 5);
    lb_xfer_hdr h;
    put_header(&h, id, data, n);
    uint8_t hb[LB_XFER_HDR_SIZE];
    lb_xfer_hdr_encode(&h, hb);
    data[1234] ^= 0x10; /* flipped in transit */
    raw_peer p;
    raw_open(&p, lb_xfer_server_endpoint(f->srv));
    const void *fr[] = {hb, data};
    size_t ln[] = {sizeof hb, n};
    raw_send(&p, fr, ln, 2);
    char msg[512];
    assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
    assert_non_null(strstr(msg, "checksum mismatch"));
    assert_non_null(strstr(msg, id));
    assert_int_equal(dir_entries(f->dir), 0); /* nothing stored, no temp file left */
    lb_xfer_stats st;
    lb_xfer_server_stats(f->srv, &st);
    assert_int_equal(st.errors, 1);
    assert_non_null(strstr(st.last_error, "peer 127.0.0.1"));
    /* The log line names the server, the peer and the problem, on one line. */
    pthread_mutex_lock(&log_mu);
    assert_int_equal(log_count, 1);
    assert_non_null(strstr(log_last, lb_xfer_server_endpoint(f->srv)));
    assert_non_null(strstr(log_last, ": peer 127.0.0.1"));
    assert_non_null(strstr(log_last, "checksum mismatch"));
    assert_null(strchr(log_last, '\n'));
    pthread_mutex_unlock(&log_mu);
    raw_close(&p);
    free(data);
}

static void test_malformed_frames(void **state)
{
    fixture *f = *state;
    raw_peer p;
    raw_open(&p, lb_xfer_server_endpoint(f->srv));
    char msg[512], id[LB_SHA256_HEX];
    make_id("malformed", id);
    uint8_t data[100] = {1, 2, 3};
    lb_xfer_hdr h;
    uint8_t hb[LB_XFER_HDR_SIZE];

    /* short header */
    {
        const void *fr[] = {"LBXF"};
        size_t ln[] = {4};
        raw_send(&p, fr, ln, 1);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
        assert_non_null(strstr(msg, "header frame of 4 bytes"));
    }
    /* empty frame */
    {
        const void *fr[] = {""};
        size_t ln[] = {0};
        raw_send(&p, fr, ln, 1);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
    }
    /* wrong version */
    put_header(&h, id, data, sizeof data);
    lb_xfer_hdr_encode(&h, hb);
    hb[4] = 9;
    {
        const void *fr[] = {hb, data};
        size_t ln[] = {sizeof hb, sizeof data};
        raw_send(&p, fr, ln, 2);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
        assert_non_null(strstr(msg, "version 9"));
    }
    /* bad magic */
    lb_xfer_hdr_encode(&h, hb);
    hb[0] = 'X';
    {
        const void *fr[] = {hb};
        size_t ln[] = {sizeof hb};
        raw_send(&p, fr, ln, 1);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
        assert_non_null(strstr(msg, "magic"));
    }
    /* unknown command */
    h.cmd = 99;
    lb_xfer_hdr_encode(&h, hb);
    {
        const void *fr[] = {hb};
        size_t ln[] = {sizeof hb};
        raw_send(&p, fr, ln, 1);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EINVAL);
        assert_non_null(strstr(msg, "unknown command 99"));
    }
    /* PUT announcing 2 frames, sending 1; and announcing more bytes than sent */
    put_header(&h, id, data, sizeof data);
    h.nframes = 2;
    lb_xfer_hdr_encode(&h, hb);
    {
        const void *fr[] = {hb, data};
        size_t ln[] = {sizeof hb, sizeof data};
        raw_send(&p, fr, ln, 2);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
        assert_non_null(strstr(msg, "2 payload frames, 1 arrived"));
    }
    put_header(&h, id, data, sizeof data);
    h.size = 1000;
    lb_xfer_hdr_encode(&h, hb);
    {
        const void *fr[] = {hb, data};
        size_t ln[] = {sizeof hb, sizeof data};
        raw_send(&p, fr, ln, 2);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
        assert_non_null(strstr(msg, "1000 payload bytes, 100 arrived"));
    }
    /* non-hex id (e.g. a path) */
    put_header(&h, id, data, sizeof data);
    lb_xfer_hdr_encode(&h, hb);
    memcpy(hb + 64, "../../../../etc/passwd", 22);
    {
        const void *fr[] = {hb, data};
        size_t ln[] = {sizeof hb, sizeof data};
        raw_send(&p, fr, ln, 2);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), LB_EFORMAT);
        assert_non_null(strstr(msg, "64 lower-case hex"));
    }
    /* A well-formed PUT on the same connection still works afterwards. */
    put_header(&h, id, data, sizeof data);
    lb_xfer_hdr_encode(&h, hb);
    {
        const void *fr[] = {hb, data};
        size_t ln[] = {sizeof hb, sizeof data};
        raw_send(&p, fr, ln, 2);
        assert_int_equal(raw_reply(&p, msg, sizeof msg), 0);
    }
    raw_close(&p);
    lb_err err = {0};
    assert_int_equal(lb_xfer_ping(f->cli, &err), 0);
    assert_int_equal(dir_entries(f->dir), 1);
    lb_xfer_stats st;
    lb_xfer_server_stats(f->srv, &st);
    assert_int_equal(st.errors, 8);
    assert_int_equal(st.ok, 2);
}

/* Random garbage (random frame counts, sizes, bytes; sometimes a valid magic
 * and version with random fields): every message gets an error reply and the
 * server keeps serving. */
static void test_garbage_messages(void **state)
{
    fixture *f = *state;
    raw_peer p;
    raw_open(&p, lb_xfer_server_endpoint(f->srv));
    uint64_t seed = 2026;
    uint8_t buf[3][LB_XFER_HDR_SIZE * 2];
    char msg[512];
    int errors = 0;
    for (int it = 0; it < 300; it++) {
        int nf = 1 + (int)(lb_test_rand_u64(&seed) % 3);
        const void *fr[3];
        size_t ln[3];
        for (int k = 0; k < nf; k++) {
            ln[k] = (size_t)(lb_test_rand_u64(&seed) % sizeof buf[k]);
            for (size_t i = 0; i < ln[k]; i++)
                buf[k][i] = (uint8_t)(lb_test_rand_u64(&seed) >> 56);
            fr[k] = buf[k];
        }
        if (it % 2) { /* plausible header: right size, magic, version */
            ln[0] = LB_XFER_HDR_SIZE;
            memcpy(buf[0], "LBXF", 4);
            buf[0][4] = LB_XFER_VERSION;
            buf[0][5] = 0;
            buf[0][6] = (uint8_t)(lb_test_rand_u64(&seed) % 6);
            buf[0][7] = 0;
        }
        raw_send(&p, fr, ln, nf);
        if (raw_reply(&p, msg, sizeof msg) != 0)
            errors++;
        else
            assert_true(it % 2 && (buf[0][6] == LB_XFER_PING || buf[0][6] == LB_XFER_HAS));
    }
    raw_close(&p);
    assert_true(errors > 250);
    lb_err err = {0};
    assert_int_equal(lb_xfer_ping(f->cli, &err), 0);
    assert_int_equal(dir_entries(f->dir), 0);
}

static void test_dead_server(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    lb_xfer_server_opts o = {.dir = dir};
    lb_xfer_server *srv = NULL;
    lb_err err = {0};
    assert_int_equal(lb_xfer_server_start(&o, &srv, &err), 0);
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", lb_xfer_server_endpoint(srv));
    lb_xfer_server_stop(&srv); /* port closed: nobody answers */
    lb_xfer_client *c = NULL;
    assert_int_equal(lb_xfer_client_new(endpoint, 300, 1, &c, &err), 0);
    double t0 = lb_now_s();
    assert_int_equal(lb_xfer_ping(c, &err), LB_ENET);
    double dt = lb_now_s() - t0;
    assert_true(dt < 3.0); /* 2 attempts x 0.3 s, with slack for a loaded machine */
    assert_non_null(strstr(err.msg, endpoint));
    assert_non_null(strstr(err.msg, "no answer in 0.3 s; is the coordinator's artifact server "
                                    "running?"));
    char id[LB_SHA256_HEX];
    make_id("dead", id);
    uint8_t data[64] = {0};
    assert_int_equal(lb_xfer_put(c, id, data, sizeof data, &err), LB_ENET);
    lb_xfer_client_free(&c);
    lb_test_rmdir(&dir);
}

/* A server killed while a request waits (a coordinator kill -9): ZeroMQ would
 * reconnect silently for the whole 60 s timeout; the client must notice the
 * refused port within seconds so the worker can re-read the job's endpoint. */
typedef struct {
    void *ctx;
    char endpoint[64];
} mute_server;

static void *mute_thread(void *arg)
{
    mute_server *m = arg;
    void *r = zmq_socket(m->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(r, m->endpoint), 0);
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    zmq_msg_recv(&msg, r, 0); /* take the request, never answer */
    zmq_msg_close(&msg);
    usleep(300 * 1000);
    zmq_close(r); /* the port closes: the server is gone */
    return NULL;
}

static void test_server_dies_mid_request(void **state)
{
    (void)state;
    mute_server m = {.ctx = zmq_ctx_new()};
    int port = lb_test_free_port();
    assert_true(port > 0);
    snprintf(m.endpoint, sizeof m.endpoint, "tcp://127.0.0.1:%d", port);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, mute_thread, &m), 0);
    usleep(100 * 1000);
    lb_xfer_client *c = NULL;
    lb_err err = {0};
    assert_int_equal(lb_xfer_client_new(m.endpoint, 60000, 2, &c, &err), 0);
    double t0 = lb_now_s();
    assert_int_equal(lb_xfer_ping(c, &err), LB_ENET);
    double dt = lb_now_s() - t0;
    assert_true(dt < 10.0); /* ~2-3 s; the timeout is 60 s x 3 attempts */
    assert_non_null(strstr(err.msg, "artifact server went away during a request"));
    assert_non_null(strstr(err.msg, m.endpoint));
    assert_null(strchr(err.msg, '\n'));
    lb_xfer_client_free(&c);
    pthread_join(t, NULL);
    zmq_ctx_term(m.ctx);
}

/* ---- lying server: a raw ROUTER that answers GET with bad bytes ---- */

typedef struct {
    const char *endpoint;
    const char *id;
    const char *dst;
    int rc;
    lb_err err;
} get_job;

static void *get_thread(void *arg)
{
    get_job *j = arg;
    lb_xfer_client *c = NULL;
    j->rc = lb_xfer_client_new(j->endpoint, 5000, 0, &c, &j->err);
    if (!j->rc)
        j->rc = lb_xfer_get_file(c, j->id, j->dst, &j->err);
    lb_xfer_client_free(&c);
    return NULL;
}

static void test_client_verifies_reply(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0, tmo = 5000;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(r, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    char endpoint[256];
    size_t el = sizeof endpoint;
    zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, endpoint, &el);
    char id[LB_SHA256_HEX];
    make_id("lying", id);
    char *dst = lb_io_path_join(dir, "out.bin");
    get_job j = {.endpoint = endpoint, .id = id, .dst = dst};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, get_thread, &j), 0);
    /* request: [route][header] */
    uint8_t route[256], req[LB_XFER_HDR_SIZE];
    int rl = zmq_recv(r, route, sizeof route, 0);
    assert_true(rl > 0);
    assert_int_equal(zmq_recv(r, req, sizeof req, 0), LB_XFER_HDR_SIZE);
    lb_xfer_hdr h;
    lb_err err = {0};
    assert_int_equal(lb_xfer_hdr_decode(req, sizeof req, &h, &err), 0);
    assert_int_equal(h.cmd, LB_XFER_GET);
    uint8_t data[300];
    memset(data, 0xab, sizeof data);
    lb_xfer_hdr rep;
    put_header(&rep, id, data, sizeof data);
    rep.cmd = LB_XFER_GET;
    rep.seq = h.seq;
    uint8_t hb[LB_XFER_HDR_SIZE];
    lb_xfer_hdr_encode(&rep, hb);
    data[0] = 0; /* the bytes do not match the announced checksum */
    zmq_send(r, route, (size_t)rl, ZMQ_SNDMORE);
    zmq_send(r, hb, sizeof hb, ZMQ_SNDMORE);
    zmq_send(r, data, sizeof data, 0);
    pthread_join(t, NULL);
    assert_int_equal(j.rc, LB_EFORMAT);
    assert_non_null(strstr(j.err.msg, "checksum mismatch"));
    assert_non_null(strstr(j.err.msg, endpoint));
    assert_int_not_equal(access(dst, F_OK), 0); /* nothing written */
    assert_int_equal(dir_entries(dir), 0);
    free(dst);
    zmq_close(r);
    zmq_ctx_term(ctx);
    lb_test_rmdir(&dir);
}

static void test_content_ids(void **state)
{
    fixture *f = *state;
    uint8_t data[500];
    memset(data, 7, sizeof data);
    char id[LB_SHA256_HEX], wrong[LB_SHA256_HEX];
    lb_sha256_hex(data, sizeof data, id);
    make_id("not the content", wrong);
    lb_err err = {0};
    assert_int_equal(lb_xfer_put(f->cli, wrong, data, sizeof data, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "content-addressed"));
    assert_int_equal(lb_xfer_put(f->cli, id, data, sizeof data, &err), 0);
    assert_int_equal(dir_entries(f->dir), 1);
}

/* An lb_artifact "activations" artifact made by pipe's store, shipped as bytes. */
static void test_artifact_validation(void **state)
{
    fixture *f = *state;
    char *src_root = lb_test_mkdtemp();
    lb_store *store = NULL;
    lb_err err = {0};
    assert_int_equal(lb_store_open(src_root, &store, &err), 0);
    char id[LB_SHA256_HEX];
    make_id("activations-block-0", id);
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)i * 0.5f;
    lb_artifact_tensor t = {.name = "x",
                            .dtype = LB_DTYPE_F32,
                            .ndim = 2,
                            .shape = {8, 8},
                            .data = x,
                            .nbytes = sizeof x};
    assert_int_equal(lb_store_put(store, id, "activations", &t, 1, NULL, 0, &err), 0);
    char *path = lb_store_path(store, id);
    char *bytes = NULL;
    size_t n = 0;
    assert_int_equal(lb_io_read_file(path, UINT64_MAX, &bytes, &n, &err), 0);
    /* Consistent transfer of inconsistent content: the last tensor byte flipped
     * and the transfer checksum computed over the flipped bytes. */
    bytes[n - 1] ^= 0x40;
    assert_int_equal(lb_xfer_put(f->cli, id, bytes, n, &err), LB_EFORMAT);
    if (!strstr(err.msg, "checksum mismatch (lowbit.sha256)"))
        fail_msg("unexpected: %s", err.msg);
    assert_int_equal(dir_entries(f->dir), 0);
    /* Right artifact under another id. */
    char other[LB_SHA256_HEX];
    make_id("activations-block-1", other);
    bytes[n - 1] ^= 0x40;
    assert_int_equal(lb_xfer_put(f->cli, other, bytes, n, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "lowbit.artifact"));
    /* The real thing is stored, and the receiving side opens it with lb_store. */
    assert_int_equal(lb_xfer_put(f->cli, id, bytes, n, &err), 0);
    char *dst_root = lb_test_mkdtemp();
    lb_store *dst = NULL;
    assert_int_equal(lb_store_open(dst_root, &dst, &err), 0);
    char *dst_path = lb_store_path(dst, id);
    assert_int_equal(lb_xfer_get_file(f->cli, id, dst_path, &err), 0);
    assert_true(lb_store_has(dst, id, "activations"));
    /* Corrupted at rest on the server: it refuses to serve it. */
    char *stored = stored_path(f, id);
    bytes[n - 1] ^= 0x40;
    assert_int_equal(lb_io_write_atomic(stored, bytes, n, &err), 0);
    void *got = NULL;
    size_t got_n = 0;
    assert_int_equal(lb_xfer_get(f->cli, id, &got, &got_n, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "fails validation"));
    assert_null(got);
    free(stored);
    free(dst_path);
    free(path);
    free(bytes);
    lb_store_free(&dst);
    lb_store_free(&store);
    lb_test_rmdir(&dst_root);
    lb_test_rmdir(&src_root);
}

/* A remote worker's view: the coordinator's store A is served; the worker
 * fetches a job's inputs into its own store B, produces an output there and
 * publishes it back to A. */
static void put_activation(const lb_store *st, const char *id, float base)
{
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = base + (float)i;
    lb_artifact_tensor t = {.name = "x",
                            .dtype = LB_DTYPE_F32,
                            .ndim = 2,
                            .shape = {4, 8},
                            .data = x,
                            .nbytes = sizeof x};
    lb_err err = {0};
    if (lb_store_put(st, id, "activations", &t, 1, NULL, 0, &err))
        fail_msg("store put: %s", err.msg);
}

/* Size of artifact id's file in st. */
static uint64_t file_bytes(const lb_store *st, const char *id)
{
    char *p = lb_store_path(st, id);
    FILE *f = p ? fopen(p, "rb") : NULL;
    long n = -1;
    if (f && fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    if (f)
        fclose(f);
    free(p);
    assert_true(n > 0);
    return (uint64_t)n;
}

/* Flips the last byte of artifact id's file (tensor data: the hash no longer holds). */
static void corrupt_last_byte(const lb_store *st, const char *id)
{
    char *p = lb_store_path(st, id);
    FILE *f = p ? fopen(p, "r+b") : NULL;
    assert_non_null(f);
    assert_int_equal(fseek(f, -1, SEEK_END), 0);
    int ch = fgetc(f);
    assert_int_not_equal(ch, EOF);
    assert_int_equal(fseek(f, -1, SEEK_END), 0);
    assert_int_not_equal(fputc(ch ^ 0xff, f), EOF);
    fclose(f);
    free(p);
}

static void test_job_fetch_publish(void **state)
{
    (void)state;
    char *root_a = lb_test_mkdtemp(), *root_b = lb_test_mkdtemp();
    lb_store *a = NULL, *b = NULL;
    lb_err err = {0};
    assert_int_equal(lb_store_open(root_a, &a, &err), 0);
    assert_int_equal(lb_store_open(root_b, &b, &err), 0);
    lb_xfer_server_opts o = {.dir = lb_store_dir(a), .validate = lb_xfer_validate_artifact};
    lb_xfer_server *srv = NULL;
    lb_xfer_client *c = NULL;
    assert_int_equal(lb_xfer_server_start(&o, &srv, &err), 0);
    assert_int_equal(lb_xfer_client_new(lb_xfer_server_endpoint(srv), 5000, 1, &c, &err), 0);

    lb_artifact_id in[2];
    make_id("input-0", in[0].hex);
    make_id("input-1", in[1].hex);
    put_activation(a, in[0].hex, 1.0f);
    put_activation(a, in[1].hex, 2.0f);
    lb_job job;
    memset(&job, 0, sizeof job);
    make_id("job", job.id);
    job.n_outputs = 1;
    make_id("job:0", job.outputs[0].hex);
    assert_int_equal(lb_job_set_inputs(&job, in, 2, &err), 0);

    uint64_t moved = 0;
    if (lb_xfer_fetch_inputs(c, b, &job, &moved, &err))
        fail_msg("fetch: %s", err.msg);
    assert_true(lb_store_has(b, in[0].hex, "activations"));
    assert_true(lb_store_has(b, in[1].hex, "activations"));
    /* the bytes reported are the two files' sizes */
    assert_int_equal(moved, file_bytes(b, in[0].hex) + file_bytes(b, in[1].hex));
    /* Already present and verified locally: no transfer at all. */
    lb_xfer_stats before, after;
    lb_xfer_server_stats(srv, &before);
    moved = 0;
    assert_int_equal(lb_xfer_fetch_inputs(c, b, &job, &moved, &err), 0);
    lb_xfer_server_stats(srv, &after);
    assert_int_equal(after.requests, before.requests);
    assert_int_equal(moved, 0);

    /* Output made on the worker, published, verified on the coordinator side. */
    assert_int_equal(lb_xfer_publish_outputs(c, b, &job, NULL, &err), LB_ENOTFOUND);
    put_activation(b, job.outputs[0].hex, 3.0f);
    moved = 0;
    if (lb_xfer_publish_outputs(c, b, &job, &moved, &err))
        fail_msg("publish: %s", err.msg);
    assert_true(lb_store_has(a, job.outputs[0].hex, "activations"));
    assert_int_equal(moved, file_bytes(b, job.outputs[0].hex));
    /* The server already holds it: a second publish moves nothing (HAS only). */
    lb_xfer_server_stats(srv, &before);
    moved = 0;
    assert_int_equal(lb_xfer_publish_outputs(c, b, &job, &moved, &err), 0);
    lb_xfer_server_stats(srv, &after);
    assert_int_equal(moved, 0);
    assert_int_equal(after.bytes_in, before.bytes_in);
    assert_int_equal(after.requests, before.requests + 1);
    /* A corrupt local copy in the worker's cache is never used: fetch re-fetches it. */
    corrupt_last_byte(b, in[0].hex);
    assert_false(lb_store_has(b, in[0].hex, NULL));
    moved = 0;
    assert_int_equal(lb_xfer_fetch_inputs(c, b, &job, &moved, &err), 0);
    assert_true(lb_store_has(b, in[0].hex, "activations"));
    assert_int_equal(moved, file_bytes(b, in[0].hex));

    /* An input the server lacks: clear error naming the job and the input. */
    make_id("never-produced", in[1].hex);
    assert_int_equal(lb_job_set_inputs(&job, in, 2, &err), 0);
    assert_int_equal(lb_xfer_fetch_inputs(c, b, &job, NULL, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "input 1"));
    assert_non_null(strstr(err.msg, job.id));
    assert_false(lb_store_has(b, in[1].hex, NULL));

    /* A server without a validator serving another artifact's file under this
     * id: the transfer checksum holds, the fetch still refuses and removes it. */
    lb_xfer_client_free(&c);
    lb_xfer_server_stop(&srv);
    lb_xfer_server_opts plain = {.dir = lb_store_dir(a)};
    assert_int_equal(lb_xfer_server_start(&plain, &srv, &err), 0);
    assert_int_equal(lb_xfer_client_new(lb_xfer_server_endpoint(srv), 5000, 1, &c, &err), 0);
    char *src = lb_store_path(a, in[0].hex), *dst = lb_store_path(a, in[1].hex);
    char *bytes = NULL;
    size_t n = 0;
    assert_int_equal(lb_io_read_file(src, UINT64_MAX, &bytes, &n, &err), 0);
    assert_int_equal(lb_io_write_atomic(dst, bytes, n, &err), 0);
    assert_int_equal(lb_xfer_fetch(c, b, in[1].hex, NULL, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "not this artifact"));
    assert_false(lb_store_has(b, in[1].hex, NULL));
    char *local = lb_store_path(b, in[1].hex);
    assert_int_not_equal(access(local, F_OK), 0);
    free(local);
    free(bytes);
    free(src);
    free(dst);

    lb_job_clear(&job);
    lb_xfer_client_free(&c);
    lb_xfer_server_stop(&srv);
    lb_store_free(&a);
    lb_store_free(&b);
    lb_test_rmdir(&root_a);
    lb_test_rmdir(&root_b);
}

typedef struct {
    const char *endpoint;
    int k;
    int failures;
    char msg[256];
} conc_job;

static void *conc_thread(void *arg)
{
    conc_job *j = arg;
    lb_xfer_client *c = NULL;
    lb_err err = {0};
    if (lb_xfer_client_new(j->endpoint, 10000, 1, &c, &err)) {
        j->failures++;
        snprintf(j->msg, sizeof j->msg, "%s", err.msg);
        return NULL;
    }
    for (int a = 0; a < 3; a++) {
        char id[LB_SHA256_HEX], label[64];
        snprintf(label, sizeof label, "conc-%d-%d", j->k, a);
        lb_sha256_hex(label, strlen(label), id);
        size_t n = ((size_t)1 << 20) + (size_t)(j->k * 1000 + a);
        uint64_t seed = (uint64_t)(j->k * 10 + a + 1);
        uint8_t *data = malloc(n);
        for (size_t i = 0; data && i < n; i++)
            data[i] = (uint8_t)(lb_test_rand_u64(&seed) >> 56);
        void *got = NULL;
        size_t got_n = 0;
        if (!data || lb_xfer_put(c, id, data, n, &err) || lb_xfer_get(c, id, &got, &got_n, &err) ||
            got_n != n || memcmp(got, data, n) != 0) {
            j->failures++;
            snprintf(j->msg, sizeof j->msg, "%s", err.msg);
        }
        free(got);
        free(data);
    }
    lb_xfer_client_free(&c);
    return NULL;
}

static void test_concurrent_clients(void **state)
{
    fixture *f = *state;
    enum { NT = 4 };
    pthread_t t[NT];
    conc_job j[NT];
    for (int k = 0; k < NT; k++) {
        j[k] = (conc_job){.endpoint = lb_xfer_server_endpoint(f->srv), .k = k};
        assert_int_equal(pthread_create(&t[k], NULL, conc_thread, &j[k]), 0);
    }
    for (int k = 0; k < NT; k++) {
        pthread_join(t[k], NULL);
        if (j[k].failures)
            fail_msg("client %d: %d failures, last: %s", k, j[k].failures, j[k].msg);
    }
    assert_int_equal(dir_entries(f->dir), NT * 3);
    lb_xfer_stats st;
    lb_xfer_server_stats(f->srv, &st);
    assert_int_equal(st.errors, 0);
}

static void test_server_options(void **state)
{
    (void)state;
    lb_xfer_server *s = NULL;
    lb_err err = {0};
    lb_xfer_server_opts o = {.dir = "/nonexistent/lowbit-artifacts"};
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "/nonexistent/lowbit-artifacts"));
    char *dir = lb_test_mkdtemp();
    lb_xfer_server_opts bad = {.dir = dir, .bind = "tcp://256.1.1.1:1", .insecure = true};
    assert_int_equal(lb_xfer_server_start(&bad, &s, &err), LB_ENET);
    assert_non_null(strstr(err.msg, "tcp://256.1.1.1:1"));
    assert_null(s);
    lb_xfer_server_stop(&s); /* NULL-safe */
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_small, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_multiframe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_and_put_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupted_payload_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_messages, setup, teardown),
        cmocka_unit_test(test_dead_server),
        cmocka_unit_test(test_server_dies_mid_request),
        cmocka_unit_test(test_client_verifies_reply),
        cmocka_unit_test_setup_teardown(test_content_ids, setup_content, teardown),
        cmocka_unit_test_setup_teardown(test_artifact_validation, setup_validate, teardown),
        cmocka_unit_test(test_job_fetch_publish),
        cmocka_unit_test_setup_teardown(test_concurrent_clients, setup, teardown),
        cmocka_unit_test(test_server_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
