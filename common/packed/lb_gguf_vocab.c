/* lb_gguf_vocab: the GGUF export's vocabulary, from a Hugging Face tokenizer.json
 * (BPE) or synthetic (see lb_gguf_vocab.h). */
#include "lb_gguf_vocab.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lb_gguf_vocab_free(lb_gguf_vocab *v)
{
    for (int32_t i = 0; v->tok && i < v->n; i++)
        free(v->tok[i]);
    for (int32_t i = 0; v->merges && i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->tok);
    free(v->score);
    free(v->type);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

static int vocab_alloc(lb_gguf_vocab *v, int32_t n, lb_err *err)
{
    v->n = n;
    v->tok = calloc((size_t)n, sizeof *v->tok);
    v->score = calloc((size_t)n, sizeof *v->score);
    v->type = calloc((size_t)n, sizeof *v->type);
    if (!v->tok || !v->score || !v->type)
        return lb_err_set(err, LB_ENOMEM, "gguf export: out of memory for %d tokens", n);
    return 0;
}

static int vocab_set(lb_gguf_vocab *v, int32_t id, const char *text, float score, int32_t type,
                     lb_err *err)
{
    free(v->tok[id]);
    v->tok[id] = strdup(text);
    v->score[id] = score;
    v->type[id] = type;
    return v->tok[id] ? 0 : lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
}

/* No tokenizer: <unk> <s> </s>, the byte tokens <0x00>..<0xFF> (byte fallback),
 * "▁" (so spaces survive a round trip), then distinct filler pieces, so
 * llama.cpp's SentencePiece vocab loads and any text tokenizes (as bytes). */
int lb_gguf_vocab_synthetic(lb_gguf_vocab *v, const lb_config *cfg, lb_err *err)
{
    int32_t n = cfg->vocab_size;
    int rc = vocab_alloc(v, n, err);
    char text[32];
    for (int32_t id = 0; !rc && id < n; id++) {
        if (id < 3)
            rc = vocab_set(v, id, id == 0 ? "<unk>" : id == 1 ? "<s>" : "</s>", 0.0f,
                           id == 0 ? TT_UNKNOWN : TT_CONTROL, err);
        else if (id < 3 + 256) {
            snprintf(text, sizeof text, "<0x%02X>", id - 3);
            rc = vocab_set(v, id, text, 0.0f, TT_BYTE, err);
        } else if (id == 3 + 256) {
            rc = vocab_set(v, id, "\xe2\x96\x81", -(float)id, TT_NORMAL, err);
        } else {
            snprintf(text, sizeof text, "\xe2\x96\x81lb%d", id); /* "▁lbN" */
            rc = vocab_set(v, id, text, -(float)id, TT_NORMAL, err);
        }
    }
    v->model = "llama";
    v->unk = 0;
    v->bos = cfg->bos_token_id >= 0 && cfg->bos_token_id < n ? cfg->bos_token_id : 1;
    v->eos = cfg->eos_token_id >= 0 && cfg->eos_token_id < n ? cfg->eos_token_id : 2;
    return rc;
}

static int is_byte_token(const char *s)
{
    return strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>';
}

/* tokenizer.json (Hugging Face) with a BPE model: byte_fallback -> "llama"
 * (scores -id, which orders merges like SentencePiece's), else "gpt2" with its
 * merges. Ids beyond the tokenizer up to vocab_size become unused pads. */
int lb_gguf_vocab_from_tokenizer_json(lb_gguf_vocab *v, const char *path, const lb_config *cfg,
                                      lb_err *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    int rc = 0;
    if (!root)
        return lb_err_set(err, LB_EFORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    json_t *model = json_object_get(root, "model");
    json_t *vmap = json_object_get(model, "vocab");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type || strcmp(type, "BPE") || !json_is_object(vmap)) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s: model.type '%s' is not supported; GGUF export reads BPE "
                        "tokenizers (remove tokenizer.json to export a placeholder vocabulary)",
                        path, type ? type : "(none)");
        goto fail;
    }
    bool fallback = json_is_true(json_object_get(model, "byte_fallback"));
    int32_t n = cfg->vocab_size;
    if ((rc = vocab_alloc(v, n, err)))
        goto fail;
    const char *key;
    json_t *val;
    json_object_foreach(vmap, key, val)
    {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id >= n) {
            rc = lb_err_set(err, LB_EFORMAT, "%s: token '%.32s' has id outside 0..%d", path, key,
                            n - 1);
            goto fail;
        }
        int32_t tt = fallback && is_byte_token(key) ? TT_BYTE : TT_NORMAL;
        if ((rc = vocab_set(v, (int32_t)id, key, fallback ? -(float)id : 0.0f, tt, err)))
            goto fail;
    }
    size_t i;
    json_array_foreach(json_object_get(root, "added_tokens"), i, val)
    {
        json_int_t id = json_integer_value(json_object_get(val, "id"));
        const char *c = json_string_value(json_object_get(val, "content"));
        if (!c || id < 0 || id >= n) {
            rc = lb_err_set(err, LB_EFORMAT, "%s: added_tokens[%zu] has no content or an id "
                            "outside 0..%d", path, i, n - 1);
            goto fail;
        }
        int32_t tt = json_is_true(json_object_get(val, "special")) ? TT_CONTROL : TT_USER;
        if ((rc = vocab_set(v, (int32_t)id, c, 0.0f, tt, err)))
            goto fail;
    }
    char pad[32];
    for (int32_t id = 0; id < n; id++)
        if (!v->tok[id]) {
            snprintf(pad, sizeof pad, "[PAD%d]", id);
            if ((rc = vocab_set(v, id, pad, 0.0f, TT_UNUSED, err)))
                goto fail;
        }
    v->model = fallback ? "llama" : "gpt2";
    v->unk = -1;
    json_t *unk = json_object_get(model, "unk_token");
    for (int32_t id = 0; json_is_string(unk) && id < n; id++)
        if (!strcmp(v->tok[id], json_string_value(unk))) {
            v->unk = id;
            v->type[id] = TT_UNKNOWN;
            break;
        }
    v->bos = cfg->bos_token_id;
    v->eos = cfg->eos_token_id;
    if (!fallback) {
        json_t *merges = json_object_get(model, "merges");
        size_t nm = json_array_size(merges);
        v->merges = calloc(nm ? nm : 1, sizeof *v->merges);
        if (!v->merges) {
            rc = lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
            goto fail;
        }
        json_array_foreach(merges, i, val)
        {
            /* "a b", or ["a", "b"] in newer tokenizers */
            char *m = NULL;
            if (json_is_string(val))
                m = strdup(json_string_value(val));
            else if (json_array_size(val) == 2 && json_is_string(json_array_get(val, 0)) &&
                     json_is_string(json_array_get(val, 1))) {
                const char *a = json_string_value(json_array_get(val, 0));
                const char *b = json_string_value(json_array_get(val, 1));
                m = malloc(strlen(a) + strlen(b) + 2);
                if (m)
                    sprintf(m, "%s %s", a, b);
            } else {
                rc = lb_err_set(err, LB_EFORMAT, "%s: model.merges[%zu] is not a pair", path, i);
                goto fail;
            }
            if (!m) {
                rc = lb_err_set(err, LB_ENOMEM, "gguf export: out of memory");
                goto fail;
            }
            v->merges[v->n_merges++] = m;
        }
    }
fail:
    json_decref(root);
    return rc;
}
