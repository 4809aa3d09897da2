/* lowbit coordinator: `lowbit quantize` planned into Redis and run by `lowbit
 * worker` processes (lb_dist.h). Restartable: rerunning it with the same
 * options resumes from Redis and the artifacts. */
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
            "\n"
            "  --job NAME               [A-Za-z0-9._-]{1,64}\n"
            "  --redis URL              default $LOWBIT_REDIS, else %s\n"
            "  --redis-wait S           keep retrying an unreachable Redis for S seconds, then\n"
            "                           fail (default 300); the run resumes when rerun\n"
            "  --artifact-bind EP       artifact server bind (default tcp://127.0.0.1:*, loopback\n"
            "                           only; tcp://0.0.0.0:PORT to serve other hosts)\n"
            "  --artifact-endpoint EP   what workers are told (default: the bound endpoint, a\n"
            "                           wildcard host replaced by this host's name)\n",
            LB_REDIS_DEFAULT_URL);
}

int lb_cmd_coordinator(int argc, char **argv)
{
    const char *url = NULL, *job = NULL, *bind = NULL, *advert = NULL;
    double redis_wait = 0; /* 0: lb_dist's default */
    char **fwd = calloc((size_t)argc + 1, sizeof *fwd);
    char **owned = calloc((size_t)argc + 1, sizeof *owned);
    int nf = 0, no = 0, status = 2;
    if (!fwd || !owned) {
        fprintf(stderr, "lowbit coordinator: out of memory\n");
        goto done;
    }
    fwd[nf++] = "quantize";
    for (int i = 1; i < argc; i++) {
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
        } else if (!strcmp(a, "--resume")) {
            /* resuming is what the same NAME and options do anyway */
        } else if ((!strcmp(a, "--model") || !strcmp(a, "--calib") || !strcmp(a, "--out")) &&
                   i + 1 < argc && argv[i + 1][0] != '/') {
            char cwd[PATH_MAX];
            char *abs = NULL;
            if (!getcwd(cwd, sizeof cwd) || asprintf(&abs, "%s/%s", cwd, argv[i + 1]) < 0) {
                fprintf(stderr, "lowbit coordinator: cannot make %s absolute\n", argv[i + 1]);
                status = 1;
                goto done;
            }
            owned[no++] = abs;
            fwd[nf++] = argv[i];
            fwd[nf++] = abs;
            i++;
        } else {
            fwd[nf++] = argv[i];
        }
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
    lb_dist_opts d;
    memset(&d, 0, sizeof d);
    d.redis_url = lb_redis_url_pick(url);
    d.job_name = job;
    d.redis_wait_s = redis_wait;
    d.artifact_bind = bind;
    d.artifact_endpoint = advert;
    status = lb_quantize_main(nf, fwd, &d);
done:
    for (int i = 0; i < no; i++)
        free(owned[i]);
    free(owned);
    free(fwd);
    return status;
}
