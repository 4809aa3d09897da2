/* lb_redis_released: the list of artifacts the coordinator released. */
#include "lb_redis_released.h"

#include <stdlib.h>

#include "lb_redis_priv.h"

static bool hex64(const char *s, size_t n)
{
    if (n != 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int lb_redis_released_add(lb_redis *s, const char *name, const char *id, lb_err *err)
{
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if (!hex64(id, strlen(id)))
        return lb_err_set(err, LB_EINVAL, "released artifact id '%.70s' is not 64 hex digits", id);
    lb_redis_key k = lb_redis_priv_job_key(name, ":released");
    lb_redis_args a = {0};
    a_str(&a, "RPUSH"), a_str(&a, k.s), a_str(&a, id);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_INTEGER, err);
    if (!r)
        return err ? err->code : LB_ENET;
    freeReplyObject(r);
    return 0;
}

int lb_redis_released_range(lb_redis *s, const char *name, int64_t start, int32_t max,
                            lb_redis_released_id **ids, int32_t *n, int64_t *next, lb_err *err)
{
    *ids = NULL;
    *n = 0;
    *next = start;
    int rc = lb_redis_check_name(name, err);
    if (rc)
        return rc;
    if (start < 0 || max < 1)
        return lb_err_set(err, LB_EINVAL, "lb_redis_released_range: bad start or max");
    lb_redis_key k = lb_redis_priv_job_key(name, ":released");
    lb_redis_args a = {0};
    a_str(&a, "LRANGE"), a_str(&a, k.s), a_i64(&a, start), a_i64(&a, start + max - 1);
    redisReply *r = CHECKED(s, &a, true, REDIS_REPLY_ARRAY, err);
    if (!r)
        return err ? err->code : LB_ENET;
    lb_redis_released_id *v = r->elements ? calloc(r->elements, sizeof *v) : NULL;
    if (r->elements && !v) {
        freeReplyObject(r);
        return lb_err_set(err, LB_ENOMEM, "out of memory");
    }
    int32_t m = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type == REDIS_REPLY_STRING && hex64(e->str, e->len)) {
            memcpy(v[m].id, e->str, 64);
            v[m++].id[64] = '\0';
        }
    }
    *next = start + (int64_t)r->elements;
    freeReplyObject(r);
    if (m == 0) {
        free(v);
        v = NULL;
    }
    *ids = v;
    *n = m;
    return 0;
}
