/* Integration tests of the Redis control plane (lb_redis_url, lb_redis, and the
 * `lowbit status` / `lowbit cancel` commands) against private redis-servers on
 * free loopback ports, stopped and removed even when a test fails. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "lb_redis_url.h"
#include "lb_redis.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"
#include "lb_time.h"

static lb_test_redis g_srv; /* shared server of the group */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int group_setup(void **state)
{
    (void)state;
    if (!lb_test_redis_available())
        return 0; /* each test skips (or fails under CI) */
    return lb_test_redis_start(&g_srv, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    lb_test_redis_stop(&g_srv);
    return 0;
}

static lb_redis *connect_ok(const char *url)
{
    lb_err err = {0};
    lb_redis *s = NULL;
    int rc = lb_redis_connect(url, NULL, &s, &err);
    if (rc)
        fail_msg("connect %s: %s", url, err.msg);
    return s;
}

/* ---- URL parsing (no server) ---- */

static void test_url_parse(void **state)
{
    (void)state;
    lb_redis_url u;
    lb_err err = {0};
    char buf[400];

    assert_int_equal(lb_redis_url_parse("redis://", &u, &err), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_string_equal(u.password, "");

    assert_int_equal(lb_redis_url_parse("redis://alice:s%40cret@redis.example.org:7000/3", &u, &err), 0);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "s@cret");
    assert_string_equal(u.host, "redis.example.org");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 3);
    lb_redis_url_display(&u, buf, sizeof buf);
    assert_string_equal(buf, "redis://alice@redis.example.org:7000/3");

    assert_int_equal(lb_redis_url_parse("redis://:pw@10.0.0.2", &u, &err), 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "pw");
    assert_string_equal(u.host, "10.0.0.2");
    assert_int_equal(u.port, 6379);

    assert_int_equal(lb_redis_url_parse("redis://[::1]:6380/2", &u, &err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);
    lb_redis_url_display(&u, buf, sizeof buf);
    assert_string_equal(buf, "redis://[::1]:6380/2");

    assert_int_equal(lb_redis_url_parse("unix://:pw@/run/redis/redis.sock?db=4", &u, &err), 0);
    assert_true(u.is_unix);
    assert_string_equal(u.socket_path, "/run/redis/redis.sock");
    assert_string_equal(u.password, "pw");
    assert_int_equal(u.db, 4);

    /* rejected, each with one line; the password never appears in the message */
    const char *bad[] = {"http://x",          "redis://h:0",          "redis://h:65536",
                         "redis://h:12ab",    "redis://h/abc",        "redis://alice@h",
                         "redis://:@h",       "redis://:p%4@h",       "redis://[::1",
                         "unix://relative.sock", "unix:///s.sock?x=1", "redis://h o st"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lb_err_clear(&err);
        assert_int_equal(lb_redis_url_parse(bad[i], &u, &err), LB_EINVAL);
        assert_non_null(strstr(err.msg, "expected redis://"));
        assert_null(strchr(err.msg, '\n'));
    }
    assert_int_equal(lb_redis_url_parse("redis://bob:topsecret@h:0", &u, &err), LB_EINVAL);
    assert_null(strstr(err.msg, "topsecret"));
    assert_non_null(strstr(err.msg, "port"));

    setenv("LOWBIT_REDIS", "redis://envhost:1/0", 1);
    assert_string_equal(lb_redis_url_pick(NULL), "redis://envhost:1/0");
    assert_string_equal(lb_redis_url_pick("redis://x"), "redis://x");
    unsetenv("LOWBIT_REDIS");
    assert_string_equal(lb_redis_url_pick(NULL), LB_REDIS_DEFAULT_URL);
}

/* ---- connection errors ---- */

static void test_dead_redis_fast_clear_error(void **state)
{
    (void)state;
    int port = lb_test_free_port(); /* bound then closed: nothing listens */
    assert_true(port > 0);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    lb_redis_opts o = lb_redis_opts_default();
    lb_err err = {0};
    lb_redis *s = NULL;
    double t0 = lb_now_s();
    assert_int_equal(lb_redis_connect(url, &o, &s, &err), LB_ENET);
    double dt = lb_now_s() - t0;
    assert_null(s);
    assert_non_null(strstr(err.msg, "cannot connect"));
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    assert_non_null(strstr(err.msg, where));
    assert_true(dt < 3.0); /* default: 3 retries, 100+200+400 ms backoff */

    /* the CLI: one clear line, exit 1, no hang */
    char *out = NULL;
    int rc = lb_test_run(&out, "%s status somejob --redis %s", lb_test_lowbit_bin(), url);
    assert_int_equal(rc, 1);
    assert_non_null(out);
    assert_non_null(strstr(out, "cannot connect"));
    free(out);
}

static void test_auth(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_test_redis srv;
    const char *extra[] = {"--requirepass", "hunter2x", "--user", "alice", "on", ">wonderland",
                           "~*", "&*", "+@all", NULL};
    assert_int_equal(lb_test_redis_start(&srv, extra), 0);
    char url[256];
    lb_err err = {0};
    lb_redis *s = NULL;
    int rc;

    snprintf(url, sizeof url, "redis://:hunter2x@127.0.0.1:%d/0", srv.port);
    rc = lb_redis_connect(url, NULL, &s, &err);
    if (rc)
        goto fail;
    lb_redis_free(&s);
    assert_null(s);

    snprintf(url, sizeof url, "redis://alice:wonderland@127.0.0.1:%d/1", srv.port);
    rc = lb_redis_connect(url, NULL, &s, &err);
    if (rc)
        goto fail;
    if (strstr(lb_redis_peer(s), "wonderland"))
        goto leak;
    lb_redis_free(&s);

    snprintf(url, sizeof url, "redis://:notthepass@127.0.0.1:%d/0", srv.port);
    rc = lb_redis_connect(url, NULL, &s, &err);
    if (rc != LB_ENET || !strstr(err.msg, "authentication failed (WRONGPASS") ||
        !strstr(err.msg, "check the password in the URL") || strstr(err.msg, "notthepass"))
        goto bad_msg;

    snprintf(url, sizeof url, "redis://alice:nope@127.0.0.1:%d/0", srv.port);
    rc = lb_redis_connect(url, NULL, &s, &err);
    if (rc != LB_ENET || !strstr(err.msg, "authentication failed"))
        goto bad_msg;

    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", srv.port);
    rc = lb_redis_connect(url, NULL, &s, &err);
    if (rc != LB_ENET || !strstr(err.msg, "requires a password (NOAUTH"))
        goto bad_msg;

    /* the CLI reports the same line */
    char *out = NULL;
    rc = lb_test_run(&out, "%s status j --redis redis://:wrong@127.0.0.1:%d", lb_test_lowbit_bin(),
                     srv.port);
    int cli_ok = rc == 1 && out && strstr(out, "authentication failed");
    free(out);
    lb_test_redis_stop(&srv);
    assert_true(cli_ok);
    return;
fail:
    lb_test_redis_stop(&srv);
    fail_msg("connect %s: %s", url, err.msg);
leak:
    lb_redis_free(&s);
    lb_test_redis_stop(&srv);
    fail_msg("password shown in the peer name");
bad_msg:
    lb_redis_free(&s);
    lb_test_redis_stop(&srv);
    fail_msg("rc %d, message: %s", rc, err.msg);
}

/* ---- job record ---- */

static void test_job_record_fingerprint(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    bool existed = true;
    assert_int_equal(lb_redis_job_create(s, "rec1", "fp-aaaa", &existed, &err), 0);
    assert_false(existed);
    assert_int_equal(lb_redis_job_create(s, "rec1", "fp-aaaa", &existed, &err), 0);
    assert_true(existed);
    assert_int_equal(lb_redis_job_create(s, "rec1", "fp-bbbb", &existed, &err), LB_ESTATE);
    assert_non_null(strstr(err.msg, "already exists with different options"));
    assert_non_null(strstr(err.msg, "rec1"));

    const char *f[] = {"state", "method", "bits"}, *v[] = {"running", "gptq", "3"};
    assert_int_equal(lb_redis_job_set(s, "rec1", 3, f, v, &err), 0);
    int64_t now = 0;
    assert_int_equal(lb_redis_job_incr(s, "rec1", "jobs_done", 5, &now, &err), 0);
    assert_int_equal(lb_redis_job_incr(s, "rec1", "jobs_done", -2, &now, &err), 0);
    assert_int_equal(now, 3);

    lb_redis_map m;
    assert_int_equal(lb_redis_job_get(s, "rec1", &m, &err), 0);
    assert_string_equal(lb_redis_map_get(&m, "state"), "running");
    assert_string_equal(lb_redis_map_get(&m, "bits"), "3");
    assert_string_equal(lb_redis_map_get(&m, "jobs_done"), "3");
    assert_string_equal(lb_redis_map_get(&m, "fingerprint"), "fp-aaaa");
    assert_non_null(lb_redis_map_get(&m, "updated"));
    assert_null(lb_redis_map_get(&m, "nope"));
    lb_redis_map_clear(&m);

    assert_int_equal(lb_redis_job_get(s, "nosuchjob", &m, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "no job 'nosuchjob'"));
    assert_int_equal(lb_redis_job_get(s, "bad name!", &m, &err), LB_EINVAL);

    char **names = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_job_list(s, &names, &n, &err), 0);
    bool found = false;
    for (int32_t i = 0; i < n; i++) {
        found = found || !strcmp(names[i], "rec1");
        free(names[i]);
    }
    free(names);
    assert_true(found);

    /* events: order kept, text intact */
    assert_int_equal(lb_redis_event(s, "rec1", "first", &err), 0);
    assert_int_equal(lb_redis_event(s, "rec1", "second: with spaces and ünïcode", &err), 0);
    assert_int_equal(lb_redis_event(s, "rec1", "third", &err), 0);
    lb_redis_event_rec *ev = NULL;
    assert_int_equal(lb_redis_events_recent(s, "rec1", 2, &ev, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(ev[0].msg, "second: with spaces and ünïcode");
    assert_string_equal(ev[1].msg, "third");
    assert_true(ev[1].t_ms >= ev[0].t_ms && ev[0].t_ms > 0);
    lb_redis_events_free(&ev, n);
    assert_null(ev);
    lb_redis_free(&s);
}

/* ---- queue ---- */

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)lb_test_rand_u64(&seed);
}

