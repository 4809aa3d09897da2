/* lb_redis_url: parsing of Redis connection URLs.
 *
 *   redis://[user[:password]@]host[:port][/db]     TCP; host may be [IPv6]
 *   redis://:password@host[:port][/db]             password only (default user)
 *   unix://[user[:password]@]/path/to.sock[?db=N]  Unix socket
 *
 * user and password may use %XX escapes (e.g. %40 for '@'). Defaults: host
 * 127.0.0.1, port 6379, db 0. No I/O here. */
#ifndef LB_REDIS_URL_H
#define LB_REDIS_URL_H

#include <stdbool.h>
#include <stddef.h>

#include "lb_err.h"

#define LB_REDIS_DEFAULT_URL "redis://127.0.0.1:6379/0"

typedef struct {
    bool is_unix;
    char host[256];      /* TCP host (brackets of an IPv6 literal removed) */
    int port;            /* 1..65535 */
    char socket_path[256]; /* unix socket path when is_unix */
    char user[128];      /* "" = default user */
    char password[256];  /* "" = no AUTH */
    int db;              /* 0..INT_MAX (server decides the upper bound) */
} lb_redis_url;

/* Parses url into *out (fully overwritten). Returns 0, or LB_EINVAL with a
 * one-line message quoting the URL (password masked) and the expected form. */
int lb_redis_url_parse(const char *url, lb_redis_url *out, lb_err *err);

/* Writes a printable form without the password ("redis://user@host:port/db",
 * "unix:///path?db=N") into buf (always NUL-terminated); returns buf. */
const char *lb_redis_url_display(const lb_redis_url *u, char *buf, size_t size);

/* The URL to use: `arg` when non-NULL, else $LOWBIT_REDIS when set and
 * non-empty, else LB_REDIS_DEFAULT_URL. Never NULL. */
const char *lb_redis_url_pick(const char *arg);

#endif
