/* lb_tok_text: text file -> windows of token ids (see lb_tok_text.h). */
#include "lb_tok_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_io_util.h"
#include "lb_tok.h"
#include "lb_tokens.h"

#define TEXT_MAX_BYTES ((uint64_t)1 << 31)

int lb_tok_text_file(const char *model_dir, const char *text_path, int64_t ctx, int64_t n,
                     int64_t vocab, uint32_t **ids, int64_t *n_ids, int64_t *n_text, lb_err *err)
{
    *ids = NULL;
    *n_ids = 0;
    lb_tok *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    uint32_t *all = NULL, *win = NULL;
    int64_t total = 0;
    int rc = lb_tok_load(model_dir, &tok, err);
    if (rc)
        goto fail;
    if ((rc = lb_io_read_file(text_path, TEXT_MAX_BYTES, &text, &len, err)))
        goto fail;
    if ((rc = lb_tok_encode(tok, text, len, 1, &all, &total, err))) {
        lb_err_prefix(err, "%s", text_path);
        goto fail;
    }
    if (n_text)
        *n_text = total;
    if (vocab > 0 && (rc = lb_tokens_check_vocab(all, total, vocab, text_path, err))) {
        lb_err_prefix(err, "tokenizer of %s", model_dir);
        goto fail;
    }
    if (ctx <= 0) {
        if (total == 0) {
            rc = lb_err_set(err, LB_EINVAL, "%s: no tokens (empty text)", text_path);
            goto fail;
        }
        *ids = all;
        *n_ids = total;
        all = NULL;
        goto done;
    }
    if (total < ctx) {
        rc = lb_err_set(err, LB_EINVAL, "%s: %lld tokens, fewer than one window of %lld; give "
                        "more text or a smaller --ctx", text_path, (long long)total, (long long)ctx);
        goto fail;
    }
    int64_t nw = n > 0 ? n : total / ctx;
    if (nw > INT64_MAX / ctx || (uint64_t)(nw * ctx) > SIZE_MAX / sizeof(uint32_t)) {
        rc = lb_err_set(err, LB_EINVAL, "%s: %lld windows of %lld tokens is too many", text_path,
                        (long long)nw, (long long)ctx);
        goto fail;
    }
    win = malloc((size_t)(nw * ctx) * sizeof *win);
    if (!win) {
        rc = lb_err_set(err, LB_ENOMEM, "%s: out of memory for %lld windows", text_path, (long long)nw);
        goto fail;
    }
    for (int64_t i = 0; i < nw; i++) {
        int64_t start = n > 0 ? (nw > 1 ? (int64_t)((__int128)i * (total - ctx) / (nw - 1)) : 0)
                              : i * ctx;
        memcpy(win + i * ctx, all + start, (size_t)ctx * sizeof *win);
    }
    *ids = win;
    *n_ids = nw * ctx;
    win = NULL;
done:
    rc = 0;
fail:
    free(all);
    free(win);
    free(text);
    lb_tok_free(&tok);
    return rc;
}

static int has_tokenizer(const char *dir)
{
    char *p = lb_io_path_join(dir, "tokenizer.json");
    FILE *f = p ? fopen(p, "rb") : NULL;
    free(p);
    if (f)
        fclose(f);
    return f != NULL;
}

const char *lb_tok_text_dir(const char *model_dir, const char *ref_dir)
{
    if (has_tokenizer(model_dir) || !ref_dir || !has_tokenizer(ref_dir))
        return model_dir;
    return ref_dir;
}
