/* lowbit cancel: asks a distributed job to stop (flag + state in Redis). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lb_cli.h"
#include "lb_redis_url.h"
#include "lb_redis.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit cancel NAME [--redis URL] [--json]\n"
            "\n"
            "Marks job NAME cancelled in Redis: sets lowbit:job:NAME:cancel, state\n"
            "\"cancelled\" and logs an event. Workers stop taking its work and the\n"
            "coordinator stops planning it. A finished job cannot be cancelled.\n"
            "\n"
            "  --redis URL  redis://[user:password@]host[:port][/db] (default $LOWBIT_REDIS,\n"
            "               else %s)\n"
            "  --json       print {\"job\", \"redis\", \"cancelled\"} (or {\"ok\":false,\"error\"})\n",
            LB_REDIS_DEFAULT_URL);
}

int lb_cmd_cancel(int argc, char **argv)
{
    const char *url = NULL, *name = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--redis") && i + 1 < argc) {
            url = argv[++i];
        } else if (a[0] != '-' && !name) {
            name = a;
        } else {
            fprintf(stderr, "lowbit cancel: unexpected argument '%s'; run `lowbit cancel --help`\n",
                    a);
            return 2;
        }
    }
    if (!name) {
        fprintf(stderr, "lowbit cancel: which job? run `lowbit cancel NAME` (`lowbit status` lists them)\n");
        return 2;
    }
    lb_err err = {0};
    lb_redis *s = NULL;
    int rc = lb_redis_check_name(name, &err);
    if (!rc)
        rc = lb_redis_connect(lb_redis_url_pick(url), NULL, &s, &err);
    if (!rc)
        rc = lb_redis_cancel(s, name, &err);
    json_t *o = NULL;
    if (rc) {
        fprintf(stderr, "lowbit cancel: %s\n", err.msg);
        if (json)
            o = json_pack("{s:b, s:s}", "ok", 0, "error", err.msg);
    } else if (json) {
        o = json_pack("{s:s, s:s, s:b}", "job", name, "redis", lb_redis_peer(s), "cancelled", 1);
    } else {
        printf("job %s on %s: cancel requested; workers drop its work and the coordinator stops\n",
               name, lb_redis_peer(s));
    }
    if (o) {
        char *txt = json_dumps(o, JSON_COMPACT);
        printf("%s\n", txt ? txt : "{}");
        free(txt);
        json_decref(o);
    }
    lb_redis_free(&s);
    return rc == 0 ? 0 : rc == LB_EINVAL ? 2 : 1;
}
