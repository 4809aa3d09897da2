/* CURVE on the data plane (worker/lb_xfer_curve.c, coordinator/lb_dist_lease.c):
 * `lowbit keygen` files, modes and refusal to overwrite; a client whose key is
 * not in the allowlist (or that talks plain TCP, or has the wrong server key)
 * can neither fetch nor publish; the bind policy; lease-checked publish against
 * a private redis-server (only the holder of an item's lease may publish that
 * item's outputs, with the identity taken from the CURVE key); no secret key in
 * any error, log line or CLI output. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "lb_dist_lease.h"
#include "lb_job.h"
#include "lb_redis.h"
#include "lb_sha256.h"
#include "lb_test_curve.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"
#include "lb_xfer.h"
#include "lb_time.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_all[8192];

static void log_line(void *user, const char *line)
{
    (void)user;
    pthread_mutex_lock(&log_mu);
    size_t n = strlen(log_all);
    snprintf(log_all + n, sizeof log_all - n, "%s\n", line);
    pthread_mutex_unlock(&log_mu);
}


static void make_id(const char *label, char id[LB_SHA256_HEX])
{
    lb_sha256_hex(label, strlen(label), id);
}

static void load_client(const char *dir, const char *name, lb_xfer_curve *c)
{
    lb_err err = {0};
    if (lb_xfer_curve_load_client(dir, NULL, NULL, name, c, &err))
        fail_msg("client keys: %s", err.msg);
}

static lb_xfer_client *client(const lb_xfer_server *s, const lb_xfer_curve *k, int timeout_ms)
{
    lb_xfer_client *c = NULL;
    lb_err err = {0};
    if (lb_xfer_client_new(lb_xfer_server_endpoint(s), timeout_ms, 0, &c, &err) ||
        (k && lb_xfer_client_set_curve(c, k, &err)))
        fail_msg("client: %s", err.msg);
    return c;
}

static void test_keygen(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    lb_err err = {0};
    assert_int_equal(lb_xfer_keygen(dir, "w1", &err), 0);
    char pub[4200], sec[4200];
    snprintf(pub, sizeof pub, "%s/w1.pub", dir);
    snprintf(sec, sizeof sec, "%s/w1.key", dir);
    struct stat st;
    assert_int_equal(stat(sec, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(pub, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    char kp[LB_XFER_KEY_LEN + 1], ks[LB_XFER_KEY_LEN + 1];
    assert_int_equal(lb_xfer_key_read(pub, false, kp, &err), 0);
    assert_int_equal(lb_xfer_key_read(sec, true, ks, &err), 0);
    assert_string_not_equal(kp, ks);
    /* never overwritten; the refusal names the files, not the key */
    assert_int_equal(lb_xfer_keygen(dir, "w1", &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "never overwritten"));
    assert_null(strstr(err.msg, ks));
    char again[LB_XFER_KEY_LEN + 1];
    assert_int_equal(lb_xfer_key_read(sec, true, again, &err), 0);
    assert_string_equal(again, ks);
    assert_int_equal(lb_xfer_keygen(dir, "../evil", &err), LB_EINVAL);
    /* a secret readable by others is refused, naming the fix */
    assert_int_equal(chmod(sec, 0644), 0);
    assert_int_equal(lb_xfer_key_read(sec, true, again, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_null(strstr(err.msg, ks));

    /* the CLI: writes the pair, prints no key, refuses a second time */
    char *out = NULL;
    const char *bin = lb_test_lowbit_bin();
    assert_int_equal(lb_test_run(&out, "'%s' keygen --out '%s/k' --name node7 2>&1", bin, dir), 0);
    assert_non_null(strstr(out, "node7.key"));
    free(out);
    char sec2[4200], ks2[LB_XFER_KEY_LEN + 1];
    snprintf(sec2, sizeof sec2, "%s/k/node7.key", dir);
    assert_int_equal(lb_xfer_key_read(sec2, true, ks2, &err), 0);
    assert_int_not_equal(lb_test_run(&out, "'%s' keygen --out '%s/k' --name node7 2>&1", bin, dir),
                         0);
    assert_non_null(strstr(out, "never overwritten"));
    assert_null(strstr(out, ks2));
    free(out);
    assert_int_equal(lb_test_run(&out, "'%s' keygen --out '%s/k' 2>&1", bin, dir), 0);
    assert_non_null(strstr(out, "server.pub"));
    free(out);
    lb_test_rmdir(&dir);
}

static void test_loopback_rule(void **state)
{
    (void)state;
    const char *yes[] = {"tcp://127.0.0.1:*", "tcp://127.0.0.1:5600", "tcp://[::1]:5600",
                         "tcp://localhost:5600", "ipc:///tmp/x", "inproc://x", "tcp://127.1.2.3:1"};
    const char *no[] = {"tcp://*:5600", "tcp://0.0.0.0:5600", "tcp://10.0.0.5:5600",
                        "tcp://[::]:5600", "tcp://127.0.0.1.evil.com:1", "tcp://eth0:5600",
                        "tcp://host:5600"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (!lb_xfer_endpoint_loopback(yes[i]))
            fail_msg("%s should count as loopback", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (lb_xfer_endpoint_loopback(no[i]))
            fail_msg("%s should not count as loopback", no[i]);
}

static void test_bind_policy(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp(), *keys = lb_test_mkdtemp();
    const char *names[] = {"w1"};
    assert_int_equal(lb_test_curve_keys(keys, names, 1, 1), 0);
    lb_err err = {0};
    lb_xfer_server *s = NULL;
    lb_xfer_server_opts o = {.dir = dir, .bind = "tcp://0.0.0.0:*"};
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), LB_EINVAL);
    assert_null(s);
    assert_non_null(strstr(err.msg, "--artifact-bind tcp://0.0.0.0:*"));
    assert_non_null(strstr(err.msg, "--curve-dir"));
    assert_non_null(strstr(err.msg, "--insecure"));
    assert_null(strchr(err.msg, '\n'));
    o.bind = "tcp://*:*";
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), LB_EINVAL);
    /* --insecure: accepted */
    o.insecure = true;
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), 0);
    lb_xfer_server_stop(&s);
    /* CURVE: accepted */
    lb_xfer_curve k;
    assert_int_equal(lb_xfer_curve_load_server(keys, NULL, NULL, &k, &err), 0);
    o.insecure = false;
    o.curve = &k;
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), 0);
    lb_xfer_server_stop(&s);
    lb_xfer_curve_clear(&k);
    /* loopback without CURVE: the default, accepted */
    lb_xfer_server_opts lo = {.dir = dir};
    assert_int_equal(lb_xfer_server_start(&lo, &s, &err), 0);
    lb_xfer_server_stop(&s);
    lb_test_rmdir(&dir);
    lb_test_rmdir(&keys);
}

