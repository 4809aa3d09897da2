/* The queue's liveness operations (proto/lb_redis.h) against a private
 * redis-server: lb_redis_leases tells a dead holder (heartbeat key gone, lease
 * idle >= LB_REDIS_DEAD_MIN_IDLE_MS) from a live one; lb_redis_reclaim_dead
 * takes a dead worker's item over once (counted as a failure, event naming the
 * dead worker); lb_redis_requeue_dead puts it back in the queue;
 * lb_redis_release gives an item back without counting a failure. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb_redis.h"
#include "lb_test_cluster.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static lb_redis *connect_ok(void)
{
    lb_err err = {0};
    lb_redis *s = NULL;
    if (lb_redis_connect(lb_test_srv.url, NULL, &s, &err))
        fail_msg("connect %s: %s", lb_test_srv.url, err.msg);
    return s;
}

static int64_t fails_of(lb_redis *s, const char *name, const char *id)
{
    (void)s;
    char *out = NULL;
    lb_test_run(&out, "redis-cli -p %d HGET lowbit:job:%s:fails %s", lb_test_srv.port, name, id);
    int64_t v = out ? atoll(out) : -1;
    free(out);
    return v;
}

static bool has_event(lb_redis *s, const char *name, const char *a, const char *b)
{
    lb_err err = {0};
    lb_redis_event_rec *ev = NULL;
    int32_t n = 0;
    bool hit = false;
    assert_int_equal(lb_redis_events_recent(s, name, 100, &ev, &n, &err), 0);
    for (int32_t i = 0; i < n && !hit; i++)
        hit = strstr(ev[i].msg, a) && (!b || strstr(ev[i].msg, b));
    lb_redis_events_free(&ev, n);
    return hit;
}

static void test_dead_holder(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok();
    lb_err err = {0};
    const char *job = "lv1";
    assert_int_equal(lb_redis_queue_init(s, job, &err), 0);
    assert_int_equal(lb_redis_enqueue(s, job, "itemA", "pa", 2, NULL, &err), 0);
    assert_int_equal(lb_redis_enqueue(s, job, "itemB", "pb", 2, NULL, &err), 0);
    /* wLive keeps a heartbeat; wDead never had one */
    assert_int_equal(lb_redis_heartbeat(s, "wLive", "test", 60, &err), 0);
    lb_redis_msg a, b, m;
    bool got = false;
    assert_int_equal(lb_redis_claim(s, job, "wLive", 0, &a, &got, &err), 0);
    assert_true(got);
    assert_int_equal(lb_redis_claim(s, job, "wDead", 0, &b, &got, &err), 0);
    assert_true(got);
    lb_redis_lease_rec *l = NULL;
    int32_t n = 0, nd = -1;
    /* fresh leases are never dead, heartbeat or not */
    assert_int_equal(lb_redis_leases(s, job, 100, &l, &n, &nd, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(nd, 0);
    free(l);
    assert_int_equal(lb_redis_reclaim_dead(s, job, "wC", 3, &m, &got, &err), 0);
    assert_false(got);
    sleep_ms(LB_REDIS_DEAD_MIN_IDLE_MS + 200);
    assert_int_equal(lb_redis_leases(s, job, 100, &l, &n, &nd, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(nd, 1);
    for (int32_t i = 0; i < n; i++) {
        if (!strcmp(l[i].consumer, "wDead")) {
            assert_true(l[i].dead);
            assert_string_equal(l[i].id, "itemB");
            assert_true(l[i].idle_ms >= LB_REDIS_DEAD_MIN_IDLE_MS);
        } else {
            assert_string_equal(l[i].consumer, "wLive");
            assert_false(l[i].dead);
        }
    }
    free(l);
    /* lowbit status names the item, the dead worker and since when */
    bool existed = false;
    assert_int_equal(lb_redis_job_create(s, job, "fp", &existed, &err), 0);
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "'%s' status %s --redis %s --events 0",
                                 lb_test_lowbit_bin(), job, lb_test_srv.url), 0);
    if (!strstr(out, "stalled   1 item leased by dead workers") ||
        !strstr(out, "item itemB waits on dead worker wDead since") || strstr(out, "dead worker wLive"))
        fail_msg("lowbit status:\n%s", out);
    free(out);
    /* wC takes itemB over (once), not wLive's itemA */
    assert_int_equal(lb_redis_reclaim_dead(s, job, "wC", 3, &m, &got, &err), 0);
    assert_true(got);
    assert_string_equal(m.id, "itemB");
    assert_int_equal(m.len, 2);
    assert_memory_equal(m.payload, "pb", 2);
    assert_int_equal(fails_of(s, job, "itemB"), 1);
    assert_true(has_event(s, job, "worker wDead is dead", "wC"));
    lb_redis_msg m2;
    assert_int_equal(lb_redis_reclaim_dead(s, job, "wD", 3, &m2, &got, &err), 0);
    assert_false(got); /* wC has it now, and wC's lease is fresh */
    /* give it back: queued again, no failure counted */
    assert_int_equal(lb_redis_release(s, job, &m, "test stop", &err), 0);
    assert_int_equal(fails_of(s, job, "itemB"), 1);
    assert_true(has_event(s, job, "itemB given back", "test stop"));
    lb_redis_msg_clear(&m);
    lb_redis_queue_counts c;
    assert_int_equal(lb_redis_queue_stats(s, job, &c, &err), 0);
    assert_int_equal(c.pending, 1); /* itemA only */
    assert_int_equal(c.length, 2);
    assert_int_equal(lb_redis_claim(s, job, "wE", 0, &m, &got, &err), 0);
    assert_true(got);
    assert_string_equal(m.id, "itemB");
    lb_redis_msg_clear(&m);
    lb_redis_msg_clear(&a);
    lb_redis_msg_clear(&b);
    lb_redis_free(&s);
}

static void test_requeue_dead(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    lb_redis *s = connect_ok();
    lb_err err = {0};
    const char *job = "lv2";
    assert_int_equal(lb_redis_queue_init(s, job, &err), 0);
    assert_int_equal(lb_redis_enqueue(s, job, "itemC", "pc", 2, NULL, &err), 0);
    lb_redis_msg m;
    bool got = false;
    assert_int_equal(lb_redis_claim(s, job, "wGone", 0, &m, &got, &err), 0);
    assert_true(got);
    lb_redis_msg_clear(&m);
    int32_t rq = -1;
    assert_int_equal(lb_redis_requeue_dead(s, job, "coordinator", 2, &rq, &err), 0);
    assert_int_equal(rq, 0); /* not idle long enough yet */
    sleep_ms(LB_REDIS_DEAD_MIN_IDLE_MS + 200);
    assert_int_equal(lb_redis_requeue_dead(s, job, "coordinator", 2, &rq, &err), 0);
    assert_int_equal(rq, 1);
    lb_redis_queue_counts c;
    assert_int_equal(lb_redis_queue_stats(s, job, &c, &err), 0);
    assert_int_equal(c.pending, 0);
    assert_int_equal(c.length, 1);
    assert_int_equal(fails_of(s, job, "itemC"), 1);
    /* the second death of the same item reaches max_failures 2: dead-lettered */
    assert_int_equal(lb_redis_claim(s, job, "wGone2", 0, &m, &got, &err), 0);
    assert_true(got);
    lb_redis_msg_clear(&m);
    sleep_ms(LB_REDIS_DEAD_MIN_IDLE_MS + 200);
    assert_int_equal(lb_redis_requeue_dead(s, job, "coordinator", 2, &rq, &err), 0);
    assert_int_equal(rq, 0);
    assert_int_equal(lb_redis_queue_stats(s, job, &c, &err), 0);
    assert_int_equal(c.pending, 0);
    assert_int_equal(c.length, 0);
    assert_int_equal(c.dead, 1);
    lb_redis_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dead_holder),
        cmocka_unit_test(test_requeue_dead),
    };
    return cmocka_run_group_tests(tests, lb_test_cluster_setup, lb_test_cluster_teardown);
}
