/* lb_tok without the npm packages: UTF-8 repair, a hand-written tokenizer.json
 * (merge order, byte fallback, added tokens, BOS), and bad files. */
#include "lb_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_tok.h"

static char *tdir;

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

static void write_text(const char *name, const char *text)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", tdir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void check_sanitize_n(const char *in, size_t n, const char *want, size_t wl);
static void check_sanitize(const char *in, size_t n, const char *want)
{
    check_sanitize_n(in, n, want, strlen(want));
}

static void check_sanitize_n(const char *in, size_t n, const char *want, size_t wl)
{
    char *out = NULL;
    size_t ol = 0;
    lb_err err = {0};
    assert_int_equal(lb_tok_utf8_sanitize(in, n, &out, &ol, &err), 0);
    assert_int_equal(ol, wl);
    assert_memory_equal(out, want, ol);
    free(out);
}

#define FFFD "\xef\xbf\xbd"

/* One U+FFFD per maximal invalid subpart (the rule TextDecoder and Node use). */
static void test_utf8_sanitize(void **state)
{
    (void)state;
    check_sanitize("abc", 3, "abc");
    check_sanitize("\xc3\xa9", 2, "\xc3\xa9");
    check_sanitize("\x80", 1, FFFD);
    check_sanitize("\xe2\x82", 2, FFFD);
    check_sanitize("\xe2\x82x", 3, FFFD "x");
    check_sanitize("\xc0\xaf", 2, FFFD FFFD);
    check_sanitize("\xed\xa0\x80", 3, FFFD FFFD FFFD);
    check_sanitize("\xf4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);
    check_sanitize("\xf0\x9f\x98", 3, FFFD);
    check_sanitize("\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80");
    check_sanitize_n("a\0b", 3, "a\0b", 3);
}

/* Byte-level-free SentencePiece-style toy: vocab a b c ab abc ▁ and <0xXX>
 * for two bytes; merges "a b" then "ab c". */
static const char TOY[] =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
    "{\"id\":1,\"content\":\"[X]\",\"special\":false,\"normalized\":false,\"lstrip\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xe2\x96\x81\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xe2\x96\x81\"}]},"
    "\"pre_tokenizer\":null,"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
    "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":"
    "\"<s>\",\"ids\":[0],\"tokens\":[\"<s>\"]}}},"
    "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"unk_token\":null,\"vocab\":{\"<s>\":0,"
    "\"[X]\":1,\"a\":2,\"b\":3,\"c\":4,\"ab\":5,\"abc\":6,\"\xe2\x96\x81\":7,\"<0x21>\":8,\"bc\":9},"
    "\"merges\":[\"a b\",\"ab c\",\"b c\"]}}";

static void test_toy_model(void **state)
{
    (void)state;
    write_text("tokenizer.json", TOY);
    lb_err err = {0};
    lb_tok *tok = NULL;
    if (lb_tok_load(tdir, &tok, &err))
        fail_msg("%s", err.msg);
    uint32_t *ids = NULL;
    int64_t n = 0;
    /* "abc abc!": ▁ abc ▁ abc <0x21> ; "a b" wins over "b c" by rank */
    assert_int_equal(lb_tok_encode(tok, "abc abc!", 8, 1, &ids, &n, &err), 0);
    uint32_t want[] = {0, 7, 6, 7, 6, 8};
    assert_int_equal(n, 6);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    /* added token with lstrip: the spaces before [X] go; no BOS when add_special == 0 */
    assert_int_equal(lb_tok_encode(tok, "c  [X]c", 7, 0, &ids, &n, &err), 0);
    uint32_t want2[] = {7, 4, 1, 7, 4};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want2, sizeof want2);
    free(ids);
    /* a character with no piece and no byte token: dropped (no unk), never a crash */
    assert_int_equal(lb_tok_encode(tok, "\xff", 1, 0, &ids, &n, &err), 0);
    free(ids);
    assert_int_equal(lb_tok_encode(tok, "", 0, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    free(ids);
    assert_true(lb_tok_score(tok, 5) == 0.0f);  /* made by merge 0 */
    assert_true(lb_tok_score(tok, 6) == -1.0f); /* made by merge 1 */
    assert_true(lb_tok_score(tok, 2) == 0.0f);  /* a single character */
    assert_int_equal(lb_tok_type(tok, 8), LB_TOK_BYTE);
    assert_int_equal(lb_tok_type(tok, 1), LB_TOK_USER_DEFINED);
    lb_tok_free(&tok);
}

/* Byte-level toy with the LLaMA-3 Split regex, NFC and an added token. */
static const char TOY_BYTE[] =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<|x|>\",\"special\":true,\"normalized\":false,"
    "\"rstrip\":true}],\"normalizer\":{\"type\":\"NFC\"},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
    "{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
    "\"use_regex\":false}]},\"post_processor\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"<|x|>\":0,\"a\":1,\"b\":2,"
    "\"ab\":3,\"\xc4\xa0\":4,\"\xc4\xa0" "a\":5,\"\xc4\x8a\":6},"
    "\"merges\":[[\"a\",\"b\"],[\"\xc4\xa0\",\"" "a\"]]}}";

/* Random bytes (biased to UTF-8 lead/continuation bytes, spaces, newlines
 * and the added tokens' characters) never crash either toy; run under ASan. */
static void test_random_bytes(void **state)
{
    (void)state;
    const char *models[2] = {TOY, TOY_BYTE};
    static const char alphabet[] = "ab <>|xs\n\r\t'\xc3\xa9\xe2\x96\x81\xf0\x9f\x98\x80\xcc\x81\x80\xff\xed\xa0";
    uint64_t rng = 12345;
    for (int m = 0; m < 2; m++) {
        write_text("tokenizer.json", models[m]);
        lb_err err = {0};
        lb_tok *tok = NULL;
        if (lb_tok_load(tdir, &tok, &err))
            fail_msg("%s", err.msg);
        char buf[400];
        for (int it = 0; it < 3000; it++) {
            size_t n = lb_test_rand_u64(&rng) % sizeof buf;
            for (size_t i = 0; i < n; i++) {
                uint64_t r = lb_test_rand_u64(&rng);
                buf[i] = (r & 3) ? alphabet[(r >> 8) % (sizeof alphabet - 1)] : (char)(r >> 16);
            }
            uint32_t *ids = NULL;
            int64_t nid = 0;
            assert_int_equal(lb_tok_encode(tok, buf, n, 1, &ids, &nid, &err), 0);
            for (int64_t i = 0; i < nid; i++)
                assert_true(ids[i] < (uint32_t)lb_tok_vocab_size(tok));
            free(ids);
        }
        lb_tok_free(&tok);
    }
    /* the byte-level toy: ignore_merges, the regex split, rstrip after <|x|> */
    write_text("tokenizer.json", TOY_BYTE);
    lb_err err = {0};
    lb_tok *tok = NULL;
    assert_int_equal(lb_tok_load(tdir, &tok, &err), 0);
    uint32_t *ids = NULL;
    int64_t n = 0;
    assert_int_equal(lb_tok_encode(tok, "ab a<|x|>  ab\n", 14, 1, &ids, &n, &err), 0);
    uint32_t want[] = {3, 5, 0, 3, 6};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    lb_tok_free(&tok);
}

static void expect_load_error(const char *json, int code, const char *needle)
{
    write_text("tokenizer.json", json);
    lb_err err = {0};
    lb_tok *tok = NULL;
    assert_int_equal(lb_tok_load(tdir, &tok, &err), code);
    assert_null(tok);
    if (!strstr(err.msg, needle))
        fail_msg("error '%s' lacks '%s'", err.msg, needle);
}

static void test_bad_files(void **state)
{
    (void)state;
    lb_err err = {0};
    lb_tok *tok = NULL;
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/none", tdir);
    assert_int_equal(lb_tok_load(missing, &tok, &err), LB_ENOTFOUND);
    expect_load_error("{\"model\":", LB_EFORMAT, "tokenizer.json");
    expect_load_error("[]", LB_EFORMAT, "not a JSON object");
    expect_load_error("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", LB_EFORMAT, "Unigram");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a z\"]}}",
                      LB_EFORMAT, "not in the vocabulary");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4},\"merges\":[]}}", LB_EFORMAT,
                      "bad id");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"}}}",
                      LB_EFORMAT, "regex");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"normalizer\":{\"type\":\"BertNormalizer\"}}",
                      LB_EFORMAT, "BertNormalizer");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_sanitize),
        cmocka_unit_test(test_toy_model),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_random_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
