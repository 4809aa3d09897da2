/* Test helper: a private redis-server on a free loopback port, always cleaned up. */
#ifndef LB_TEST_REDIS_H
#define LB_TEST_REDIS_H

#include <sys/types.h>

#include "lb_test_util.h"

typedef struct {
    pid_t pid;      /* 0 when not running */
    int port;
    char *dir;      /* temp dir (--dir, log, AOF), removed by stop */
    int aof;        /* 1: appendonly yes + appendfsync always (lb_test_redis_start_aof) */
    char url[128];  /* redis://127.0.0.1:PORT/0 (no credentials) */
} lb_test_redis;

/* 1 when redis-server is on PATH, else 0. */
int lb_test_redis_available(void);

/* Starts `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no --dir TMP`
 * plus the NULL-terminated extra arguments (may be NULL), retrying other ports on a
 * collision, and waits until it answers. The server dies with the test process
 * (PDEATHSIG) and at exit. Returns 0 or -1. */
int lb_test_redis_start(lb_test_redis *r, const char *const *extra);

/* Like lb_test_redis_start, but persistent: --appendonly yes --appendfsync always,
 * so every acknowledged write survives a kill -9; lb_test_redis_restart reloads it
 * from the AOF on the same port and directory. Returns 0 or -1. */
int lb_test_redis_start_aof(lb_test_redis *r);

/* Stops the server (SIGTERM, then SIGKILL after 2 s), reaps it, removes the temp
 * dir. Safe to call twice or on a never-started record. */
void lb_test_redis_stop(lb_test_redis *r);

/* kill -9 of the server, keeping its directory (AOF) and port for a restart. */
void lb_test_redis_crash(lb_test_redis *r);

/* Starts the server again on the same port and directory (extra as for start;
 * an AOF server stays one). Kills it first if it still runs. Returns 0 or -1. */
int lb_test_redis_restart(lb_test_redis *r, const char *const *extra);

/* A free TCP port on 127.0.0.1 (bound then closed), or -1. Nothing listens there. */
int lb_test_free_port(void);

/* Skips the current test when redis-server is missing, except under CI=true,
 * where that is a failure (lb_test_need). */
#define LB_TEST_REQUIRE_REDIS() LB_TEST_NEED(LB_NEED_REDIS)

#endif
