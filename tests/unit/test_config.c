/* lb_config: the fixture, mistral/qwen2/head_dim/GQA configs, errors, write round trip. */
#include "lb_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_config.h"

static const char *k_mistral =
    "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\","
    " \"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"vocab_size\": 32000,"
    " \"max_position_embeddings\": 32768, \"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000.0,"
    " \"sliding_window\": 4096, \"hidden_act\": \"silu\", \"tie_word_embeddings\": false,"
    " \"bos_token_id\": 1, \"eos_token_id\": 2, \"torch_dtype\": \"bfloat16\"}";

static const char *k_qwen2 =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\","
    " \"hidden_size\": 896, \"intermediate_size\": 4864, \"num_hidden_layers\": 24,"
    " \"num_attention_heads\": 14, \"num_key_value_heads\": 2, \"vocab_size\": 151936,"
    " \"max_position_embeddings\": 32768, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,"
    " \"sliding_window\": 32768, \"use_sliding_window\": false, \"max_window_layers\": 21,"
    " \"hidden_act\": \"silu\", \"tie_word_embeddings\": true, \"rope_scaling\": null,"
    " \"bos_token_id\": 151643, \"eos_token_id\": 151643, \"torch_dtype\": \"bfloat16\"}";

/* A minimal llama config with one key replaced by `extra` (appended last; a
 * duplicate key is avoided by leaving the original out via `skip`). */
static int parse_variant(lb_config *c, const char *skip, const char *extra, lb_err *err)
{
    static const char *keys[][2] = {
        {"model_type", "\"llama\""},      {"hidden_size", "64"},
        {"intermediate_size", "172"},     {"num_hidden_layers", "2"},
        {"num_attention_heads", "8"},     {"vocab_size", "512"},
        {"max_position_embeddings", "512"}, {"rms_norm_eps", "1e-5"},
    };
    char buf[2048];
    size_t n = (size_t)snprintf(buf, sizeof buf, "{");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (skip && !strcmp(skip, keys[i][0]))
            continue;
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\": %s", n > 1 ? ", " : "",
                              keys[i][0], keys[i][1]);
    }
    if (extra)
        n += (size_t)snprintf(buf + n, sizeof buf - n, ", %s", extra);
    snprintf(buf + n, sizeof buf - n, "}");
    return lb_config_parse(c, buf, "/models/x/config.json", err);
}

static void expect_bad(const char *skip, const char *extra, const char *key, const char *what)
{
    lb_config c;
    lb_err err = {0};
    int rc = parse_variant(&c, skip, extra, &err);
    if (rc != LB_EFORMAT || !strstr(err.msg, "/models/x/config.json") || !strstr(err.msg, key) ||
        (what && !strstr(err.msg, what)))
        fail_msg("skip=%s extra=%s: rc %d msg '%s' (want key %s, '%s')", skip ? skip : "-",
                 extra ? extra : "-", rc, err.msg, key, what ? what : "");
    assert_null(strchr(err.msg, '\n'));
}

static void assert_config_equal(const lb_config *a, const lb_config *b)
{
    assert_int_equal(a->arch, b->arch);
    assert_string_equal(a->model_type, b->model_type);
    assert_int_equal(a->hidden_size, b->hidden_size);
    assert_int_equal(a->intermediate_size, b->intermediate_size);
    assert_int_equal(a->num_hidden_layers, b->num_hidden_layers);
    assert_int_equal(a->num_attention_heads, b->num_attention_heads);
    assert_int_equal(a->num_key_value_heads, b->num_key_value_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->max_position_embeddings, b->max_position_embeddings);
    assert_true(a->rms_norm_eps == b->rms_norm_eps);
    assert_true(a->rope_theta == b->rope_theta);
    assert_int_equal(a->tie_word_embeddings, b->tie_word_embeddings);
    assert_int_equal(a->attention_bias, b->attention_bias);
    assert_int_equal(a->o_bias, b->o_bias);
    assert_int_equal(a->mlp_bias, b->mlp_bias);
    assert_int_equal(a->sliding_window, b->sliding_window);
    assert_string_equal(a->hidden_act, b->hidden_act);
    assert_int_equal(a->bos_token_id, b->bos_token_id);
    assert_int_equal(a->eos_token_id, b->eos_token_id);
    assert_string_equal(a->torch_dtype, b->torch_dtype);
}