static void test_enqueue_claim_ack(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    assert_int_equal(lb_redis_queue_init(s, "q1", &err), 0);
    assert_int_equal(lb_redis_queue_init(s, "q1", &err), 0); /* existing group is fine */

    uint8_t payload[3][300];
    for (int i = 0; i < 3; i++) {
        fill(payload[i], sizeof payload[i], (uint64_t)i + 1);
        payload[i][7] = 0; /* binary-safe: embedded NULs */
        char id[16], entry[48];
        snprintf(id, sizeof id, "job-%d", i);
        assert_int_equal(lb_redis_enqueue(s, "q1", id, payload[i], sizeof payload[i], entry, &err), 0);
        assert_non_null(strchr(entry, '-'));
    }
    lb_redis_queue_counts c;
    assert_int_equal(lb_redis_queue_stats(s, "q1", &c, &err), 0);
    assert_int_equal(c.length, 3);
    assert_int_equal(c.pending, 0);

    lb_redis_msg m[3];
    for (int i = 0; i < 3; i++) {
        bool got = false;
        assert_int_equal(lb_redis_claim(s, "q1", "w1", 0, &m[i], &got, &err), 0);
        assert_true(got);
        char id[16];
        snprintf(id, sizeof id, "job-%d", i);
        assert_string_equal(m[i].id, id);
        assert_int_equal(m[i].len, sizeof payload[i]);
        assert_memory_equal(m[i].payload, payload[i], sizeof payload[i]);
    }
    assert_int_equal(lb_redis_queue_stats(s, "q1", &c, &err), 0);
    assert_int_equal(c.pending, 3);
    assert_int_equal(c.consumers, 1);

    /* empty queue: a blocking claim times out after about block_ms */
    bool got = true;
    lb_redis_msg none;
    double t0 = lb_now_s();
    assert_int_equal(lb_redis_claim(s, "q1", "w1", 150, &none, &got, &err), 0);
    double dt = lb_now_s() - t0;
    assert_false(got);
    assert_true(dt >= 0.1 && dt < 2.0);

    assert_int_equal(lb_redis_ack(s, "q1", &m[0], true, &err), 0);
    assert_int_equal(lb_redis_ack(s, "q1", &m[1], false, &err), 0);
    assert_int_equal(lb_redis_queue_stats(s, "q1", &c, &err), 0);
    assert_int_equal(c.pending, 1);
    assert_int_equal(c.length, 2); /* m[1] acked but kept (no XDEL) */
    assert_int_equal(lb_redis_ack(s, "q1", &m[2], true, &err), 0);
    assert_int_equal(lb_redis_queue_stats(s, "q1", &c, &err), 0);
    assert_int_equal(c.pending, 0);
    assert_int_equal(c.length, 1);
    for (int i = 0; i < 3; i++)
        lb_redis_msg_clear(&m[i]);

    /* enqueue_once: the second call for the same id queues nothing */
    bool added = false;
    assert_int_equal(lb_redis_enqueue_once(s, "q1", "once", "p", 1, &added, &err), 0);
    assert_true(added);
    assert_int_equal(lb_redis_enqueue_once(s, "q1", "once", "p", 1, &added, &err), 0);
    assert_false(added);
    assert_int_equal(lb_redis_queue_stats(s, "q1", &c, &err), 0);
    assert_int_equal(c.length, 2);

    /* a job without a queue: clear error, nothing to reclaim */
    assert_int_equal(lb_redis_claim(s, "noqueue", "w1", 0, &none, &got, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "has no queue yet"));
    assert_int_equal(lb_redis_reclaim(s, "noqueue", "w1", 0, 3, &none, &got, &err), 0);
    assert_false(got);
    lb_redis_free(&s);
}

