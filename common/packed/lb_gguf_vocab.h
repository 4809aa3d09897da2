/* lb_gguf_vocab.h: the GGUF export's vocabulary (lb_export_gguf.c writes it,
 * lb_gguf_vocab.c reads it from tokenizer.json or makes a synthetic one). */
#ifndef LB_GGUF_VOCAB_H
#define LB_GGUF_VOCAB_H

#include <stdint.h>

#include "lb_config.h"
#include "lb_err.h"

/* gguf tokenizer.ggml.token_type values */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

typedef struct {
    int32_t n;
    char **tok;
    float *score;
    int32_t *type;
    int32_t n_merges;
    char **merges;
    const char *model; /* "llama" (SentencePiece-style) or "gpt2" (byte-level BPE) */
    int32_t bos, eos, unk; /* -1: absent */
} lb_gguf_vocab;

void lb_gguf_vocab_free(lb_gguf_vocab *v);
/* No tokenizer: a small valid llama-style vocabulary of cfg->vocab_size pieces
 * (<unk> <s> </s>, the byte tokens, fillers). Returns 0 or LB_E*. */
int lb_gguf_vocab_synthetic(lb_gguf_vocab *v, const lb_config *cfg, lb_err *err);
/* tokenizer.json (Hugging Face) with a BPE model (see lb_gguf_vocab.c). Returns 0 or
 * LB_E* naming the file. */
int lb_gguf_vocab_from_tokenizer_json(lb_gguf_vocab *v, const char *path, const lb_config *cfg,
                                      lb_err *err);

#endif
