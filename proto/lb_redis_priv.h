/* lb_redis_priv: internals shared by lb_redis.c (connection, command path),
 * lb_redis_jobs.c (job records, events, workers), lb_redis_queue.c (the work
 * stream) and lb_redis_leases.c (leases of dead workers); not a public API: the
 * handle, binary-safe argument lists, the checked command path and helpers. */
#ifndef LB_REDIS_PRIV_H
#define LB_REDIS_PRIV_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "lb_redis_url.h"
#include "lb_redis.h"

struct lb_redis {
    redisContext *c; /* NULL after a lost connection; the next command reconnects */
    lb_redis_url url;
    lb_redis_opts o;
    char peer[320];
    int64_t connects; /* successful connections so far */
    int block_ms; /* server-side block time of the next command: the socket waits that much longer */
};

/* Command arguments, binary-safe. Numbers are formatted into owned slots. */
#define ARGS_MAX 140
typedef struct {
    int n;
    const char *v[ARGS_MAX];
    size_t l[ARGS_MAX];
    char nums[8][24];
    int nn;
} lb_redis_args;

static inline void a_bin(lb_redis_args *a, const void *p, size_t n)
{
    if (a->n < ARGS_MAX) {
        a->v[a->n] = p;
        a->l[a->n] = n;
    }
    a->n++; /* overflow is caught in lb_redis_priv_run */
}

static inline void a_str(lb_redis_args *a, const char *s) { a_bin(a, s, strlen(s)); }

static inline void a_i64(lb_redis_args *a, int64_t v)
{
    if (a->nn >= 8) {
        a->n = ARGS_MAX + 1;
        return;
    }
    snprintf(a->nums[a->nn], sizeof a->nums[0], "%lld", (long long)v);
    a_str(a, a->nums[a->nn++]);
}

static inline struct timeval tv_ms(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Runs one command. A lost connection is retried (reconnect + backoff) only
 * when idempotent. Error replies become LB_ENET unless allow_error (then the
 * caller inspects them). Returns the reply (caller frees) or NULL with err set. */
redisReply *lb_redis_priv_run(lb_redis *s, const lb_redis_args *a, bool idempotent, bool allow_error,
                              const char *file, int line, lb_err *err);
/* Checks the reply type; on mismatch frees r, sets err and returns NULL. */
redisReply *lb_redis_priv_expect(lb_redis *s, redisReply *r, int type, const char *cmd,
                                 const char *file, int line, lb_err *err);
/* Runs cmds[0..n) inside MULTI/EXEC (pipelined). Returns 0 or an error. */
int lb_redis_priv_multi(lb_redis *s, const lb_redis_args *cmds, int n, const char *file, int line,
                        lb_err *err);
/* Integer reply of a command (never retried unless idempotent, which it is here). */
int lb_redis_priv_int(lb_redis *s, const lb_redis_args *a, int64_t *out, lb_err *err);

/* RUN: run a command; CHECKED: run and require a reply type. Both record the call site. */
#define RUN(s, a, idem, allow_err, err) lb_redis_priv_run((s), (a), (idem), (allow_err), __FILE__, __LINE__, (err))
#define CHECKED(s, a, idem, type, err)                                                        \
    lb_redis_priv_expect((s), lb_redis_priv_run((s), (a), (idem), false, __FILE__, __LINE__, (err)), (type),   \
                 (a)->v[0], __FILE__, __LINE__, (err))
#define MULTI(s, cmds, n, err) lb_redis_priv_multi((s), (cmds), (n), __FILE__, __LINE__, (err))

/* Printable id (1..LB_REDIS_ID_MAX, no spaces) / record size (<= LB_REDIS_MAX_RECORD). */
int lb_redis_priv_check_id(const char *what, const char *id, lb_err *err);
int lb_redis_priv_check_size(lb_redis *s, const char *what, size_t len, lb_err *err);

typedef struct {
    char s[LB_REDIS_NAME_MAX + 32];
} lb_redis_key;
/* "lowbit:job:<name><suffix>"; name must be checked first. */
lb_redis_key lb_redis_priv_job_key(const char *name, const char *suffix);

/* Parses a stream entry [id, [f, v, ...]] into its id and a field map (empty
 * for an entry deleted while pending). */
int lb_redis_priv_parse_entry(lb_redis *s, const redisReply *e, char id[48], lb_redis_map *m,
                              lb_err *err);

/* Monotonic milliseconds; a NUL-terminated copy of s[0..n) (NULL: out of memory). */
int64_t lb_redis_priv_now_ms(void);
char *lb_redis_priv_dup_n(const char *s, size_t n);
/* Fills m from a flat [k1, v1, k2, v2, ...] array of strings. */
int lb_redis_priv_map_from_pairs(lb_redis *s, const redisReply *r, lb_redis_map *m, lb_err *err);

/* Work-stream helpers of lb_redis_queue.c that lb_redis_leases.c reuses. Parses
 * entry e (XREADGROUP/XAUTOCLAIM) into msg; *deleted for an entry deleted while
 * pending. */
int lb_redis_priv_take_entry(lb_redis *s, const char *name, const redisReply *e, lb_redis_msg *msg,
                             bool *deleted, lb_err *err);
/* Moves msg to the dead-letter stream with error and its failure count. */
int lb_redis_priv_dead_letter(lb_redis *s, const char *name, const lb_redis_msg *msg,
                              const char *error, int64_t fails, lb_err *err);
/* Counts one more failure of item id. OUT: *fails, the count so far. */
int lb_redis_priv_count_failure(lb_redis *s, const char *name, const char *id, int64_t *fails,
                                lb_err *err);

#endif