static void test_fixture(void **state)
{
    (void)state;
    char dir[4096], file[4200];
    LB_TEST_REQUIRE_SHARED(dir, "models/stories260K");
    lb_config c, c2;
    lb_err err = {0};
    assert_int_equal(lb_config_load(&c, dir, &err), 0);
    assert_int_equal(c.arch, LB_ARCH_LLAMA);
    assert_string_equal(c.model_type, "llama");
    assert_int_equal(c.hidden_size, 64);
    assert_int_equal(c.intermediate_size, 172);
    assert_int_equal(c.num_hidden_layers, 5);
    assert_int_equal(c.num_attention_heads, 8);
    assert_int_equal(c.num_key_value_heads, 4);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.vocab_size, 512);
    assert_int_equal(c.max_position_embeddings, 512);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_true(c.rope_theta == 10000.0);
    assert_true(c.tie_word_embeddings);
    assert_false(c.attention_bias);
    assert_false(c.o_bias);
    assert_false(c.mlp_bias);
    assert_int_equal(c.sliding_window, 0);
    assert_string_equal(c.hidden_act, "silu");
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.eos_token_id, 2);
    assert_string_equal(c.torch_dtype, "float32");
    assert_int_equal(lb_config_q_dim(&c), 64);
    assert_int_equal(lb_config_kv_dim(&c), 32);
    /* a file path works as well as the directory */
    snprintf(file, sizeof file, "%s/config.json", dir);
    assert_int_equal(lb_config_load(&c2, file, &err), 0);
    assert_config_equal(&c, &c2);
}

static void test_mistral_qwen2(void **state)
{
    (void)state;
    lb_config c;
    lb_err err = {0};
    assert_int_equal(lb_config_parse(&c, k_mistral, "mistral/config.json", &err), 0);
    assert_int_equal(c.arch, LB_ARCH_MISTRAL);
    assert_int_equal(c.num_key_value_heads, 8);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(lb_config_kv_dim(&c), 1024);
    assert_true(c.rope_theta == 1e6);
    assert_int_equal(c.sliding_window, 4096);
    assert_false(c.tie_word_embeddings);
    assert_false(c.attention_bias);
    assert_string_equal(c.torch_dtype, "bfloat16");

    assert_int_equal(lb_config_parse(&c, k_qwen2, "qwen2/config.json", &err), 0);
    assert_int_equal(c.arch, LB_ARCH_QWEN2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.num_key_value_heads, 2);
    assert_true(c.attention_bias); /* qwen2: q/k/v biases always */
    assert_false(c.o_bias);
    assert_true(c.tie_word_embeddings);
    assert_int_equal(c.sliding_window, 0); /* use_sliding_window false */
    assert_true(c.rms_norm_eps == 1e-6);
    assert_int_equal(c.bos_token_id, 151643);
    assert_string_equal(lb_config_architecture(c.arch), "Qwen2ForCausalLM");
}

