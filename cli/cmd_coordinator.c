/* lowbit coordinator: `lowbit quantize` planned into Redis and run by `lowbit
 * worker` processes (lb_dist.h). Restartable: rerunning it with the same
 * options resumes from Redis and the artifacts. The quantize options fill the
 * same lb_quantize_spec as `lowbit quantize` (lb_session.h). */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_cli.h"
#include "lb_dist.h"
#include "lb_redis.h"
#include "lb_redis_url.h"
#include "lb_session.h"
#include "lb_xfer.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit coordinator --job NAME [--redis URL] [--resume]\n"
            "                          [--artifact-bind EP] [--artifact-endpoint EP]\n"
            "                          <lowbit quantize options>\n"
            "\n"
            "Plans the quantize run exactly as `lowbit quantize` does (same options, same\n"
            "checkpoint bytes), but queues its jobs in Redis for `lowbit worker`s and follows\n"
            "their results. The job record lowbit:job:NAME shows progress (`lowbit status\n"
            "NAME`). NAME planned before with other options is refused; with the same\n"
            "options the run resumes (--resume is accepted and is the default behaviour).\n"
            "--model/--calib/--out are made absolute; workers open the model at the same\n"
            "path. Artifacts move over ZeroMQ: this process serves OUT/.lowbit/artifacts\n"
            "(endpoint in the job record field \"artifacts\"), workers fetch inputs and\n"
            "publish outputs; the merge into OUT/model.safetensors runs here.\n"
            "With --target-bpw the measurement runs first, the same way, as job NAME.measure\n"
            "(docs/target-bpw.md; NAME then at most 56 characters).\n"
            "With --target-bpw the measurement runs first, the same way, as job NAME.measure\n"
            "(docs/target-bpw.md; NAME then at most 56 characters).\n"
            "\n"
            "  --job NAME               [A-Za-z0-9._-]{1,64}\n"
            "  --redis URL              default $LOWBIT_REDIS, else %s\n"
            "  --redis-wait S           keep retrying an unreachable Redis for S seconds, then\n"
            "                           fail (default 300); the run resumes when rerun\n"
            "  --artifact-bind EP       artifact server bind (default tcp://127.0.0.1:*, loopback\n"
            "                           only; tcp://0.0.0.0:PORT to serve other hosts)\n"
            "  --artifact-endpoint EP   what workers are told (default: the bound endpoint, a\n"
            "                           wildcard host replaced by this host's name)\n"
            "  --curve-dir DIR          CURVE on the artifact server (default $LOWBIT_CURVE_DIR):\n"
            "                           DIR/server.key, allowlist DIR/clients/NAME.pub\n"
            "  --curve-server-key FILE  the server's secret key file (instead of DIR/server.key)\n"
            "  --curve-clients DIR      the allowlist directory (instead of DIR/clients)\n"
            "  --insecure               allow a non-loopback --artifact-bind without CURVE\n"
            "                           (trusted network only; docs/distributed.md)\n",
            LB_REDIS_DEFAULT_URL);
}

/* --model/--calib/--out are made absolute: workers open them at the same path */
static int make_absolute(const char **path, char **owned)
{
    if (!*path || (*path)[0] == '/')
        return 0;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd) || asprintf(owned, "%s/%s", cwd, *path) < 0) {
        *owned = NULL;
        fprintf(stderr, "lowbit coordinator: cannot make %s absolute\n", *path);
        return 1;
    }
    *path = *owned;
    return 0;
}

