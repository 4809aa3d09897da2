/* `mpirun -np N lowbit worker` as one worker group (worker/lb_mpi_group.h)
 * against a private redis-server and `lowbit coordinator`: the checkpoint is
 * byte-identical to the embedded `lowbit quantize` (gptq and claq 3-bit, -np 2
 * and -np 3 with uneven shards), ranks > 0 did chunks and jobs, the bytes
 * moved over MPI are reported consistently in --json and in the job record; a
 * rank failing a chunk, or failing to open the job, fails the item (retried,
 * then dead-lettered) without a hang; SIGTERM to rank 0 stops the group
 * cleanly, SIGTERM to mpirun ends it. Skips when mpirun is missing, fails
 * under CI=true. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lb_test_cluster.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"

static char *g_dir;              /* holds the embedded references */
static char g_model[4096], g_calib[4096];

/* --collect-chunks 1: one collect job per block, which the MPI group spreads over
 * its ranks (the coordinator's default 2 would split it into chunk jobs) */
#define QOPTS "--ctx 128 --nsamples 8 --bits 3 --threads 1 --collect-chunks 1"
/* Root in containers needs the ALLOW variables; --oversubscribe lets 3 ranks
 * share 2 cores; no LeakSanitizer inside Open MPI (see test_mpi_hessian.c). */
#define MPIRUN "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " \
               "OMPI_MCA_btl_vader_single_copy_mechanism=none ASAN_OPTIONS=detect_leaks=0 " \
               "timeout 240 mpirun --oversubscribe"

/* mpirun on PATH and a lowbit built with MPI (CMake sets LOWBIT_MPI=1). */
static bool have_mpirun(void)
{
    const char *m = getenv("LOWBIT_MPI");
    bool built = m && !strcmp(m, "1");
    return lb_test_need_that(built, "lowbit built without MPI; run deploy/install-deps.sh "
                             "and rebuild") && lb_test_need(LB_NEED_MPIRUN);
}

static int group_teardown(void **state)
{
    (void)state;
    lb_test_redis_stop(&lb_test_srv);
    if (g_dir)
        lb_test_rmdir(&g_dir);
    return 0;
}

/* The embedded reference for method m, computed once: g_dir/emb-m. */
static void embedded(const char *m)
{
    if (!g_dir)
        g_dir = lb_test_mkdtemp();
    char path[4300];
    snprintf(path, sizeof path, "%s/emb-%s/model.safetensors", g_dir, m);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        return;
    }
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/emb-%s' "
                         "--method %s " QOPTS " 2>&1", lb_test_lowbit_bin(), g_model, g_calib,
                         g_dir, m, m);
    if (rc)
        fail_msg("embedded quantize (%s) failed: %s", m, out ? out : "");
    free(out);
}

/* Coordinator + `mpirun -np np lowbit worker --json` in dir; job name = tag.
 * Worker stdout in dir/TAG.json, stderr in dir/TAG.err; coordinator log in
 * dir/TAG.coord. Returns the coordinator's exit status. */
static int run_group(const char *dir, const char *tag, const char *method, int np,
                     const char *rank1_env, int *mpirun_rc)
{
    char *out = NULL;
    const char *bin = lb_test_lowbit_bin();
    char worker[2048];
    snprintf(worker, sizeof worker, "'%s' worker --redis %s --threads 1 --idle-exit 2 "
             "--max-failures 2 --json", bin, lb_test_srv.url);
    char ranks[6000];
    if (rank1_env) /* MPMD: rank 0 plain, rank 1 with the extra environment */
        snprintf(ranks, sizeof ranks, "-np 1 %s : -np 1 env %s %s", worker, rank1_env, worker);
    else
        snprintf(ranks, sizeof ranks, "-np %d %s", np, worker);
    int rc = lb_test_run(&out,
                         "cd '%s' || exit 1; ( '%s' coordinator --redis %s --job %s --model '%s' "
                         "--calib '%s' --out %s --method %s " QOPTS " > %s.coord 2>&1; "
                         "echo $? > %s.crc ) & " MPIRUN " %s > %s.json 2> %s.err; "
                         "echo $? > %s.mrc; wait; cat %s.crc %s.mrc",
                         dir, bin, lb_test_srv.url, tag, g_model, g_calib, tag, method, tag, tag, ranks,
                         tag, tag, tag, tag, tag);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    int crc = -1, mrc = -1;
    assert_int_equal(sscanf(out, "%d %d", &crc, &mrc), 2);
    free(out);
    *mpirun_rc = mrc;
    return crc;
}

