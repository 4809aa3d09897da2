/* lowbit worker: parses the options into an lb_worker_spec and runs the worker
 * library (worker/lb_worker.h). SIGTERM/SIGINT set the stop flag the library
 * watches. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_cli.h"
#include "lb_redis_url.h"
#include "lb_worker.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit worker [--redis URL] [--threads N] [--slots N] [--memory-budget GiB]\n"
            "                     [--id ID] [--lease-ms MS] [--max-failures K]\n"
            "                     [--heartbeat-ttl S] [--idle-exit S] [--json] [--cache DIR]\n"
            "                     [--xfer-timeout-ms MS] [--fetch-give-up S] [--max-jobs N]\n"
            "                     [--mpi | --no-mpi] [--curve-dir DIR] [--curve-name NAME]\n"
            "                     [--curve-server-key FILE] [--curve-client-key FILE]\n"
            "\n"
            "Runs the jobs of every running distributed job on the Redis server: leases an\n"
            "item (XREADGROUP), runs it, posts its result and acks it; up to --slots items\n"
            "at once. Items leased by a worker whose heartbeat expired are taken over at\n"
            "once; items idle longer than --lease-ms (a live but hung worker) too; both\n"
            "count as a failure, and an item failing --max-failures times is dead-lettered.\n"
            "SIGTERM/SIGINT: items still being fetched or run are given back (re-queued at\n"
            "once, not a failure), deregister, exit 0 within ~5 s. Artifacts move over\n"
            "ZeroMQ: a job's inputs are fetched by id from the coordinator's artifact server\n"
            "(job record field \"artifacts\", re-read after a failed transfer) into the cache\n"
            "unless a verified copy is there, its outputs are published back before the ack.\n"
            "The source model is opened from the job's model path (shared or copied).\n"
            "\n"
            "  --redis URL         default $LOWBIT_REDIS, else %s\n"
            "  --threads N         OpenMP threads in all (default: all cores)\n"
            "  --slots N           items run at once (default: --threads); quantize items\n"
            "                      share the threads, forward items use them all\n"
            "  --memory-budget GiB start another item only while the running ones' estimated\n"
            "                      memory leaves room (default: no budget)\n"
            "  --id ID             worker id (default HOST-PID)\n"
            "  --lease-ms MS       stale-lease backstop for a live but hung worker (default\n"
            "                      600000); the running leases are renewed every heartbeat\n"
            "  --max-failures K    failures before dead-lettering (default 3)\n"
            "  --heartbeat-ttl S   heartbeat key TTL, refreshed every S/3 (default 6): a\n"
            "                      killed worker's items are taken over ~S s after its death\n"
            "  --idle-exit S       exit after S seconds without work (default 0: never)\n"
            "  --redis-wait S      keep retrying an unreachable Redis for S seconds (default 300)\n"
            "  --cache DIR         local artifact store DIR/.lowbit/artifacts (default:\n"
            "                      ${TMPDIR:-/tmp}/lowbit-UID/ID, removed at exit); the\n"
            "                      coordinator's --out here means: same filesystem, nothing moves\n"
            "  --xfer-timeout-ms MS  wait per artifact transfer reply (default 120000); a\n"
            "                      refused endpoint fails at once\n"
            "  --fetch-give-up S   an item whose transfers keep failing fails after S s\n"
            "                      (default 10; re-queued, counted)\n"
            "  --max-jobs N        exit after taking N items (default 0: no limit)\n"
            "  --curve-dir DIR     CURVE to the artifact server (default $LOWBIT_CURVE_DIR):\n"
            "                      DIR/server.pub and this worker's DIR/NAME.key\n"
            "  --curve-name NAME   the key pair to use (default \"worker\"); the worker id\n"
            "                      becomes NAME@HOST-PID (an --id X becomes NAME@X)\n"
            "  --curve-server-key FILE  the server's public key (instead of DIR/server.pub)\n"
            "  --curve-client-key FILE  this worker's secret key NAME.key (instead of DIR's)\n"
            "  --json              JSON lines on stdout: start, ran, failed, given-back,\n"
            "                      exit/error\n"
            "  --mpi / --no-mpi    form one worker of all MPI ranks (default: when started\n"
            "                      by mpirun/srun with more than one rank); rank 0 talks\n"
            "                      to Redis, every rank computes; a group works in the job's\n"
            "                      output directory (shared filesystem, no --cache), one\n"
            "                      item at a time (docs/distributed.md)\n",
            LB_REDIS_DEFAULT_URL);
}

static int parse_num(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_gib(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !end || end == s || *end || !(v > 0) || v > 1e6)
        return -1;
    *out = v;
    return 0;
}

int lb_cmd_worker(int argc, char **argv)
{
    lb_worker_spec spec;
    lb_worker_spec_default(&spec);
    long threads = 0, slots = 0, lease_ms = spec.lease_ms, max_failures = spec.max_failures;
    long ttl = spec.heartbeat_ttl_s, idle_exit = 0, xfer_timeout_ms = spec.xfer_timeout_ms;
    long max_jobs = 0, redis_wait = spec.redis_wait_s, give_up = spec.fetch_give_up_s;
    const char *curve_dir = NULL, *curve_name = NULL, *curve_server = NULL, *curve_client = NULL;
    lb_xfer_curve curve = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            spec.json = true;
            continue;
        } else if (!strcmp(a, "--mpi") || !strcmp(a, "--no-mpi")) {
            spec.mpi_mode = a[2] == 'm' ? 1 : -1;
            continue;
        } else if (!strcmp(a, "--redis") && v) {
            spec.redis_url = v;
        } else if (!strcmp(a, "--id") && v) {
            spec.id = v;
        } else if (!strcmp(a, "--curve-dir") && v) {
            curve_dir = v;
        } else if (!strcmp(a, "--curve-name") && v) {
            curve_name = v;
        } else if (!strcmp(a, "--curve-server-key") && v) {
            curve_server = v;
        } else if (!strcmp(a, "--curve-client-key") && v) {
            curve_client = v;
        } else if (!strcmp(a, "--cache") && v) {
            spec.cache_dir = v;
        } else if (!strcmp(a, "--xfer-timeout-ms") && v) {
            bad = parse_num(v, 10, 86400000L, &xfer_timeout_ms);
        } else if (!strcmp(a, "--fetch-give-up") && v) {
            bad = parse_num(v, 0, 86400, &give_up);
        } else if (!strcmp(a, "--max-jobs") && v) {
            bad = parse_num(v, 0, 1L << 40, &max_jobs);
        } else if (!strcmp(a, "--threads") && v) {
            bad = parse_num(v, 1, 1024, &threads);
        } else if (!strcmp(a, "--slots") && v) {
            bad = parse_num(v, 1, 1024, &slots);
        } else if (!strcmp(a, "--memory-budget") && v) {
            bad = parse_gib(v, &spec.memory_budget_gib);
        } else if (!strcmp(a, "--lease-ms") && v) {
            bad = parse_num(v, 10, 86400000L, &lease_ms);
        } else if (!strcmp(a, "--max-failures") && v) {
            bad = parse_num(v, 1, 1000, &max_failures);
        } else if (!strcmp(a, "--heartbeat-ttl") && v) {
            bad = parse_num(v, 1, 3600, &ttl);
        } else if (!strcmp(a, "--redis-wait") && v) {
            bad = parse_num(v, 0, 86400, &redis_wait);
        } else if (!strcmp(a, "--idle-exit") && v) {
            bad = parse_num(v, 0, 86400 * 365, &idle_exit);
        } else {
            fprintf(stderr, "lowbit worker: unknown or incomplete option '%s'; run `lowbit worker --help`\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "lowbit worker: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i++;
    }
    spec.threads = (int)threads;
    spec.slots = (int)slots;
    spec.lease_ms = lease_ms;
    spec.max_failures = (int)max_failures;
    spec.heartbeat_ttl_s = (int)ttl;
    spec.idle_exit_s = idle_exit;
    spec.redis_wait_s = redis_wait;
    spec.xfer_timeout_ms = (int)xfer_timeout_ms;
    spec.fetch_give_up_s = (int)give_up;
    spec.max_jobs = max_jobs;
    spec.argc = &argc;
    spec.argv = &argv;
    spec.stop = &stop_flag;
    /* from the start: mpirun may forward SIGTERM before the loop is reached */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    lb_err err = {0};
    if (!curve_dir && !curve_server && !curve_client)
        curve_dir = getenv("LOWBIT_CURVE_DIR");
    if (curve_dir && !*curve_dir)
        curve_dir = NULL;
    if ((curve_dir || curve_server || curve_client) &&
        lb_xfer_curve_load_client(curve_dir, curve_server, curve_client, curve_name, &curve,
                                  &err)) {
        fprintf(stderr, "lowbit worker: %s\n", err.msg);
        return 1;
    }
    spec.curve = &curve;
    lb_worker *w = NULL;
    int rc = lb_worker_new(&spec, &w, &err);
    if (rc) {
        fprintf(stderr, "lowbit worker: %s\n", err.msg);
        lb_xfer_curve_clear(&curve);
        return 1;
    }
    rc = lb_worker_run(w, &err);
    if (lb_worker_abandoned(w)) {
        /* a slot is still inside a fetch or run whose item went back to the
         * queue: end now instead of waiting for it */
        fflush(stdout);
        fflush(stderr);
        _exit(rc ? 1 : 0);
    }
    lb_worker_free(&w);
    lb_xfer_curve_clear(&curve);
    return rc ? 1 : 0;
}
