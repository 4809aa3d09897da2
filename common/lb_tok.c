/* lb_tok: tokenizer.json BPE tokenizer (see lb_tok.h, docs/tokenizer.md).
 * Pipeline per text, as Hugging Face tokenizers runs it:
 *   UTF-8 repair -> split on added tokens -> normalizer (per section) ->
 *   pre-tokenizer (regex split, Metaspace, ByteLevel) -> BPE per piece ->
 *   post-processor (BOS/EOS).
 * The BPE merge loop is a min-heap of (rank, position) over a linked list of
 * symbols with a (left id, right id) -> rank hash map: O(n log n) per piece,
 * leftmost pair first among equal ranks (the order HF uses). */
#include "lb_tok_int.h"

#include <stdlib.h>
#include <string.h>

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

int32_t lb_tok_find(const lb_tok *tok, const char *piece, size_t len)
{
    return map_find(tok, piece, len);
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
