/* lb_tok_text: text file -> token ids with a model's tokenizer.json, cut into
 * calibration / evaluation windows. */
#ifndef LB_TOK_TEXT_H
#define LB_TOK_TEXT_H

#include <stdint.h>

#include "lb_err.h"

/* Tokenizes the whole text file (one document: BOS/EOS as the tokenizer adds
 * them) with the tokenizer.json in model_dir. With ctx > 0 the ids are cut
 * into windows of ctx tokens: n > 0 windows whose starts are spread evenly
 * over the text (start_i = floor(i * (T - ctx) / (n - 1)), deterministic, no
 * RNG; windows may overlap when n * ctx > T), or with n == 0 every whole
 * non-overlapping window (the tail shorter than ctx is dropped).
 * OUT: *ids (malloc'd, caller frees), *n_ids; *n_text (if non-NULL) the
 * number of ids of the whole text. If vocab > 0, ids >= vocab are an error
 * (tokenizer and model do not match). Errors: LB_ENOTFOUND / LB_EIO (files),
 * LB_EFORMAT (tokenizer.json), LB_EINVAL (text shorter than ctx, empty),
 * LB_ENOMEM. */
int lb_tok_text_file(const char *model_dir, const char *text_path, int64_t ctx, int64_t n,
                     int64_t vocab, uint32_t **ids, int64_t *n_ids, int64_t *n_text, lb_err *err);

/* The directory to take the tokenizer from: model_dir when it holds a
 * tokenizer.json, else ref_dir when given and it holds one, else model_dir
 * (so the error names it). Returns one of the two pointers. */
const char *lb_tok_text_dir(const char *model_dir, const char *ref_dir);

#endif
