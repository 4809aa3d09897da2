/* lb_redis: the Redis control plane of a distributed lowbit job (hiredis).
 *
 * Only small records live in Redis (each value <= LB_REDIS_MAX_RECORD bytes);
 * tensors travel elsewhere. Keys, for a job NAME (see docs/watching.md):
 *   lowbit:jobs                      set of job names
 *   lowbit:job:NAME                  hash: state, method, bits, fingerprint, counters, times
 *   lowbit:job:NAME:events           stream (MAXLEN ~ 10000) of {t: unix ms, msg: text}
 *   lowbit:job:NAME:queue            stream of {id: job id, payload: bytes}, group "workers"
 *   lowbit:job:NAME:fails            hash: job id -> failure count
 *   lowbit:job:NAME:dead             stream of dead-lettered {id, payload, error, fails}
 *   lowbit:job:NAME:results          stream of {id, result} (done) or {id, error} (dead)
 *   lowbit:job:NAME:enqueued         set of item ids ever queued (lb_redis_enqueue_once)
 *   lowbit:job:NAME:cancel           string "1" once cancelled
 *   lowbit:workers                   set of worker ids
 *   lowbit:worker:ID                 heartbeat string (SET EX ttl): free-form info
 *
 * Every reply is checked; errors come back as one line naming the server
 * (password never shown), the command and the fix. Idempotent commands are
 * retried after a lost connection with exponential backoff; others are not
 * (the caller cannot know whether they ran) but the next call reconnects.
 * A store handle is not thread-safe: one per thread. */
#ifndef LB_REDIS_H
#define LB_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"

#define LB_REDIS_MAX_RECORD 65536 /* bytes per stored value (payload, event, field) */
#define LB_REDIS_EVENTS_MAXLEN 10000
#define LB_REDIS_GROUP "workers"
#define LB_REDIS_NAME_MAX 64  /* job names: [A-Za-z0-9._-]{1,64} */
#define LB_REDIS_ID_MAX 128   /* queue item ids, worker ids: printable, no spaces */

typedef struct lb_redis lb_redis;

typedef struct {
    int connect_timeout_ms; /* per attempt; default 2000 */
    int command_timeout_ms; /* per non-blocking command; default 10000 */
    int retries;            /* reconnect attempts after a lost connection; default 3 */
    int backoff_ms;         /* first backoff, doubled each retry; default 100 */
} lb_redis_opts;

/* Defaults above. */
lb_redis_opts lb_redis_opts_default(void);

/* Connects to url (lb_redis_url syntax), AUTHs when the URL carries
 * credentials, SELECTs the db and PINGs. opts may be NULL (defaults).
 * Returns 0 and *out (free with lb_redis_free), or LB_EINVAL (bad URL),
 * LB_ENET (unreachable, auth failed, server error) with one line in err. */
int lb_redis_connect(const char *url, const lb_redis_opts *opts, lb_redis **out, lb_err *err);

/* Closes the connection and frees; *s = NULL. Accepts NULL. */
void lb_redis_free(lb_redis **s);

/* Printable server address without the password, e.g. "redis://127.0.0.1:6379/0". */
const char *lb_redis_peer(const lb_redis *s);

/* Successful connections of the handle so far: 1 after lb_redis_connect, one
 * more per transparent reconnect (a caller that must re-check server state
 * after an outage compares it between calls). */
int64_t lb_redis_connects(const lb_redis *s);

/* Checks a job name: 1..64 of [A-Za-z0-9._-]. Returns 0 or LB_EINVAL. */
int lb_redis_check_name(const char *name, lb_err *err);

/* ---- string maps (hash reads) ---- */
typedef struct {
    int32_t n;
    char **keys; /* owned */
    char **vals; /* owned */
} lb_redis_map;

/* Frees the map's contents and zeroes it. Accepts an empty map. */
void lb_redis_map_clear(lb_redis_map *m);
/* Value of key, or NULL when absent. */
const char *lb_redis_map_get(const lb_redis_map *m, const char *key);

/* ---- job record ---- */