int lb_cmd_coordinator(int argc, char **argv)
{
    const char *url = NULL, *job = NULL, *bind = NULL, *advert = NULL;
    const char *curve_dir = NULL, *curve_key = NULL, *curve_clients = NULL;
    bool insecure = false;
    lb_xfer_curve curve = {0};
    double redis_wait = 0; /* 0: lb_dist's default */
    char *owned[3] = {NULL, NULL, NULL};
    int status = 2;
    lb_quantize_spec q;
    lb_quantize_spec_init(&q, true);
    for (int i = 1; i < argc;) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            status = 0;
            goto done;
        } else if (!strcmp(a, "--redis") && i + 1 < argc) {
            url = argv[++i];
        } else if (!strcmp(a, "--job") && i + 1 < argc) {
            job = argv[++i];
        } else if (!strcmp(a, "--redis-wait") && i + 1 < argc) {
            char *end = NULL;
            redis_wait = strtod(argv[++i], &end);
            if (!end || end == argv[i] || *end || !(redis_wait >= 1 && redis_wait <= 86400)) {
                fprintf(stderr, "lowbit coordinator: --redis-wait wants 1..86400 seconds, got '%s'\n",
                        argv[i]);
                goto done;
            }
        } else if (!strcmp(a, "--artifact-bind") && i + 1 < argc) {
            bind = argv[++i];
        } else if (!strcmp(a, "--artifact-endpoint") && i + 1 < argc) {
            advert = argv[++i];
        } else if (!strcmp(a, "--curve-dir") && i + 1 < argc) {
            curve_dir = argv[++i];
        } else if (!strcmp(a, "--curve-server-key") && i + 1 < argc) {
            curve_key = argv[++i];
        } else if (!strcmp(a, "--curve-clients") && i + 1 < argc) {
            curve_clients = argv[++i];
        } else if (!strcmp(a, "--insecure")) {
            insecure = true;
        } else if (!strcmp(a, "--resume")) {
            /* resuming is what the same NAME and options do anyway */
        } else {
            int rc = lb_cli_quantize_arg(&q, argc, argv, &i);
            if (rc < 0) {
                status = rc == -1 ? 0 : 2;
                goto done;
            }
            continue; /* i is past the option */
        }
        i++;
    }
    if (!job) {
        fprintf(stderr, "lowbit coordinator: --job NAME is required; run `lowbit coordinator --help`\n");
        goto done;
    }
    lb_err err = {0};
    if (lb_redis_check_name(job, &err)) {
        fprintf(stderr, "lowbit coordinator: %s\n", err.msg);
        goto done;
    }
    if (!curve_dir && !curve_key && !curve_clients)
        curve_dir = getenv("LOWBIT_CURVE_DIR");
    if (curve_dir && !*curve_dir)
        curve_dir = NULL;
    if ((curve_dir || curve_key || curve_clients) &&
        lb_xfer_curve_load_server(curve_dir, curve_key, curve_clients, &curve, &err)) {
        fprintf(stderr, "lowbit coordinator: %s\n", err.msg);
        goto done;
    }
    if (!curve.on && !insecure && !lb_xfer_endpoint_loopback(bind)) {
        /* before planning or touching Redis (lb_xfer_server_start checks again) */
        fprintf(stderr,
                "lowbit coordinator: --artifact-bind %s is not loopback and CURVE is off: "
                "anyone who reaches the port could read and offer artifacts; give --curve-dir "
                "DIR (keys from `lowbit keygen`), or --insecure on a trusted network\n",
                bind);
        goto done;
    }
    if ((status = lb_cli_quantize_check(&q)))
        goto done;
    status = 1;
    if (make_absolute(&q.model_dir, &owned[0]) || make_absolute(&q.calib, &owned[1]) ||
        make_absolute(&q.out, &owned[2]))
        goto done;
    lb_dist_opts d;
    memset(&d, 0, sizeof d);
    d.curve = &curve;
    d.insecure = insecure;
    d.redis_url = lb_redis_url_pick(url);
    d.job_name = job;
    d.redis_wait_s = redis_wait;
    d.artifact_bind = bind;
    d.artifact_endpoint = advert;
    status = lb_cli_quantize_run(&q, &d);
done:
    lb_xfer_curve_clear(&curve);
    for (int i = 0; i < 3; i++)
        free(owned[i]);
    return status;
}
