/* lb_tok_load: reads tokenizer.json (+ tokenizer_config.json) into an lb_tok:
 * normalizers, pre-tokenizers, post-processor, vocabulary, merges and added
 * tokens (see lb_tok.h, docs/tokenizer.md). */
#include "lb_tok_int.h"

/* --------------------------------------------------------------- loading */

static pcre2_code *re_compile(const char *pat, size_t len, int literal, const char *path,
                              lb_err *err)
{
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(ec, msg, sizeof msg);
        lb_err_set(err, LB_EFORMAT, "%s: regex /%.60s/ does not compile at %zu: %s", path, pat,
                   (size_t)eo, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is off */
    return re;
}

/* A {"String": s} or {"Regex": r} pattern. */
static pcre2_code *pattern_compile(json_t *pat, const char *path, const char *what, lb_err *err)
{
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s))
        return re_compile(json_string_value(s), json_string_length(s), 1, path, err);
    if (json_is_string(r))
        return re_compile(json_string_value(r), json_string_length(r), 0, path, err);
    lb_err_set(err, LB_EFORMAT, "%s: %s pattern is neither {\"String\"} nor {\"Regex\"}", path, what);
    return NULL;
}

static int load_norm(lb_tok *t, json_t *n, const char *path, lb_err *err)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!type)
        return lb_err_set(err, LB_EFORMAT, "%s: normalizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x)
        {
            int rc = load_norm(t, x, path, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    tok_norm *nv = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *nv);
    if (!nv)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    t->norm = nv;
    tok_norm *d = &t->norm[t->n_norm];
    memset(d, 0, sizeof *d);
    if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            return lb_err_set(err, LB_EFORMAT, "%s: Prepend normalizer without a string", path);
        d->type = NORM_PREPEND;
        d->alen = json_string_length(p);
        d->a = malloc(d->alen + 1);
        if (!d->a)
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        memcpy(d->a, json_string_value(p), d->alen + 1);
    } else if (!strcmp(type, "Replace")) {
        json_t *c = json_object_get(n, "content");
        if (!json_is_string(c))
            return lb_err_set(err, LB_EFORMAT, "%s: Replace normalizer without content", path);
        d->type = NORM_REPLACE;
        d->alen = json_string_length(c);
        d->a = malloc(d->alen + 1);
        if (!d->a)
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        memcpy(d->a, json_string_value(c), d->alen + 1);
        d->re = pattern_compile(json_object_get(n, "pattern"), path, "Replace", err);
        if (!d->re) {
            free(d->a);
            return err ? err->code : LB_EFORMAT;
        }
    } else if (!strcmp(type, "NFC")) {
        d->type = NORM_NFC;
    } else if (!strcmp(type, "NFD")) {
        d->type = NORM_NFD;
    } else if (!strcmp(type, "NFKC")) {
        d->type = NORM_NFKC;
    } else if (!strcmp(type, "NFKD")) {
        d->type = NORM_NFKD;
    } else {
        return lb_err_set(err, LB_EFORMAT,
                          "%s: normalizer '%s' is not supported (Sequence, Prepend, Replace, "
                          "NFC/NFD/NFKC/NFKD are)",
                          path, type);
    }
    t->n_norm++;
    return 0;
}