/* Reads the worker's JSON lines: checks the start line says np ranks; OUT the
 * sum of mpi_bytes over "ran" events and the collect-hessian events' figures. */
static void read_events(const char *path, int np, long long *bytes, int *collects,
                        int *collect_remote, int *collect_chunks)
{
    size_t len = 0;
    unsigned char *text = lb_test_slurp(path, &len);
    assert_non_null(text);
    *bytes = 0;
    *collects = *collect_remote = *collect_chunks = 0;
    bool started = false;
    char *save = NULL;
    text = realloc(text, len + 1);
    assert_non_null(text);
    text[len] = 0;
    for (char *line = strtok_r((char *)text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o)
            fail_msg("%s: not JSON: %s", path, line);
        const char *ev = json_string_value(json_object_get(o, "event"));
        if (ev && !strcmp(ev, "start")) {
            if (json_integer_value(json_object_get(o, "mpi_ranks")) != np)
                fail_msg("worker started with %lld ranks, expected %d (lowbit built without "
                         "MPI?)", (long long)json_integer_value(json_object_get(o, "mpi_ranks")),
                         np);
            started = true;
        }
        if (ev && !strcmp(ev, "ran")) {
            *bytes += json_integer_value(json_object_get(o, "mpi_bytes"));
            const char *type = json_string_value(json_object_get(o, "type"));
            if (type && !strcmp(type, "collect-hessian")) {
                (*collects)++;
                *collect_remote = (int)json_integer_value(json_object_get(o, "mpi_chunks_remote"));
                *collect_chunks = (int)json_integer_value(json_object_get(o, "mpi_chunks"));
            }
        }
        json_decref(o);
    }
    free(text);
    assert_true(started);
}

static long long redis_mpi_bytes(const char *job)
{
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d HGET lowbit:job:%s mpi_bytes", lb_test_srv.port,
                                 job), 0);
    long long v = out ? atoll(out) : -1;
    free(out);
    return v;
}

static int count_lines(const char *path, const char *needle)
{
    char *out = NULL;
    lb_test_run(&out, "grep -c -- '%s' '%s'", needle, path);
    int n = out ? atoi(out) : 0;
    free(out);
    return n;
}

static void check_run(const char *dir, const char *tag, const char *method, int np)
{
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/emb-%s/model.safetensors", g_dir, method);
    snprintf(b, sizeof b, "%s/%s/model.safetensors", dir, tag);
    lb_test_assert_same_file(a, b);

    char p[4300];
    snprintf(p, sizeof p, "%s/%s.json", dir, tag);
    long long bytes = 0;
    int collects = 0, remote = 0, chunks = 0;
    read_events(p, np, &bytes, &collects, &remote, &chunks);
    assert_int_equal(collects, 5); /* one per block of stories260K */
    /* 8 windows -> 8 chunks of one sequence; rank r takes c % np == r */
    assert_int_equal(chunks, 8);
    assert_int_equal(remote, 8 - (8 + np - 1) / np);
    /* at least the remote chunks' four Hessians (3 x 64^2 + 172^2 float64 each) */
    assert_true(bytes >= (long long)remote * 5 * (3 * 64 * 64 + 172 * 172) * 8);
    assert_int_equal(redis_mpi_bytes(tag), bytes);

    /* every rank > 0 computed its chunks (rank r of np owns 8/np rounded as
     * the cyclic table gives) and ran independent jobs */
    snprintf(p, sizeof p, "%s/%s.err", dir, tag);
    for (int r = 1; r < np; r++) {
        char needle[128];
        int own = (8 - r + np - 1) / np;
        snprintf(needle, sizeof needle, "rank %d/%d: collect-hessian .* %d chunks", r, np, own);
        char *out = NULL;
        lb_test_run(&out, "grep -c -- '%s' '%s'", needle, p);
        if (!out || atoi(out) != 5)
            fail_msg("%s: expected 5 lines '%s', got %s", p, needle, out ? out : "none");
        free(out);
        snprintf(needle, sizeof needle, "rank %d/%d: propagate", r, np);
        assert_int_equal(count_lines(p, needle), 4);
        snprintf(needle, sizeof needle, "rank %d/%d: ran quantize-linear", r, np);
        assert_true(count_lines(p, needle) >= 1);
    }
    snprintf(p, sizeof p, "%s/%s.err", dir, tag);
    assert_int_equal(count_lines(p, "failed"), 0);
}

