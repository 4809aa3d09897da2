#include "lb_redis_url.h"

#include <ctype.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define URL_FORMS "expected redis://[user[:password]@]host[:port][/db] or unix://[user[:password]@]/path.sock[?db=N]"

/* Copies [s, s+n) into dst (size dsize) decoding %XX; returns 0 or -1 on a bad
 * escape, an embedded NUL or overflow. */
static int decode_part(char *dst, size_t dsize, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return -1;
            char hex[3] = {s[i + 1], s[i + 2], 0};
            c = (int)strtol(hex, NULL, 16);
            if (c == 0)
                return -1;
            i += 2;
        }
        if (o + 1 >= dsize)
            return -1;
        dst[o++] = (char)c;
    }
    dst[o] = 0;
    return 0;
}

/* Parses a decimal integer in [lo, hi] from [s, s+n); returns 0 or -1. */
static int parse_int(const char *s, size_t n, long lo, long hi, int *out)
{
    if (n == 0 || n > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* The URL with any password replaced by "***", for error messages. */
static void mask_url(const char *url, char *buf, size_t size)
{
    const char *scheme_end = strstr(url, "://");
    const char *at = scheme_end ? strrchr(scheme_end + 3, '@') : NULL;
    const char *colon = NULL;
    if (at)
        colon = memchr(scheme_end + 3, ':', (size_t)(at - (scheme_end + 3)));
    if (colon)
        snprintf(buf, size, "%.*s:***%s", (int)(colon - url), url, at);
    else
        snprintf(buf, size, "%s", url);
}

/* True when s holds a control character: user and socket path are shown in
 * logs (lb_redis_url_display), which stay one line per event. */
static bool has_ctrl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

static int fail(lb_err *err, const char *url, const char *what)
{
    char shown[300];
    mask_url(url, shown, sizeof shown);
    return lb_err_set(err, LB_EINVAL, "redis URL '%s': %s; %s", shown, what, URL_FORMS);
}

int lb_redis_url_parse(const char *url, lb_redis_url *out, lb_err *err)
{
    if (!url || !out)
        return lb_err_set(err, LB_EINVAL, "lb_redis_url_parse: NULL argument");
    memset(out, 0, sizeof *out);
    snprintf(out->host, sizeof out->host, "127.0.0.1");
    out->port = 6379;
    if (strlen(url) > 1024)
        return fail(err, url, "longer than 1024 characters");

    const char *p;
    if (!strncmp(url, "redis://", 8)) {
        p = url + 8;
    } else if (!strncmp(url, "unix://", 7)) {
        p = url + 7;
        out->is_unix = true;
    } else {
        return fail(err, url, "unknown scheme");
    }

    /* userinfo: everything before the last '@' of the authority part. For TCP
     * the authority ends at the first '/'; a unix path starts with '/', so the
     * userinfo there is what precedes "@/". */
    const char *at = NULL;
    if (out->is_unix) {
        const char *q = strstr(p, "@/");
        at = q;
    } else {
        const char *slash = strchr(p, '/');
        size_t alen = slash ? (size_t)(slash - p) : strlen(p);
        for (size_t i = 0; i < alen; i++)
            if (p[i] == '@')
                at = p + i;
    }
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        if (decode_part(out->user, sizeof out->user, p, ulen) || has_ctrl(out->user))
            return fail(err, url, "bad user name (too long, bad %XX escape or control "
                                  "character)");
        if (colon && decode_part(out->password, sizeof out->password, colon + 1,
                                 (size_t)(at - colon - 1)))
            return fail(err, url, "bad password (too long or bad %XX escape)");
        if (!colon && out->user[0])
            return fail(err, url, "user given without a password (write user:password@)");
        if (colon && !out->password[0])
            return fail(err, url, "empty password");
        p = at + 1;
    }

    if (out->is_unix) {
        const char *query = strchr(p, '?');
        size_t plen = query ? (size_t)(query - p) : strlen(p);
        if (plen == 0 || p[0] != '/')
            return fail(err, url, "the socket path must be absolute");
        if (plen >= sizeof out->socket_path)
            return fail(err, url, "socket path too long");
        memcpy(out->socket_path, p, plen);
        out->socket_path[plen] = 0;
        if (has_ctrl(out->socket_path))
            return fail(err, url, "control character in the socket path");
        out->host[0] = 0;
        out->port = 0;
        if (query) {
            if (strncmp(query, "?db=", 4) ||
                parse_int(query + 4, strlen(query + 4), 0, INT_MAX, &out->db))
                return fail(err, url, "bad query (only ?db=N is understood)");
        }
        return 0;
    }

    /* host[:port] */
    const char *slash = strchr(p, '/');
    size_t hplen = slash ? (size_t)(slash - p) : strlen(p);
    const char *port_s = NULL;
    size_t hlen;
    const char *h = p;
    if (hplen > 0 && p[0] == '[') {
        const char *rb = memchr(p, ']', hplen);
        if (!rb)
            return fail(err, url, "unterminated [IPv6] host");
        h = p + 1;
        hlen = (size_t)(rb - h);
        if (rb + 1 < p + hplen) {
            if (rb[1] != ':')
                return fail(err, url, "junk after ]");
            port_s = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', hplen);
        hlen = colon ? (size_t)(colon - p) : hplen;
        if (colon)
            port_s = colon + 1;
    }
    if (hlen > 0) {
        if (hlen >= sizeof out->host)
            return fail(err, url, "host name too long");
        for (size_t i = 0; i < hlen; i++) {
            unsigned char c = (unsigned char)h[i];
            if (!(isalnum(c) || c == '.' || c == '-' || c == '_' || c == ':' || c == '%'))
                return fail(err, url, "bad character in host");
        }
        memcpy(out->host, h, hlen);
        out->host[hlen] = 0;
    }
    if (port_s && parse_int(port_s, (size_t)(p + hplen - port_s), 1, 65535, &out->port))
        return fail(err, url, "port must be 1..65535");
    if (slash) {
        const char *d = slash + 1;
        if (*d && parse_int(d, strlen(d), 0, INT_MAX, &out->db))
            return fail(err, url, "database must be a number (/0, /1, ...)");
    }
    return 0;
}

const char *lb_redis_url_display(const lb_redis_url *u, char *buf, size_t size)
{
    if (!buf || size == 0)
        return buf;
    const char *user = u->user[0] ? u->user : "";
    const char *sep = u->user[0] ? "@" : "";
    if (u->is_unix)
        snprintf(buf, size, "unix://%s%s%s?db=%d", user, sep, u->socket_path, u->db);
    else if (strchr(u->host, ':'))
        snprintf(buf, size, "redis://%s%s[%s]:%d/%d", user, sep, u->host, u->port, u->db);
    else
        snprintf(buf, size, "redis://%s%s%s:%d/%d", user, sep, u->host, u->port, u->db);
    return buf;
}

const char *lb_redis_url_pick(const char *arg)
{
    if (arg)
        return arg;
    const char *env = getenv("LOWBIT_REDIS");
    return env && env[0] ? env : LB_REDIS_DEFAULT_URL;
}