static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_pre(lb_tok *t, json_t *n, const char *path, lb_err *err)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!type)
        return lb_err_set(err, LB_EFORMAT, "%s: pre_tokenizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(n, "pretokenizers"), i, x)
        {
            int rc = load_pre(t, x, path, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (t->n_pre > 0 && t->pre[t->n_pre - 1].type == PRE_BYTELEVEL)
        return lb_err_set(err, LB_EFORMAT, "%s: a pre_tokenizer after ByteLevel is not supported",
                          path);
    tok_pre *pv = realloc(t->pre, (size_t)(t->n_pre + 1) * sizeof *pv);
    if (!pv)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
    t->pre = pv;
    tok_pre *d = &t->pre[t->n_pre];
    memset(d, 0, sizeof *d);
    if (!strcmp(type, "Split")) {
        d->type = PRE_SPLIT;
        const char *beh = json_string_value(json_object_get(n, "behavior"));
        d->invert = json_is_true(json_object_get(n, "invert"));
        if (!beh || !strcmp(beh, "Isolated"))
            d->behavior = SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed"))
            d->behavior = SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious"))
            d->behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext"))
            d->behavior = SPLIT_MERGED_NEXT;
        else
            return lb_err_set(err, LB_EFORMAT, "%s: Split behavior '%s' is not supported", path,
                              beh);
        d->re = pattern_compile(json_object_get(n, "pattern"), path, "Split", err);
        if (!d->re)
            return err ? err->code : LB_EFORMAT;
    } else if (!strcmp(type, "ByteLevel")) {
        d->type = PRE_BYTELEVEL;
        d->add_prefix_space = json_is_true(json_object_get(n, "add_prefix_space"));
        json_t *ur = json_object_get(n, "use_regex");
        if (!ur || json_is_true(ur)) {
            d->re = re_compile(GPT2_RE, sizeof GPT2_RE - 1, 0, path, err);
            if (!d->re)
                return err ? err->code : LB_EFORMAT;
        }
        t->kind = LB_TOK_KIND_BYTE;
    } else if (!strcmp(type, "Metaspace")) {
        d->type = PRE_METASPACE;
        const char *rep = json_string_value(json_object_get(n, "replacement"));
        if (!rep)
            rep = "\xe2\x96\x81";
        d->rep_len = strlen(rep);
        if (d->rep_len == 0 || d->rep_len > 4)
            return lb_err_set(err, LB_EFORMAT, "%s: Metaspace replacement must be one character",
                              path);
        memcpy(d->rep, rep, d->rep_len);
        const char *ps = json_string_value(json_object_get(n, "prepend_scheme"));
        json_t *aps = json_object_get(n, "add_prefix_space");
        d->prepend_scheme = PREPEND_ALWAYS;
        if (ps && !strcmp(ps, "first"))
            d->prepend_scheme = PREPEND_FIRST;
        else if ((ps && !strcmp(ps, "never")) || (!ps && json_is_false(aps)))
            d->prepend_scheme = PREPEND_NEVER;
        json_t *sp = json_object_get(n, "split");
        d->split = !sp || json_is_true(sp);
    } else {
        return lb_err_set(err, LB_EFORMAT,
                          "%s: pre_tokenizer '%s' is not supported (Sequence, Split, ByteLevel, "
                          "Metaspace are)",
                          path, type);
    }
    t->n_pre++;
    return 0;
}

/* Resolves a tokenizer_config.json token entry (string or {"content": s}). */
static int32_t config_token(const lb_tok *t, json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return -1;
    return map_find(t, json_string_value(v), json_string_length(v));
}

static int load_post(lb_tok *t, json_t *p, const char *path, lb_err *err)
{
    if (!p || json_is_null(p))
        return 0;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        return lb_err_set(err, LB_EFORMAT, "%s: post_processor without a type", path);
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(p, "processors"), i, x)
        {
            int rc = load_post(t, x, path, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel"))
        return 0; /* offsets only */
    if (strcmp(type, "TemplateProcessing"))
        return lb_err_set(err, LB_EFORMAT,
                          "%s: post_processor '%s' is not supported (TemplateProcessing, "
                          "ByteLevel, Sequence are)",
                          path, type);
    json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
    int seen_seq = 0;
    size_t i;
    json_t *item;
    json_array_foreach(single, i, item)
    {
        json_t *st = json_object_get(item, "SpecialToken");
        if (!st) {
            seen_seq = 1;
            continue;
        }
        const char *name = json_string_value(json_object_get(st, "id"));
        if (!name)
            return lb_err_set(err, LB_EFORMAT, "%s: TemplateProcessing SpecialToken without id", path);
        json_t *ids = json_object_get(json_object_get(specials, name), "ids");
        size_t k;
        json_t *idv;
        int32_t one[1];
        size_t nid = 0;
        if (json_is_array(ids)) {
            json_array_foreach(ids, k, idv)
            {
                int32_t id = (int32_t)json_integer_value(idv);
                if (id < 0 || id >= t->n_ids)
                    return lb_err_set(err, LB_EFORMAT, "%s: template token '%s' has id %d out of range",
                                      path, name, (int)id);
                if ((seen_seq ? t->n_post_ids : t->n_pre_ids) >= 8)
                    return lb_err_set(err, LB_EFORMAT, "%s: template has more than 8 special tokens",
                                      path);
                if (seen_seq)
                    t->post_ids[t->n_post_ids++] = id;
                else
                    t->pre_ids[t->n_pre_ids++] = id;
                nid++;
            }
        }
        if (!nid) {
            one[0] = map_find(t, name, strlen(name));
            if (one[0] < 0)
                return lb_err_set(err, LB_EFORMAT, "%s: template token '%s' is not in the vocabulary",
                                  path, name);
            if ((seen_seq ? t->n_post_ids : t->n_pre_ids) >= 8)
                return lb_err_set(err, LB_EFORMAT, "%s: template has more than 8 special tokens", path);
            if (seen_seq)
                t->post_ids[t->n_post_ids++] = one[0];
            else
                t->pre_ids[t->n_pre_ids++] = one[0];
        }
    }
    return 0;
}

static int grow_ids(lb_tok *t, int64_t n, const char *path, lb_err *err)
{
    if (n <= t->n_ids)
        return 0;
    if (n > (1 << 28))
        return lb_err_set(err, LB_EFORMAT, "%s: token id %lld is out of range", path, (long long)n - 1);
    if (n > t->ids_cap) {
        /* geometric: vocab ids mostly arrive in increasing order */
        int64_t cap = t->ids_cap ? t->ids_cap : 1024;
        while (cap < n)
            cap *= 2;
        char **p = realloc(t->piece, (size_t)cap * sizeof *p);
        if (!p)
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        t->piece = p;
        uint32_t *pl = realloc(t->piece_len, (size_t)cap * sizeof *pl);
        if (!pl)
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        t->piece_len = pl;
        uint8_t *ty = realloc(t->type, (size_t)cap);
        if (!ty)
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        t->type = ty;
        t->ids_cap = cap;
    }
    for (int64_t i = t->n_ids; i < n; i++) {
        t->piece[i] = NULL;
        t->piece_len[i] = 0;
        t->type[i] = LB_TOK_UNUSED;
    }
    t->n_ids = n;
    return 0;
}

static int set_piece(lb_tok *t, int64_t id, const char *s, size_t n, int type, const char *path,
                     lb_err *err)
{
    int rc = grow_ids(t, id + 1, path, err);
    if (rc)
        return rc;
    if (t->piece[id] && (t->piece_len[id] != n || memcmp(t->piece[id], s, n)))
        return lb_err_set(err, LB_EFORMAT, "%s: id %lld names two pieces ('%s' and '%.40s')", path,
                          (long long)id, t->piece[id], s);
    if (!t->piece[id]) {
        t->piece[id] = malloc(n + 1);
        if (!t->piece[id])
            return lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
        memcpy(t->piece[id], s, n);
        t->piece[id][n] = 0;
        t->piece_len[id] = (uint32_t)n;
    }
    t->type[id] = (uint8_t)type;
    return 0;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 to U+0100.. in byte order. */
static uint32_t byte_to_cp(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    uint32_t k = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            k++;
    return 256 + k;
}

static int load_merges(lb_tok *t, json_t *merges, const char *path, lb_err *err)
{
    size_t n = json_array_size(merges);
    t->n_merges = (int64_t)n;
    t->m_left = malloc((n + 1) * sizeof(int32_t));
    t->m_right = malloc((n + 1) * sizeof(int32_t));
    t->m_result = malloc((n + 1) * sizeof(int32_t));
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n + 2)
        cap *= 2;
    t->mmap_mask = cap - 1;
    t->mmap_key = malloc(cap * sizeof(uint64_t));
    t->mmap_rank = malloc(cap * sizeof(int32_t));
    if (!t->m_left || !t->m_right || !t->m_result || !t->mmap_key || !t->mmap_rank)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory for %zu merges", path, n);
    memset(t->mmap_rank, 0xFF, cap * sizeof(int32_t));
    tbuf cat = {0};
    int rc = 0;
    for (size_t r = 0; r < n; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp) {
                rc = lb_err_set(err, LB_EFORMAT, "%s: merge %zu '%.40s' has no space", path, r, a);
                goto done;
            }
            al = (size_t)(sp - a);
            b = sp + 1;
            const char *sp2 = strchr(b, ' '); /* "a b c": the reference keeps a and b */
            bl = sp2 ? (size_t)(sp2 - b) : strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            rc = lb_err_set(err, LB_EFORMAT, "%s: merge %zu is neither \"a b\" nor [a, b]", path, r);
            goto done;
        }
        int32_t ia = map_find(t, a, al), ib = map_find(t, b, bl);
        cat.n = 0;
        if (tbuf_put(&cat, a, al) || tbuf_put(&cat, b, bl)) {
            rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        int32_t ic = map_find(t, cat.p, cat.n);
        if (ia < 0 || ib < 0 || ic < 0) {
            rc = lb_err_set(err, LB_EFORMAT, "%s: merge %zu ('%.30s' + '%.30s') names a piece "
                            "that is not in the vocabulary", path, r, a, b);
            goto done;
        }
        t->m_left[r] = ia;
        t->m_right[r] = ib;
        t->m_result[r] = ic;
        if (t->made_by[ic] < 0)
            t->made_by[ic] = (int32_t)r;
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        uint64_t h = hash_u64(key) & t->mmap_mask;
        while (t->mmap_rank[h] >= 0 && t->mmap_key[h] != key)
            h = (h + 1) & t->mmap_mask;
        if (t->mmap_rank[h] < 0) { /* a repeated pair keeps its first (lowest) rank */
            t->mmap_key[h] = key;
            t->mmap_rank[h] = (int32_t)r;
        }
    }
done:
    free(cat.p);
    return rc;
}

static int load_json(const char *path, size_t flags, json_t **out, lb_err *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc = lb_io_read_file(path, TOK_JSON_MAX_BYTES, &text, &len, err);
    if (rc)
        return rc;
    json_error_t je;
    *out = json_loadb(text, len, flags, &je);
    free(text);
    if (!*out)
        return lb_err_set(err, LB_EFORMAT, "%s: line %d: %s", path, je.line, je.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return lb_err_set(err, LB_EFORMAT, "%s: not a JSON object", path);
    }
    return 0;
}

/* model.vocab and added_tokens into the piece table. */
static int load_vocab(lb_tok *t, json_t *model, json_t *added, const char *jpath, lb_err *err)
{
    json_t *vocab = json_object_get(model, "vocab");
    int rc;
    if (!json_is_object(vocab) || !json_is_array(json_object_get(model, "merges"))) {
        return lb_err_set(err, LB_EFORMAT, "%s: model.vocab (object) or model.merges (array) "
                          "missing", jpath);
    }
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val)
    {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id >= (1 << 28)) {
            return lb_err_set(err, LB_EFORMAT, "%s: vocab entry '%.40s' has a bad id", jpath,
                              key);
        }
        /* jansson keys are NUL-terminated; pieces with NUL would be cut short */
        if ((rc = set_piece(t, id, key, strlen(key), LB_TOK_NORMAL, jpath, err)))
            return rc;
    }
    size_t ai;
    json_t *at;
    json_array_foreach(added, ai, at)
    {
        json_t *c = json_object_get(at, "content");
        json_int_t id = json_integer_value(json_object_get(at, "id"));
        if (!json_is_string(c) || !json_string_length(c) || id < 0) {
            return lb_err_set(err, LB_EFORMAT, "%s: added_tokens[%zu] lacks content or id",
                              jpath, ai);
        }
        int special = json_is_true(json_object_get(at, "special"));
        if ((rc = set_piece(t, id, json_string_value(c), json_string_length(c),
                            special ? LB_TOK_CONTROL : LB_TOK_USER_DEFINED, jpath, err)))
            return rc;
    }
    return LB_OK;
}