/* Creates the job record if absent (atomically, HSETNX on "fingerprint") and
 * adds name to lowbit:jobs. If a record exists with the same fingerprint,
 * *existed = true and nothing is written. If it exists with a different one:
 * LB_ESTATE "job NAME already exists with different options ...". */
int lb_redis_job_create(lb_redis *s, const char *name, const char *fingerprint, bool *existed,
                        lb_err *err);

/* HSETs n field/value pairs plus "updated" (unix seconds) on the job hash.
 * Values longer than LB_REDIS_MAX_RECORD -> LB_EINVAL. */
int lb_redis_job_set(lb_redis *s, const char *name, int n, const char *const *fields,
                     const char *const *values, lb_err *err);

/* HINCRBY field by delta on the job hash (and sets "updated"). OUT: *now (may be NULL). */
int lb_redis_job_incr(lb_redis *s, const char *name, const char *field, int64_t delta,
                      int64_t *now, lb_err *err);

/* Reads the whole job hash into *out (caller clears). LB_ENOTFOUND with
 * "no job NAME on SERVER" when absent. */
int lb_redis_job_get(lb_redis *s, const char *name, lb_redis_map *out, lb_err *err);

/* Names of all jobs (SMEMBERS lowbit:jobs), sorted. OUT: *names (caller frees
 * each and the array), *n. */
int lb_redis_job_list(lb_redis *s, char ***names, int32_t *n, lb_err *err);

/* ---- events ---- */

/* XADD lowbit:job:NAME:events MAXLEN ~ 10000 * t <unix ms> msg <text>. */
int lb_redis_event(lb_redis *s, const char *name, const char *msg, lb_err *err);

typedef struct {
    char id[48];   /* stream entry id */
    int64_t t_ms;  /* "t" field */
    char *msg;     /* owned */
} lb_redis_event_rec;

/* The last `count` events, oldest first. OUT: *events (free with
 * lb_redis_events_free), *n. */
int lb_redis_events_recent(lb_redis *s, const char *name, int32_t count,
                           lb_redis_event_rec **events, int32_t *n, lb_err *err);
void lb_redis_events_free(lb_redis_event_rec **events, int32_t n);

/* ---- queue ---- */

/* A queue item as claimed by a worker. */
typedef struct {
    char entry[48];               /* stream entry id (the lease handle) */
    char id[LB_REDIS_ID_MAX + 1]; /* job id given at enqueue */
    uint8_t *payload;             /* owned; bytes given at enqueue */
    size_t len;
} lb_redis_msg;

void lb_redis_msg_clear(lb_redis_msg *m);

/* XGROUP CREATE queue workers 0 MKSTREAM; an existing group is fine. */
int lb_redis_queue_init(lb_redis *s, const char *name, lb_err *err);

/* XADD queue * id <id> payload <bytes>. len > LB_REDIS_MAX_RECORD -> LB_EINVAL
 * "record too large". OUT: entry (>= 48 bytes, may be NULL). */
int lb_redis_enqueue(lb_redis *s, const char *name, const char *id, const void *payload,
                     size_t len, char *entry, lb_err *err);

/* XREADGROUP GROUP workers <consumer> COUNT 1 BLOCK block_ms STREAMS queue >.
 * block_ms 0 = do not block. OUT: *got = true and *msg filled (caller clears)
 * when an item was leased; false on timeout. */
int lb_redis_claim(lb_redis *s, const char *name, const char *consumer, int block_ms,
                   lb_redis_msg *msg, bool *got, lb_err *err);

/* XACK the lease; with del also XDEL the entry. Also clears the item's failure count. */
int lb_redis_ack(lb_redis *s, const char *name, const lb_redis_msg *msg, bool del, lb_err *err);

/* Takes over one lease idle for >= min_idle_ms (XAUTOCLAIM, scanning the whole
 * pending list). A stale lease counts as a failure of its item ("lease expired"):
 * if that reaches max_failures the item goes to the dead-letter stream instead
 * and the scan continues. OUT: *got, *msg as for lb_redis_claim. */
