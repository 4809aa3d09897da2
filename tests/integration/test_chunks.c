/* Chunked collection (--collect-chunks K, docs/distributed.md): the embedded
 * run gives the same checkpoint bytes with K chunks as unchunked, and two
 * plain `lowbit worker`s (no MPI) sharing each block's chunk jobs through Redis
 * give the embedded bytes too (gptq and claq). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_test_cluster.h"
#include "lb_test_redis.h"
#include "lb_test_util.h"

static void assert_same_checkpoint(const char *dir, const char *a, const char *b)
{
    static const char *const files[] = {"model.safetensors", "manifest.json", "config.json"};
    for (int k = 0; k < 3; k++) {
        char pa[4200], pb[4200];
        snprintf(pa, sizeof pa, "%s/%s/%s", dir, a, files[k]);
        snprintf(pb, sizeof pb, "%s/%s/%s", dir, b, files[k]);
        lb_test_assert_same_file(pa, pb);
    }
}

/* Embedded: K = 1 (unchunked), 3 (uneven ranges over 8 windows) and 8 give the
 * same bytes, with true-sequential stages and the lm_head collect over chunks;
 * no partial Hessian or activation chunk is left behind. */
static void test_embedded_chunked_equals_unchunked(void **state)
{
    (void)state;
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    static const char *const cases[] = {
        "--method gptq --bits 3 --true-sequential --quantize-lm-head",
        "--method claq --bits 3",
    };
    for (int m = 0; m < 2; m++) {
        static const int ks[] = {1, 3, 8};
        for (int i = 0; i < 3; i++) {
            char *out = NULL;
            int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/k%d' "
                                 "--ctx 128 --nsamples 8 --threads 2 --collect-chunks %d %s "
                                 "--force 2>&1", bin, model, calib, dir, ks[i], ks[i], cases[m]);
            if (rc != 0)
                fail_msg("quantize --collect-chunks %d %s failed: %s", ks[i], cases[m], out);
            free(out);
        }
        assert_same_checkpoint(dir, "k1", "k3");
        assert_same_checkpoint(dir, "k1", "k8");
        /* only calib and the quantized linears remain */
        char *out = NULL;
        assert_int_equal(lb_test_run(&out, "cd '%s/k3/.lowbit/artifacts' && for f in "
                                     "*.safetensors; do grep -a -o -E "
                                     "'\"lowbit.kind\":\"[a-z]+\"' \"$f\" | head -1; done | "
                                     "sort | uniq -c", dir), 0);
        assert_null(strstr(out, "hpart"));
        assert_null(strstr(out, "activations"));
        assert_null(strstr(out, "\"hessian\""));
        assert_non_null(strstr(out, "qlinear"));
        free(out);
        lb_test_run(NULL, "rm -rf '%s/k1' '%s/k3' '%s/k8'", dir, dir, dir);
    }
    /* a chunk count above the bound is refused with the bound */
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/kx' --ctx 128 "
                         "--nsamples 8 --method rtn --collect-chunks 5000 2>&1",
                         bin, model, calib, dir);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--collect-chunks"));
    free(out);
    lb_test_rmdir(&dir);
}

/* Two independent workers, chunked plan through Redis: byte-identical to the
 * embedded (unchunked) run; the chunk jobs and the reduces ran on workers. */
static void run_distributed(const char *job, const char *method)
{
    LB_TEST_REQUIRE_REDIS();
    char model[4096], calib[4096];
    LB_TEST_REQUIRE_SHARED(model, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    const char *bin = lb_test_lowbit_bin();
    char q[256];
    snprintf(q, sizeof q, "--ctx 128 --nsamples 8 --method %s --bits 3 --threads 1", method);
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s/emb' %s 2>&1",
                         bin, model, calib, dir, q);
    assert_int_equal(rc, 0);
    free(out);
    char args[300];
    snprintf(args, sizeof args, "%s --collect-chunks 2", q);
    rc = lb_test_cluster_run(&(lb_test_cluster){.dir = dir, .job = job, .model = model,
                                                 .calib = calib, .out = "dist", .args = args,
                                                 .nworkers = 2, .id_prefix = job},
                             &out);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    if (strncmp(out, "0\n", 2))
        fail_msg("coordinator failed: %s", out);
    free(out);
    assert_same_checkpoint(dir, "emb", "dist");
    /* 5 blocks x 2 collect chunks and 5 reduces ran on the workers */
    assert_int_equal(lb_test_run(&out, "cat '%s/wA.log' '%s/wB.log' | grep ' ran ' | "
                                 "grep -c reduce-hessian; cat '%s/wA.log' '%s/wB.log' | "
                                 "grep ' ran ' | grep -c collect-hessian", dir, dir, dir, dir), 0);
    assert_string_equal(out, "5\n10\n");
    free(out);
    lb_test_rmdir(&dir);
}

static void test_distributed_chunked_gptq(void **state)
{
    (void)state;
    run_distributed("ch-gptq", "gptq");
}

static void test_distributed_chunked_claq(void **state)
{
    (void)state;
    run_distributed("ch-claq", "claq");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_chunked_equals_unchunked),
        cmocka_unit_test(test_distributed_chunked_gptq),
        cmocka_unit_test(test_distributed_chunked_claq),
    };
    return cmocka_run_group_tests(tests, lb_test_cluster_setup, lb_test_cluster_teardown);
}
