/* lb_synth_wh: synthetic (W, H) pairs of the refcases family (issue 11): a projection
 * whose inputs have a few outlier channels, as real LLM activations after a norm do.
 *
 *   W (rows, cols): Student-t(4) entries scaled to std 0.02; n_big random input columns
 *                   (5, fewer when cols < 80) times 4.
 *   H (cols, cols): (2/N) XᵀX over N = 4096 rows of standard normal X whose n_hot random
 *                   channels (10, fewer when cols < 80) are scaled by U(20, 60);
 *                   accumulated in float64, stored as float.
 * Every value is a function of (seed, rows, cols) alone: one splitmix64 stream per
 * purpose, drawn serially (Box-Muller normals; t(4) = z / sqrt(χ²₄ / 4)). The same recipe
 * as ../shared/refcases/README.md, not the same generator: numpy's streams differ. */
#ifndef LB_SYNTH_WH_H
#define LB_SYNTH_WH_H

#include <stdint.h>

#include "lb_err.h"

#define LB_SYNTH_WH_SAMPLES 4096

/* W (rows * cols) and H (cols * cols), caller-allocated. Returns 0, LB_EINVAL (shape) or
 * LB_ENOMEM (the float64 X and H scratch: 8 * cols * (4096 + cols) bytes). */
int lb_synth_wh(int64_t rows, int64_t cols, uint64_t seed, float *W, float *H, lb_err *err);

#endif