int lb_redis_reclaim(lb_redis *s, const char *name, const char *consumer, int64_t min_idle_ms,
                     int max_failures, lb_redis_msg *msg, bool *got, lb_err *err);

/* Records a failed run of msg: HINCRBY fails id. Below max_failures the item is
 * re-queued at the tail (new entry, same id and payload) and the lease is
 * released; at max_failures it moves to the dead-letter stream with `error`.
 * Atomic (MULTI/EXEC). OUT: *dead (may be NULL), *failures (may be NULL). */
int lb_redis_fail(lb_redis *s, const char *name, const lb_redis_msg *msg, const char *error,
                  int max_failures, bool *dead, int64_t *failures, lb_err *err);

/* Like lb_redis_enqueue, but at most once per id and job (SADD on
 * lowbit:job:NAME:enqueued): a restarted coordinator does not queue work twice.
 * OUT: *added = false when id was queued before. */
int lb_redis_enqueue_once(lb_redis *s, const char *name, const char *id, const void *payload,
                          size_t len, bool *added, lb_err *err);

/* Success of a leased item: XADD lowbit:job:NAME:results {id, result <bytes>},
 * XACK + XDEL the lease and clear its failure count, atomically. len <= 64 KiB. */
int lb_redis_complete(lb_redis *s, const char *name, const lb_redis_msg *msg, const void *result,
                      size_t len, lb_err *err);

/* Keeps a long-running lease from looking stale: XCLAIM to the same consumer
 * with min-idle 0 (resets the idle time). */
int lb_redis_lease_touch(lb_redis *s, const char *name, const char *consumer,
                         const lb_redis_msg *msg, lb_err *err);

/* One entry of lowbit:job:NAME:results: a success (result bytes) or a
 * dead-lettered item (error). */
typedef struct {
    char id[LB_REDIS_ID_MAX + 1];
    uint8_t *result; /* owned; NULL for a dead-lettered item */
    size_t len;
    char *error;     /* owned; NULL on success */
} lb_redis_result;

/* XREAD COUNT count [BLOCK block_ms] STREAMS results <cursor>; advances cursor
 * (start with "0"). OUT: *out (lb_redis_results_free), *n (0 on timeout). */
int lb_redis_results_read(lb_redis *s, const char *name, char cursor[48], int32_t count,
                          int block_ms, lb_redis_result **out, int32_t *n, lb_err *err);
void lb_redis_results_free(lb_redis_result **res, int32_t n);

typedef struct {
    int64_t length;    /* entries in the queue stream (waiting + leased) */
    int64_t pending;   /* leased, not acknowledged (XPENDING) */
    int64_t dead;      /* entries in the dead-letter stream */
    int64_t consumers; /* consumers known to the group */
} lb_redis_queue_counts;

/* Counts; a job without a queue yet gives zeros. */
int lb_redis_queue_stats(lb_redis *s, const char *name, lb_redis_queue_counts *out, lb_err *err);

typedef struct {
    char entry[48];
    char id[LB_REDIS_ID_MAX + 1];
    char *error; /* owned */
    int64_t fails;
} lb_redis_dead_rec;

/* The first `count` dead-lettered items. OUT: *recs (free with lb_redis_dead_free), *n. */
int lb_redis_dead_list(lb_redis *s, const char *name, int32_t count, lb_redis_dead_rec **recs,
                       int32_t *n, lb_err *err);
void lb_redis_dead_free(lb_redis_dead_rec **recs, int32_t n);

/* ---- cancel ---- */

/* Sets lowbit:job:NAME:cancel, state "cancelled" and logs an event. The job must
 * exist (LB_ENOTFOUND). Idempotent. */
int lb_redis_cancel(lb_redis *s, const char *name, lb_err *err);
/* OUT: *cancelled. */
int lb_redis_is_cancelled(lb_redis *s, const char *name, bool *cancelled, lb_err *err);

/* ---- workers ---- */

