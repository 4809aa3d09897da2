#include "lb_calib.h"

#include <stdlib.h>

#include "lb_forward.h"

int lb_calib_hessian(const lb_model *m, const uint32_t *tokens, int64_t n_seq, int64_t seq_len,
                     int32_t layer, lb_linear which, int64_t batch_seq, lb_hessian *h,
                     lb_err *err)
{
    const lb_config *cfg = lb_model_config(m);
    if (layer < 0 || layer >= cfg->num_hidden_layers || (unsigned)which >= LB_LINEAR_COUNT ||
        n_seq < 1 || seq_len < 1 || batch_seq < 1)
        return lb_err_set(err, LB_EINVAL, "calib: layer %d of %d, linear %d or batch invalid",
                          layer, cfg->num_hidden_layers, (int)which);
    int64_t rows, cols;
    lb_linear_shape(cfg, which, &rows, &cols);
    if (lb_hessian_cols(h) != cols)
        return lb_err_set(err, LB_EINVAL, "calib: accumulator has %lld columns, %s takes %lld",
                          (long long)lb_hessian_cols(h), lb_linear_name(which), (long long)cols);
    if (batch_seq > n_seq)
        batch_seq = n_seq;
    const int64_t max_ntok = batch_seq * seq_len, dim = cfg->hidden_size;
    int rc;
    lb_head_weights head = {0};
    lb_block_weights *blocks = calloc((size_t)layer + 1, sizeof *blocks);
    lb_fwd_workspace *ws = NULL;
    float *x = malloc((size_t)(max_ntok * dim) * sizeof *x);
    float *cap = malloc((size_t)(max_ntok * cols) * sizeof *cap);
    if (!blocks || !x || !cap) {
        rc = lb_err_set(err, LB_ENOMEM, "calib: out of memory for %lld tokens",
                        (long long)max_ntok);
        goto cleanup;
    }
    if ((rc = lb_model_load_head(m, &head, err)) ||
        (rc = lb_fwd_workspace_new(cfg, max_ntok, seq_len, &ws, err)))
        goto cleanup;
    for (int32_t l = 0; l <= layer; l++)
        if ((rc = lb_model_load_block(m, l, &blocks[l], err)))
            goto cleanup;
    lb_fwd_capture capture = {0};
    switch (which) {
    case LB_LINEAR_Q:
    case LB_LINEAR_K:
    case LB_LINEAR_V: capture.attn_in = cap; break;
    case LB_LINEAR_O: capture.attn_out = cap; break;
    case LB_LINEAR_GATE:
    case LB_LINEAR_UP: capture.mlp_in = cap; break;
    default: capture.mlp_act = cap; break;
    }
    for (int64_t s0 = 0; s0 < n_seq; s0 += batch_seq) {
        const int64_t ns = n_seq - s0 < batch_seq ? n_seq - s0 : batch_seq, ntok = ns * seq_len;
        if ((rc = lb_fwd_embed(&head, tokens + s0 * seq_len, ntok, x, err)))
            goto cleanup;
        for (int32_t l = 0; l <= layer; l++)
            if ((rc = lb_fwd_block(cfg, &blocks[l], x, ns, seq_len, ws,
                                   l == layer ? &capture : NULL, err)))
                goto cleanup;
        if ((rc = lb_hessian_add_chunk(h, cap, ntok, cols, err)))
            goto cleanup;
    }
cleanup:
    if (blocks)
        for (int32_t l = 0; l <= layer; l++)
            lb_block_weights_free(&blocks[l]);
    free(blocks);
    lb_head_weights_free(&head);
    lb_fwd_workspace_free(&ws);
    free(x);
    free(cap);
    return rc;
}