#define REQUIRE_ALL()                                                                        \
    do {                                                                                     \
        LB_TEST_REQUIRE_REDIS();                                                             \
        LB_TEST_REQUIRE_SHARED(g_model, "models/stories260K");                               \
        LB_TEST_REQUIRE_SHARED(g_calib, "data/stories260K-calib.u32");                       \
        if (!have_mpirun())                                                                  \
            skip();                                                                          \
    } while (0)

static void test_gptq_np2_np3_equal_embedded(void **state)
{
    (void)state;
    REQUIRE_ALL();
    embedded("gptq");
    char *dir = lb_test_mkdtemp();
    int mrc = -1;
    assert_int_equal(run_group(dir, "g2", "gptq", 2, NULL, &mrc), 0);
    assert_int_equal(mrc, 0);
    check_run(dir, "g2", "gptq", 2);
    assert_int_equal(run_group(dir, "g3", "gptq", 3, NULL, &mrc), 0);
    assert_int_equal(mrc, 0);
    check_run(dir, "g3", "gptq", 3);
    lb_test_rmdir(&dir);
}

static void test_claq_np2_equal_embedded(void **state)
{
    (void)state;
    REQUIRE_ALL();
    embedded("claq");
    char *dir = lb_test_mkdtemp();
    int mrc = -1;
    assert_int_equal(run_group(dir, "c2", "claq", 2, NULL, &mrc), 0);
    assert_int_equal(mrc, 0);
    check_run(dir, "c2", "claq", 2);
    lb_test_rmdir(&dir);
}

/* --quantize-lm-head under -np 2: the last block's propagate is spread over
 * the ranks like the others (5 on rank 1), the lm_head collect runs in one
 * process (not data-parallel), and all three files equal the embedded run's. */
static void test_lm_head_np2_equal_embedded(void **state)
{
    (void)state;
    REQUIRE_ALL();
    const char *m = "gptq --quantize-lm-head";
    embedded(m);
    char *dir = lb_test_mkdtemp();
    int mrc = -1;
    assert_int_equal(run_group(dir, "h2", m, 2, NULL, &mrc), 0);
    assert_int_equal(mrc, 0);
    static const char *const files[] = {"model.safetensors", "manifest.json", "config.json"};
    for (int k = 0; k < 3; k++) {
        char a[4400], b[4400];
        snprintf(a, sizeof a, "%s/emb-%s/%s", g_dir, m, files[k]);
        snprintf(b, sizeof b, "%s/h2/%s", dir, files[k]);
        lb_test_assert_same_file(a, b);
    }
    char p[4300];
    snprintf(p, sizeof p, "%s/h2.err", dir);
    assert_int_equal(count_lines(p, "rank 1/2: propagate"), 5);
    assert_int_equal(count_lines(p, "rank 1/2: collect-hessian .* chunks"), 5);
    assert_int_equal(count_lines(p, "failed"), 0);
    long long bytes = 0;
    int collects = 0, remote = 0, chunks = 0;
    snprintf(p, sizeof p, "%s/h2.json", dir);
    read_events(p, 2, &bytes, &collects, &remote, &chunks);
    assert_int_equal(collects, 6); /* 5 blocks + lm_head */
    lb_test_rmdir(&dir);
}

/* Rank 1 fails chunk 3 of every data-parallel job: each attempt of block 0's
 * collect-hessian fails with rank 1's message, the item is dead-lettered after
 * --max-failures 2, the coordinator reports it, and nothing hangs. */
static void test_failing_rank_fails_item(void **state)
{
    (void)state;
    REQUIRE_ALL();
    char *dir = lb_test_mkdtemp();
    int mrc = -1;
    assert_int_equal(run_group(dir, "f2", "gptq", 2, "LOWBIT_TEST_MPI_FAIL_CHUNK=3", &mrc), 1);
    assert_int_equal(mrc, 0); /* the group ran to its idle exit, not into the timeout */
    char p[4300];
    snprintf(p, sizeof p, "%s/f2.coord", dir);
    assert_int_equal(count_lines(p, "collect-hessian .*MPI rank 1, chunk 3: test hook"), 1);
    snprintf(p, sizeof p, "%s/f2.json", dir);
    assert_int_equal(count_lines(p, "\"event\":\"failed\".*\"dead\":false.*MPI rank 1, chunk 3"),
                     1);
    assert_int_equal(count_lines(p, "\"event\":\"failed\".*\"dead\":true.*MPI rank 1, chunk 3"),
                     1);
    snprintf(p, sizeof p, "%s/f2.err", dir);
    assert_int_equal(count_lines(p, "rank 1/2: collect-hessian .* failed: test hook"), 2);
    char *out = NULL;
    assert_int_equal(lb_test_run(&out, "redis-cli -p %d XLEN lowbit:job:f2:dead", lb_test_srv.port), 0);
    assert_int_equal(atoi(out), 1);
    free(out);
    lb_test_rmdir(&dir);
}