/* SET lowbit:worker:ID info EX ttl_s and SADD lowbit:workers ID. */
int lb_redis_heartbeat(lb_redis *s, const char *worker, const char *info, int ttl_s, lb_err *err);
/* Removes the worker's heartbeat and registry entry (clean exit). */
int lb_redis_worker_remove(lb_redis *s, const char *worker, lb_err *err);

typedef struct {
    char id[LB_REDIS_ID_MAX + 1];
    char *info;     /* owned */
    int64_t ttl_s;  /* seconds left on the heartbeat */
} lb_redis_worker_rec;

/* Workers whose heartbeat is alive, sorted by id; registry entries whose heartbeat
 * expired are pruned. OUT: *recs (free with lb_redis_workers_free), *n. */
int lb_redis_workers_live(lb_redis *s, lb_redis_worker_rec **recs, int32_t *n, lb_err *err);
void lb_redis_workers_free(lb_redis_worker_rec **recs, int32_t n);

/* ---- liveness: leases held by dead workers ---- */

/* A worker counts as dead when its heartbeat key lowbit:worker:ID is gone and
 * its lease has been idle (untouched) at least this long: a live worker
 * touches every lease it holds each heartbeat period, so a heartbeat lost to a
 * Redis restart alone does not make its items look abandoned. */
#define LB_REDIS_DEAD_MIN_IDLE_MS 3000

/* One leased (pending) queue entry. */
typedef struct {
    char entry[48];
    char id[LB_REDIS_ID_MAX + 1];       /* item id ("" unless the holder is dead) */
    char consumer[LB_REDIS_ID_MAX + 1]; /* the worker holding it */
    int64_t idle_ms;                    /* since its last delivery or touch */
    bool dead;                          /* holder's heartbeat gone, idle >= the minimum */
} lb_redis_lease_rec;

/* The first `count` leases of job name (XPENDING), each with its holder's
 * liveness (EXISTS lowbit:worker:ID). A job without a queue gives none.
 * OUT: *recs (free()), *n, *n_dead (may be NULL). */
int lb_redis_leases(lb_redis *s, const char *name, int32_t count, lb_redis_lease_rec **recs,
                    int32_t *n, int32_t *n_dead, lb_err *err);

/* Takes over one item leased by a dead worker (any lease idle time): XCLAIM
 * guarded by LB_REDIS_DEAD_MIN_IDLE_MS, so of two rescuers only one wins. It
 * counts as a failure of the item, like a stale lease (event "lease expired:
 * worker W is dead ..."); at max_failures it is dead-lettered and the scan goes
 * on. OUT: *got, *msg as for lb_redis_claim. */
int lb_redis_reclaim_dead(lb_redis *s, const char *name, const char *consumer, int max_failures,
                          lb_redis_msg *msg, bool *got, lb_err *err);

/* The coordinator's variant: every item leased by a dead worker goes back to
 * the queue (tail), counted as a failure (or dead-lettered). The entry is first
 * claimed for the consumer `reaper` (which has no heartbeat, so a reaper that
 * dies midway leaves it to the next one). OUT: *requeued (may be NULL). */
int lb_redis_requeue_dead(lb_redis *s, const char *name, const char *reaper, int max_failures,
                          int32_t *requeued, lb_err *err);

/* Who holds queue entry `entry` of job name (XPENDING) and, when someone
 * does, the item (XRANGE: id and payload) for the artifact server's
 * lease-checked publish. OUT: holder (LB_REDIS_ID_MAX + 1 bytes; "" when the
 * entry is not leased: acked, re-queued or never there), *msg (cleared when
 * not leased; caller clears). Returns 0, LB_EINVAL (not an entry id), LB_ENET. */
int lb_redis_lease_get(lb_redis *s, const char *name, const char *entry, char *holder,
                       lb_redis_msg *msg, lb_err *err);

/* Gives a leased item back without counting a failure (a worker stopping):
 * re-queued at the tail and the lease released, atomically; logs an event
 * naming `why`. */
int lb_redis_release(lb_redis *s, const char *name, const lb_redis_msg *msg, const char *why,
                     lb_err *err);

#endif