/* A client with key `name` (or plain TCP when name is NULL) cannot PUT or GET;
 * it fails within `limit_s` with a message holding `want`. */
static void assert_shut_out(const lb_xfer_server *s, const char *keys, const char *name,
                            const char *server_pub, const char *want, double limit_s)
{
    lb_xfer_curve k = {0};
    lb_err err = {0};
    if (name && lb_xfer_curve_load_client(keys, server_pub, NULL, name, &k, &err))
        fail_msg("keys: %s", err.msg);
    lb_xfer_client *c = client(s, name ? &k : NULL, 1500);
    char id[LB_SHA256_HEX];
    make_id("intruder", id);
    double t0 = lb_now_s();
    int rc = lb_xfer_put(c, id, "bad bytes", 9, &err);
    double el = lb_now_s() - t0;
    assert_int_equal(rc, LB_ENET);
    if (want && !strstr(err.msg, want))
        fail_msg("PUT error '%s' lacks '%s'", err.msg, want);
    if (el > limit_s)
        fail_msg("PUT took %.1f s to fail (limit %.1f)", el, limit_s);
    lb_test_curve_assert_no_secret(keys, err.msg, "the client's error");
    void *data = NULL;
    size_t n = 0;
    make_id("secret-artifact", id);
    assert_int_equal(lb_xfer_get(c, id, &data, &n, &err), LB_ENET);
    assert_null(data);
    lb_test_curve_assert_no_secret(keys, err.msg, "the client's error");
    lb_xfer_client_free(&c);
    lb_xfer_curve_clear(&k);
}