static void test_head_dim_gqa_defaults(void **state)
{
    (void)state;
    lb_config c;
    lb_err err = {0};
    /* defaults: kv heads = heads, head_dim = hidden / heads, theta 10000, untied */
    assert_int_equal(parse_variant(&c, NULL, NULL, &err), 0);
    assert_int_equal(c.num_key_value_heads, 8);
    assert_int_equal(c.head_dim, 8);
    assert_true(c.rope_theta == 10000.0);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    assert_string_equal(c.torch_dtype, "");
    /* explicit head_dim decouples q width from hidden */
    assert_int_equal(parse_variant(&c, NULL, "\"head_dim\": 32, \"num_key_value_heads\": 2", &err),
                     0);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(lb_config_q_dim(&c), 256);
    assert_int_equal(lb_config_kv_dim(&c), 64);
    /* head_dim allows heads that do not divide hidden */
    assert_int_equal(parse_variant(&c, "num_attention_heads",
                                   "\"num_attention_heads\": 3, \"head_dim\": 16", &err),
                     0);
    /* llama attention_bias covers o_proj as well; mlp_bias; eos list (llama 3) */
    assert_int_equal(parse_variant(&c, NULL,
                                   "\"attention_bias\": true, \"mlp_bias\": true, "
                                   "\"eos_token_id\": [7, 9], \"rope_scaling\": null",
                                   &err),
                     0);
    assert_true(c.attention_bias);
    assert_true(c.o_bias);
    assert_true(c.mlp_bias);
    assert_int_equal(c.eos_token_id, 7);
    assert_int_equal(parse_variant(&c, NULL, "\"dtype\": \"bfloat16\"", &err), 0);
    assert_string_equal(c.torch_dtype, "bfloat16");
    /* integral reals are accepted as sizes */
    assert_int_equal(parse_variant(&c, "hidden_size", "\"hidden_size\": 64.0", &err), 0);
    assert_int_equal(c.hidden_size, 64);
}

