/* lb_calib: layer-input Hessians of a full-precision model on calibration tokens. */
#ifndef LB_CALIB_H
#define LB_CALIB_H

#include <stdint.h>

#include "lb_err.h"
#include "lb_hessian.h"
#include "lb_model.h"

/* Runs the fp32 model on tokens (n_seq sequences of seq_len, flattened) through blocks
 * 0..layer and adds the inputs of linear `which` of block `layer` to h (whose width must
 * be that linear's in_features): h += 2/N-normalised sum of x xᵀ (see lb_hessian.h).
 * Sequences are processed in batches of at most batch_seq. Returns 0 or the LB_E* of
 * the model, forward or accumulator (err names it). */
int lb_calib_hessian(const lb_model *m, const uint32_t *tokens, int64_t n_seq, int64_t seq_len,
                     int32_t layer, lb_linear which, int64_t batch_seq, lb_hessian *h,
                     lb_err *err);

#endif