static void test_curve_allowlist(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp(), *keys = lb_test_mkdtemp();
    const char *names[] = {"w1", "w2"};
    assert_int_equal(lb_test_curve_keys(keys, names, 2, 1), 0); /* w2 not allowed */
    lb_err err = {0};
    lb_xfer_curve sk;
    assert_int_equal(lb_xfer_curve_load_server(keys, NULL, NULL, &sk, &err), 0);
    assert_int_equal((int)sk.nclients, 1);
    assert_string_equal(sk.clients[0].name, "w1");
    log_all[0] = 0;
    lb_xfer_server *s = NULL;
    lb_xfer_server_opts o = {.dir = dir, .curve = &sk, .log = log_line};
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), 0);

    /* the allowed key: a round trip */
    lb_xfer_curve k1;
    load_client(keys, "w1", &k1);
    assert_string_equal(k1.client_name, "w1");
    lb_xfer_client *c = client(s, &k1, 5000);
    char id[LB_SHA256_HEX];
    make_id("secret-artifact", id);
    const char payload[] = "activations nobody else may read";
    assert_int_equal(lb_xfer_put(c, id, payload, sizeof payload, &err), 0);
    void *data = NULL;
    size_t n = 0;
    assert_int_equal(lb_xfer_get(c, id, &data, &n, &err), 0);
    assert_int_equal(n, sizeof payload);
    assert_memory_equal(data, payload, n);
    free(data);
    /* full 4 MiB frames: CURVE's per-message overhead must fit ZMQ_MAXMSGSIZE */
    size_t big_n = ((size_t)9 << 20) + 123;
    uint8_t *big = malloc(big_n);
    assert_non_null(big);
    for (size_t i = 0; i < big_n; i++)
        big[i] = (uint8_t)(i * 2654435761u >> 13);
    char big_id[LB_SHA256_HEX];
    make_id("big-artifact", big_id);
    if (lb_xfer_put(c, big_id, big, big_n, &err))
        fail_msg("multi-frame PUT over CURVE: %s", err.msg);
    assert_int_equal(lb_xfer_get(c, big_id, &data, &n, &err), 0);
    assert_int_equal(n, big_n);
    assert_memory_equal(data, big, n);
    free(data);
    free(big);
    lb_xfer_client_free(&c);

    /* a key not in the allowlist: refused at the handshake, at once */
    assert_shut_out(s, keys, "w2", NULL, "not in the coordinator's allowlist", 1.4);
    /* plain TCP against a CURVE server: no answer */
    assert_shut_out(s, keys, NULL, NULL, "no answer", 5.0);
    /* the right client key but the wrong server key (w2's public): no session */
    char wrong[4200];
    snprintf(wrong, sizeof wrong, "%s/w2.pub", keys);
    assert_shut_out(s, keys, "w1", wrong, NULL, 5.0);

    lb_xfer_stats st;
    lb_xfer_server_stats(s, &st);
    assert_true(st.denied >= 1);
    /* nothing else was stored */
    assert_int_equal(st.bytes_in, sizeof payload + ((size_t)9 << 20) + 123);
    lb_xfer_server_stop(&s);
    pthread_mutex_lock(&log_mu);
    assert_non_null(strstr(log_all, "CURVE handshake refused"));
    lb_test_curve_assert_no_secret(keys, log_all, "the server log");
    pthread_mutex_unlock(&log_mu);
    lb_test_curve_assert_no_secret(keys, st.last_error, "the server's last error");
    lb_xfer_curve_clear(&k1);
    lb_xfer_curve_clear(&sk);
    lb_test_rmdir(&dir);
    lb_test_rmdir(&keys);
}

/* Queues one item of job j1 with outputs out[0..1], leased by consumer
 * `holder`. OUT: the lease entry. */
static void lease_item(lb_redis *r, const char *holder, char out[2][LB_SHA256_HEX],
                       lb_redis_msg *msg)
{
    lb_err err = {0};
    lb_job job;
    lb_job_init(&job);
    job.type = LB_JOB_QUANTIZE_LINEAR;
    make_id("item", job.id);
    job.n_outputs = 2;
    make_id("item:0", job.outputs[0].hex);
    make_id("item:1", job.outputs[1].hex);
    memcpy(out[0], job.outputs[0].hex, LB_SHA256_HEX);
    memcpy(out[1], job.outputs[1].hex, LB_SHA256_HEX);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(lb_job_encode(&job, &buf, &len, &err), 0);
    assert_int_equal(lb_redis_queue_init(r, "j1", &err), 0);
    assert_int_equal(lb_redis_enqueue(r, "j1", job.id, buf, len, NULL, &err), 0);
    bool got = false;
    assert_int_equal(lb_redis_claim(r, "j1", holder, 0, msg, &got, &err), 0);
    assert_true(got);
    free(buf);
    lb_job_clear(&job);
}

static int put_claimed(lb_xfer_client *c, const char *claim, const char *id, lb_err *err)
{
    assert_int_equal(lb_xfer_client_set_claim(c, claim, err), 0);
    return lb_xfer_put(c, id, id, 16, err);
}

