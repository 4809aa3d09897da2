/* lb_tok_int: lb_tok's private types and helpers, shared by lb_tok.c (encode,
 * decode, accessors) and lb_tok_load.c (tokenizer.json loading). Not installed;
 * nothing outside common/lb_tok*.c includes it. */
#ifndef LB_TOK_INT_H
#define LB_TOK_INT_H

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

static inline int tbuf_reserve(tbuf *b, size_t extra)
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

static inline int tbuf_put(tbuf *b, const void *s, size_t n)
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

static inline int tspans_push(tspans *s, size_t off, size_t len, int32_t added)
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

static inline int tids_push(tids *t, uint32_t id)
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

static inline uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static inline uint64_t hash_u64(uint64_t k)
{
    /* splitmix64 finalizer: the low bits (the table index) depend on both ids */
    k ^= k >> 30;
    k *= 0xBF58476D1CE4E5B9ull;
    k ^= k >> 27;
    k *= 0x94D049BB133111EBull;
    return k ^ (k >> 31);
}

static inline size_t utf8_encode(uint32_t cp, char *out)
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
static inline size_t utf8_len(unsigned char b)
{
    return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

static inline uint32_t utf8_decode(const unsigned char *s, size_t *len)
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

/* JavaScript's String.prototype.trim whitespace (what the reference trims
 * around added tokens with lstrip/rstrip). */
static inline int js_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

static inline void trim_end(const char *base, tspan *sp)
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

static inline void trim_start(const char *base, tspan *sp)
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

static inline int32_t map_find(const lb_tok *t, const char *s, size_t n)
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

static inline void map_insert(lb_tok *t, uint32_t id)
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

#endif
