/* lb_session (coordinator/lb_session.h) driven directly, without the CLI: an
 * embedded run writes the same checkpoint bytes as `lowbit quantize` with the
 * same options, a rerun reuses every artifact, and bad options fail in
 * lb_session_prepare with LB_EINVAL and no session. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_session.h"
#include "lb_test_util.h"

static char model_dir[4096], calib[4096];

static lb_quantize_spec spec_for(const char *out)
{
    lb_quantize_spec q;
    lb_quantize_spec_init(&q, false);
    q.model_dir = model_dir;
    q.calib = calib;
    q.out = out;
    q.method = "gptq";
    q.opts.bits = 3;
    q.opts.group_size = 32;
    q.ctx = 64;
    q.nsamples = 8;
    q.threads = 2;
    q.json = true; /* one JSON line per event on stdout, nothing on stderr */
    return q;
}

static void test_session_matches_cli(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/api", dir);
    snprintf(b, sizeof b, "%s/cli", dir);
    lb_quantize_spec q = spec_for(a);
    lb_err err;
    lb_err_clear(&err);
    for (int run = 0; run < 2; run++) { /* the second run finds every artifact */
        lb_session *s = NULL;
        if (lb_session_prepare(&q, &s, &err) || lb_session_run_embedded(s, &err) ||
            lb_session_finish(s, &err))
            fail_msg("%s", err.msg);
        lb_session_free(&s);
        assert_null(s);
    }
    char *out = NULL;
    int rc = lb_test_run(&out, "'%s' quantize --model '%s' --calib '%s' --out '%s' --ctx 64 "
                         "--nsamples 8 --threads 2 --method gptq --bits 3 --group-size 32 2>&1",
                         lb_test_lowbit_bin(), model_dir, calib, b);
    if (rc != 0)
        fail_msg("lowbit quantize: %s", out);
    free(out);
    const char *files[] = {"model.safetensors", "manifest.json", "config.json"};
    for (int k = 0; k < 3; k++) {
        char fa[4300], fb[4300];
        snprintf(fa, sizeof fa, "%s/%s", a, files[k]);
        snprintf(fb, sizeof fb, "%s/%s", b, files[k]);
        lb_test_assert_same_file(fa, fb);
    }
    lb_test_rmdir(&dir);
}

static void test_session_bad_options(void **state)
{
    (void)state;
    LB_TEST_REQUIRE_SHARED(model_dir, "models/stories260K");
    LB_TEST_REQUIRE_SHARED(calib, "data/stories260K-calib.u32");
    char *dir = lb_test_mkdtemp();
    lb_quantize_spec q = spec_for(dir);
    q.ctx = 100000; /* above max_position_embeddings */
    lb_session *s = (lb_session *)&q;
    lb_err err;
    lb_err_clear(&err);
    assert_int_equal(lb_session_prepare(&q, &s, &err), LB_EINVAL);
    assert_null(s);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    q = spec_for(dir);
    q.overrides[q.n_overrides++] = "(unclosed=gptq";
    assert_int_equal(lb_session_prepare(&q, &s, &err), LB_EINVAL);
    assert_null(s);
    assert_non_null(strstr(err.msg, "--override"));
    lb_session_free(&s); /* NULL-safe */
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_matches_cli),
        cmocka_unit_test(test_session_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