/* Lookup tables over the loaded pieces: unk, byte fallback and byte-level ids, merges,
 * one-code-point ids and whether SentencePiece word cuts are safe. */
static int index_pieces(lb_tok *t, json_t *model, const char *jpath, lb_err *err)
{
    json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk))
        t->unk = map_find(t, json_string_value(unk), json_string_length(unk));
    if (t->unk >= 0)
        t->type[t->unk] = LB_TOK_UNKNOWN;
    for (unsigned b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = map_find(t, name, 6);
        if (t->byte_fallback && t->byte_id[b] >= 0 && t->type[t->byte_id[b]] == LB_TOK_NORMAL)
            t->type[t->byte_id[b]] = LB_TOK_BYTE;
        t->bl_char_len[b] = (uint8_t)utf8_encode(byte_to_cp(b), t->bl_char[b]);
        t->bl_id[b] = map_find(t, t->bl_char[b], t->bl_char_len[b]);
    }
    int rc = load_merges(t, json_object_get(model, "merges"), jpath, err);
    if (rc)
        return rc;
    t->cp_id = malloc(0x10000 * sizeof *t->cp_id);
    if (!t->cp_id)
        return lb_err_set(err, LB_ENOMEM, "%s: out of memory", jpath);
    for (uint32_t cp = 0; cp < 0x10000; cp++) {
        char u[4];
        t->cp_id[cp] = (cp >= 0xD800 && cp < 0xE000) ? -1 : map_find(t, u, utf8_encode(cp, u));
    }
    t->spm_cut = 1;
    for (int64_t i = 0; i < t->n_ids && t->spm_cut; i++) {
        const char *q = t->piece[i];
        for (uint32_t k = 3; q && k + 3 <= t->piece_len[i]; k++)
            if (!memcmp(q + k, SPM_SPACE, 3) && memcmp(q + k - 3, SPM_SPACE, 3)) {
                t->spm_cut = 0;
                break;
            }
    }
    return LB_OK;
}

