/* deploy/local-cluster.sh end to end on stories260K: redis-server (AOF,
 * password, free port), `lowbit coordinator` and `mpirun -np 2 lowbit worker`
 * in a temporary directory; the checkpoint equals the embedded `lowbit
 * quantize` byte for byte, the workers ran as one 2-rank MPI group (as two
 * plain workers when lowbit was built without MPI), and the
 * script leaves no server and no directory behind. Skips without redis-server
 * or mpirun, fails under CI=true. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_test_redis.h"
#include "lb_test_util.h"

/* --collect-chunks 1: one collect job per block, which the MPI group spreads over
 * its ranks (the coordinator's default 2 would split it into chunk jobs) */
#define QOPTS "--ctx 128 --nsamples 8 --method gptq --bits 3 --threads 1 --collect-chunks 1"

static void test_local_cluster_equals_embedded(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    LB_TEST_NEED(LB_NEED_MPIRUN);
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    assert_non_null(src);
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/emb' " QOPTS
                         " 2>&1", bin, model, calib, dir);
    if (rc)
        fail_msg("embedded quantize failed: %s", out ? out : "");
    free(out);

    /* the script's own temp dir goes under ours (TMPDIR) so it can be checked */
    rc = lb_test_run(&out, "cd '%s' && mkdir tmp && TMPDIR='%s/tmp' "
                     "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                     "OMPI_MCA_btl_vader_single_copy_mechanism=none ASAN_OPTIONS=detect_leaks=0 "
                     "timeout 300 '%s/deploy/local-cluster.sh' --lowbit '%s' --job lc --workers 2 "
                     "-- --model '%s' --calib '%s' --out lc " QOPTS " 2>&1; echo rc=$?",
                     dir, dir, src, bin, model, calib);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    if (!strstr(out, "rc=0"))
        fail_msg("local-cluster.sh failed:\n%s", out);
    const char *mpi = getenv("LOWBIT_MPI"); /* set by CMake when lowbit has MPI groups */
    if (mpi && !strcmp(mpi, "1")) {
        assert_non_null(strstr(out, "2 MPI ranks"));
        assert_non_null(strstr(out, "rank 1/2: collect-hessian"));
    } else {
        assert_non_null(strstr(out, "built without MPI")); /* two plain workers */
    }
    assert_non_null(strstr(out, "quantized 35 linears"));
    /* the server is gone and its directory removed */
    int port = 0;
    const char *at = strstr(out, "@127.0.0.1:");
    assert_non_null(at);
    assert_int_equal(sscanf(at, "@127.0.0.1:%d", &port), 1);
    free(out);
    assert_int_not_equal(lb_test_run(NULL, "redis-cli -p %d ping 2>/dev/null | grep -q '.'",
                                     port), 0);
    assert_int_equal(lb_test_run(&out, "ls -A '%s/tmp' | wc -l", dir), 0);
    assert_int_equal(atoi(out), 0);
    free(out);

    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/emb/model.safetensors", dir);
    snprintf(b, sizeof b, "%s/lc/model.safetensors", dir);
    lb_test_assert_same_file(a, b);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_cluster_equals_embedded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
