/* lb_tok: a tokenizer for Hugging Face tokenizer.json files (BPE models).
 * Two families are read: SentencePiece-style BPE with byte fallback
 * (LLaMA-1/2, Mistral: normalizer Prepend/Replace or the Metaspace
 * pre-tokenizer) and byte-level BPE with a pre-tokenizer regex (LLaMA-3,
 * Qwen2/3: Split regex + ByteLevel). Added/special tokens are matched before
 * BPE; BOS/EOS come from the post_processor and tokenizer_config.json.
 * Input bytes that are not valid UTF-8 are read as U+FFFD (WHATWG rule, as
 * browsers and Node do). See docs/tokenizer.md. No network, no Python. */
#ifndef LB_TOK_H
#define LB_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "lb_err.h"

typedef struct lb_tok lb_tok;

/* Token types, numbered as GGUF's tokenizer.ggml.token_type. */
enum {
    LB_TOK_NORMAL = 1,
    LB_TOK_UNKNOWN = 2,
    LB_TOK_CONTROL = 3,      /* special added token (<s>, <|begin_of_text|>) */
    LB_TOK_USER_DEFINED = 4, /* non-special added token */
    LB_TOK_UNUSED = 5,       /* id with no piece (hole in the id range) */
    LB_TOK_BYTE = 6,         /* <0xXX> byte-fallback piece */
};

/* Model families. */
enum {
    LB_TOK_KIND_SPM = 1,  /* SentencePiece-style BPE on code points, "▁" for space */
    LB_TOK_KIND_BYTE = 2, /* byte-level BPE (GPT-2 byte-to-char map) */
};

/* Loads path: a directory holding tokenizer.json (and optionally
 * tokenizer_config.json), or a tokenizer.json file itself (its directory is
 * searched for tokenizer_config.json). OUT: *out (free with lb_tok_free).
 * Errors: LB_ENOTFOUND (no tokenizer.json), LB_EFORMAT (bad JSON, a model or
 * component type that is not supported, naming it), LB_ENOMEM. */
int lb_tok_load(const char *path, lb_tok **out, lb_err *err);

/* Frees *tok and sets *tok = NULL. Accepts NULL / *tok == NULL. */
void lb_tok_free(lb_tok **tok);

/* Encodes len bytes of text (need not be NUL-terminated or valid UTF-8).
 * add_special != 0 adds BOS/EOS as the post_processor and tokenizer_config
 * say. OUT: *ids (malloc'd, caller frees; NULL when *n == 0), *n.
 * Thread-safe on one lb_tok. Errors: LB_ENOMEM, LB_EINVAL (text > 2 GiB). */
int lb_tok_encode(const lb_tok *tok, const char *text, size_t len, int add_special,
                  uint32_t **ids, int64_t *n, lb_err *err);

/* ---- vocabulary access (for exporters such as GGUF) ---- */

/* 1 + the largest id of the vocabulary and the added tokens. */
int64_t lb_tok_vocab_size(const lb_tok *tok);

/* LB_TOK_KIND_SPM or LB_TOK_KIND_BYTE. */
int lb_tok_kind(const lb_tok *tok);

/* The piece of id as tokenizer.json spells it ("▁the", "Ġthe", "<0x0A>",
 * "<s>"); *len (if non-NULL) gets its byte length. NULL for an id out of
 * range or a hole. Owned by tok. */
const char *lb_tok_piece(const lb_tok *tok, int64_t id, size_t *len);

/* -(rank) of the merge that creates the piece, 0 for pieces no merge creates
 * (single characters, bytes, added tokens): the SentencePiece convention,
 * so a merge-by-score tokenizer reproduces the merge order. */
float lb_tok_score(const lb_tok *tok, int64_t id);

/* LB_TOK_* type of id (LB_TOK_UNUSED when out of range). */
int lb_tok_type(const lb_tok *tok, int64_t id);

/* Number of merges; lb_tok_merge gives merge i (in rank order) as the ids of
 * its two parts. Returns 0, or LB_EINVAL when i is out of range. */
int64_t lb_tok_n_merges(const lb_tok *tok);
int lb_tok_merge(const lb_tok *tok, int64_t i, int32_t *left, int32_t *right);

/* Ids of the BOS / EOS / UNK tokens named by tokenizer_config.json (or the
 * model's unk_token); -1 when there is none. */
int32_t lb_tok_bos(const lb_tok *tok);
int32_t lb_tok_eos(const lb_tok *tok);
int32_t lb_tok_unk(const lb_tok *tok);

/* Whether encode(add_special=1) prepends BOS / appends EOS. */
int lb_tok_adds_bos(const lb_tok *tok);
int lb_tok_adds_eos(const lb_tok *tok);

/* Looks a piece up; returns its id or -1. */
int32_t lb_tok_find(const lb_tok *tok, const char *piece, size_t len);

/* Replaces invalid UTF-8 in src with U+FFFD (one per maximal invalid
 * subpart, the WHATWG/Unicode rule). OUT: *dst (malloc'd, NUL-terminated),
 * *dst_len. Returns 0 or LB_ENOMEM. Exposed for tests. */
int lb_tok_utf8_sanitize(const char *src, size_t len, char **dst, size_t *dst_len, lb_err *err);

#endif