/* BOS/EOS: the post_processor's template; tokenizer_config.json's
 * add_bos_token / add_eos_token, when given, override it (as transformers'
 * LlamaTokenizerFast rebuilds its template from them). */
static void apply_config(lb_tok *t, json_t *cfg)
{
    t->bos = config_token(t, cfg, "bos_token");
    t->eos = config_token(t, cfg, "eos_token");
    int32_t u = config_token(t, cfg, "unk_token");
    if (t->unk < 0)
        t->unk = u;
    json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
    if (json_is_boolean(ab) && t->bos >= 0) {
        int has = t->n_pre_ids > 0 && t->pre_ids[0] == t->bos;
        if (json_is_true(ab) && !has && t->n_pre_ids < 8) {
            memmove(t->pre_ids + 1, t->pre_ids, (size_t)t->n_pre_ids * sizeof(int32_t));
            t->pre_ids[0] = t->bos;
            t->n_pre_ids++;
        } else if (json_is_false(ab) && has) {
            memmove(t->pre_ids, t->pre_ids + 1, (size_t)(t->n_pre_ids - 1) * sizeof(int32_t));
            t->n_pre_ids--;
        }
    }
    if (json_is_boolean(ae) && t->eos >= 0) {
        int has = t->n_post_ids > 0 && t->post_ids[t->n_post_ids - 1] == t->eos;
        if (json_is_true(ae) && !has && t->n_post_ids < 8)
            t->post_ids[t->n_post_ids++] = t->eos;
        else if (json_is_false(ae) && has)
            t->n_post_ids--;
    }
}