static void test_lease_reclaim(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    assert_int_equal(lb_redis_queue_init(s, "q2", &err), 0);
    assert_int_equal(lb_redis_enqueue(s, "q2", "linear-7", "abc\0def", 7, NULL, &err), 0);
    lb_redis_msg a, b;
    bool got = false;
    assert_int_equal(lb_redis_claim(s, "q2", "crashing-worker", 0, &a, &got, &err), 0);
    assert_true(got);
    /* not idle long enough: stays with its holder */
    assert_int_equal(lb_redis_reclaim(s, "q2", "w2", 60000, 5, &b, &got, &err), 0);
    assert_false(got);
    sleep_ms(150);
    assert_int_equal(lb_redis_reclaim(s, "q2", "w2", 100, 5, &b, &got, &err), 0);
    assert_true(got);
    assert_string_equal(b.id, "linear-7");
    assert_string_equal(b.entry, a.entry);
    assert_int_equal(b.len, 7);
    assert_memory_equal(b.payload, "abc\0def", 7);
    /* the lease moved: nothing left to reclaim right away */
    lb_redis_msg c;
    assert_int_equal(lb_redis_reclaim(s, "q2", "w3", 100, 5, &c, &got, &err), 0);
    assert_false(got);
    lb_redis_event_rec *ev = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_events_recent(s, "q2", 1, &ev, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_non_null(strstr(ev[0].msg, "lease expired"));
    lb_redis_events_free(&ev, n);

    assert_int_equal(lb_redis_ack(s, "q2", &b, true, &err), 0);
    lb_redis_queue_counts q;
    assert_int_equal(lb_redis_queue_stats(s, "q2", &q, &err), 0);
    assert_int_equal(q.pending, 0);
    assert_int_equal(q.length, 0);
    lb_redis_msg_clear(&a);
    lb_redis_msg_clear(&b);
    lb_redis_free(&s);
}

static void test_dead_letter_after_k_failures(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    const int K = 3;
    assert_int_equal(lb_redis_queue_init(s, "q3", &err), 0);
    assert_int_equal(lb_redis_enqueue(s, "q3", "poison", "xyz", 3, NULL, &err), 0);
    for (int attempt = 1; attempt <= K; attempt++) {
        lb_redis_msg m;
        bool got = false, dead = true;
        int64_t fails = 0;
        assert_int_equal(lb_redis_claim(s, "q3", "w1", 0, &m, &got, &err), 0);
        assert_true(got); /* re-queued after each failure below K */
        assert_string_equal(m.id, "poison");
        assert_memory_equal(m.payload, "xyz", 3);
        char why[64];
        snprintf(why, sizeof why, "boom %d", attempt);
        assert_int_equal(lb_redis_fail(s, "q3", &m, why, K, &dead, &fails, &err), 0);
        assert_int_equal(fails, attempt);
        assert_int_equal(dead, attempt == K);
        lb_redis_msg_clear(&m);
    }
    lb_redis_queue_counts c;
    assert_int_equal(lb_redis_queue_stats(s, "q3", &c, &err), 0);
    assert_int_equal(c.length, 0);
    assert_int_equal(c.pending, 0);
    assert_int_equal(c.dead, 1);
    lb_redis_msg m;
    bool got = true;
    assert_int_equal(lb_redis_claim(s, "q3", "w1", 0, &m, &got, &err), 0);
    assert_false(got);

    /* lease expiries count too: K=2 expiries dead-letter a job that kills its workers */
    assert_int_equal(lb_redis_enqueue(s, "q3", "oom-killer", "k", 1, NULL, &err), 0);
    assert_int_equal(lb_redis_claim(s, "q3", "w1", 0, &m, &got, &err), 0);
    assert_true(got);
    lb_redis_msg_clear(&m);
    sleep_ms(60);
    assert_int_equal(lb_redis_reclaim(s, "q3", "w2", 50, 2, &m, &got, &err), 0);
    assert_true(got); /* failure 1 of 2: re-run */
    lb_redis_msg_clear(&m);
    sleep_ms(60);
    assert_int_equal(lb_redis_reclaim(s, "q3", "w3", 50, 2, &m, &got, &err), 0);
    assert_false(got); /* failure 2 of 2: dead-lettered, not handed out */
    assert_int_equal(lb_redis_queue_stats(s, "q3", &c, &err), 0);
    assert_int_equal(c.dead, 2);
    assert_int_equal(c.pending, 0);

    lb_redis_dead_rec *d = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_dead_list(s, "q3", 10, &d, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(d[0].id, "poison");
    assert_string_equal(d[0].error, "boom 3");
    assert_int_equal(d[0].fails, 3);
    assert_string_equal(d[1].id, "oom-killer");
    assert_non_null(strstr(d[1].error, "lease expired"));
    assert_int_equal(d[1].fails, 2);
    lb_redis_dead_free(&d, n);

    /* a success clears the count: fail once, then ack, then fail again -> count 1 */
    assert_int_equal(lb_redis_enqueue(s, "q3", "flaky", "f", 1, NULL, &err), 0);
    int64_t fails = 0;
    bool dead = false;
    assert_int_equal(lb_redis_claim(s, "q3", "w1", 0, &m, &got, &err), 0);
    assert_int_equal(lb_redis_fail(s, "q3", &m, "transient", K, &dead, &fails, &err), 0);
    lb_redis_msg_clear(&m);
    assert_int_equal(lb_redis_claim(s, "q3", "w1", 0, &m, &got, &err), 0);
    assert_true(got);
    assert_int_equal(lb_redis_ack(s, "q3", &m, true, &err), 0);
    assert_int_equal(lb_redis_enqueue(s, "q3", "flaky", "f", 1, NULL, &err), 0);
    lb_redis_msg_clear(&m);
    assert_int_equal(lb_redis_claim(s, "q3", "w1", 0, &m, &got, &err), 0);
    assert_int_equal(lb_redis_fail(s, "q3", &m, "again", K, &dead, &fails, &err), 0);
    assert_int_equal(fails, 1);
    lb_redis_msg_clear(&m);
    lb_redis_free(&s);
}

static void test_record_too_large(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    assert_int_equal(lb_redis_queue_init(s, "q4", &err), 0);
    size_t n = LB_REDIS_MAX_RECORD + 1;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    fill(big, n, 99);
    assert_int_equal(lb_redis_enqueue(s, "q4", "big", big, n, NULL, &err), LB_EINVAL);
    assert_non_null(strstr(err.msg, "record too large"));
    assert_non_null(strstr(err.msg, "65537"));
    /* exactly the limit is fine and comes back intact */
    assert_int_equal(lb_redis_enqueue(s, "q4", "max", big, n - 1, NULL, &err), 0);
    lb_redis_msg m;
    bool got = false;
    assert_int_equal(lb_redis_claim(s, "q4", "w1", 0, &m, &got, &err), 0);
    assert_true(got);
    assert_int_equal(m.len, n - 1);
    assert_memory_equal(m.payload, big, n - 1);
    lb_redis_msg_clear(&m);

    char *text = malloc(n + 1);
    assert_non_null(text);
    memset(text, 'e', n);
    text[n] = 0;
    assert_int_equal(lb_redis_event(s, "q4", text, &err), LB_EINVAL);
    const char *f[] = {"error"}, *v[] = {text};
    assert_int_equal(lb_redis_job_set(s, "q4", 1, f, v, &err), LB_EINVAL);
    assert_int_equal(lb_redis_heartbeat(s, "w-big", text, 10, &err), LB_EINVAL);
    free(text);
    free(big);
    lb_redis_queue_counts c;
    assert_int_equal(lb_redis_queue_stats(s, "q4", &c, &err), 0);
    assert_int_equal(c.length, 1); /* the rejected record never reached Redis */
    lb_redis_free(&s);
}

static void test_heartbeats(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    assert_int_equal(lb_redis_heartbeat(s, "hb-short", "host a pid 1", 1, &err), 0);
    assert_int_equal(lb_redis_heartbeat(s, "hb-long", "host b pid 2", 60, &err), 0);
    lb_redis_worker_rec *w = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_workers_live(s, &w, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(w[0].id, "hb-long"); /* sorted */
    assert_string_equal(w[0].info, "host b pid 2");
    assert_true(w[0].ttl_s > 50 && w[0].ttl_s <= 60);
    lb_redis_workers_free(&w, n);
    sleep_ms(1150); /* the 1 s heartbeat expires */
    assert_int_equal(lb_redis_workers_live(s, &w, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(w[0].id, "hb-long");
    lb_redis_workers_free(&w, n);
    assert_int_equal(lb_redis_worker_remove(s, "hb-long", &err), 0);
    assert_int_equal(lb_redis_workers_live(s, &w, &n, &err), 0);
    assert_int_equal(n, 0);
    lb_redis_workers_free(&w, n);
    assert_int_equal(lb_redis_heartbeat(s, "has space", "x", 10, &err), LB_EINVAL);
    assert_int_equal(lb_redis_heartbeat(s, "w", "x", 0, &err), LB_EINVAL);
    lb_redis_free(&s);
}

static void test_reconnect_after_lost_connection(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    bool existed;
    assert_int_equal(lb_redis_job_create(s, "rc1", "fp", &existed, &err), 0);
    char *out = NULL;
    /* drop every client connection but redis-cli's own */
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d CLIENT KILL TYPE normal", g_srv.port), 0);
    free(out);
    /* idempotent read: reconnects and retries transparently */
    lb_redis_map m;
    assert_int_equal(lb_redis_job_get(s, "rc1", &m, &err), 0);
    assert_string_equal(lb_redis_map_get(&m, "fingerprint"), "fp");
    lb_redis_map_clear(&m);
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d CLIENT KILL TYPE normal", g_srv.port), 0);
    free(out);
    /* not idempotent, but the connection was seen dead before anything was
     * sent: it reconnects and the XADD happens exactly once */
    assert_int_equal(lb_redis_event(s, "rc1", "x", &err), 0);
    assert_int_equal(lb_redis_event(s, "rc1", "y", &err), 0);
    lb_redis_event_rec *ev = NULL;
    int32_t n = 0;
    assert_int_equal(lb_redis_events_recent(s, "rc1", 10, &ev, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(ev[0].msg, "x");
    assert_string_equal(ev[1].msg, "y");
    lb_redis_events_free(&ev, n);
    lb_redis_free(&s);
}

/* The hang of the old Redis-restart test: a worker leased an item, Redis was
 * killed and restarted from its AOF while the item ran, and the worker's
 * completion (MULTI, not retried) went out on the dead connection and was
 * dropped although the server was back; the item stayed leased to it. Now a
 * connection closed by the peer is replaced before anything is sent. */
static void test_stale_connection_after_aof_restart(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_test_redis srv;
    assert_int_equal(lb_test_redis_start_aof(&srv), 0);
    lb_redis *s = connect_ok(srv.url);
    lb_err err = {0};
    bool existed, got = false;
    lb_redis_msg msg;
    int rc = lb_redis_job_create(s, "aof1", "fp", &existed, &err);
    if (!rc)
        rc = lb_redis_queue_init(s, "aof1", &err);
    if (!rc)
        rc = lb_redis_enqueue(s, "aof1", "item-1", "p", 1, NULL, &err);
    if (!rc)
        rc = lb_redis_claim(s, "aof1", "w1", 0, &msg, &got, &err);
    /* kill -9 and restart on the same port from the AOF */
    int restarted = lb_test_redis_restart(&srv, NULL);
    lb_redis_queue_counts c = {0};
    int rc_stats = -1, rc_done = -1, rc_read = -1;
    lb_redis_result *res = NULL;
    int32_t n = 0;
    char cursor[48] = "0";
    if (!rc && got && restarted == 0) {
        lb_redis *s2 = connect_ok(srv.url);
        rc_stats = lb_redis_queue_stats(s2, "aof1", &c, &err); /* the lease survived */
        lb_redis_free(&s2);
        /* the old handle's socket is dead: not idempotent, and still delivered */
        rc_done = lb_redis_complete(s, "aof1", &msg, "ok", 2, &err);
        rc_read = lb_redis_results_read(s, "aof1", cursor, 10, 0, &res, &n, &err);
    }
    bool one_result = rc_read == 0 && n == 1 && !strcmp(res[0].id, "item-1") && res[0].len == 2;
    lb_redis_queue_counts after = {0};
    int rc_after = rc_done == 0 ? lb_redis_queue_stats(s, "aof1", &after, &err) : -1;
    lb_redis_results_free(&res, n);
    lb_redis_msg_clear(&msg);
    lb_redis_free(&s);
    lb_test_redis_stop(&srv);
    if (rc)
        fail_msg("setup: %s", err.msg);
    assert_true(got);
    assert_int_equal(restarted, 0);
    assert_int_equal(rc_stats, 0);
    assert_int_equal(c.pending, 1);
    if (rc_done)
        fail_msg("completion after the restart: %s", err.msg);
    assert_true(one_result);
    assert_int_equal(rc_after, 0);
    assert_int_equal(after.pending, 0);
    assert_int_equal(after.length, 0);
}

/* ---- CLI ---- */

static void test_status_and_cancel_cli(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok(g_srv.url);
    lb_err err = {0};
    bool existed;
    assert_int_equal(lb_redis_job_create(s, "cli-job", "fp1", &existed, &err), 0);
    const char *f[] = {"state", "method", "bits", "blocks_done", "blocks_total", "jobs_done",
                       "jobs_failed", "jobs_in_flight", "jobs_total", "eta_s"};
    const char *v[] = {"running", "gptq", "4", "1", "2", "7", "1", "1", "16", "95"};
    assert_int_equal(lb_redis_job_set(s, "cli-job", 10, f, v, &err), 0);
    assert_int_equal(lb_redis_queue_init(s, "cli-job", &err), 0);
    assert_int_equal(lb_redis_enqueue(s, "cli-job", "a", "1", 1, NULL, &err), 0);
    assert_int_equal(lb_redis_enqueue(s, "cli-job", "b", "2", 1, NULL, &err), 0);
    lb_redis_msg m;
    bool got, dead;
    assert_int_equal(lb_redis_claim(s, "cli-job", "w9", 0, &m, &got, &err), 0);
    assert_int_equal(lb_redis_fail(s, "cli-job", &m, "singular Hessian", 1, &dead, NULL, &err), 0);
    assert_true(dead);
    lb_redis_msg_clear(&m);
    assert_int_equal(lb_redis_claim(s, "cli-job", "w9", 0, &m, &got, &err), 0);
    lb_redis_msg_clear(&m);
    assert_int_equal(lb_redis_heartbeat(s, "w9", "node7 pid 4242 job cli-job", 30, &err), 0);
    assert_int_equal(lb_redis_event(s, "cli-job", "block 1/2 done", &err), 0);

    char *out = NULL;
    const char *bin = lb_test_lowbit_bin();
    assert_int_equal(lb_test_run(&out, "%s status cli-job --redis %s", bin, g_srv.url), 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "state     running"));
    assert_non_null(strstr(out, "gptq, 4 bits"));
    assert_non_null(strstr(out, "1/2 done"));
    assert_non_null(strstr(out, "7 done, 1 failed, 1 in flight, 16 total"));
    assert_non_null(strstr(out, "ETA       1m 35s"));
    assert_non_null(strstr(out, "1 leased (XPENDING), 1 dead-lettered"));
    assert_non_null(strstr(out, "a after 1 failures: singular Hessian"));
    assert_non_null(strstr(out, "w9"));
    assert_non_null(strstr(out, "block 1/2 done"));
    free(out);

    assert_int_equal(lb_test_run(&out, "%s status cli-job --json --events 1 --redis %s", bin,
                                 g_srv.url), 0);
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    free(out);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "record"), "state")),
                        "running");
    json_t *q = json_object_get(o, "queue");
    assert_int_equal(json_integer_value(json_object_get(q, "pending")), 1);
    assert_int_equal(json_integer_value(json_object_get(q, "dead")), 1);
    assert_int_equal(json_array_size(json_object_get(o, "events")), 1);
    assert_false(json_is_true(json_object_get(o, "cancelled")));
    json_decref(o);

    /* listing */
    assert_int_equal(lb_test_run(&out, "%s status --redis %s", bin, g_srv.url), 0);
    assert_non_null(strstr(out, "cli-job"));
    free(out);

    /* cancel: flag + state + event; status shows it */
    assert_int_equal(lb_test_run(&out, "%s cancel cli-job --redis %s", bin, g_srv.url), 0);
    assert_non_null(strstr(out, "cancel requested"));
    free(out);
    bool cancelled = false;
    assert_int_equal(lb_redis_is_cancelled(s, "cli-job", &cancelled, &err), 0);
    assert_true(cancelled);
    assert_int_equal(lb_test_run(&out, "%s status cli-job --redis %s", bin, g_srv.url), 0);
    assert_non_null(strstr(out, "cancelled (cancel requested)"));
    free(out);

    /* errors: unknown job, bad name, finished job */
    assert_int_equal(lb_test_run(&out, "%s cancel ghost --redis %s", bin, g_srv.url), 1);
    assert_non_null(strstr(out, "no job 'ghost'"));
    free(out);
    assert_int_equal(lb_test_run(&out, "%s status 'b@d' --redis %s", bin, g_srv.url), 2);
    assert_non_null(strstr(out, "bad job name"));
    free(out);
    const char *fd[] = {"state"}, *vd[] = {"done"};
    assert_int_equal(lb_redis_job_set(s, "cli-job", 1, fd, vd, &err), 0);
    assert_int_equal(lb_test_run(&out, "%s cancel cli-job --json --redis %s", bin, g_srv.url), 1);
    assert_non_null(strstr(out, "already finished"));
    assert_non_null(strstr(out, "\"ok\":false"));
    free(out);
    lb_redis_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_dead_redis_fast_clear_error),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_job_record_fingerprint),
        cmocka_unit_test(test_enqueue_claim_ack),
        cmocka_unit_test(test_lease_reclaim),
        cmocka_unit_test(test_dead_letter_after_k_failures),
        cmocka_unit_test(test_record_too_large),
        cmocka_unit_test(test_heartbeats),
        cmocka_unit_test(test_reconnect_after_lost_connection),
        cmocka_unit_test(test_stale_connection_after_aof_restart),
        cmocka_unit_test(test_status_and_cancel_cli),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
