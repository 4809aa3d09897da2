/* lowbit status: a readable (or JSON) view of a distributed job's Redis records. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "lb_cli.h"
#include "lb_redis_url.h"
#include "lb_redis.h"

/* The job hash fields shown in this order; others follow as "other". */
static const char *const known_fields[] = {
    "state", "method", "bits", "fingerprint", "blocks_done", "blocks_total", "jobs_total",
    "jobs_done", "jobs_failed", "jobs_in_flight", "created", "started", "updated", "eta_s",
    "coordinator", "error", "stalled", "stalled_since"};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit status [NAME] [--redis URL] [--events N] [--json]\n"
            "\n"
            "Shows job NAME from the Redis control plane: its record (state, method, bits,\n"
            "blocks and jobs done/failed/in flight, times, ETA), the queue (entries, leased\n"
            "= XPENDING, dead-lettered), live workers and the last N events. Without NAME,\n"
            "lists the jobs on the server.\n"
            "\n"
            "  --redis URL  redis://[user:password@]host[:port][/db] (default $LOWBIT_REDIS,\n"
            "               else %s)\n"
            "  --events N   recent events to show (default 10, 0..1000)\n"
            "  --json       one JSON object on stdout\n",
            LB_REDIS_DEFAULT_URL);
}

static void fmt_time(const char *unix_s, char *buf, size_t size)
{
    char *end = NULL;
    long long t = unix_s ? strtoll(unix_s, &end, 10) : 0;
    if (!unix_s || end == unix_s || t <= 0) {
        snprintf(buf, size, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    long long ago = (long long)time(NULL) - t;
    char when[40];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    snprintf(buf, size, "%s (%llds ago)", when, ago);
}

static void fmt_duration(const char *secs, char *buf, size_t size)
{
    char *end = NULL;
    double s = secs ? strtod(secs, &end) : -1.0;
    if (!secs || end == secs || s < 0) {
        snprintf(buf, size, "-");
        return;
    }
    long long t = (long long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, size, "%lldh %02lldm", t / 3600, (t % 3600) / 60);
    else if (t >= 60)
        snprintf(buf, size, "%lldm %02llds", t / 60, t % 60);
    else
        snprintf(buf, size, "%llds", t);
}

static const char *or_dash(const char *s) { return s && *s ? s : "-"; }

typedef struct {
    lb_redis_map rec;
    bool cancelled;
    lb_redis_queue_counts q;
    lb_redis_dead_rec *dead;
    int32_t n_dead;
    lb_redis_worker_rec *workers;
    int32_t n_workers;
    lb_redis_event_rec *events;
    int32_t n_events;
    lb_redis_lease_rec *leases; /* leased items, with their holders' liveness */
    int32_t n_leases, n_stalled;
} job_view;

static void view_clear(job_view *v)
{
    lb_redis_map_clear(&v->rec);
    lb_redis_dead_free(&v->dead, v->n_dead);
    lb_redis_workers_free(&v->workers, v->n_workers);
    lb_redis_events_free(&v->events, v->n_events);
    free(v->leases);
    v->leases = NULL;
}

static int view_load(lb_redis *s, const char *name, int32_t n_events, job_view *v, lb_err *err)
{
    int rc = lb_redis_job_get(s, name, &v->rec, err);
    if (!rc)
        rc = lb_redis_is_cancelled(s, name, &v->cancelled, err);
    if (!rc)
        rc = lb_redis_queue_stats(s, name, &v->q, err);
    if (!rc)
        rc = lb_redis_dead_list(s, name, 20, &v->dead, &v->n_dead, err);
    if (!rc)
        rc = lb_redis_workers_live(s, &v->workers, &v->n_workers, err);
    if (!rc)
        rc = lb_redis_events_recent(s, name, n_events, &v->events, &v->n_events, err);
    if (!rc)
        rc = lb_redis_leases(s, name, 1000, &v->leases, &v->n_leases, &v->n_stalled, err);
    return rc;
}

static void print_text(const char *name, const char *peer, const job_view *v)
{
    const lb_redis_map *m = &v->rec;
    char a[96], b[96];
    printf("job %s on %s\n", name, peer);
    printf("  state     %s%s\n", or_dash(lb_redis_map_get(m, "state")),
           v->cancelled ? " (cancel requested)" : "");
    printf("  method    %s, %s bits\n", or_dash(lb_redis_map_get(m, "method")),
           or_dash(lb_redis_map_get(m, "bits")));
    printf("  blocks    %s/%s done\n", or_dash(lb_redis_map_get(m, "blocks_done")),
           or_dash(lb_redis_map_get(m, "blocks_total")));
    printf("  jobs      %s done, %s failed, %s in flight, %s total\n",
           or_dash(lb_redis_map_get(m, "jobs_done")), or_dash(lb_redis_map_get(m, "jobs_failed")),
           or_dash(lb_redis_map_get(m, "jobs_in_flight")),
           or_dash(lb_redis_map_get(m, "jobs_total")));
    fmt_time(lb_redis_map_get(m, "started"), a, sizeof a);
    fmt_time(lb_redis_map_get(m, "updated"), b, sizeof b);
    printf("  started   %s\n  updated   %s\n", a, b);
    fmt_duration(lb_redis_map_get(m, "eta_s"), a, sizeof a);
    printf("  ETA       %s\n", a);
    printf("  queue     %lld entries, %lld leased (XPENDING), %lld dead-lettered, %lld consumers\n",
           (long long)v->q.length, (long long)v->q.pending, (long long)v->q.dead,
           (long long)v->q.consumers);
    if (lb_redis_map_get(m, "error"))
        printf("  error     %s\n", lb_redis_map_get(m, "error"));
    if (v->n_stalled) {
        /* the holder's heartbeat is gone: the item waits until a live worker
         * or the coordinator takes it over (seconds) */
        printf("  stalled   %d item%s leased by dead workers:\n", (int)v->n_stalled,
               v->n_stalled > 1 ? "s" : "");
        for (int32_t i = 0; i < v->n_leases; i++) {
            if (!v->leases[i].dead)
                continue;
            time_t since = time(NULL) - (time_t)(v->leases[i].idle_ms / 1000);
            struct tm tm;
            gmtime_r(&since, &tm);
            strftime(a, sizeof a, "%H:%M:%S UTC", &tm);
            printf("    item %s waits on dead worker %s since %s (%llds)\n",
                   v->leases[i].id[0] ? v->leases[i].id : v->leases[i].entry,
                   v->leases[i].consumer, a, (long long)(v->leases[i].idle_ms / 1000));
        }
    }
    for (int32_t i = 0; i < m->n; i++) {
        bool known = false;
        for (size_t k = 0; k < sizeof known_fields / sizeof known_fields[0]; k++)
            known = known || !strcmp(m->keys[i], known_fields[k]);
        if (!known)
            printf("  %-9s %s\n", m->keys[i], m->vals[i]);
    }
    if (v->n_dead) {
        printf("dead-lettered (%lld):\n", (long long)v->q.dead);
        for (int32_t i = 0; i < v->n_dead; i++)
            printf("  %s after %lld failures: %s\n", v->dead[i].id, (long long)v->dead[i].fails,
                   v->dead[i].error);
    }
    printf("live workers (%d):\n", (int)v->n_workers);
    for (int32_t i = 0; i < v->n_workers; i++)
        printf("  %s  (heartbeat ttl %llds)  %s\n", v->workers[i].id,
               (long long)v->workers[i].ttl_s, v->workers[i].info);
    printf("recent events (%d):\n", (int)v->n_events);
    for (int32_t i = 0; i < v->n_events; i++) {
        time_t t = (time_t)(v->events[i].t_ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(a, sizeof a, "%H:%M:%S", &tm);
        printf("  %s  %s\n", a, v->events[i].msg);
    }
}

static json_t *view_json(const char *name, const char *peer, const job_view *v)
{
    json_t *rec = json_object();
    for (int32_t i = 0; i < v->rec.n; i++)
        json_object_set_new(rec, v->rec.keys[i], json_string(v->rec.vals[i]));
    json_t *dead = json_array(), *workers = json_array(), *events = json_array();
    for (int32_t i = 0; i < v->n_dead; i++)
        json_array_append_new(dead, json_pack("{s:s, s:I, s:s}", "id", v->dead[i].id, "fails",
                                              (json_int_t)v->dead[i].fails, "error",
                                              v->dead[i].error));
    for (int32_t i = 0; i < v->n_workers; i++)
        json_array_append_new(workers, json_pack("{s:s, s:I, s:s}", "id", v->workers[i].id,
                                                 "ttl_s", (json_int_t)v->workers[i].ttl_s, "info",
                                                 v->workers[i].info));
    for (int32_t i = 0; i < v->n_events; i++)
        json_array_append_new(events, json_pack("{s:I, s:s}", "t_ms",
                                                (json_int_t)v->events[i].t_ms, "msg",
                                                v->events[i].msg));
    json_t *stalled = json_array();
    for (int32_t i = 0; i < v->n_leases; i++)
        if (v->leases[i].dead)
            json_array_append_new(
                stalled, json_pack("{s:s, s:s, s:s, s:I, s:I}", "item", v->leases[i].id, "entry",
                                   v->leases[i].entry, "worker", v->leases[i].consumer, "idle_ms",
                                   (json_int_t)v->leases[i].idle_ms, "since",
                                   (json_int_t)(time(NULL) - v->leases[i].idle_ms / 1000)));
    return json_pack("{s:s, s:s, s:o, s:b, s:{s:I, s:I, s:I, s:I}, s:o, s:o, s:o, s:o}", "job", name,
                     "redis", peer, "record", rec, "cancelled", v->cancelled, "queue", "length",
                     (json_int_t)v->q.length, "pending", (json_int_t)v->q.pending, "dead",
                     (json_int_t)v->q.dead, "consumers", (json_int_t)v->q.consumers,
                     "dead_lettered", dead, "workers", workers, "events", events, "stalled",
                     stalled);
}

static int list_jobs(lb_redis *s, bool json, lb_err *err)
{
    char **names = NULL;
    int32_t n = 0;
    int rc = lb_redis_job_list(s, &names, &n, err);
    if (rc)
        return rc;
    json_t *arr = json ? json_array() : NULL;
    if (!json)
        printf("jobs on %s (%d):\n", lb_redis_peer(s), (int)n);
    for (int32_t i = 0; i < n && !rc; i++) {
        lb_redis_map m;
        lb_err e2 = {0};
        const char *state = "(record gone)";
        int got = lb_redis_job_get(s, names[i], &m, &e2) == 0;
        if (got && lb_redis_map_get(&m, "state"))
            state = lb_redis_map_get(&m, "state");
        else if (got)
            state = "-";
        if (json)
            json_array_append_new(arr, json_pack("{s:s, s:s}", "job", names[i], "state", state));
        else
            printf("  %-24s %s\n", names[i], state);
        if (got)
            lb_redis_map_clear(&m);
    }
    if (json) {
        json_t *o = json_pack("{s:s, s:o}", "redis", lb_redis_peer(s), "jobs", arr);
        char *txt = json_dumps(o, JSON_COMPACT);
        printf("%s\n", txt ? txt : "{}");
        free(txt);
        json_decref(o);
    }
    for (int32_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int lb_cmd_status(int argc, char **argv)
{
    const char *url = NULL, *name = NULL;
    bool json = false;
    long n_events = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--redis") && i + 1 < argc) {
            url = argv[++i];
        } else if (!strcmp(a, "--events") && i + 1 < argc) {
            char *end = NULL;
            errno = 0;
            n_events = strtol(argv[++i], &end, 10);
            if (errno || !end || *end || end == argv[i] || n_events < 0 || n_events > 1000) {
                fprintf(stderr, "lowbit status: --events wants 0..1000, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (a[0] != '-' && !name) {
            name = a;
        } else {
            fprintf(stderr, "lowbit status: unexpected argument '%s'; run `lowbit status --help`\n",
                    a);
            return 2;
        }
    }
    lb_err err = {0};
    lb_redis *s = NULL;
    job_view v;
    memset(&v, 0, sizeof v);
    int rc = 0;
    if (name && (rc = lb_redis_check_name(name, &err)))
        goto fail;
    if ((rc = lb_redis_connect(lb_redis_url_pick(url), NULL, &s, &err)))
        goto fail;
    if (!name) {
        rc = list_jobs(s, json, &err);
        if (rc)
            goto fail;
        lb_redis_free(&s);
        return 0;
    }
    if ((rc = view_load(s, name, (int32_t)n_events, &v, &err)))
        goto fail;
    if (json) {
        json_t *o = view_json(name, lb_redis_peer(s), &v);
        char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
        printf("%s\n", txt ? txt : "{}");
        free(txt);
        json_decref(o);
    } else {
        print_text(name, lb_redis_peer(s), &v);
    }
    view_clear(&v);
    lb_redis_free(&s);
    return 0;
fail:
    view_clear(&v);
    lb_redis_free(&s);
    fprintf(stderr, "lowbit status: %s\n", err.msg);
    if (json) {
        json_t *o = json_pack("{s:b, s:s}", "ok", 0, "error", err.msg);
        char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
        printf("%s\n", txt ? txt : "{}");
        free(txt);
        json_decref(o);
    }
    return rc == LB_EINVAL ? 2 : 1;
}