static void test_lease_checked_publish(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start(&srv, NULL), 0);
    char *dir = lb_test_mkdtemp(), *keys = lb_test_mkdtemp();
    const char *names[] = {"w1", "w2"};
    assert_int_equal(lb_test_curve_keys(keys, names, 2, 2), 0); /* both allowed in */
    lb_err err = {0};
    lb_redis *r = NULL;
    assert_int_equal(lb_redis_connect(srv.url, NULL, &r, &err), 0);
    char out[2][LB_SHA256_HEX];
    lb_redis_msg msg;
    lease_item(r, "w1@hostA-17", out, &msg);

    lb_xfer_curve sk, k1, k2;
    assert_int_equal(lb_xfer_curve_load_server(keys, NULL, NULL, &sk, &err), 0);
    load_client(keys, "w1", &k1);
    load_client(keys, "w2", &k2);
    lb_dist_lease lease = {.redis_url = srv.url, .job_name = "j1"};
    lb_xfer_server *s = NULL;
    lb_xfer_server_opts o = {.dir = dir,
                             .curve = &sk,
                             .authorize = lb_dist_lease_authorize,
                             .authorize_user = &lease};
    assert_int_equal(lb_xfer_server_start(&o, &s, &err), 0);
    lb_xfer_client *c1 = client(s, &k1, 5000), *c2 = client(s, &k2, 5000);
    char claim[256], other[LB_SHA256_HEX];
    snprintf(claim, sizeof claim, "job=j1 entry=%s worker=w1@hostA-17", msg.entry);
    make_id("not-an-output", other);

    /* no claim, another job, an id the item does not make: refused */
    assert_int_equal(put_claimed(c1, NULL, out[0], &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "no lease claim"));
    char bad[256];
    snprintf(bad, sizeof bad, "job=j2 entry=%s worker=w1@hostA-17", msg.entry);
    assert_int_equal(put_claimed(c1, bad, out[0], &err), LB_EINVAL);
    assert_int_equal(put_claimed(c1, claim, other, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "not an output"));
    /* w2 copies w1's claim: the identity is its key, so it is refused */
    assert_int_equal(put_claimed(c2, claim, out[0], &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "held by w1@hostA-17, not by key w2"));
    /* the holder: stored */
    assert_int_equal(put_claimed(c1, claim, out[0], &err), 0);
    /* the lease ends (acked, or reclaimed by another worker): refused */
    assert_int_equal(lb_redis_ack(r, "j1", &msg, true, &err), 0);
    assert_int_equal(put_claimed(c1, claim, out[1], &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "is not held"));
    lb_xfer_stats st;
    lb_xfer_server_stats(s, &st);
    assert_int_equal(st.refused, 5);
    assert_int_equal(st.bytes_in, 16);
    lb_xfer_client_free(&c1);
    lb_xfer_client_free(&c2);
    lb_xfer_server_stop(&s);
    lb_dist_lease_clear(&lease);

    /* without CURVE the claim's worker id is all there is: checked, not proven */
    lb_redis_msg_clear(&msg);
    lease_item(r, "wA", out, &msg);
    lb_dist_lease plain = {.redis_url = srv.url, .job_name = "j1"};
    lb_xfer_server_opts po = {.dir = dir, .authorize = lb_dist_lease_authorize,
                              .authorize_user = &plain};
    assert_int_equal(lb_xfer_server_start(&po, &s, &err), 0);
    lb_xfer_client *c = client(s, NULL, 5000);
    snprintf(claim, sizeof claim, "job=j1 entry=%s worker=wB", msg.entry);
    assert_int_equal(put_claimed(c, claim, out[1], &err), LB_ESTATE);
    snprintf(claim, sizeof claim, "job=j1 entry=%s worker=wA", msg.entry);
    assert_int_equal(put_claimed(c, claim, out[1], &err), 0);
    lb_xfer_client_free(&c);
    lb_xfer_server_stop(&s);
    lb_dist_lease_clear(&plain);

    lb_redis_msg_clear(&msg);
    lb_redis_free(&r);
    lb_xfer_curve_clear(&sk);
    lb_xfer_curve_clear(&k1);
    lb_xfer_curve_clear(&k2);
    lb_test_redis_stop(&srv);
    lb_test_rmdir(&dir);
    lb_test_rmdir(&keys);
}

int main(void)
{
    lb_err err = {0};
    if (lb_xfer_curve_check(&err)) {
        /* say it clearly; every test here needs CURVE */
        fprintf(stderr, "test_curve: %s\n", err.msg);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keygen),
        cmocka_unit_test(test_loopback_rule),
        cmocka_unit_test(test_bind_policy),
        cmocka_unit_test(test_curve_allowlist),
        cmocka_unit_test(test_lease_checked_publish),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
