/* lb_tok: tokenizer.json BPE tokenizer (see lb_tok.h, docs/tokenizer.md).
 * Pipeline per text, as Hugging Face tokenizers runs it:
 *   UTF-8 repair -> split on added tokens -> normalizer (per section) ->
 *   pre-tokenizer (regex split, Metaspace, ByteLevel) -> BPE per piece ->
 *   post-processor (BOS/EOS).
 * The BPE merge loop is a min-heap of (rank, position) over a linked list of
 * symbols with a (left id, right id) -> rank hash map: O(n log n) per piece,
 * leftmost pair first among equal ranks (the order HF uses). */
#include "lb_tok.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "lb_io_util.h"

#define TOK_JSON_MAX_BYTES ((uint64_t)512 * 1024 * 1024)
#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's space */

/* ---------------------------------------------------------------- helpers */

typedef struct {
    char *p;
    size_t n, cap;
} tbuf;

static int tbuf_reserve(tbuf *b, size_t extra)
{
    if (b->n + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int tbuf_put(tbuf *b, const void *s, size_t n)
{
    if (tbuf_reserve(b, n + 1))
        return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

typedef struct {
    size_t off, len;
    int32_t added; /* added-token id, or -1 for text */
} tspan;

typedef struct {
    tspan *v;
    size_t n, cap;
} tspans;

static int tspans_push(tspans *s, size_t off, size_t len, int32_t added)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        tspan *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (tspan){off, len, added};
    return 0;
}

typedef struct {
    uint32_t *v;
    int64_t n, cap;
} tids;

static int tids_push(tids *t, uint32_t id)
{
    if (t->n == t->cap) {
        int64_t cap = t->cap ? t->cap * 2 : 1024;
        uint32_t *v = realloc(t->v, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = id;
    return 0;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t k)
{
    /* splitmix64 finalizer: the low bits (the table index) depend on both ids */
    k ^= k >> 30;
    k *= 0xBF58476D1CE4E5B9ull;
    k ^= k >> 27;
    k *= 0x94D049BB133111EBull;
    return k ^ (k >> 31);
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the (valid) UTF-8 sequence starting with byte b. */
static size_t utf8_len(unsigned char b)
{
    return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

static uint32_t utf8_decode(const unsigned char *s, size_t *len)
{
    size_t l = utf8_len(s[0]);
    *len = l;
    if (l == 1)
        return s[0];
    if (l == 2)
        return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    if (l == 3)
        return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

int lb_tok_utf8_sanitize(const char *src, size_t len, char **dst, size_t *dst_len, lb_err *err)
{
    const unsigned char *s = (const unsigned char *)src;
    /* worst case: every byte becomes U+FFFD (3 bytes) */
    char *out = malloc(len * 3 + 1);
    if (!out)
        return lb_err_set(err, LB_ENOMEM, "lb_tok: out of memory repairing %zu bytes of text", len);
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned b = s[i];
        if (b < 0x80) {
            out[o++] = (char)b;
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF)
            need = 1;
        else if (b == 0xE0)
            need = 2, lo = 0xA0;
        else if (b == 0xED)
            need = 2, hi = 0x9F;
        else if (b >= 0xE1 && b <= 0xEF)
            need = 2;
        else if (b == 0xF0)
            need = 3, lo = 0x90;
        else if (b == 0xF4)
            need = 3, hi = 0x8F;
        else if (b >= 0xF1 && b <= 0xF3)
            need = 3;
        else
            need = 0;
        size_t j = i + 1, k = 0;
        if (need) {
            for (; k < need; k++, j++) {
                if (j >= len || s[j] < lo || s[j] > hi)
                    break;
                lo = 0x80;
                hi = 0xBF;
            }
        }
        if (need && k == need) {
            memcpy(out + o, s + i, j - i);
            o += j - i;
        } else {
            /* maximal invalid subpart -> one U+FFFD; the offending byte is read again */
            out[o++] = (char)0xEF;
            out[o++] = (char)0xBF;
            out[o++] = (char)0xBD;
        }
        i = j;
    }
    out[o] = 0;
    *dst = out;
    *dst_len = o;
    return 0;
}

/* JavaScript's String.prototype.trim whitespace (what the reference trims
 * around added tokens with lstrip/rstrip). */
static int js_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

static void trim_end(const char *base, tspan *sp)
{
    while (sp->len > 0) {
        size_t k = sp->len - 1; /* back to the start of the last code point */
        while (k > 0 && ((unsigned char)base[sp->off + k] & 0xC0) == 0x80)
            k--;
        size_t l;
        uint32_t c = utf8_decode((const unsigned char *)base + sp->off + k, &l);
        if (!js_space(c))
            break;
        sp->len = k;
    }
}

static void trim_start(const char *base, tspan *sp)
{
    while (sp->len > 0) {
        size_t l;
        uint32_t c = utf8_decode((const unsigned char *)base + sp->off, &l);
        if (!js_space(c))
            break;
        sp->off += l;
        sp->len -= l;
    }
}

/* ------------------------------------------------------------- the model */

enum { NORM_PREPEND = 1, NORM_REPLACE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD };
enum { PRE_SPLIT = 1, PRE_METASPACE, PRE_BYTELEVEL };
enum { SPLIT_ISOLATED = 1, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT };
enum { PREPEND_ALWAYS = 1, PREPEND_FIRST, PREPEND_NEVER };

typedef struct {
    int type;
    char *a; /* Prepend text / Replace content */
    size_t alen;
    pcre2_code *re; /* Replace pattern (literal or regex) */
} tok_norm;

typedef struct {
    int type;
    pcre2_code *re; /* Split pattern; ByteLevel's GPT-2 regex when use_regex */
    int behavior, invert;
    int add_prefix_space;   /* ByteLevel */
    char rep[8];            /* Metaspace replacement (UTF-8) */
    size_t rep_len;
    int prepend_scheme, split; /* Metaspace */
} tok_pre;

typedef struct {
    char *text;
    size_t len;
    int32_t id;
    int special, normalized, lstrip, rstrip;
} tok_added;

struct lb_tok {
    int kind;
    int64_t n_ids, ids_cap;
    char **piece;
    uint32_t *piece_len;
    uint8_t *type;
    int32_t *made_by; /* rank of the merge creating the piece, -1 */
    uint32_t *map;    /* open addressing: id + 1, 0 = empty */
    uint64_t map_mask;
    /* merges: rank -> (left, right, result); (left,right) -> rank map */
    int64_t n_merges;
    int32_t *m_left, *m_right, *m_result;
    uint64_t *mmap_key;
    int32_t *mmap_rank;
    uint64_t mmap_mask;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk, bos, eos;
    int32_t byte_id[256];   /* byte fallback <0xXX> ids, -1 when missing */
    int32_t bl_id[256];     /* byte-level char of each byte -> id */
    char bl_char[256][3];   /* byte-level char of each byte (UTF-8) */
    uint8_t bl_char_len[256];
    int32_t *cp_id;         /* code point < 0x10000 -> id of its one-char piece */
    tok_norm *norm;
    int n_norm;
    tok_pre *pre;
    int n_pre;
    tok_added *added;
    int n_added;
    int has_normalized_added;
    uint8_t added_first[2][256]; /* [normalized][first byte]: some added token starts so */
    /* SentencePiece-style: no piece holds "▁" right after another character,
     * so no merge crosses the point before a "▁" that follows a non-"▁": a
     * long piece (LLaMA-2 has no pre-tokenizer: a whole text is one piece)
     * is cut there into words that merge independently, same result. */
    int spm_cut;
    int32_t pre_ids[8], post_ids[8];
    int n_pre_ids, n_post_ids;
};

static int32_t map_find(const lb_tok *t, const char *s, size_t n)
{
    uint64_t h = hash_bytes(s, n) & t->map_mask;
    for (;;) {
        uint32_t v = t->map[h];
        if (!v)
            return -1;
        uint32_t id = v - 1;
        if (t->piece_len[id] == n && !memcmp(t->piece[id], s, n))
            return (int32_t)id;
        h = (h + 1) & t->map_mask;
    }
}

int32_t lb_tok_find(const lb_tok *tok, const char *piece, size_t len)
{
    return map_find(tok, piece, len);
}

static void map_insert(lb_tok *t, uint32_t id)
{
    uint64_t h = hash_bytes(t->piece[id], t->piece_len[id]) & t->map_mask;
    while (t->map[h]) {
        uint32_t o = t->map[h] - 1;
        if (t->piece_len[o] == t->piece_len[id] && !memcmp(t->piece[o], t->piece[id], t->piece_len[id]))
            return; /* keep the first id of a duplicate piece */
        h = (h + 1) & t->map_mask;
    }
    t->map[h] = id + 1;
}

/* Merge rank of the pair (a, b), or -1. */
static inline int32_t merge_rank(const lb_tok *t, int32_t a, int32_t b)
{
    if (a < 0 || b < 0)
        return -1;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = hash_u64(key) & t->mmap_mask;
    for (;;) {
        int32_t r = t->mmap_rank[h];
        if (r < 0)
            return -1;
        if (t->mmap_key[h] == key)
            return r;
        h = (h + 1) & t->mmap_mask;
    }
}

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

    /* vocabulary */
    json_t *vocab = json_object_get(model, "vocab");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(json_object_get(model, "merges"))) {
        lb_err_set(err, LB_EFORMAT, "%s: model.vocab (object) or model.merges (array) missing", jpath);
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val)
    {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id >= (1 << 28)) {
            lb_err_set(err, LB_EFORMAT, "%s: vocab entry '%.40s' has a bad id", jpath, key);
            goto fail;
        }
        /* jansson keys are NUL-terminated; pieces with NUL would be cut short */
        if ((rc = set_piece(t, id, key, strlen(key), LB_TOK_NORMAL, jpath, err)))
            goto fail;
    }
    rc = LB_EFORMAT;
    size_t ai;
    json_t *at;
    json_array_foreach(added, ai, at)
    {
        json_t *c = json_object_get(at, "content");
        json_int_t id = json_integer_value(json_object_get(at, "id"));
        if (!json_is_string(c) || !json_string_length(c) || id < 0) {
            lb_err_set(err, LB_EFORMAT, "%s: added_tokens[%zu] lacks content or id", jpath, ai);
            goto fail;
        }
        int special = json_is_true(json_object_get(at, "special"));
        if ((rc = set_piece(t, id, json_string_value(c), json_string_length(c),
                            special ? LB_TOK_CONTROL : LB_TOK_USER_DEFINED, jpath, err)))
            goto fail;
    }
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
    if ((rc = load_merges(t, json_object_get(model, "merges"), jpath, err)))
        goto fail;
    t->cp_id = malloc(0x10000 * sizeof *t->cp_id);
    if (!t->cp_id) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory", jpath);
        goto fail;
    }
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
    if ((rc = load_norm(t, json_object_get(root, "normalizer"), jpath, err)) ||
        (rc = load_pre(t, json_object_get(root, "pre_tokenizer"), jpath, err)) ||
        (rc = load_post(t, json_object_get(root, "post_processor"), jpath, err)))
        goto fail;

    /* BOS/EOS: the post_processor's template; tokenizer_config.json's
     * add_bos_token / add_eos_token, when given, override it (as transformers'
     * LlamaTokenizerFast rebuilds its template from them). */
    if (cfg) {
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

/* ----------------------------------------------------------- accessors */

int64_t lb_tok_vocab_size(const lb_tok *tok) { return tok->n_ids; }
int lb_tok_kind(const lb_tok *tok) { return tok->kind; }
int64_t lb_tok_n_merges(const lb_tok *tok) { return tok->n_merges; }
int32_t lb_tok_bos(const lb_tok *tok) { return tok->bos; }
int32_t lb_tok_eos(const lb_tok *tok) { return tok->eos; }
int32_t lb_tok_unk(const lb_tok *tok) { return tok->unk; }

int lb_tok_adds_bos(const lb_tok *tok)
{
    return tok->bos >= 0 ? (tok->n_pre_ids > 0 && tok->pre_ids[0] == tok->bos) : tok->n_pre_ids > 0;
}

int lb_tok_adds_eos(const lb_tok *tok)
{
    return tok->eos >= 0 ? (tok->n_post_ids > 0 && tok->post_ids[tok->n_post_ids - 1] == tok->eos)
                         : tok->n_post_ids > 0;
}

const char *lb_tok_piece(const lb_tok *tok, int64_t id, size_t *len)
{
    if (id < 0 || id >= tok->n_ids || !tok->piece[id]) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = tok->piece_len[id];
    return tok->piece[id];
}

float lb_tok_score(const lb_tok *tok, int64_t id)
{
    if (id < 0 || id >= tok->n_ids || tok->made_by[id] < 0)
        return 0.0f;
    return -(float)tok->made_by[id];
}

int lb_tok_type(const lb_tok *tok, int64_t id)
{
    return (id < 0 || id >= tok->n_ids) ? LB_TOK_UNUSED : tok->type[id];
}

int lb_tok_merge(const lb_tok *tok, int64_t i, int32_t *left, int32_t *right)
{
    if (i < 0 || i >= tok->n_merges)
        return LB_EINVAL;
    *left = tok->m_left[i];
    *right = tok->m_right[i];
    return 0;
}

/* ---------------------------------------------------------------- encode */

typedef struct {
    int32_t id;
    uint32_t off, len; /* bytes of the piece this symbol covers */
    int32_t prev, next;
} tsym;

typedef struct {
    const lb_tok *t;
    tbuf norm, arena, arena2, scratch;
    tspans pieces, pieces2, sub;
    tsym *sym;
    size_t sym_cap;
    uint64_t *heap;
    size_t heap_n, heap_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jstack;
    tids out;
    lb_err *err;
    /* word cache for this call: words repeat (Zipf), BPE runs once per word */
    struct tcache_slot {
        uint64_t h;
        uint32_t key_off, key_len, ids_off, n_ids;
    } *cache;
    size_t cache_used, cache_slots; /* slots: a power of two sized to the text */
    tbuf cache_keys;
    tids cache_ids;
} tenc;

#define CACHE_SLOTS e->cache_slots
#define CACHE_MAX_WORD 64

static int heap_push(tenc *e, uint64_t v)
{
    if (e->heap_n == e->heap_cap) {
        size_t cap = e->heap_cap ? e->heap_cap * 2 : 256;
        uint64_t *h = realloc(e->heap, cap * sizeof *h);
        if (!h)
            return -1;
        e->heap = h;
        e->heap_cap = cap;
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (e->heap[p] <= v)
            break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = v;
    return 0;
}

static uint64_t heap_pop(tenc *e)
{
    uint64_t top = e->heap[0], v = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && e->heap[c + 1] < e->heap[c])
            c++;
        if (v <= e->heap[c])
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = v;
    return top;
}

static int push_pair(tenc *e, int32_t i)
{
    int32_t j = e->sym[i].next;
    if (j < 0)
        return 0;
    int32_t r = merge_rank(e->t, e->sym[i].id, e->sym[j].id);
    if (r < 0)
        return 0;
    return heap_push(e, ((uint64_t)(uint32_t)r << 32) | (uint32_t)i);
}

static int emit(tenc *e, uint32_t id)
{
    if (tids_push(&e->out, id))
        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory for token ids");
    return 0;
}

/* BPE over one pre-token piece s[0..n). byte_level: symbols are bytes mapped
 * through GPT-2's table; else code points. */
static int bpe_word(tenc *e, const char *s, size_t n, int byte_level)
{
    const lb_tok *t = e->t;
    if (n == 0)
        return 0;
    if (t->ignore_merges) {
        const char *w = s;
        size_t wl = n;
        if (byte_level) {
            e->scratch.n = 0;
            if (tbuf_reserve(&e->scratch, 2 * n + 1))
                return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
            for (size_t i = 0; i < n; i++) {
                unsigned char b = (unsigned char)s[i];
                memcpy(e->scratch.p + e->scratch.n, t->bl_char[b], t->bl_char_len[b]);
                e->scratch.n += t->bl_char_len[b];
            }
            w = e->scratch.p;
            wl = e->scratch.n;
        }
        int32_t id = map_find(t, w, wl);
        if (id >= 0)
            return emit(e, (uint32_t)id);
    }
    if (n > UINT32_MAX / 2)
        return lb_err_set(e->err, LB_EINVAL, "lb_tok: a pre-token of %zu bytes is too long", n);
    if (n > e->sym_cap) {
        tsym *ns = realloc(e->sym, n * sizeof *ns);
        if (!ns)
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory for a %zu-byte word", n);
        e->sym = ns;
        e->sym_cap = n;
    }
    int32_t ns_ = 0;
    for (size_t i = 0; i < n;) {
        size_t l;
        int32_t id;
        if (byte_level) {
            l = 1;
            id = t->bl_id[(unsigned char)s[i]];
        } else {
            uint32_t cp = utf8_decode((const unsigned char *)s + i, &l);
            id = cp < 0x10000 ? t->cp_id[cp] : map_find(t, s + i, l);
        }
        e->sym[ns_] = (tsym){id, (uint32_t)i, (uint32_t)l, ns_ - 1, -1};
        if (ns_ > 0)
            e->sym[ns_ - 1].next = ns_;
        ns_++;
        i += l;
    }
    e->heap_n = 0;
    for (int32_t i = 0; i + 1 < ns_; i++)
        if (push_pair(e, i))
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    while (e->heap_n) {
        uint64_t top = heap_pop(e);
        int32_t r = (int32_t)(top >> 32), i = (int32_t)(uint32_t)top;
        tsym *a = &e->sym[i];
        if (a->len == 0 || a->next < 0)
            continue;
        tsym *b = &e->sym[a->next];
        if (merge_rank(t, a->id, b->id) != r)
            continue; /* stale entry: one side merged since */
        a->id = t->m_result[r];
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (a->next >= 0)
            e->sym[a->next].prev = i;
        if ((a->prev >= 0 && push_pair(e, a->prev)) || push_pair(e, i))
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    }
    int last_unk = 0;
    for (int32_t i = 0; i >= 0 && i < ns_; i = e->sym[i].next) {
        tsym *a = &e->sym[i];
        int rc;
        if (a->id >= 0) {
            last_unk = 0;
            if ((rc = emit(e, (uint32_t)a->id)))
                return rc;
            continue;
        }
        /* not in the vocabulary: its UTF-8 bytes as <0xXX>, else unk */
        int all = t->byte_fallback;
        for (uint32_t k = 0; all && k < a->len; k++)
            all = t->byte_id[(unsigned char)s[a->off + k]] >= 0;
        if (all) {
            last_unk = 0;
            for (uint32_t k = 0; k < a->len; k++)
                if ((rc = emit(e, (uint32_t)t->byte_id[(unsigned char)s[a->off + k]])))
                    return rc;
        } else if (t->unk >= 0 && !(t->fuse_unk && last_unk)) {
            last_unk = 1;
            if ((rc = emit(e, (uint32_t)t->unk)))
                return rc;
        }
    }
    return 0;
}

static int bpe_cached(tenc *e, const char *s, size_t n, int byte_level)
{
    if (n > CACHE_MAX_WORD)
        return bpe_word(e, s, n, byte_level);
    if (!e->cache) {
        e->cache = calloc(CACHE_SLOTS, sizeof *e->cache);
        if (!e->cache)
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    }
    uint64_t h = hash_bytes(s, n) | 1; /* 0 marks an empty slot */
    size_t k = h & (CACHE_SLOTS - 1);
    for (;;) {
        struct tcache_slot *c = &e->cache[k];
        if (!c->h)
            break;
        if (c->h == h && c->key_len == n && !memcmp(e->cache_keys.p + c->key_off, s, n)) {
            for (uint32_t q = 0; q < c->n_ids; q++) {
                int rc = emit(e, e->cache_ids.v[c->ids_off + q]);
                if (rc)
                    return rc;
            }
            return 0;
        }
        k = (k + 1) & (CACHE_SLOTS - 1);
    }
    int64_t before = e->out.n;
    int rc = bpe_word(e, s, n, byte_level);
    if (rc || e->cache_used >= CACHE_SLOTS / 2 || e->cache_keys.n > UINT32_MAX / 2 ||
        e->cache_ids.n > INT32_MAX / 2)
        return rc; /* a full cache just stops growing */
    struct tcache_slot *c = &e->cache[k];
    uint32_t koff = (uint32_t)e->cache_keys.n, ioff = (uint32_t)e->cache_ids.n;
    if (tbuf_put(&e->cache_keys, s, n))
        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    for (int64_t q = before; q < e->out.n; q++)
        if (tids_push(&e->cache_ids, e->out.v[q]))
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    *c = (struct tcache_slot){h, koff, (uint32_t)n, ioff, (uint32_t)(e->out.n - before)};
    e->cache_used++;
    return 0;
}

static int bpe_piece(tenc *e, const char *s, size_t n, int byte_level)
{
    if (byte_level || !e->t->spm_cut || n < 8)
        return bpe_cached(e, s, n, byte_level);
    size_t st = 0;
    for (size_t i = 3; i + 3 <= n; i++) {
        if (s[i] == SPM_SPACE[0] && !memcmp(s + i, SPM_SPACE, 3) && memcmp(s + i - 3, SPM_SPACE, 3)) {
            int rc = bpe_cached(e, s + st, i - st, 0);
            if (rc)
                return rc;
            st = i;
        }
    }
    return bpe_cached(e, s + st, n - st, 0);
}

/* Runs re over s[off..off+len) of base; appends match spans (absolute) to m. */
static int re_matches(tenc *e, const pcre2_code *re, const char *base, size_t off, size_t len,
                      tspans *m)
{
    size_t pos = 0;
    m->n = 0;
    while (pos < len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)(base + off), len, pos, PCRE2_NO_UTF_CHECK, e->md,
                             e->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lb_err_set(e->err, LB_EINVAL, "lb_tok: regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t s0 = ov[0], s1 = ov[1];
        if (s1 == s0) { /* empty match: step over one character */
            pos = s0 + (s0 < len ? utf8_len((unsigned char)base[off + s0]) : 1);
            continue;
        }
        if (tspans_push(m, off + s0, s1 - s0, -1))
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
        pos = s1;
    }
    return 0;
}

/* Splits each piece of `in` (spans into base) by re with a Split behavior. */
static int split_pieces(tenc *e, const tok_pre *p, const pcre2_code *re, const char *base,
                        const tspans *in, tspans *outp)
{
    outp->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        size_t off = in->v[k].off, len = in->v[k].len;
        int rc = re_matches(e, re, base, off, len, &e->sub);
        if (rc)
            return rc;
        size_t cur = off, end = off + len;
        size_t pend_off = 0, pend_len = 0; /* MergedWithNext: match waiting for its gap */
        int has_pend = 0;
#define PUSH(o, l)                                                                         \
    do {                                                                                   \
        if ((l) > 0 && tspans_push(outp, (o), (l), -1))                                    \
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");                 \
    } while (0)
        for (size_t j = 0; j < e->sub.n; j++) {
            size_t mo = e->sub.v[j].off, ml = e->sub.v[j].len;
            if (p && p->invert) {
                PUSH(mo, ml);
                continue;
            }
            int beh = p ? p->behavior : SPLIT_ISOLATED;
            if (beh == SPLIT_ISOLATED) {
                PUSH(cur, mo - cur);
                PUSH(mo, ml);
            } else if (beh == SPLIT_REMOVED) {
                PUSH(cur, mo - cur);
            } else if (beh == SPLIT_MERGED_PREV) {
                PUSH(cur, mo + ml - cur);
            } else { /* MergedWithNext */
                if (has_pend)
                    PUSH(pend_off, mo - pend_off);
                else
                    PUSH(cur, mo - cur);
                pend_off = mo;
                pend_len = ml;
                has_pend = 1;
            }
            cur = mo + ml;
        }
        if (!(p && p->invert)) {
            if (has_pend)
                PUSH(pend_off, end - pend_off);
            else
                PUSH(cur, end - cur);
        }
        (void)pend_len;
#undef PUSH
    }
    return 0;
}

static int swap_spans(tspans *a, tspans *b)
{
    tspans t = *a;
    *a = *b;
    *b = t;
    return 0;
}

/* Pre-tokenizes text s[0..n) (section_index as the reference counts it) and
 * runs BPE on each piece. */
static int encode_text_piece(tenc *e, const char *s, size_t n, size_t section_index)
{
    const lb_tok *t = e->t;
    e->arena.n = 0;
    if (tbuf_put(&e->arena, s, n))
        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    e->pieces.n = 0;
    if (tspans_push(&e->pieces, 0, n, -1))
        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    int byte_level = 0, rc;
    for (int k = 0; k < t->n_pre; k++) {
        const tok_pre *p = &t->pre[k];
        if (p->type == PRE_SPLIT) {
            if ((rc = split_pieces(e, p, p->re, e->arena.p, &e->pieces, &e->pieces2)))
                return rc;
            swap_spans(&e->pieces, &e->pieces2);
        } else if (p->type == PRE_BYTELEVEL) {
            byte_level = 1;
            if (p->add_prefix_space) {
                e->arena2.n = 0;
                e->pieces2.n = 0;
                for (size_t j = 0; j < e->pieces.n; j++) {
                    const tspan *sp = &e->pieces.v[j];
                    size_t o = e->arena2.n;
                    if ((sp->len == 0 || e->arena.p[sp->off] != ' ') && tbuf_put(&e->arena2, " ", 1))
                        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                    if (tbuf_put(&e->arena2, e->arena.p + sp->off, sp->len) ||
                        tspans_push(&e->pieces2, o, e->arena2.n - o, -1))
                        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                }
                tbuf tb = e->arena;
                e->arena = e->arena2;
                e->arena2 = tb;
                swap_spans(&e->pieces, &e->pieces2);
            }
            if (p->re) {
                if ((rc = split_pieces(e, NULL, p->re, e->arena.p, &e->pieces, &e->pieces2)))
                    return rc;
                swap_spans(&e->pieces, &e->pieces2);
            }
        } else { /* Metaspace: ' ' -> replacement, maybe prepend, maybe split before it */
            e->arena2.n = 0;
            e->pieces2.n = 0;
            for (size_t j = 0; j < e->pieces.n; j++) {
                const tspan *sp = &e->pieces.v[j];
                size_t o = e->arena2.n;
                const char *q = e->arena.p + sp->off;
                int starts = sp->len >= p->rep_len && !memcmp(q, p->rep, p->rep_len);
                if (!starts && !(sp->len > 0 && q[0] == ' ') &&
                    (p->prepend_scheme == PREPEND_ALWAYS ||
                     (p->prepend_scheme == PREPEND_FIRST && section_index == 0)))
                    if (tbuf_put(&e->arena2, p->rep, p->rep_len))
                        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                for (size_t c = 0; c < sp->len; c++) {
                    int r2 = q[c] == ' ' ? tbuf_put(&e->arena2, p->rep, p->rep_len)
                                         : tbuf_put(&e->arena2, q + c, 1);
                    if (r2)
                        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                }
                size_t pl = e->arena2.n - o;
                if (!p->split) {
                    if (tspans_push(&e->pieces2, o, pl, -1))
                        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                    continue;
                }
                size_t st = o; /* MergedWithNext on the replacement character */
                for (size_t c = o + 1; c + p->rep_len <= o + pl; c++) {
                    if (!memcmp(e->arena2.p + c, p->rep, p->rep_len)) {
                        if (tspans_push(&e->pieces2, st, c - st, -1))
                            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                        st = c;
                    }
                }
                if (o + pl > st && tspans_push(&e->pieces2, st, o + pl - st, -1))
                    return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
            }
            tbuf tb = e->arena;
            e->arena = e->arena2;
            e->arena2 = tb;
            swap_spans(&e->pieces, &e->pieces2);
        }
    }
    for (size_t j = 0; j < e->pieces.n; j++)
        if ((rc = bpe_piece(e, e->arena.p + e->pieces.v[j].off, e->pieces.v[j].len, byte_level)))
            return rc;
    return 0;
}

/* Applies the normalizers to s[0..n) into e->norm. */
static int normalize(tenc *e, const char *s, size_t n)
{
    const lb_tok *t = e->t;
    e->norm.n = 0;
    if (tbuf_put(&e->norm, s, n))
        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    for (int k = 0; k < t->n_norm; k++) {
        const tok_norm *d = &t->norm[k];
        if (d->type == NORM_PREPEND) {
            if (e->norm.n == 0)
                continue; /* the reference prepends to non-empty text only */
            e->scratch.n = 0;
            if (tbuf_put(&e->scratch, d->a, d->alen) || tbuf_put(&e->scratch, e->norm.p, e->norm.n))
                return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
        } else if (d->type == NORM_REPLACE) {
            int rc = re_matches(e, d->re, e->norm.p, 0, e->norm.n, &e->sub);
            if (rc)
                return rc;
            if (e->sub.n == 0)
                continue;
            e->scratch.n = 0;
            size_t cur = 0;
            for (size_t j = 0; j < e->sub.n; j++) {
                if (tbuf_put(&e->scratch, e->norm.p + cur, e->sub.v[j].off - cur) ||
                    tbuf_put(&e->scratch, d->a, d->alen))
                    return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                cur = e->sub.v[j].off + e->sub.v[j].len;
            }
            if (tbuf_put(&e->scratch, e->norm.p + cur, e->norm.n - cur))
                return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
        } else {
            /* Only code points >= U+0300 change under normalization or compose
             * with what precedes them, so only the runs around them go
             * through utf8proc; the rest is copied. */
            int opt = UTF8PROC_STABLE;
            opt |= d->type == NORM_NFC || d->type == NORM_NFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
            if (d->type == NORM_NFKC || d->type == NORM_NFKD)
                opt |= UTF8PROC_COMPAT;
            const char *q = e->norm.p;
            size_t qn = e->norm.n, i = 0, copied = 0, prev = 0;
            int any = 0;
            e->scratch.n = 0;
            while (i < qn) {
                unsigned char c = (unsigned char)q[i];
                /* U+0300 is 0xCC 0x80; any lead byte >= 0xCC starts a code point >= U+0300 */
                if (c < 0xCC) {
                    prev = i;
                    i += utf8_len(c);
                    continue;
                }
                size_t st = prev < i && (unsigned char)q[prev] < 0xCC ? prev : i, en = i;
                while (en < qn && (unsigned char)q[en] >= 0xCC)
                    en += utf8_len((unsigned char)q[en]);
                if (st < copied)
                    st = copied;
                utf8proc_uint8_t *o = NULL;
                utf8proc_ssize_t ol = utf8proc_map((const utf8proc_uint8_t *)q + st,
                                                   (utf8proc_ssize_t)(en - st), &o,
                                                   (utf8proc_option_t)opt);
                if (ol < 0)
                    return lb_err_set(e->err, LB_EINVAL, "lb_tok: Unicode normalization failed: %s",
                                      utf8proc_errmsg(ol));
                int r2 = tbuf_put(&e->scratch, q + copied, st - copied) ||
                         tbuf_put(&e->scratch, o, (size_t)ol);
                free(o);
                if (r2)
                    return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
                any = 1;
                copied = en;
                prev = en;
                i = en;
            }
            if (!any)
                continue;
            if (tbuf_put(&e->scratch, q + copied, qn - copied))
                return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
        }
        tbuf tb = e->norm;
        e->norm = e->scratch;
        e->scratch = tb;
    }
    return 0;
}

/* Splits s[off..off+len) at added tokens (leftmost, longest match) whose
 * `normalized` flag equals want_norm; applies lstrip/rstrip to neighbours. */
static int split_added(tenc *e, const char *base, size_t off, size_t len, int want_norm, tspans *out)
{
    const lb_tok *t = e->t;
    out->n = 0;
    size_t start = off, i = off, end = off + len;
    while (i < end) {
        if (!t->added_first[want_norm][(unsigned char)base[i]]) {
            i++;
            continue;
        }
        int best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->n_added; k++) {
            const tok_added *a = &t->added[k];
            if (a->normalized != want_norm || a->len <= best_len || a->len > end - i ||
                a->text[0] != base[i] || memcmp(a->text, base + i, a->len))
                continue;
            best = k;
            best_len = a->len;
        }
        if (best < 0) {
            i++;
            continue;
        }
        if ((i > start && tspans_push(out, start, i - start, -1)) ||
            tspans_push(out, i, best_len, t->added[best].id))
            return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
        i += best_len;
        start = i;
    }
    if (start < end && tspans_push(out, start, end - start, -1))
        return lb_err_set(e->err, LB_ENOMEM, "lb_tok: out of memory");
    for (size_t k = 0; k < out->n; k++) {
        if (out->v[k].added < 0)
            continue;
        const tok_added *a = NULL;
        for (int q = 0; q < t->n_added; q++)
            if (t->added[q].id == out->v[k].added)
                a = &t->added[q];
        if (a && a->lstrip && k > 0 && out->v[k - 1].added < 0)
            trim_end(base, &out->v[k - 1]);
        if (a && a->rstrip && k + 1 < out->n && out->v[k + 1].added < 0)
            trim_start(base, &out->v[k + 1]);
    }
    return 0;
}

int lb_tok_encode(const lb_tok *t, const char *text, size_t len, int add_special, uint32_t **ids,
                  int64_t *n, lb_err *err)
{
    *ids = NULL;
    *n = 0;
    if (len > ((size_t)1 << 31))
        return lb_err_set(err, LB_EINVAL, "lb_tok: text of %zu bytes is over the 2 GiB limit; "
                          "tokenize it in parts", len);
    tenc e = {.t = t, .err = err, .cache_slots = 64};
    while (e.cache_slots < ((size_t)1 << 16) && e.cache_slots < len / 4)
        e.cache_slots *= 2;
    tspans sections = {0}, subs = {0};
    char *clean = NULL;
    size_t clen = 0;
    int rc = lb_tok_utf8_sanitize(text, len, &clean, &clen, err);
    if (rc)
        goto done;
    rc = LB_ENOMEM;
    e.md = pcre2_match_data_create(32, NULL);
    e.mctx = pcre2_match_context_create(NULL);
    e.jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!e.md || !e.mctx || !e.jstack) {
        lb_err_set(err, LB_ENOMEM, "lb_tok: out of memory for the regex engine");
        goto done;
    }
    pcre2_jit_stack_assign(e.mctx, NULL, e.jstack);
    if (add_special)
        for (int k = 0; k < t->n_pre_ids; k++)
            if ((rc = emit(&e, (uint32_t)t->pre_ids[k])))
                goto done;
    if ((rc = split_added(&e, clean, 0, clen, 0, &sections)))
        goto done;
    for (size_t si = 0; si < sections.n; si++) {
        tspan sp = sections.v[si];
        if (sp.added >= 0) {
            if ((rc = emit(&e, (uint32_t)sp.added)))
                goto done;
            continue;
        }
        if (sp.len == 0)
            continue;
        if ((rc = normalize(&e, clean + sp.off, sp.len)))
            goto done;
        if (e.norm.n == 0)
            continue;
        /* the normalized text is consumed piece by piece; keep it apart from e.norm */
        tbuf nb = e.norm;
        e.norm = (tbuf){0};
        if (t->has_normalized_added) {
            rc = split_added(&e, nb.p, 0, nb.n, 1, &subs);
        } else {
            subs.n = 0;
            rc = tspans_push(&subs, 0, nb.n, -1) ? lb_err_set(err, LB_ENOMEM, "lb_tok: out of memory") : 0;
        }
        for (size_t j = 0; !rc && j < subs.n; j++) {
            if (subs.v[j].added >= 0)
                rc = emit(&e, (uint32_t)subs.v[j].added);
            else if (subs.v[j].len)
                rc = encode_text_piece(&e, nb.p + subs.v[j].off, subs.v[j].len, si);
        }
        free(e.norm.p);
        e.norm = nb;
        if (rc)
            goto done;
    }
    if (add_special)
        for (int k = 0; k < t->n_post_ids; k++)
            if ((rc = emit(&e, (uint32_t)t->post_ids[k])))
                goto done;
    *ids = e.out.v;
    *n = e.out.n;
    e.out.v = NULL;
    rc = 0;
done:
    free(e.out.v);
    free(clean);
    free(e.norm.p);
    free(e.arena.p);
    free(e.arena2.p);
    free(e.scratch.p);
    free(e.pieces.v);
    free(e.pieces2.v);
    free(e.sub.v);
    free(e.sym);
    free(e.heap);
    free(e.cache);
    free(e.cache_keys.p);
    free(e.cache_ids.v);
    free(sections.v);
    free(subs.v);
    if (e.md)
        pcre2_match_data_free(e.md);
    if (e.mctx)
        pcre2_match_context_free(e.mctx);
    if (e.jstack)
        pcre2_jit_stack_free(e.jstack);
    return rc;
}