int lb_tok_load(const char *path, lb_tok **out, lb_err *err)
{
    *out = NULL;
    json_t *root = NULL, *cfg = NULL;
    char *jpath = NULL, *cpath = NULL, *dir = NULL;
    lb_tok *t = calloc(1, sizeof *t);
    int rc = LB_ENOMEM;
    if (!t) {
        lb_err_set(err, LB_ENOMEM, "lb_tok: out of memory");
        goto fail;
    }
    size_t pl = strlen(path);
    if (pl >= 5 && !strcmp(path + pl - 5, ".json")) {
        jpath = strdup(path);
        dir = strdup(path);
        if (dir) {
            char *sl = strrchr(dir, '/');
            if (sl)
                *sl = 0;
            else
                strcpy(dir, ".");
        }
    } else {
        jpath = lb_io_path_join(path, "tokenizer.json");
        dir = strdup(path);
    }
    if (!jpath || !dir) {
        lb_err_set(err, LB_ENOMEM, "lb_tok: out of memory");
        goto fail;
    }
    cpath = lb_io_path_join(dir, "tokenizer_config.json");
    if (!cpath) {
        lb_err_set(err, LB_ENOMEM, "lb_tok: out of memory");
        goto fail;
    }
    rc = load_json(jpath, 0, &root, err);
    if (rc) {
        if (rc == LB_ENOTFOUND)
            lb_err_set(err, rc, "%s: no tokenizer.json; copy the model's tokenizer.json (and "
                       "tokenizer_config.json) into %s", jpath, dir);
        goto fail;
    }
    FILE *cf = fopen(cpath, "rb");
    if (cf) {
        fclose(cf);
        /* configs carry model_max_length = 1e30, beyond int64 */
        rc = load_json(cpath, JSON_DECODE_INT_AS_REAL, &cfg, err);
        if (rc)
            goto fail;
    }
    rc = LB_EFORMAT;
    t->kind = LB_TOK_KIND_SPM;
    t->unk = t->bos = t->eos = -1;
    json_t *model = json_object_get(root, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || (mtype && strcmp(mtype, "BPE")) ||
        (!mtype && !json_object_get(model, "merges"))) {
        lb_err_set(err, LB_EFORMAT, "%s: model type '%s' is not supported (only BPE)", jpath,
                   mtype ? mtype : "?");
        goto fail;
    }
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0) {
        lb_err_set(err, LB_EFORMAT, "%s: BPE dropout is not supported (it is random)", jpath);
        goto fail;
    }
    const char *cont = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *eow = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((cont && *cont) || (eow && *eow)) {
        lb_err_set(err, LB_EFORMAT, "%s: continuing_subword_prefix / end_of_word_suffix are not "
                   "supported", jpath);
        goto fail;
    }
    t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

    json_t *added = json_object_get(root, "added_tokens");
    if ((rc = load_vocab(t, model, added, jpath, err)))
        goto fail;
    rc = LB_ENOMEM;
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)t->n_ids + 2)
        cap *= 2;
    t->map_mask = cap - 1;
    t->map = calloc(cap, sizeof *t->map);
    t->made_by = malloc((size_t)(t->n_ids + 1) * sizeof *t->made_by);
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->map || !t->made_by || !t->added) {
        lb_err_set(err, LB_ENOMEM, "%s: out of memory", jpath);
        goto fail;
    }
    /* added tokens first: their id wins over a vocab duplicate, as in the reference */
    size_t ai;
    json_t *at;
    json_array_foreach(added, ai, at)
    {
        json_int_t id = json_integer_value(json_object_get(at, "id"));
        map_insert(t, (uint32_t)id);
        tok_added *a = &t->added[t->n_added++];
        a->id = (int32_t)id;
        a->text = t->piece[id];
        a->len = t->piece_len[id];
        a->special = json_is_true(json_object_get(at, "special"));
        json_t *nz = json_object_get(at, "normalized");
        a->normalized = nz ? json_is_true(nz) : !a->special;
        a->lstrip = json_is_true(json_object_get(at, "lstrip"));
        a->rstrip = json_is_true(json_object_get(at, "rstrip"));
    }
    for (int64_t i = 0; i < t->n_ids; i++) {
        t->made_by[i] = -1;
        if (t->piece[i])
            map_insert(t, (uint32_t)i);
    }
    for (int i = 0; i < t->n_added; i++) {
        /* normalized added tokens match the normalized text (checked after the normalizer) */
        if (t->added[i].normalized)
            t->has_normalized_added = 1;
        t->added_first[t->added[i].normalized][(unsigned char)t->added[i].text[0]] = 1;
    }
    if ((rc = index_pieces(t, model, jpath, err)))
        goto fail;
    if ((rc = load_norm(t, json_object_get(root, "normalizer"), jpath, err)) ||
        (rc = load_pre(t, json_object_get(root, "pre_tokenizer"), jpath, err)) ||
        (rc = load_post(t, json_object_get(root, "post_processor"), jpath, err)))
        goto fail;

    if (cfg)
        apply_config(t, cfg);
    json_decref(root);
    json_decref(cfg);
    free(jpath);
    free(cpath);
    free(dir);
    *out = t;
    return 0;
fail:
    json_decref(root);
    json_decref(cfg);
    free(jpath);
    free(cpath);
    free(dir);
    lb_tok_free(&t);
    return rc ? rc : LB_EFORMAT;
}

void lb_tok_free(lb_tok **tp)
{
    if (!tp || !*tp)
        return;
    lb_tok *t = *tp;
    for (int64_t i = 0; i < t->n_ids; i++)
        free(t->piece[i]);
    free(t->piece);
    free(t->piece_len);
    free(t->type);
    free(t->made_by);
    free(t->map);
    free(t->m_left);
    free(t->m_right);
    free(t->m_result);
    free(t->mmap_key);
    free(t->mmap_rank);
    free(t->cp_id);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        pcre2_code_free(t->norm[i].re);
    }
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++)
        pcre2_code_free(t->pre[i].re);
    free(t->pre);
    free(t->added);
    free(t);
    *tp = NULL;
}
