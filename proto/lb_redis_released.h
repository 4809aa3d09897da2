/* lb_redis_released: lowbit:job:NAME:released, a list of artifact ids the
 * coordinator deleted because no job needs them any more (lb_plan's release
 * rule). Workers drop the same ids from their caches, so a cache stays as
 * small as the coordinator's store instead of growing by every artifact the
 * worker touched. Duplicates are harmless (removing twice is fine). */
#ifndef LB_REDIS_RELEASED_H
#define LB_REDIS_RELEASED_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_redis.h"

typedef struct {
    char id[65]; /* 64 lower-case hex + NUL */
} lb_redis_released_id;

/* RPUSH lowbit:job:NAME:released id (retried after a lost connection: a
 * duplicate entry does no harm). Returns 0 or LB_E*. */
int lb_redis_released_add(lb_redis *s, const char *name, const char *id, lb_err *err);

/* LRANGE lowbit:job:NAME:released start start+max-1 (max >= 1): the ids from
 * position start on. Entries that are not 64 hex digits are skipped. OUT: *ids
 * (malloc'd, caller frees; NULL when *n == 0), *n; *next = start + entries
 * read (skipped ones included). Returns 0 or LB_E*. */
int lb_redis_released_range(lb_redis *s, const char *name, int64_t start, int32_t max,
                            lb_redis_released_id **ids, int32_t *n, int64_t *next, lb_err *err);

#endif