/* Rank 1 fails while opening every data-parallel job (before any data moves):
 * all ranks learn it from the agreement step and rank 0 fails the item with
 * rank 1's message. */
static void test_rank_failing_open_fails_item(void **state)
{
    (void)state;
    REQUIRE_ALL();
    char *dir = lb_test_mkdtemp();
    int mrc = -1;
    assert_int_equal(run_group(dir, "o2", "gptq", 2, "LOWBIT_TEST_MPI_FAIL_CHUNK=open", &mrc), 1);
    assert_int_equal(mrc, 0);
    char p[4300];
    snprintf(p, sizeof p, "%s/o2.coord", dir);
    assert_int_equal(count_lines(p, "collect-hessian .*MPI rank 1 of 2: test hook: rank 1 fails "
                                    "opening job"), 1);
    snprintf(p, sizeof p, "%s/o2.json", dir);
    assert_int_equal(count_lines(p, "\"event\":\"failed\""), 2);
    lb_test_rmdir(&dir);
}

/* SIGTERM to rank 0 (its pid is in the heartbeat): it leaves its loop,
 * deregisters and stops the group; every rank exits 0, so mpirun does too. */
static void test_sigterm_rank0_stops_group(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    if (!have_mpirun())
        skip();
    char *out = NULL;
    char *dir = lb_test_mkdtemp();
    int rc = lb_test_run(&out, MPIRUN " -np 2 '%s' worker --redis %s --id wT --threads 1 "
                         "> '%s/w.log' 2>&1 & p=$!; for i in $(seq 300); do "
                         "grep -q serving '%s/w.log' && break; sleep 0.1; done; "
                         "kill -TERM $(redis-cli -p %d GET lowbit:worker:wT | "
                         "sed -n 's/.*pid=\\([0-9]*\\).*/\\1/p'); "
                         "wait $p; echo rc=$?; cat '%s/w.log'; "
                         "redis-cli -p %d EXISTS lowbit:worker:wT",
                         lb_test_lowbit_bin(), lb_test_srv.url, dir, dir, lb_test_srv.port, dir, lb_test_srv.port);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    if (!strstr(out, "rc=0") || !strstr(out, "2 MPI ranks") || !strstr(out, "signal received"))
        fail_msg("no clean stop:\n%s", out);
    assert_null(strstr(out, "rank 1:")); /* rank 1 returned without an error */
    size_t len = strlen(out);
    assert_true(len >= 2 && out[len - 2] == '0'); /* deregistered */
    free(out);
    lb_test_rmdir(&dir);
}

/* SIGTERM to mpirun aborts the group (Open MPI kills the ranks within a
 * second): it must end, not hang. */
static void test_sigterm_mpirun_ends_group(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    if (!have_mpirun())
        skip();
    char *out = NULL;
    char *dir = lb_test_mkdtemp();
    int rc = lb_test_run(&out, MPIRUN " -np 2 '%s' worker --redis %s --id wU --threads 1 "
                         "> '%s/w.log' 2>&1 & p=$!; for i in $(seq 300); do "
                         "grep -q serving '%s/w.log' && break; sleep 0.1; done; "
                         "kill -TERM $p; wait $p; echo rc=$?",
                         lb_test_lowbit_bin(), lb_test_srv.url, dir, dir);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    assert_null(strstr(out, "rc=124")); /* not ended by the timeout */
    free(out);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq_np2_np3_equal_embedded),
        cmocka_unit_test(test_claq_np2_equal_embedded),
        cmocka_unit_test(test_lm_head_np2_equal_embedded),
        cmocka_unit_test(test_failing_rank_fails_item),
        cmocka_unit_test(test_rank_failing_open_fails_item),
        cmocka_unit_test(test_sigterm_rank0_stops_group),
        cmocka_unit_test(test_sigterm_mpirun_ends_group),
    };
    return cmocka_run_group_tests(tests, lb_test_cluster_setup, group_teardown);
}