static void test_errors(void **state)
{
    (void)state;
    const char *required[] = {"model_type",          "hidden_size", "intermediate_size",
                              "num_hidden_layers",   "num_attention_heads", "vocab_size",
                              "max_position_embeddings", "rms_norm_eps"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        expect_bad(required[i], NULL, required[i], "missing");
    expect_bad("hidden_size", "\"hidden_size\": \"64\"", "hidden_size", "integer");
    expect_bad("hidden_size", "\"hidden_size\": 64.5", "hidden_size", "integer");
    expect_bad("hidden_size", "\"hidden_size\": 0", "hidden_size", "positive");
    expect_bad("hidden_size", "\"hidden_size\": 99999999999", "hidden_size", "range");
    expect_bad("num_hidden_layers", "\"num_hidden_layers\": -1", "num_hidden_layers",
               "positive");
    expect_bad("vocab_size", "\"vocab_size\": [512]", "vocab_size", "integer");
    expect_bad("num_attention_heads", "\"num_attention_heads\": 0", "num_attention_heads",
               "positive");
    expect_bad("num_attention_heads", "\"num_attention_heads\": 7", "num_attention_heads",
               "divide");
    expect_bad(NULL, "\"num_key_value_heads\": 3", "num_key_value_heads", "divide");
    expect_bad(NULL, "\"num_key_value_heads\": 0", "num_key_value_heads", "positive");
    expect_bad(NULL, "\"head_dim\": 7", "head_dim", "even");
    expect_bad("rms_norm_eps", "\"rms_norm_eps\": \"1e-5\"", "rms_norm_eps", "number");
    expect_bad("rms_norm_eps", "\"rms_norm_eps\": 0", "rms_norm_eps", "> 0");
    expect_bad(NULL, "\"rope_theta\": -1", "rope_theta", "> 0");
    expect_bad(NULL, "\"tie_word_embeddings\": 1", "tie_word_embeddings", "true or false");
    expect_bad(NULL, "\"hidden_act\": \"gelu\"", "hidden_act", "silu");
    expect_bad(NULL, "\"hidden_act\": 3", "hidden_act", "string");
    expect_bad(NULL, "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}",
               "rope_scaling", "not supported");
    expect_bad(NULL, "\"bos_token_id\": 600", "bos", "vocab_size");
    expect_bad(NULL, "\"eos_token_id\": -3", "eos_token_id", "non-negative");
    expect_bad("model_type", "\"model_type\": \"gpt2\"", "model_type", "gpt2");
    expect_bad(NULL, "\"hidden_size\": 65", "JSON", "duplicate"); /* duplicate key */

    lb_config c;
    lb_err err = {0};
    assert_int_equal(lb_config_parse(&c, "{\"model_type\": ", "cfg.json", &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "cfg.json"));
    assert_non_null(strstr(err.msg, "JSON"));
    assert_int_equal(lb_config_parse(&c, "[1]", "cfg.json", &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "object"));
    assert_int_equal(lb_config_load(&c, "/nonexistent/model", &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/model"));
    char *dir = lb_test_mkdtemp();
    assert_int_equal(lb_config_load(&c, dir, &err), LB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "config.json"));
    lb_test_rmdir(&dir);
    /* validate on its own */
    assert_int_equal(parse_variant(&c, NULL, NULL, &err), 0);
    c.num_key_value_heads = 5;
    assert_int_equal(lb_config_validate(&c, &err), LB_EFORMAT);
    assert_non_null(strstr(err.msg, "num_key_value_heads"));
}

/* Random byte flips of a valid config: parse cleanly or fail with a message,
 * and any accepted config passes validation. */
static void test_config_byte_flips(void **state)
{
    (void)state;
    size_t len = strlen(k_qwen2);
    char *buf = malloc(len + 1);
    uint64_t rng = 5;
    int ok = 0, bad = 0;
    for (int c = 0; c < 400; c++) {
        memcpy(buf, k_qwen2, len + 1);
        for (int k = 0; k < 1 + c % 3; k++) {
            uint64_t r = lb_test_rand_u64(&rng);
            size_t pos = (size_t)((r >> 8) % len);
            if (r & 1)
                buf[pos] = (char)(1 + (r >> 40) % 255);
            else
                buf[pos] = (char)(buf[pos] ^ (1 << (r >> 4 & 6)));
            if (!buf[pos])
                buf[pos] = ' ';
        }
        lb_config cfg;
        lb_err err = {0};
        if (lb_config_parse(&cfg, buf, "flip.json", &err) == 0) {
            assert_int_equal(lb_config_validate(&cfg, &err), 0);
            ok++;
        } else {
            assert_non_null(strstr(err.msg, "flip.json"));
            assert_null(strchr(err.msg, '\n'));
            bad++;
        }
    }
    print_message("config flips: %d accepted, %d rejected\n", ok, bad);
    assert_true(ok > 0 && bad > 0);
    free(buf);
}

static void test_write_round_trip(void **state)
{
    (void)state;
    char *dir = lb_test_mkdtemp();
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    lb_config in[4], out;
    lb_err err = {0};
    assert_int_equal(lb_config_parse(&in[0], k_mistral, "m", &err), 0);
    assert_int_equal(lb_config_parse(&in[1], k_qwen2, "q", &err), 0);
    assert_int_equal(parse_variant(&in[2], NULL,
                                   "\"head_dim\": 32, \"num_key_value_heads\": 2, "
                                   "\"attention_bias\": true, \"tie_word_embeddings\": true, "
                                   "\"rope_theta\": 500000.0, \"bos_token_id\": 3",
                                   &err),
                     0);
    in[3] = in[1];
    in[3].sliding_window = 1024; /* qwen2 with an active window */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lb_config_write(&in[i], path, &err), 0);
        assert_int_equal(lb_config_load(&out, dir, &err), 0);
        assert_config_equal(&in[i], &out);
        char *text = NULL;
        lb_test_run(&text, "cat '%s'", path);
        assert_non_null(text);
        assert_non_null(strstr(text, lb_config_architecture(in[i].arch)));
        assert_non_null(strstr(text, "\"architectures\""));
        free(text);
    }
    /* eps is written in its shortest form */
    assert_int_equal(lb_config_write(&in[0], path, &err), 0);
    char *text = NULL;
    lb_test_run(&text, "cat '%s'", path);
    assert_non_null(strstr(text, "\"rms_norm_eps\": 1e-5,"));
    assert_non_null(strstr(text, "\"rope_theta\": 1000000.0,"));
    free(text);
    /* invalid configs are not written */
    in[0].head_dim = 0;
    assert_int_equal(lb_config_write(&in[0], path, &err), LB_EFORMAT);
    lb_test_rmdir(&dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture),
        cmocka_unit_test(test_mistral_qwen2),
        cmocka_unit_test(test_head_dim_gqa_defaults),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_config_byte_flips),
        cmocka_unit_test(test_write_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
